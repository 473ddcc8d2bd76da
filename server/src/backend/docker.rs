//! The Docker engine API through bollard. Podman's Docker-compatible service
//! speaks the same API, so one implementation serves both.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use bollard::{
    Docker,
    errors::Error as BollardError,
    exec::{StartExecOptions, StartExecResults},
    models::{
        ContainerCreateBody, ExecConfig, HostConfig, NetworkConnectRequest,
        NetworkDisconnectRequest, ResourcesUlimits,
    },
    query_parameters::{
        AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
        EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
        RemoveContainerOptionsBuilder, StartContainerOptions,
    },
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use super::{
    Backend, BackendKind, ContainerEvent, ContainerEventKind, ContainerInfo, ContainerSpec, Error,
    Exec, ExecSpec, LABEL_MARKER, LABEL_SERVER, ListedContainer, Liveness, Output, Result,
    TerminalResize, TerminalSize, Tmpfs,
    privilege::{self, Mode, Privileges},
};
use crate::spec::names_gvisor;

/// A marker younger than this that has not started yet is starting, not
/// dead (one that ran and exited is dead at once).
const MARKER_STARTUP_GRACE_SECS: i64 = 60;

/// How long a pull may take before the image counts as missing. No registry
/// may be reachable at all, so this must fail in reasonable time.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);
/// Engine calls other than attached execs must answer within this.
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// Read buffer of an attached exec's output.
const EXEC_READ_CAPACITY: usize = 64 * 1024;
/// The environment of the engine-side commands of the backend itself.
const FIXED_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// A Docker (or Podman) engine reached over its local socket. Connects on
/// first use and retries on the next call while the engine cannot be reached,
/// so a server started before its engine recovers by itself.
pub struct DockerBackend {
    kind: BackendKind,
    endpoint: String,
    docker: OnceCell<Docker>,
    privileges: Privileges,
    /// Held by the creation that learns a runtime's privilege mode (see
    /// `create_container`).
    learning: tokio::sync::Mutex<()>,
}

impl DockerBackend {
    fn at(&self) -> EngineAt {
        EngineAt {
            kind: self.kind,
            endpoint: self.endpoint.clone(),
        }
    }

    pub fn new(kind: BackendKind, endpoint: impl Into<String>) -> Self {
        Self {
            kind,
            endpoint: endpoint.into(),
            docker: OnceCell::new(),
            privileges: Privileges::default(),
            learning: tokio::sync::Mutex::new(()),
        }
    }

