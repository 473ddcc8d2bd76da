//! The Kubernetes backend: one pod per sandbox container, exec over the API
//! server's websocket, a NetworkPolicy per pool without network, a pod
//! watch for deaths behind the pool's back, and a coordination.k8s.io Lease
//! per server instance for its liveness. See `pod` for how the server's
//! root helper (the warden) and per-exec users map onto pods.
//!
//! Namespaces: a pool's pods (and its NetworkPolicy) go to the pool's own
//! namespace (`ContainerSpec::namespace`), else to the backend's
//! (`[kubernetes] namespace`). Only the namespaces the operator listed are
//! used; every lookup by label (leftovers, dead instances, the pod watch)
//! covers each of them, and a container id names its pod's namespace
//! (`pod::pod_id`), so lookups by id need no table.

mod error;
mod exec;
mod lease;
mod pod;
mod settings;
mod watch;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::stream::BoxStream;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, networking::v1::NetworkPolicy};
use kube::{
    Api, Client,
    api::{AttachParams, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::sync::OnceCell;

pub use error::KubeError;
pub use settings::KubernetesSettings;

use super::{
    Backend, BackendKind, ContainerEvent, ContainerInfo, ContainerSpec, Error, Exec, ExecSpec,
    ExecStdin, LABEL_POOL, LABEL_SERVER, ListedContainer, Liveness, Result,
};
use crate::sync::lock;
use pod::{CONTAINER, LABEL_ISOLATED, pod_id, split_id};

/// The environment of the backend's own commands in a pod.
const FIXED_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
/// How long the end of an exec's connection may take after its status.
const EXEC_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// What `inspect` calls the network of a pod its pool's policy does not
/// isolate.
const POD_NETWORK: &str = "pod-network";

/// A connected client and where it goes.
struct Conn {
    client: Client,
    config: kube::Config,
    /// The namespace of pools that name none.
    namespace: String,
    /// Every namespace pods may be in: `namespace` first, then the
    /// operator's further ones.
    namespaces: Vec<String>,
    lease_namespace: String,
    endpoint: String,
}

/// The client configuration `settings` name: its kubeconfig (and context),
/// else in-cluster credentials, else `KUBECONFIG` / `~/.kube/config`. Also
/// what peer discovery (`cluster::discovery`) reads the API with, so both
/// talk to the same cluster as the same identity.
pub async fn client_config(s: &KubernetesSettings) -> Result<kube::Config, KubeError> {
    let options = KubeConfigOptions {
        context: s.context.clone(),
        ..Default::default()
    };
    Ok(match &s.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
        }
        None if s.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
        // In-cluster credentials, else KUBECONFIG / ~/.kube/config.
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    })
}

/// Sandbox pods on a Kubernetes cluster. Connects on first use and tries
/// again on the next call while it cannot.
pub struct KubernetesBackend {
    settings: KubernetesSettings,
    conn: OnceCell<Conn>,
    exits: Arc<exec::Exits>,
    /// Deny-all policies known to exist, as "namespace/name".
    policies: std::sync::Mutex<HashSet<String>>,
    /// The environment of each pod's PID 1 (image and pod), once read.
    env: std::sync::Mutex<HashMap<String, Vec<String>>>,
    /// This instance's id, once announced.
    server_id: std::sync::Mutex<Option<String>>,
    /// Set when this instance's Leases are deleted at shutdown: renewals
    /// stop putting them back.
    retired: Arc<AtomicBool>,
}

impl KubernetesBackend {
    pub fn new(settings: KubernetesSettings) -> Self {
        Self {
            settings,
            conn: OnceCell::new(),
            exits: Arc::default(),
            policies: Default::default(),
            env: Default::default(),
            server_id: Default::default(),
            retired: Arc::default(),
        }
    }

    async fn conn(&self) -> Result<&Conn> {
        self.conn
            .get_or_try_init(|| async { Ok::<_, Error>(self.connect().await?) })
            .await
    }

