//! Container engines. A backend creates, execs into and removes containers;
//! it knows nothing of pools, leases or languages.

mod docker;
/// An in-memory engine for the unit tests of the layers above.
#[cfg(test)]
pub(crate) mod fake;
mod kubernetes;
mod privilege;

use std::{collections::HashMap, fmt, pin::Pin, sync::Arc};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream::BoxStream};
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub use docker::DockerBackend;
pub use kubernetes::{KubeError, KubernetesBackend, KubernetesSettings, client_config};

/// Label naming the server instance that owns a container.
pub const LABEL_SERVER: &str = "sandpool.server";
/// Label naming the pool a container belongs to.
pub const LABEL_POOL: &str = "sandpool.pool";
/// Label set on temporary (TEMPORARY strategy) containers.
pub const LABEL_TEMPORARY: &str = "sandpool.temporary";
/// Label of an instance's liveness marker.
pub const LABEL_MARKER: &str = "sandpool.marker";

/// Which engine a pool runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendKind {
    #[default]
    Docker,
    Podman,
    Kubernetes,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Docker => "docker",
            BackendKind::Podman => "podman",
            BackendKind::Kubernetes => "kubernetes",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "docker" => Ok(BackendKind::Docker),
            "podman" => Ok(BackendKind::Podman),
            "kubernetes" | "k8s" => Ok(BackendKind::Kubernetes),
            other => Err(format!(
                "{other:?} is not one of docker, podman, kubernetes"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of a container engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the {backend} engine at {endpoint}: {detail}")]
    Unreachable {
        backend: BackendKind,
        endpoint: String,
        detail: String,
    },
    #[error("image {image} is not on the engine and could not be pulled: {detail}")]
    ImageMissing { image: String, detail: String },
    #[error("container {id} is gone (removed or stopped outside sandpool)")]
    ContainerGone { id: String },
    #[error("engine call {op} failed: {detail}")]
    Engine { op: &'static str, detail: String },
    #[error("the {0} backend is not available in this build")]
    Unsupported(BackendKind),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a container is created with. The pool layer fills it from a pool
/// spec; the backend maps it to engine options.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// User of the container's main (idle) process, "uid:gid".
    pub main_user: String,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub pids_limit: Option<i64>,
    /// RLIMIT_NPROC of every process in the container (gVisor pools: see
    /// `spec::GVISOR_HOST_PIDS_PER_PROCESS`). Kubernetes has no such
    /// setting and ignores it.
    pub nproc_limit: Option<i64>,
    /// Engine network mode ("none", "bridge", a network name).
    pub network: String,
    pub read_only_root: bool,
    /// Writable scratch mounts.
    pub tmpfs: Vec<Tmpfs>,
    pub oci_runtime: Option<String>,
    pub env: Vec<String>,
    /// Capabilities (Docker names: "KILL") that the server's privileged
    /// execs need. The container itself keeps none; an engine that cannot
    /// grant a privileged exec keeps these in the container's bounding set
    /// instead, and gives them to root execs (see `ExecSpec::privileged`).
    pub helper_caps: Vec<String>,
    /// Kubernetes: the namespace of the pod; `None`, the backend's own.
    /// Other engines have no namespaces and ignore it.
    pub namespace: Option<String>,
}

/// A tmpfs mount. Executables may run from it (compiled programs do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub path: String,
    pub size_bytes: i64,
    pub mode: u32,
    /// Owner "uid:gid" of the mount's root; `None` keeps root's.
    pub owner: Option<(u32, u32)>,
}

impl Tmpfs {
    /// The argv of a root shell that gives each of `mounts` its owner and
    /// mode: for engines that cannot set them at mount time (Podman's
    /// tmpfs, Kubernetes' emptyDir). Paths travel as arguments, never in
    /// the script.
    pub fn ownership_argv(mounts: &[Tmpfs]) -> Vec<String> {
        let mut script = String::from("set -e");
        let mut argv = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            String::new(),
            "sh".to_string(),
        ];
        for (i, m) in mounts.iter().enumerate() {
            let n = i + 1;
            match m.owner {
                Some((uid, gid)) => script.push_str(&format!(
                    "; chown {uid}:{gid} \"${n}\"; chmod {:o} \"${n}\"",
                    m.mode
                )),
                None => script.push_str(&format!("; chmod {:o} \"${n}\"", m.mode)),
            }
            argv.push(m.path.clone());
        }
        argv[2] = script;
        argv
    }
}