    /// The connected client. Agrees on an API version first, so that older
    /// engines (Docker 20.10 speaks API 1.41) work.
    pub async fn client(&self) -> Result<&Docker> {
        self.docker
            .get_or_try_init(|| async {
                let unreachable = |detail: String| Error::Unreachable {
                    backend: self.kind,
                    endpoint: self.endpoint.clone(),
                    detail,
                };
                let endpoint = self.endpoint.as_str();
                let version = bollard::API_DEFAULT_VERSION;
                let docker = if endpoint.starts_with("http://") || endpoint.starts_with("tcp://") {
                    Docker::connect_with_http(endpoint, REQUEST_TIMEOUT_SECS, version)
                } else {
                    Docker::connect_with_unix(endpoint, REQUEST_TIMEOUT_SECS, version)
                }
                .map_err(|e| unreachable(e.to_string()))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| unreachable(e.to_string()))
            })
            .await
    }

    /// Sets a new exec's terminal to its first size (the engine starts it at
    /// 0x0, or 80x24) and returns the sender that resizes it later, each
    /// resize an API call in a task that lives as long as the sender.
    async fn terminal_resizer(&self, exec_id: &str, size: TerminalSize) -> Result<TerminalResize> {
        let docker = self.client().await?.clone();
        let resize = |docker: Docker, id: String, size: TerminalSize| async move {
            let options = bollard::exec::ResizeExecOptions {
                height: size.rows,
                width: size.columns,
            };
            docker.resize_exec(&id, options).await
        };
        // An exec that already ended cannot be resized: not an error here.
        if let Err(e) = resize(docker.clone(), exec_id.to_string(), size).await {
            tracing::debug!(exec = exec_id, error = %e, "could not size the terminal");
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<super::Resize>();
        let id = exec_id.to_string();
        tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                if let Err(e) = resize(docker.clone(), id.clone(), request.size).await {
                    tracing::debug!(exec = %id, error = %e, "could not resize the terminal");
                }
                drop(request.done);
            }
        });
        Ok(tx)
    }

    /// Tmpfs options in the engine's dialect. Docker mounts tmpfs `noexec`
    /// unless told otherwise, and takes uid/gid and mode.
    fn tmpfs_options(&self, mounts: &[Tmpfs]) -> HashMap<String, String> {
        mounts
            .iter()
            .map(|m| {
                let mut options = format!("rw,exec,nosuid,nodev,size={}", m.size_bytes);
                match (m.owner, self.kind) {
                    (Some((uid, gid)), BackendKind::Docker) => {
                        options.push_str(&format!(",mode={:o},uid={uid},gid={gid}", m.mode));
                    }
                    // Podman takes neither uid/gid nor (4.3) mode on tmpfs:
                    // `fix_ownership` sets both after start.
                    (Some(_), _) => {}
                    (None, _) => options.push_str(&format!(",mode={:o}", m.mode)),
                }
                (m.path.clone(), options)
            })
            .collect()
    }

    /// Podman cannot set a tmpfs's owner or mode at mount time, so they are set
    /// once, right after start, by a root exec with the capabilities to chown
    /// (the container itself keeps none). Docker needs nothing here.
    async fn fix_ownership(&self, id: &str, mounts: &[Tmpfs]) -> Result<()> {
        if self.kind == BackendKind::Docker {
            return Ok(());
        }
        let argv = Tmpfs::ownership_argv(mounts);
        let (code, output) = self.privileged_command(id, argv).await?;
        match code {
            0 => Ok(()),
            code => Err(Error::Engine {
                op: "tmpfs ownership",
                detail: format!(
                    "setting the owner of the writable mounts failed with exit code {code}: {}",
                    String::from_utf8_lossy(&output).trim()
                ),
            }),
        }
    }

    /// Runs a fixed command of the backend's own as a privileged exec, with a
    /// fixed environment; returns its exit code and output.
    async fn privileged_command(&self, id: &str, argv: Vec<String>) -> Result<(i64, Vec<u8>)> {
        let docker = self.client().await?;
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv),
            env: Some(vec![FIXED_PATH.to_string()]),
            user: Some("0:0".to_string()),
            privileged: Some(true),
            ..Default::default()
        };
        let exec = docker
            .create_exec(id, config)
            .await
            .map_err(|e| self.at().container_error("exec create", id, e))?;
        let mut collected = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.at().container_error("exec start", id, e))?
        {
            while let Some(item) = output.next().await {
                if let Ok(chunk) = item
                    && collected.len() < 64 * 1024
                {
                    collected.extend_from_slice(&chunk.into_bytes());
                }
            }
        }
        let code = super::wait_exit_code(self, &exec.id).await?;
        Ok((code, collected))
    }

    /// Whether this container's runtime grants privileged execs, learned
    /// from it if nobody knows yet (see `privilege`).
    async fn probe_privileged_exec(&self, id: &str, runtime: &Option<String>) -> Result<Mode> {
        let (code, output) = self
            .privileged_command(id, vec!["/bin/true".to_string()])
            .await?;
        let mode = if code == 0 {
            Mode::PrivilegedExec
        } else if privilege::refused(code, &output) {
            Mode::RootExec
        } else {
            return Err(Error::Engine {
                op: "privileged exec",
                detail: format!(
                    "a privileged /bin/true failed with exit code {code}: {}",
                    String::from_utf8_lossy(&output).trim()
                ),
            });
        };
        self.privileges.learn(runtime, mode);
        Ok(mode)
    }

    /// Creates and starts a container; with `root_exec`, for root execs
    /// with the helper's capabilities (see `privilege`).
    async fn create_started(&self, spec: &ContainerSpec, root_exec: bool) -> Result<String> {
        let root_exec = root_exec && !spec.helper_caps.is_empty();
        let host_config = HostConfig {
            memory: spec.memory_bytes,
            // Swap would let a container exceed its memory limit on disk.
            memory_swap: spec.memory_bytes,
            nano_cpus: spec.nano_cpus,
            cpu_period: spec.cpu_period,
            cpu_quota: spec.cpu_quota,
            pids_limit: spec.pids_limit,
            ulimits: spec.nproc_limit.map(|n| {
                vec![ResourcesUlimits {
                    name: Some("nproc".to_string()),
                    soft: Some(n),
                    hard: Some(n),
                }]
            }),
            network_mode: Some(spec.network.clone()),
            readonly_rootfs: Some(spec.read_only_root),
            tmpfs: Some(self.tmpfs_options(&spec.tmpfs)),
            runtime: spec.oci_runtime.clone(),
            cap_drop: Some(vec!["ALL".to_string()]),
            cap_add: root_exec.then(|| spec.helper_caps.clone()),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            // An init as PID 1 reaps orphans and makes stop instant.
            init: Some(true),
            ..Default::default()
        };
        let user = if root_exec {
            "0:0".to_string()
        } else {
            spec.main_user.clone()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            // Whatever the image's entrypoint, the container just idles; all
            // work arrives through exec.
            entrypoint: Some(vec!["sleep".to_string()]),
            cmd: Some(vec!["infinity".to_string()]),
            user: Some(user),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            working_dir: Some("/".to_string()),
            host_config: Some(host_config),
            stop_signal: Some("SIGKILL".to_string()),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .client()
            .await?
            .create_container(Some(options), body)
            .await
            .map_err(|e| match status_of(&e) {
                Some(404) => Error::ImageMissing {
                    image: spec.image.clone(),
                    detail: e.to_string(),
                },
                _ => self.at().engine_error("container create", e),
            })?;
        if root_exec {
            self.privileges.made_for_root_exec(&created.id);
        }
        let started = self
            .client()
            .await?
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.at().engine_error("container start", e));
        let ready = match started {
            Ok(()) => self.fix_ownership(&created.id, &spec.tmpfs).await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            // Do not leave a created-but-dead container behind.
            let _ = self.remove_container(&created.id).await;
            return Err(e);
        }
        Ok(created.id)
    }

    /// The engine endpoint from the environment, as the engine's own CLI
    /// would pick it.
    pub fn default_endpoint(kind: BackendKind) -> String {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match kind {
            BackendKind::Podman => from_env("CONTAINER_HOST")
                .or_else(|| {
                    let rootful = "/run/podman/podman.sock";
                    if std::path::Path::new(rootful).exists() {
                        return Some(format!("unix://{rootful}"));
                    }
                    from_env("XDG_RUNTIME_DIR")
                        .map(|dir| format!("unix://{dir}/podman/podman.sock"))
                })
                .unwrap_or_else(|| "unix:///run/podman/podman.sock".to_string()),
            _ => {
                from_env("DOCKER_HOST").unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
            }
        }
    }
}