    async fn connect(&self) -> Result<Conn, KubeError> {
        let s = &self.settings;
        let mut config = client_config(s).await?;
        // Execs (the warden's) and watches stay open and quiet for long.
        config.read_timeout = None;
        let namespace = s
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let lease_namespace = s
            .lease_namespace
            .clone()
            .unwrap_or_else(|| namespace.clone());
        let endpoint = config.cluster_url.to_string();
        let client = Client::try_from(config.clone())
            .map_err(|e| KubeError::from_kube("client", &endpoint, e))?;
        let namespaces = s.all_namespaces(&namespace);
        tracing::info!(%endpoint, %namespace, ?namespaces, %lease_namespace, "kubernetes backend configured");
        Ok(Conn {
            client,
            config,
            namespace,
            namespaces,
            lease_namespace,
            endpoint,
        })
    }

    /// The pods API of the namespace of container `id`, and the pod's name.
    async fn pods_of<'a>(&'a self, id: &'a str) -> Result<(Api<Pod>, &'a str, &'a Conn)> {
        let conn = self.conn().await?;
        let (namespace, name) = split_id(&conn.namespace, id);
        Ok((Api::namespaced(conn.client.clone(), namespace), name, conn))
    }

    async fn policies_api(&self, namespace: &str) -> Result<Api<NetworkPolicy>> {
        let conn = self.conn().await?;
        Ok(Api::namespaced(conn.client.clone(), namespace))
    }

    async fn leases(&self) -> Result<Api<Lease>> {
        let conn = self.conn().await?;
        Ok(Api::namespaced(conn.client.clone(), &conn.lease_namespace))
    }

    /// A pod by container id; `PodGone` if it does not exist.
    async fn get_pod(&self, id: &str) -> Result<Pod> {
        let (pods, name, conn) = self.pods_of(id).await?;
        match pods.get_opt(name).await {
            Ok(Some(pod)) => Ok(pod),
            Ok(None) => Err(KubeError::PodGone { pod: id.into() }.into()),
            Err(e) => Err(KubeError::from_kube("pod get", &conn.endpoint, e).into()),
        }
    }

    /// Makes sure the deny-all policy of `pool` of `server` exists in
    /// `namespace`.
    async fn ensure_policy(&self, namespace: &str, server: &str, pool: &str) -> Result<()> {
        if !self.settings.network_policy_enforced {
            return Err(KubeError::NetworkNotEnforced { pool: pool.into() }.into());
        }
        let name = pod::policy_name(server, pool);
        let key = format!("{namespace}/{name}");
        if lock(&self.policies).contains(&key) {
            return Ok(());
        }
        let api = self.policies_api(namespace).await?;
        match api
            .create(&PostParams::default(), &pod::deny_all(server, pool))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                let endpoint = &self.conn().await?.endpoint;
                return Err(KubeError::from_kube("networkpolicy create", endpoint, e).into());
            }
        }
        lock(&self.policies).insert(key);
        Ok(())
    }

    /// Whether the deny-all policy `name` exists in `namespace` (asked of
    /// the API server when not known).
    async fn policy_exists(&self, namespace: &str, name: &str) -> Result<bool> {
        let key = format!("{namespace}/{name}");
        if lock(&self.policies).contains(&key) {
            return Ok(true);
        }
        let api = self.policies_api(namespace).await?;
        match api.get_opt(name).await {
            Ok(found) => {
                if found.is_some() {
                    lock(&self.policies).insert(key);
                }
                Ok(found.is_some())
            }
            Err(e) => {
                let endpoint = &self.conn().await?.endpoint;
                Err(KubeError::from_kube("networkpolicy get", endpoint, e).into())
            }
        }
    }

    /// Waits until the pod (container id `name`) runs; fails early on what
    /// will not get better.
    async fn wait_running(&self, name: &str, image: &str) -> Result<()> {
        let deadline = Instant::now() + self.settings.ready_timeout();
        let mut delay = Duration::from_millis(10);
        let mut last: String;
        loop {
            let pod = self.get_pod(name).await?;
            if watch::pod_running(&pod) {
                return Ok(());
            }
            if watch::pod_dead(&pod) {
                return Err(KubeError::NotReady {
                    pod: name.into(),
                    detail: format!("it ended: {}", describe(&pod)),
                }
                .into());
            }
            let waiting = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref());
            if let Some(w) = waiting {
                let reason = w.reason.clone().unwrap_or_default();
                let message = w.message.clone().unwrap_or_default();
                match reason.as_str() {
                    "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName"
                    | "ErrImageNeverPull" => {
                        return Err(KubeError::ImagePull {
                            image: image.into(),
                            detail: format!("{reason}: {message}"),
                        }
                        .into());
                    }
                    "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
                        return Err(KubeError::NotReady {
                            pod: name.into(),
                            detail: format!("{reason}: {message}"),
                        }
                        .into());
                    }
                    _ => last = format!("{reason} {message}"),
                }
            } else {
                last = describe(&pod);
            }
            if Instant::now() >= deadline {
                return Err(KubeError::NotReady {
                    pod: name.into(),
                    detail: format!(
                        "not running after {:?} ({last})",
                        self.settings.ready_timeout()
                    ),
                }
                .into());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// Gives the pod's scratch mounts their owner and mode (an emptyDir is
    /// root's, 0777 or 1777): a root exec of the backend's own.
    async fn fix_ownership(&self, name: &str, spec: &ContainerSpec) -> Result<()> {
        let argv = super::Tmpfs::ownership_argv(&spec.tmpfs);
        let out = super::exec_collect(self, name, own_command(argv), None, 64 * 1024).await?;
        if out.success() {
            Ok(())
        } else {
            Err(Error::Engine {
                op: "scratch ownership",
                detail: format!(
                    "setting the owner of the scratch mounts failed with exit code {}: {}",
                    out.exit_code,
                    out.diagnostic()
                ),
            })
        }
    }

    async fn delete_pod(&self, id: &str) -> Result<()> {
        let (pods, name, conn) = self.pods_of(id).await?;
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match pods.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(KubeError::from_kube("pod delete", &conn.endpoint, e).into()),
        }
    }

    /// An exec that the API server refused: a pod that is gone or no longer
    /// runs says so.
    async fn exec_refused(&self, pod: &str, e: kube::Error) -> Error {
        let endpoint = self
            .conn()
            .await
            .map(|c| c.endpoint.clone())
            .unwrap_or_default();
        let mapped = KubeError::from_kube("exec", &endpoint, e);
        if matches!(mapped.code(), Some(400 | 404))
            && !self.container_running(pod).await.unwrap_or(true)
        {
            return KubeError::PodGone { pod: pod.into() }.into();
        }
        mapped.into()
    }
}