/// A process to start in a running container.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// "KEY=value" entries added to the container's environment.
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: Option<String>,
    /// Attach standard input (the caller must then shut it down).
    pub stdin: bool,
    /// Run as root with the container's helper capabilities (a privileged
    /// exec, or a root exec where the engine cannot grant one): only ever
    /// for a fixed command of the server's own.
    pub privileged: bool,
    /// Give the process a terminal of this size (its stdin, stdout and
    /// stderr; the output then comes as one stdout stream).
    pub terminal: Option<TerminalSize>,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub rows: u16,
    pub columns: u16,
}

/// Resizes an exec's terminal: each request is answered (`done` dropped)
/// once the engine applied it, so that input written after a resize meets
/// the new size. A resize of a process that is gone is answered too.
pub type TerminalResize = tokio::sync::mpsc::UnboundedSender<Resize>;

/// One resize of an exec's terminal.
#[derive(Debug)]
pub struct Resize {
    pub size: TerminalSize,
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// One piece of output of an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

pub type ExecStdin = Pin<Box<dyn AsyncWrite + Send>>;

/// A started exec: its output as it is produced and, when asked for, its
/// standard input.
pub struct Exec {
    pub id: String,
    pub stdin: Option<ExecStdin>,
    pub output: BoxStream<'static, Result<Output>>,
    /// With a terminal: resizes it.
    pub resize: Option<TerminalResize>,
}

/// A container found on the engine by label.
#[derive(Debug, Clone)]
pub struct ListedContainer {
    pub id: String,
    pub labels: HashMap<String, String>,
    /// Its main process runs.
    pub running: bool,
    /// Created and not started yet.
    pub starting: bool,
    /// When it was created (seconds since the epoch).
    pub created: i64,
}

/// Something the engine reports about a container of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub kind: ContainerEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    /// Its main process ended, or is being killed (killed, crashed, OOM):
    /// it is not to be used any more.
    Died,
    /// It was removed.
    Removed,
}

/// While held, other server instances on the same engine see this one as
/// alive. Dropping it (or this process dying) ends it.
pub struct Liveness {
    /// The engine object that shows it (a marker container).
    pub id: String,
    /// Whatever keeps it alive (an attached stream).
    pub hold: Box<dyn std::any::Any + Send + Sync>,
}

/// A container engine.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// Makes sure the image exists locally, pulling it if it does not.
    async fn ensure_image(&self, image: &str) -> Result<()>;

    /// Creates and starts a container; returns its id.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String>;

    /// Removes a container and its anonymous volumes, killing it first. A
    /// container that is already gone is not an error.
    async fn remove_container(&self, id: &str) -> Result<()>;

    /// Whether the container exists and runs.
    async fn container_running(&self, id: &str) -> Result<bool>;

    /// Whether the engine reports a removal only after the call that removed
    /// the container has returned. Docker sends `kill` before, Kubernetes
    /// marks the pod terminating at once: an event has reached the server by
    /// the time anyone could act on the removal. Podman publishes its events
    /// after the fact, so a pool on it asks the engine before it hands an
    /// idle container out (one inspect, about 3 ms).
    fn removal_events_late(&self) -> bool {
        false
    }

    /// Containers (running or not) that carry `label`, with `value` if given.
    async fn list_containers(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<ListedContainer>>;

    /// Starts a process in a running container.
    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<Exec>;

    /// Exit code of a finished exec; `None` while it still runs.
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>>;

    /// Connects the container to `network`, or disconnects it from every
    /// network when `None`.
    async fn set_network(&self, container_id: &str, network: Option<&str>) -> Result<()>;

    /// What the engine reports of a running container: its networks and
    /// its environment.
    async fn inspect(&self, container_id: &str) -> Result<ContainerInfo>;

    /// Whether the engine answers.
    async fn ping(&self) -> Result<()>;

    /// Whether containers made with OCI runtime `runtime` (`None`: the
    /// engine's default) run on gVisor: a pool's process limits and its
    /// default run path depend on it (`RuntimeConfig::on_gvisor`). Engines
    /// that cannot say which binary a runtime runs go by its name.
    async fn runs_on_gvisor(&self, runtime: Option<&str>) -> Result<bool> {
        Ok(runtime.is_some_and(crate::spec::names_gvisor))
    }

    /// Deaths and removals of containers that carry `label`, as the engine
    /// reports them. The stream ends when the connection to the engine does.
    async fn events(&self, label: &str) -> Result<BoxStream<'static, Result<ContainerEvent>>>;

    /// Announces server instance `server_id` on the engine, so that other
    /// instances can tell whether it is alive (`dead_instances`). `image` is
    /// an image the engine has, for engines that need one.
    async fn announce(&self, server_id: &str, image: &str) -> Result<Liveness>;

    /// Ids of server instances that have containers on the engine (label
    /// `sandpool.server`) but are no longer alive.
    async fn dead_instances(&self) -> Result<Vec<String>>;

    /// Removes whatever else than containers instance `server_id` left on
    /// the engine (Kubernetes: its NetworkPolicies and Leases), once its
    /// containers are gone: at start-up for this instance's earlier run, for
    /// a dead instance, and at shutdown.
    async fn forget_instance(&self, _server_id: &str) -> Result<()> {
        Ok(())
    }
}