fn status_of(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Where the engine is: what an error that says it cannot be reached names.
#[derive(Clone)]
struct EngineAt {
    kind: BackendKind,
    endpoint: String,
}

impl EngineAt {
    /// Maps an engine error on a container to `ContainerGone` where it means
    /// the container no longer exists or no longer runs.
    fn container_error(&self, op: &'static str, id: &str, err: BollardError) -> Error {
        match &err {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => Error::ContainerGone { id: id.to_string() },
            BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            } if message.contains("not running") || message.contains("is paused") => {
                Error::ContainerGone { id: id.to_string() }
            }
            _ => self.engine_error(op, err),
        }
    }

    /// An engine call that failed. One that could not even connect (the
    /// engine is down or restarting) says so: callers treat that as an
    /// outage, not as a fault of the container they asked about.
    fn engine_error(&self, op: &'static str, err: BollardError) -> Error {
        let unreachable = match &err {
            BollardError::HyperLegacyError { err } => err.is_connect(),
            BollardError::SocketNotFoundError(_) => true,
            _ => false,
        };
        if unreachable {
            Error::Unreachable {
                backend: self.kind,
                endpoint: self.endpoint.clone(),
                detail: format!("{op}: {err}"),
            }
        } else {
            Error::Engine {
                op,
                detail: err.to_string(),
            }
        }
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn removal_events_late(&self) -> bool {
        self.kind == BackendKind::Podman
    }

    async fn ensure_image(&self, image: &str) -> Result<()> {
        match self.client().await?.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(self.at().engine_error("image inspect", e)),
        }
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let pull = self
            .client()
            .await?
            .create_image(Some(options), None, None)
            .try_for_each(|_| async { Ok(()) });
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::ImageMissing {
                image: image.to_string(),
                detail: e.to_string(),
            }),
            Err(_) => Err(Error::ImageMissing {
                image: image.to_string(),
                detail: format!("pull did not finish within {}s", PULL_TIMEOUT.as_secs()),
            }),
        }
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let runtime = &spec.oci_runtime;
        let mut mode = self.privileges.mode(runtime);
        // One creation learns the runtime's mode; the others wait for it
        // instead of each making a container the probe may have to throw
        // away (a pool of 10 warming on a fresh server was created twice).
        let learning = if mode == Mode::Unknown && !spec.helper_caps.is_empty() {
            let guard = self.learning.lock().await;
            mode = self.privileges.mode(runtime);
            (mode == Mode::Unknown).then_some(guard)
        } else {
            None
        };
        let id = self.create_started(spec, mode == Mode::RootExec).await?;
        if spec.helper_caps.is_empty() || mode != Mode::Unknown {
            return Ok(id);
        }
        let probed = self.probe_privileged_exec(&id, runtime).await;
        drop(learning);
        match probed {
            Ok(Mode::RootExec) => {
                self.remove_container(&id).await?;
                // A name of its own: the first one's may still be taken
                // while the engine finishes removing it.
                let again = ContainerSpec {
                    name: format!("{}-r", spec.name),
                    ..spec.clone()
                };
                self.create_started(&again, true).await
            }
            Ok(_) => Ok(id),
            Err(e) => {
                let _ = self.remove_container(&id).await;
                Err(e)
            }
        }
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.privileges.forget(id);
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self
            .client()
            .await?
            .remove_container(id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            // "removal already in progress" means someone else finishes it.
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(self.at().engine_error("container remove", e)),
        }
    }

    async fn container_running(&self, id: &str) -> Result<bool> {
        match self
            .client()
            .await?
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => Ok(info.state.and_then(|s| s.running).unwrap_or(false)),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.at().engine_error("container inspect", e)),
        }
    }

    async fn list_containers(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<ListedContainer>> {
        let filter = match value {
            Some(v) => format!("{label}={v}"),
            None => label.to_string(),
        };
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("label".to_string(), vec![filter])]))
            .build();
        let found = self
            .client()
            .await?
            .list_containers(Some(options))
            .await
            .map_err(|e| self.at().engine_error("container list", e))?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                Some(ListedContainer {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                    running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
                    starting: c.state == Some(bollard::models::ContainerSummaryStateEnum::CREATED),
                    created: c.created.unwrap_or(0),
                })
            })
            .collect())
    }

    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<Exec> {
        let (user, privileged) = if !spec.privileged {
            (spec.user, false)
        } else if self.privileges.uses_root_exec(container_id) {
            ("0:0".to_string(), false)
        } else {
            ("0:0".to_string(), true)
        };
        let config = ExecConfig {
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(spec.terminal.is_some()),
            env: Some(spec.env),
            cmd: Some(spec.argv),
            user: Some(user),
            privileged: Some(privileged),
            working_dir: spec.working_dir,
            ..Default::default()
        };
        let created = self
            .client()
            .await?
            .create_exec(container_id, config)
            .await
            .map_err(|e| self.at().container_error("exec create", container_id, e))?;
        let options = StartExecOptions {
            detach: false,
            tty: spec.terminal.is_some(),
            output_capacity: Some(EXEC_READ_CAPACITY),
        };
        match self
            .client()
            .await?
            .start_exec(&created.id, Some(options))
            .await
            .map_err(|e| self.at().container_error("exec start", container_id, e))?
        {
            StartExecResults::Attached { output, input } => {
                let container = container_id.to_string();
                let at = self.at();
                let output = output
                    .filter_map(move |item| {
                        let mapped = match item {
                            Ok(bollard::container::LogOutput::StdOut { message }) => {
                                Some(Ok(Output::Stdout(message)))
                            }
                            Ok(bollard::container::LogOutput::StdErr { message }) => {
                                Some(Ok(Output::Stderr(message)))
                            }
                            // A terminal's one stream.
                            Ok(bollard::container::LogOutput::Console { message }) => {
                                Some(Ok(Output::Stdout(message)))
                            }
                            Ok(_) => None,
                            Err(e) => Some(Err(at.container_error("exec output", &container, e))),
                        };
                        futures::future::ready(mapped)
                    })
                    .boxed();
                let resize = match spec.terminal {
                    Some(size) => Some(self.terminal_resizer(&created.id, size).await?),
                    None => None,
                };
                Ok(Exec {
                    id: created.id,
                    stdin: spec.stdin.then_some(input),
                    output,
                    resize,
                })
            }
            StartExecResults::Detached => Err(Error::Engine {
                op: "exec start",
                detail: "engine started the exec detached although attach was asked".into(),
            }),
        }
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        let info = self
            .client()
            .await?
            .inspect_exec(exec_id)
            .await
            .map_err(|e| self.at().engine_error("exec inspect", e))?;
        if info.running.unwrap_or(false) {
            return Ok(None);
        }
        Ok(info.exit_code)
    }

    async fn set_network(&self, container_id: &str, network: Option<&str>) -> Result<()> {
        match network {
            Some(name) => self
                .client()
                .await?
                .connect_network(
                    name,
                    NetworkConnectRequest {
                        container: container_id.to_string(),
                        endpoint_config: None,
                    },
                )
                .await
                .map_err(|e| {
                    self.at()
                        .container_error("network connect", container_id, e)
                }),
            None => {
                for name in self.inspect(container_id).await?.networks {
                    self.client()
                        .await?
                        .disconnect_network(
                            &name,
                            NetworkDisconnectRequest {
                                container: container_id.to_string(),
                                force: Some(true),
                            },
                        )
                        .await
                        .map_err(|e| {
                            self.at()
                                .container_error("network disconnect", container_id, e)
                        })?;
                }
                Ok(())
            }
        }
    }

    async fn inspect(&self, container_id: &str) -> Result<ContainerInfo> {
        let info = self
            .client()
            .await?
            .inspect_container(container_id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| {
                self.at()
                    .container_error("container inspect", container_id, e)
            })?;
        let networks = info
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        Ok(ContainerInfo {
            networks: networks.into_keys().filter(|n| n != "none").collect(),
            env: info.config.and_then(|c| c.env).unwrap_or_default(),
        })
    }

    async fn ping(&self) -> Result<()> {
        self.client()
            .await?
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| Error::Unreachable {
                backend: self.kind,
                endpoint: self.endpoint.clone(),
                detail: e.to_string(),
            })
    }

    async fn runs_on_gvisor(&self, runtime: Option<&str>) -> Result<bool> {
        let info = self
            .client()
            .await?
            .info()
            .await
            .map_err(|e| self.at().engine_error("info", e))?;
        Ok(gvisor_in(&info, runtime))
    }

    async fn events(
        &self,
        label: &str,
    ) -> Result<futures::stream::BoxStream<'static, Result<ContainerEvent>>> {
        // No label filter: Podman's matches nothing when given a label's
        // name alone. The label is checked here instead (the event filter
        // keeps the stream to deaths and removals).
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            // `kill` comes first: `docker rm -f` and `docker kill` send it
            // before the process is even gone, so the pool hears of the
            // death well before the command that caused it returns. Podman
            // matches this filter against its own names (`died`, `remove`)
            // though it reports them as `die` and `remove`: without those
            // names, a Podman pool heard of no removal at all. Each engine
            // ignores the names it does not have.
            (
                "event".to_string(),
                ["kill", "die", "died", "destroy", "remove"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        // The stream is read on a thread of its own, with a connection of its
        // own: an event is in the channel as soon as the engine sends it,
        // however busy the server's runtime is, so a pool that asks "anything
        // new?" before handing out a container sees it (see
        // `EngineHealth::catch_up`).
        let endpoint = self.endpoint.clone();
        let kind = self.kind;
        let label = label.to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("sandpool-{kind}-events"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Engine {
                            op: "events",
                            detail: e.to_string(),
                        }));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let own = DockerBackend::new(kind, endpoint);
                    let docker = match own.client().await {
                        Ok(docker) => docker.clone(),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let mut events = docker.events(Some(options));
                    let forward = async {
                        while let Some(item) = events.next().await {
                            let mapped = match item {
                                Err(e) => Some(Err(own.at().engine_error("events", e))),
                                Ok(message) => container_event(message)
                                    .filter(|e| e.labels.contains_key(&label))
                                    .map(Ok),
                            };
                            if let Some(event) = mapped
                                && tx.send(event).is_err()
                            {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = forward => {}
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| Error::Engine {
                op: "events",
                detail: e.to_string(),
            })?;
        match ready.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Engine {
                    op: "events",
                    detail: "the event reader ended before it started".into(),
                });
            }
        }
        let stream = futures::stream::unfold((rx, stop), |(mut rx, stop)| async move {
            rx.recv().await.map(|event| (event, (rx, stop)))
        });
        Ok(stream.boxed())
    }

    async fn announce(&self, server_id: &str, image: &str) -> Result<Liveness> {
        let docker = self.client().await?;
        // A fresh name each time: a new marker is up before an old one (of a
        // broken connection) goes, so the instance never looks dead.
        let name = format!(
            "sandpool-marker-{}-{:08x}",
            container_name_part(server_id),
            rand::random::<u32>()
        );
        let labels = HashMap::from([
            (LABEL_SERVER.to_string(), server_id.to_string()),
            (LABEL_MARKER.to_string(), "true".to_string()),
        ]);
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            // `cat` ends when its standard input does: when the engine closes
            // it because our attached connection is gone.
            entrypoint: Some(vec!["cat".to_string()]),
            cmd: Some(Vec::new()),
            user: Some("65534:65534".to_string()),
            labels: Some(labels),
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".to_string()]),
                security_opt: Some(vec!["no-new-privileges".to_string()]),
                memory: Some(16 << 20),
                pids_limit: Some(8),
                ..Default::default()
            }),
            stop_signal: Some("SIGKILL".to_string()),
            ..Default::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| match status_of(&e) {
                Some(404) => Error::ImageMissing {
                    image: image.to_string(),
                    detail: e.to_string(),
                },
                _ => self.at().engine_error("marker create", e),
            })?;
        let attached = async {
            let options = AttachContainerOptionsBuilder::default()
                .stdin(true)
                .stream(true)
                .build();
            let attached = docker
                .attach_container(&created.id, Some(options))
                .await
                .map_err(|e| self.at().engine_error("marker attach", e))?;
            docker
                .start_container(&created.id, None::<StartContainerOptions>)
                .await
                .map_err(|e| self.at().engine_error("marker start", e))?;
            Ok::<_, Error>(attached.input)
        }
        .await;
        match attached {
            Ok(input) => Ok(Liveness {
                id: created.id,
                hold: Box::new(std::sync::Mutex::new(input)),
            }),
            Err(e) => {
                let _ = self.remove_container(&created.id).await;
                Err(e)
            }
        }
    }

    async fn dead_instances(&self) -> Result<Vec<String>> {
        let all = self.list_containers(LABEL_SERVER, None).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut instances: HashMap<String, bool> = HashMap::new();
        for c in &all {
            let Some(id) = c.labels.get(LABEL_SERVER) else {
                continue;
            };
            let alive = instances.entry(id.clone()).or_insert(false);
            if c.labels.contains_key(LABEL_MARKER)
                && (c.running || (c.starting && now - c.created < MARKER_STARTUP_GRACE_SECS))
            {
                *alive = true;
            }
        }
        Ok(instances
            .into_iter()
            .filter_map(|(id, alive)| (!alive).then_some(id))
            .collect())
    }
}