/// A command of the backend's own as root, with a fixed environment.
fn own_command(argv: Vec<String>) -> ExecSpec {
    ExecSpec {
        argv,
        env: vec![FIXED_PATH.to_string()],
        user: "0:0".to_string(),
        working_dir: Some("/".to_string()),
        stdin: false,
        privileged: true,
        terminal: None,
    }
}

/// A pod's phase and its container's state, for messages.
fn describe(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".into();
    };
    let mut text = status.phase.clone().unwrap_or_else(|| "Unknown".into());
    if let Some(reason) = &status.reason {
        text.push_str(&format!(" ({reason})"));
    }
    if let Some(state) = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
    {
        if let Some(t) = &state.terminated {
            text.push_str(&format!(
                ", exited {} {}",
                t.exit_code,
                t.reason.clone().unwrap_or_default()
            ));
        }
        if let Some(w) = &state.waiting {
            text.push_str(&format!(", {}", w.reason.clone().unwrap_or_default()));
        }
    }
    text
}

/// Listed pods of `namespace` as containers (ids as `pod::pod_id` makes
/// them, `home` being the backend's own namespace).
fn listed_pods(home: &str, namespace: &str, pods: Vec<Pod>) -> Vec<ListedContainer> {
    pods.into_iter()
        .filter_map(|pod| {
            let running = watch::pod_running(&pod);
            let starting = !running
                && !watch::pod_dead(&pod)
                && pod
                    .status
                    .as_ref()
                    .is_none_or(|s| s.phase.as_deref().is_none_or(|p| p == "Pending"));
            let name = pod.metadata.name.as_deref()?;
            Some(ListedContainer {
                id: pod_id(home, namespace, name),
                labels: pod_labels(&pod),
                running,
                starting,
                created: pod
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(0, |t| t.0.as_second()),
            })
        })
        .collect()
}

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    pod.metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kubernetes
    }

    /// Images are the cluster's business: a pod whose image cannot be
    /// pulled fails `create_container` with `ImageMissing`.
    async fn ensure_image(&self, _image: &str) -> Result<()> {
        Ok(())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let conn = self.conn().await?;
        let namespace = spec.namespace.as_deref().unwrap_or(&conn.namespace);
        // The pool layer admits only the operator's namespaces; this keeps
        // it so for any caller of the backend, and keeps every pod where
        // the lookups by label find it.
        if !conn.namespaces.iter().any(|n| n == namespace) {
            return Err(KubeError::NamespaceNotAllowed {
                namespace: namespace.to_string(),
                allowed: conn.namespaces.join(", "),
            }
            .into());
        }
        let pods: Api<Pod> = Api::namespaced(conn.client.clone(), namespace);
        let server = spec.labels.get(LABEL_SERVER).cloned().unwrap_or_default();
        let pool = spec.labels.get(LABEL_POOL).cloned().unwrap_or_default();
        let isolated = spec.network == "none";
        if isolated {
            // The policy selects the pod before it exists: it never has a
            // network.
            self.ensure_policy(namespace, &server, &pool).await?;
        }
        let name = pod::pod_name(&spec.name);
        let id = pod_id(&conn.namespace, namespace, &name);
        let manifest = pod::pod(spec, &self.settings, &name, isolated)?;
        let started = Instant::now();
        pods.create(&PostParams::default(), &manifest)
            .await
            .map_err(|e| KubeError::from_kube("pod create", &conn.endpoint, e))?;
        let ready = match self.wait_running(&id, &spec.image).await {
            Ok(()) => self.fix_ownership(&id, spec).await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            let _ = self.delete_pod(&id).await;
            return Err(e);
        }
        tracing::debug!(pod = %id, elapsed = ?started.elapsed(), "pod running");
        Ok(id)
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        lock(&self.env).remove(id);
        self.delete_pod(id).await
    }

    async fn container_running(&self, id: &str) -> Result<bool> {
        match self.get_pod(id).await {
            Ok(pod) => Ok(watch::pod_running(&pod)),
            Err(Error::ContainerGone { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Pods in every namespace the backend uses (one list call each).
    async fn list_containers(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<ListedContainer>> {
        let conn = self.conn().await?;
        let selector = match value {
            Some(v) => format!("{label}={v}"),
            None => label.to_string(),
        };
        let mut found = Vec::new();
        for namespace in &conn.namespaces {
            let pods: Api<Pod> = Api::namespaced(conn.client.clone(), namespace);
            let listed = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| KubeError::from_kube("pod list", &conn.endpoint, e))?;
            found.extend(listed_pods(&conn.namespace, namespace, listed.items));
        }
        Ok(found)
    }

    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<Exec> {
        let argv = exec::command(&spec)?;
        let (pods, name, _) = self.pods_of(container_id).await?;
        // With a terminal the API server refuses a separate stderr: the
        // terminal is the one stream.
        let params = AttachParams::default()
            .container(CONTAINER)
            .stdin(spec.stdin)
            .stdout(true)
            .stderr(spec.terminal.is_none())
            .tty(spec.terminal.is_some());
        let mut process = match pods.exec(name, argv, &params).await {
            Ok(process) => process,
            Err(e) => return Err(self.exec_refused(container_id, e).await),
        };
        let id = self.exits.register(container_id);
        let stdin = if spec.stdin {
            process.stdin().map(|w| Box::pin(w) as ExecStdin)
        } else {
            None
        };
        let output =
            exec::output_stream(process.stdout(), process.stderr(), container_id.to_string());
        let resize = match (spec.terminal, process.terminal_size()) {
            (Some(size), Some(sender)) => Some(exec::terminal_resizer(size, sender).await),
            _ => None,
        };
        let status = process.take_status();
        let exits = Arc::clone(&self.exits);
        let exec_id = id.clone();
        tokio::spawn(async move {
            let status = match status {
                Some(status) => status.await,
                None => None,
            };
            exits.finish(&exec_id, status);
            // Let the connection close; a server that keeps it open past
            // the status is cut off.
            let _ = tokio::time::timeout(EXEC_CLOSE_TIMEOUT, process.join()).await;
        });
        Ok(Exec {
            id,
            stdin,
            output,
            resize,
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        match self.exits.take(exec_id) {
            Ok(code) => Ok(code),
            Err(exec::NoExit::Unknown) => Err(Error::Engine {
                op: "exec status",
                detail: format!("no exec {exec_id} (or its exit code was taken already)"),
            }),
            Err(exec::NoExit::Broken { why, pod }) => {
                if !self.container_running(&pod).await.unwrap_or(true) {
                    return Err(KubeError::PodGone { pod }.into());
                }
                Err(Error::Engine {
                    op: "exec status",
                    detail: format!("exec {exec_id} in pod {pod}: {why}"),
                })
            }
        }
    }

    /// `None`: the pod's pool's deny-all policy selects it (it is created
    /// if missing). A network: the policy no longer selects it, and it has
    /// the cluster's pod network (Kubernetes has no other to offer).
    async fn set_network(&self, container_id: &str, network: Option<&str>) -> Result<()> {
        let pod = self.get_pod(container_id).await?;
        let labels = pod_labels(&pod);
        let isolated = network.is_none();
        let (pods, name, conn) = self.pods_of(container_id).await?;
        if isolated {
            let server = labels.get(LABEL_SERVER).cloned().unwrap_or_default();
            let pool = labels.get(LABEL_POOL).cloned().unwrap_or_default();
            let (namespace, _) = split_id(&conn.namespace, container_id);
            self.ensure_policy(namespace, &server, &pool).await?;
        }
        let patch = serde_json::json!({
            "metadata": { "labels": { LABEL_ISOLATED: isolated.to_string() } }
        });
        pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => KubeError::PodGone {
                    pod: container_id.into(),
                },
                e => KubeError::from_kube("pod label", &conn.endpoint, e),
            })?;
        Ok(())
    }

    /// Networks: none when the pod is labelled isolated and its pool's
    /// deny-all policy exists, else the pod network. Environment: what the
    /// pod's PID 1 started with (image and pod), read once by a root exec.
    async fn inspect(&self, container_id: &str) -> Result<ContainerInfo> {
        let pod = self.get_pod(container_id).await?;
        let labels = pod_labels(&pod);
        let home = &self.conn().await?.namespace;
        let (namespace, _) = split_id(home, container_id);
        let isolated = labels.get(LABEL_ISOLATED).map(String::as_str) == Some("true")
            && self
                .policy_exists(
                    namespace,
                    &pod::policy_name(
                        labels.get(LABEL_SERVER).map_or("", String::as_str),
                        labels.get(LABEL_POOL).map_or("", String::as_str),
                    ),
                )
                .await?;
        let networks = if isolated {
            Vec::new()
        } else {
            vec![POD_NETWORK.to_string()]
        };
        let cached = lock(&self.env).get(container_id).cloned();
        let env = match cached {
            Some(env) => env,
            None => {
                let argv = vec!["/bin/cat".to_string(), "/proc/1/environ".to_string()];
                let out = super::exec_collect(self, container_id, own_command(argv), None, 1 << 20)
                    .await?;
                if !out.success() {
                    return Err(Error::Engine {
                        op: "inspect",
                        detail: format!("reading the pod's environment: {}", out.diagnostic()),
                    });
                }
                let env: Vec<String> = out
                    .stdout
                    .split(|b| *b == 0)
                    .filter(|e| !e.is_empty())
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .collect();
                lock(&self.env).insert(container_id.to_string(), env.clone());
                env
            }
        };
        Ok(ContainerInfo { networks, env })
    }

    /// By the RuntimeClass a pod gets (the pool's, else the backend's
    /// default): its name, as reading its handler would need a cluster-wide
    /// permission the server otherwise does without.
    async fn runs_on_gvisor(&self, runtime: Option<&str>) -> Result<bool> {
        Ok(runtime
            .or(self.settings.runtime_class.as_deref())
            .is_some_and(crate::spec::names_gvisor))
    }

    async fn ping(&self) -> Result<()> {
        let conn = self.conn().await?;
        conn.client
            .apiserver_version()
            .await
            .map(|_| ())
            .map_err(|e| Error::Unreachable {
                backend: BackendKind::Kubernetes,
                endpoint: conn.endpoint.clone(),
                detail: e.to_string(),
            })
    }

    async fn events(&self, label: &str) -> Result<BoxStream<'static, Result<ContainerEvent>>> {
        let conn = self.conn().await?;
        watch::events(
            conn.config.clone(),
            conn.namespace.clone(),
            conn.namespaces.clone(),
            conn.lease_namespace.clone(),
            label.to_string(),
        )
        .await
    }

    /// A Lease of this instance, renewed while the returned hold lives.
    async fn announce(&self, server_id: &str, _image: &str) -> Result<Liveness> {
        *lock(&self.server_id) = Some(server_id.to_string());
        let api = self.leases().await?;
        let name = format!(
            "sandpool-{}-{:08x}",
            pod::pod_name(server_id),
            rand::random::<u32>()
        );
        let renewal = lease::Renewal::start(
            api,
            name.clone(),
            server_id.to_string(),
            Arc::clone(&self.retired),
        )
        .await
        .map_err(|e| {
            let endpoint = self
                .conn
                .get()
                .map(|c| c.endpoint.clone())
                .unwrap_or_default();
            KubeError::from_kube("lease create", &endpoint, e)
        })?;
        Ok(Liveness {
            id: name,
            hold: Box::new(renewal),
        })
    }

    async fn dead_instances(&self) -> Result<Vec<String>> {
        let listed = self.list_containers(LABEL_SERVER, None).await?;
        let mut newest: HashMap<String, i64> = HashMap::new();
        for c in &listed {
            if let Some(id) = c.labels.get(LABEL_SERVER) {
                let t = newest.entry(id.clone()).or_insert(c.created);
                *t = (*t).max(c.created);
            }
        }
        let api = self.leases().await?;
        let leases = api
            .list(&ListParams::default().labels(super::LABEL_MARKER))
            .await
            .map_err(|e| {
                let endpoint = self
                    .conn
                    .get()
                    .map(|c| c.endpoint.clone())
                    .unwrap_or_default();
                KubeError::from_kube("lease list", &endpoint, e)
            })?
            .items;
        let now = lease::now_secs();
        let mut dead = lease::dead(&newest, &leases, now);
        // Instances with nothing left but run-out Leases (and maybe
        // policies): reported too, so their objects go.
        for id in lease::expired(&leases, now) {
            if !dead.contains(&id) {
                dead.push(id);
            }
        }
        Ok(dead)
    }

    /// Removes what else an instance left besides pods: its NetworkPolicies
    /// and its Leases.
    async fn forget_instance(&self, server_id: &str) -> Result<()> {
        if lock(&self.server_id).as_deref() == Some(server_id) {
            self.retired.store(true, Ordering::Relaxed);
        }
        let conn = self.conn().await?;
        let endpoint = conn.endpoint.clone();
        for namespace in &conn.namespaces {
            let api = self.policies_api(namespace).await?;
            let listed = api
                .list(&ListParams::default().labels(&format!("{LABEL_SERVER}={server_id}")))
                .await
                .map_err(|e| KubeError::from_kube("networkpolicy list", &endpoint, e))?;
            for p in listed.items {
                if let Some(name) = p.metadata.name {
                    lock(&self.policies).remove(&format!("{namespace}/{name}"));
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                }
            }
        }
        lease::delete_all(&self.leases().await?, server_id)
            .await
            .map_err(|e| KubeError::from_kube("lease delete", &endpoint, e))?;
        Ok(())
    }
}