/// What `Backend::inspect` reports.
#[derive(Debug, Clone, Default)]
pub struct ContainerInfo {
    /// The networks the container is attached to ("none", the engine's name
    /// for no network, left out).
    pub networks: Vec<String>,
    /// "KEY=value" entries every exec starts with: the image's environment
    /// and the container's own.
    pub env: Vec<String>,
}

pub type SharedBackend = Arc<dyn Backend>;

/// The engines a server may put pools on, one backend per kind, built by
/// the wiring (`server.rs`). Remembers which ones pools actually used, so
/// that cleanup talks only to engines that can hold containers of ours.
pub struct Engines {
    backends: HashMap<BackendKind, SharedBackend>,
    used: std::sync::Mutex<std::collections::HashSet<BackendKind>>,
}

impl Engines {
    pub fn new(backends: impl IntoIterator<Item = SharedBackend>) -> Self {
        Self {
            backends: backends.into_iter().map(|b| (b.kind(), b)).collect(),
            used: Default::default(),
        }
    }

    /// The backend of `kind`, marked as used.
    pub fn get(&self, kind: BackendKind) -> Result<SharedBackend> {
        let backend = self
            .backends
            .get(&kind)
            .cloned()
            .ok_or(Error::Unsupported(kind))?;
        crate::sync::lock(&self.used).insert(kind);
        Ok(backend)
    }

    /// The backends that pools used so far.
    pub fn used(&self) -> Vec<SharedBackend> {
        let used = crate::sync::lock(&self.used);
        used.iter()
            .filter_map(|k| self.backends.get(k).cloned())
            .collect()
    }
}

/// What a collected exec produced.
#[derive(Debug, Clone)]
pub struct Collected {
    pub exit_code: i64,
    pub stdout: Bytes,
    pub stderr: Bytes,
}

impl Collected {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// Standard error (or, if empty, standard output) as text, for messages.
    pub fn diagnostic(&self) -> String {
        let raw = if self.stderr.is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        String::from_utf8_lossy(raw).trim().to_string()
    }
}

/// Runs a process to completion and collects its output, keeping at most
/// `limit` bytes of each stream. For the server's own short commands (warm
/// checks, resets, kills), never for user code.
pub async fn exec_collect(
    backend: &dyn Backend,
    container_id: &str,
    mut spec: ExecSpec,
    stdin: Option<Bytes>,
    limit: usize,
) -> Result<Collected> {
    spec.stdin = stdin.is_some();
    let mut exec = backend.exec(container_id, spec).await?;
    if let (Some(mut writer), Some(data)) = (exec.stdin.take(), stdin) {
        // A process that exits without reading its input closes the pipe;
        // that is its business, not an error of ours.
        let _ = writer.write_all(&data).await;
        let _ = writer.shutdown().await;
    }
    let (mut stdout, mut stderr) = (BytesMut::new(), BytesMut::new());
    while let Some(item) = exec.output.next().await {
        let (buf, data) = match item? {
            Output::Stdout(d) => (&mut stdout, d),
            Output::Stderr(d) => (&mut stderr, d),
        };
        let room = limit.saturating_sub(buf.len());
        buf.extend_from_slice(&data[..data.len().min(room)]);
    }
    let exit_code = wait_exit_code(backend, &exec.id).await?;
    Ok(Collected {
        exit_code,
        stdout: stdout.freeze(),
        stderr: stderr.freeze(),
    })
}

/// The exit code of an exec whose output has ended. The engine may report the
/// exit a moment after the streams close, so this polls briefly.
pub async fn wait_exit_code(backend: &dyn Backend, exec_id: &str) -> Result<i64> {
    let mut delay = std::time::Duration::from_millis(1);
    for attempt in 0..40 {
        if let Some(code) = backend.exec_exit_code(exec_id).await? {
            if attempt > 0 {
                tracing::debug!(exec_id, attempt, "exit code after polling");
            }
            return Ok(code);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_millis(100));
    }
    Err(Error::Engine {
        op: "exec inspect",
        detail: format!("exec {exec_id} output ended but the engine reports it still running"),
    })
}