/// Whether the engine's runtime `runtime` (`None`: its default) runs
/// gVisor, by the binary the engine runs for it (an operator may register
/// `runsc` under any name, or make it the default). Docker and Podman both
/// list their runtimes' binaries; one the engine does not list goes by its
/// name.
fn gvisor_in(info: &bollard::models::SystemInfo, runtime: Option<&str>) -> bool {
    let Some(name) = runtime.or(info.default_runtime.as_deref()) else {
        return false;
    };
    let binary = info
        .runtimes
        .as_ref()
        .and_then(|runtimes| runtimes.get(name))
        .and_then(|r| r.path.as_deref());
    match binary {
        Some(path) => names_gvisor(path.rsplit('/').next().unwrap_or(path)),
        None => names_gvisor(name),
    }
}

/// A lifecycle event of the engine as ours, if it is one we follow.
fn container_event(message: bollard::models::EventMessage) -> Option<ContainerEvent> {
    let kind = match message.action.as_deref() {
        Some("kill" | "die" | "died") => ContainerEventKind::Died,
        // Docker's name, then Podman's.
        Some("destroy" | "remove") => ContainerEventKind::Removed,
        _ => return None,
    };
    let actor = message.actor.unwrap_or_default();
    Some(ContainerEvent {
        id: actor.id?,
        labels: actor.attributes.unwrap_or_default(),
        kind,
    })
}

/// `text` in the characters a container name allows.
fn container_name_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{Runtime, SystemInfo};

    fn engine(default: &str, runtimes: &[(&str, &str)]) -> SystemInfo {
        SystemInfo {
            default_runtime: Some(default.to_string()),
            runtimes: Some(
                runtimes
                    .iter()
                    .map(|(name, path)| {
                        let runtime = Runtime {
                            path: Some(path.to_string()),
                            ..Default::default()
                        };
                        (name.to_string(), runtime)
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn gvisor_is_known_by_the_binary_the_engine_runs() {
        let info = engine(
            "runc",
            &[
                ("runc", "runc"),
                ("runsc", "/usr/bin/runsc"),
                ("isolated", "/usr/local/bin/runsc"),
                ("runsc-kata", "/opt/kata/bin/kata-runtime"),
            ],
        );
        assert!(!gvisor_in(&info, None));
        assert!(!gvisor_in(&info, Some("runc")));
        assert!(gvisor_in(&info, Some("runsc")));
        // Another name for gVisor's binary, and a gVisor-like name for
        // another runtime: the binary decides.
        assert!(gvisor_in(&info, Some("isolated")));
        assert!(!gvisor_in(&info, Some("runsc-kata")));
        // The engine's default runtime, when a pool names none.
        assert!(gvisor_in(
            &engine("isolated", &[("isolated", "/usr/bin/runsc")]),
            None
        ));
        // An engine that lists no runtimes: the name decides.
        let silent = SystemInfo::default();
        assert!(gvisor_in(&silent, Some("runsc")));
        assert!(!gvisor_in(&silent, Some("crun")));
        assert!(!gvisor_in(&silent, None));
    }
}
