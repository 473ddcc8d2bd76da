//! Test harness: a real sandpool server in-process on 127.0.0.1:0, against
//! the real container engine, with a unique server id so that tests running
//! side by side never touch each other's containers, and a check at the end
//! that the engine holds nothing of the server.

pub mod interactive;
pub mod otlp;
pub mod packages;
pub mod proxy;
pub mod replicas;

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use sandpool_client::{Client, proto as pb};
use sandpool_server::{
    ServerConfig,
    backend::LABEL_MARKER,
    backend::{Backend, BackendKind, DockerBackend},
    sandbox::LABEL_SERVER,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub mod chaos;

/// The image of the python pools under test.
pub fn python_image() -> String {
    std::env::var("SANDPOOL_TEST_PYTHON_IMAGE")
        .unwrap_or_else(|_| "sandpool/python:bookworm".into())
}

/// The Docker engine, as the server reaches it.
pub fn docker() -> DockerBackend {
    DockerBackend::new(
        BackendKind::Docker,
        DockerBackend::default_endpoint(BackendKind::Docker),
    )
}

/// A container engine the suites run the same test on: the tests that
/// depend on how an engine behaves (events, markers, removals) run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    /// The engine if it can be reached: Podman needs its service
    /// (scripts/engine-up.sh --podman); a missing one skips the test, or
    /// fails it with SANDPOOL_REQUIRE_PODMAN set (as CI does).
    pub fn available(self) -> Option<Self> {
        if self == Engine::Docker {
            return Some(self);
        }
        if podman_runs() {
            return Some(self);
        }
        let endpoint = DockerBackend::default_endpoint(BackendKind::Podman);
        let path = endpoint.trim_start_matches("unix://");
        assert!(
            std::env::var("SANDPOOL_REQUIRE_PODMAN").is_err(),
            "SANDPOOL_REQUIRE_PODMAN is set but there is no podman socket at {path}"
        );
        eprintln!(
            "skipping: no podman socket at {path} (scripts/engine-up.sh --podman starts one)"
        );
        None
    }

    /// The engine as the server reaches it.
    pub fn backend(self) -> DockerBackend {
        let kind = self.kind();
        DockerBackend::new(kind, DockerBackend::default_endpoint(kind))
    }

    pub fn kind(self) -> BackendKind {
        match self {
            Engine::Docker => BackendKind::Docker,
            Engine::Podman => BackendKind::Podman,
        }
    }

    pub fn proto(self) -> pb::Backend {
        match self {
            Engine::Docker => pb::Backend::Docker,
            Engine::Podman => pb::Backend::Podman,
        }
    }

    /// The name a config file gives it (`backend = "..."`).
    pub fn name(self) -> &'static str {
        self.kind().as_str()
    }

    /// A python pool on this engine.
    pub fn python_pool(self, name: &str) -> pb::PoolSpec {
        let mut spec = python_pool(name);
        spec.backend = self.proto() as i32;
        spec
    }

    /// Runs the engine's CLI (podman through its service, as the server
    /// reaches it) and returns its stdout; panics if it fails.
    pub fn cli(self, args: &[&str]) -> String {
        let mut command = match self {
            Engine::Docker => std::process::Command::new("docker"),
            Engine::Podman => {
                let mut c = std::process::Command::new("podman");
                c.arg("--url")
                    .arg(DockerBackend::default_endpoint(BackendKind::Podman));
                c
            }
        };
        let out = command.args(args).output().expect("the engine's cli");
        assert!(
            out.status.success(),
            "{self:?} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Ids of the sandbox containers on this engine labelled with
    /// `server_id` (not its liveness marker).
    pub async fn containers_of(self, server_id: &str) -> Vec<String> {
        self.try_containers_of(server_id)
            .await
            .unwrap_or_else(|e| panic!("the {self:?} engine must answer: {e}"))
    }

    /// [`Engine::containers_of`], with the engine's error if it does not
    /// answer.
    pub async fn try_containers_of(
        self,
        server_id: &str,
    ) -> Result<Vec<String>, sandpool_server::backend::Error> {
        Ok(self
            .backend()
            .list_containers(LABEL_SERVER, Some(server_id))
            .await?
            .into_iter()
            .filter(|c| !c.labels.contains_key(LABEL_MARKER))
            .map(|c| c.id)
            .collect())
    }

    /// Every container on this engine labelled with `server_id`, its marker
    /// included.
    pub async fn labelled(self, server_id: &str) -> Vec<sandpool_server::backend::ListedContainer> {
        self.backend()
            .list_containers(LABEL_SERVER, Some(server_id))
            .await
            .unwrap_or_else(|e| panic!("the {self:?} engine must answer: {e}"))
    }
}

/// Whether the podman service's socket is there.
fn podman_runs() -> bool {
    let endpoint = DockerBackend::default_endpoint(BackendKind::Podman);
    std::path::Path::new(endpoint.trim_start_matches("unix://")).exists()
}

/// One test case on both engines: `case(Engine::Docker)` as test `$docker`,
/// and `case` on Podman as test `$podman` when Podman is there (a missing
/// Podman fails the test under SANDPOOL_REQUIRE_PODMAN, see
/// [`Engine::available`]).
#[macro_export]
macro_rules! on_both_engines {
    ($case:path => $docker:ident, $podman:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $docker() {
            $case($crate::Engine::Docker).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $podman() {
            if let Some(engine) = $crate::Engine::Podman.available() {
                $case(engine).await;
            }
        }
    };
}

/// Starts the sandpool-server binary with `config` and `server_id` on a
/// free loopback port, its output discarded; returns it and its address.
pub fn spawn_server(config: &std::path::Path, server_id: &str) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(workspace_binary("sandpool-server"))
        .args(["--listen", &addr, "--config"])
        .arg(config)
        .args(["--server-id", server_id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start sandpool-server");
    (child, addr)
}

/// Sends SIGTERM to a server process and waits for it; panics unless it
/// exits within 30 s (then it is killed) and successfully.
pub async fn terminate(mut child: std::process::Child) {
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let exited = tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            if std::time::Instant::now() > until {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("waiter")
    .expect("the server exits within 30s of SIGTERM");
    assert!(exited.success(), "exit status {exited:?}");
}

/// Ids of the sandbox containers on the engine labelled with `server_id`
/// (not its liveness marker).
pub async fn containers_of(server_id: &str) -> Vec<String> {
    try_containers_of(server_id)
        .await
        .expect("the docker engine must answer (run scripts/engine-up.sh)")
}

/// [`containers_of`], with the engine's error if it does not answer.
pub async fn try_containers_of(
    server_id: &str,
) -> Result<Vec<String>, sandpool_server::backend::Error> {
    Engine::Docker.try_containers_of(server_id).await
}

/// Every container on the engine labelled with `server_id`, its marker
/// included.
pub async fn labelled(server_id: &str) -> Vec<sandpool_server::backend::ListedContainer> {
    Engine::Docker.labelled(server_id).await
}

/// Polls `check` until it yields a value or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server_id: String,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A config with no pools and a unique server id.
pub fn empty_config() -> ServerConfig {
    let mut config =
        ServerConfig::from_toml("", std::path::Path::new("<test>")).expect("empty config parses");
    config.server_id = Some(unique_id("test"));
    config.shutdown_grace = Duration::from_secs(2);
    // The suites run pools on gVisor too (scripts/engine-up.sh registers
    // it); the policy floor allows only the engine's default runtime unless
    // told otherwise.
    config.policy.runtimes = vec!["runsc".to_string(), "isolated".to_string()];
    // Runs go through the resident runner, as the server's default;
    // SANDPOOL_RESIDENT_RUNNER=0 runs every suite's runs on the exec path
    // (as the server's own setting of that name does).
    config.resident_runner = std::env::var("SANDPOOL_RESIDENT_RUNNER").map_or(true, |v| {
        sandpool_server::config::resident_runner_flag(&v, true)
    });
    config
}

impl TestServer {
    /// A server without pools.
    pub async fn start() -> Self {
        Self::start_with(empty_config()).await
    }

    /// With SANDPOOL_TEST_LOG set, the server's logs go to stderr (levels
    /// from RUST_LOG).
    pub async fn start_with(config: ServerConfig) -> Self {
        if std::env::var_os("SANDPOOL_TEST_LOG").is_some() {
            sandpool_server::telemetry::init(sandpool_server::config::LogFormat::Text);
        }
        Self::start_with_client(config, |addr| Client::builder(format!("http://{addr}"))).await
    }

    /// A server whose client is built by `client` from the server's address
    /// (for TLS, tokens).
    pub async fn start_with_client(
        mut config: ServerConfig,
        client: impl FnOnce(SocketAddr) -> sandpool_client::ClientBuilder,
    ) -> Self {
        let server_id = config
            .server_id
            .get_or_insert_with(|| unique_id("test"))
            .clone();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sandpool_server::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        let client = client(addr)
            .connect()
            .await
            .expect("connect to the test server");
        Self {
            addr,
            server_id,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Creates a pool and waits until it is warm; panics if it fails.
    pub async fn pool(&self, spec: pb::PoolSpec) -> pb::Pool {
        let pool = self
            .client
            .create_pool(spec, true)
            .await
            .expect("create pool");
        assert_ne!(
            pool.phase,
            pb::PoolPhase::Failing as i32,
            "pool failed to warm: {}",
            pool.status_message
        );
        pool
    }

    pub async fn stats(&self, pool: &str) -> pb::PoolStats {
        self.client.stats(pool).await.expect("stats")
    }

    /// Waits (up to a minute) until `pool` has an idle container: for pools
    /// of the config file, which the server warms without being asked.
    pub async fn wait_idle(&self, pool: &str) {
        wait_for("the pool to warm", Duration::from_secs(60), || async {
            let stats = self.client.stats(pool).await.ok()?;
            (stats.state_counts?.idle > 0).then_some(())
        })
        .await;
    }

    /// Stops the server and checks that it left no container behind, and
    /// that no reset failed on the way (a reset never fails by design: a
    /// failure means a lease left something the server could not clean).
    pub async fn stop(self) {
        if let Ok(pools) = self.client.list_pools().await {
            for pool in pools {
                let stats = pool.stats.unwrap_or_default();
                let failed = stats
                    .counters
                    .unwrap_or_default()
                    .recycled
                    .unwrap_or_default()
                    .reset_failed;
                assert_eq!(failed, 0, "pool {} had {failed} failed resets", stats.pool);
            }
        }
        let id = self.server_id.clone();
        let left = self.stop_and_list().await;
        assert!(
            left.is_empty(),
            "server {id} left containers behind: {left:?}"
        );
    }

    /// Stops the server and lists the containers it left behind (the
    /// marker included) on Docker, and on Podman when its service runs,
    /// without judging.
    pub async fn stop_and_list(mut self) -> Vec<String> {
        self.shutdown().await;
        let mut left = labelled(&self.server_id).await;
        if podman_runs() {
            left.extend(Engine::Podman.labelled(&self.server_id).await);
        }
        left.into_iter().map(|c| c.id).collect()
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("server stops within 60s")
                .expect("server task does not panic");
            result.expect("server ends without error");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that panicked before `stop`: its runtime is going away with
        // the server on it, so remove the server's containers from a thread
        // of our own. A failed test must not leave containers behind either.
        let Some(stop) = self.stop.take() else { return };
        let _ = stop.send(());
        let id = self.server_id.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let docker = docker();
                // Twice: a creation already sent to the engine may land
                // after the first look.
                for pass in 0..2 {
                    if pass > 0 {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    if let Ok(found) = docker.list_containers(LABEL_SERVER, Some(&id)).await {
                        for c in found {
                            let _ = docker.remove_container(&c.id).await;
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A python pool spec with small, test-friendly settings.
pub fn python_pool(name: &str) -> pb::PoolSpec {
    pb::PoolSpec {
        name: name.to_string(),
        language: "python".into(),
        image: python_image(),
        config: Some(pb::PoolConfig {
            max_pool_size: Some(2),
            min_pool_size: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Seconds as a proto duration.
pub fn secs(s: f64) -> Option<prost_types::Duration> {
    let d = Duration::from_secs_f64(s);
    Some(prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

/// The gRPC code of a client error.
pub fn code_of(err: &sandpool_client::Error) -> tonic::Code {
    match err {
        sandpool_client::Error::LeaseLost { .. } => tonic::Code::FailedPrecondition,
        other => other.status().map_or(tonic::Code::Unknown, |s| s.code()),
    }
}

/// A binary of the workspace (built by `cargo build --workspace`, which the
/// test script runs first), next to the test executables.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs `docker` with `args` and returns its stdout; panics on failure.
pub fn docker_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker cli");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A wheel of package `sandpooldemo` (VALUE = 42) in `dir`, built with the
/// host's Python (zipfile: no build tools, no index).
pub fn build_wheel(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("sandpooldemo-1.0-py3-none-any.whl");
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    'sandpooldemo/__init__.py': b'VALUE = 42\n',
    'sandpooldemo-1.0.dist-info/METADATA': b'Metadata-Version: 2.1\nName: sandpooldemo\nVersion: 1.0\n',
    'sandpooldemo-1.0.dist-info/WHEEL': b'Wheel-Version: 1.0\nGenerator: sandpool-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
}
record = ''
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    record += '%s,sha256=%s,%d\n' % (name, digest, len(data))
record += 'sandpooldemo-1.0.dist-info/RECORD,,\n'
files['sandpooldemo-1.0.dist-info/RECORD'] = record.encode()
with zipfile.ZipFile(sys.argv[1], 'w') as z:
    for name, data in files.items():
        z.writestr(name, data)
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .status()
        .expect("python3");
    assert!(status.success(), "building the test wheel");
    path
}

/// A pool of `language` on its default image with one container.
pub fn language_pool(name: &str, language: &str) -> pb::PoolSpec {
    pb::PoolSpec {
        name: name.to_string(),
        language: language.to_string(),
        config: Some(pb::PoolConfig {
            min_pool_size: Some(1),
            max_pool_size: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A shell command line as a run request, with a timeout in seconds.
pub fn shell_run(line: &str, timeout: f64) -> pb::RunRequest {
    pb::RunRequest {
        program: Some(pb::run_request::Program::Command(pb::Command {
            argv: Vec::new(),
            shell: line.to_string(),
        })),
        timeout: secs(timeout),
        ..Default::default()
    }
}

/// Python in which every process forks for ever and never exits: the pids
/// limit stays full.
pub const FORK_BOMB: &str =
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";

/// Code in the pool's language as a run request, with a timeout in seconds.
pub fn code_run(source: &str, timeout: f64) -> pb::RunRequest {
    pb::RunRequest {
        program: Some(pb::run_request::Program::Code(pb::Code {
            source: Some(pb::code::Source::Text(source.into())),
            language: String::new(),
        })),
        timeout: secs(timeout),
        ..Default::default()
    }
}

/// The fork bomb as a run with a timeout in seconds.
pub fn fork_bomb_run(timeout: f64) -> pb::RunRequest {
    code_run(FORK_BOMB, timeout)
}

/// Whether the Docker engine has gVisor's `runsc` runtime (registered by
/// scripts/engine-up.sh). With SANDPOOL_REQUIRE_RUNSC set, a missing runtime
/// fails the test instead of skipping it.
pub fn runsc_available() -> bool {
    docker_runtime_available("runsc")
}

/// Whether the Docker engine has a runtime called `name` (scripts/engine-up.sh
/// registers gVisor as "runsc" and again as "isolated"). With
/// SANDPOOL_REQUIRE_RUNSC set, a missing runtime fails the test instead of
/// skipping it.
pub fn docker_runtime_available(name: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output();
    let found = out
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("\"{name}\"")))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var("SANDPOOL_REQUIRE_RUNSC").is_err(),
            "SANDPOOL_REQUIRE_RUNSC is set but docker has no runtime {name:?}"
        );
        eprintln!("skipping: docker has no runtime {name:?} (scripts/engine-up.sh registers it)");
    }
    found
}

/// The networks a Docker container is attached to, "none" left out.
pub fn docker_networks(container: &str) -> Vec<String> {
    let listed = docker_cli(&[
        "inspect",
        "--format",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        container,
    ]);
    listed
        .split_whitespace()
        .filter(|n| *n != "none")
        .map(str::to_string)
        .collect()
}

/// Python that prints, as JSON, what a lease can see of earlier ones:
/// processes other than the container's init, its idle process, the
/// server's root helper and the probe itself; SysV IPC objects; POSIX
/// message queues; entries in every place the sandbox user can write.
pub const LEFTOVERS_PROBE: &str = r#"
import json, os
MARK = 'LEFTOVER' + '-PROBE'  # LEFTOVER-PROBE: in this run's own cmdline
procs = []
# What started this probe is not a leftover: on the resident runner's path,
# the runner the reset started (on the exec path it has no ancestor here),
# nor is the probe itself (on the runner's path it may be the pre-started
# interpreter, whose command line is not the probe's).
ancestors, p = {str(os.getpid())}, os.getppid()
while p > 1:
    ancestors.add(str(p))
    p = int(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1])
for pid in os.listdir('/proc'):
    if not pid.isdigit() or pid == '1' or pid in ancestors:
        continue
    try:
        lines = open(f'/proc/{pid}/status').read().splitlines()
        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\0', b' ').decode(errors='replace').strip()
    except OSError:
        continue
    status = dict(l.split(':', 1) for l in lines if ':' in l)
    uid = int(status['Uid'].split()[0])
    state = status['State'].split()[0]
    if MARK in cmd or state == 'Z':
        continue
    if cmd == 'sleep infinity' and uid in (0, 65534):
        continue
    if uid == 0 and 'sandpool-warden' in cmd:
        continue
    procs.append([int(pid), uid, cmd[:80]])
ipc = []
if os.path.isdir('/proc/sysvipc'):
    for kind in ('shm', 'sem', 'msg'):
        ipc += [kind + ':' + l.split()[1] for l in open('/proc/sysvipc/' + kind).read().splitlines()[1:] if l.strip()]
else:  # gVisor has no /proc/sysvipc
    import subprocess
    for kind in ('m', 's', 'q'):
        out = subprocess.run(['ipcs', '-' + kind], capture_output=True, text=True).stdout
        ipc += [kind + ':' + l.split()[1] for l in out.splitlines() if l.startswith('0x')]
mq = sorted(os.listdir('/dev/mqueue')) if os.path.isdir('/dev/mqueue') else []
keep = {'/sandbox/outputs', os.environ.get('MPLCONFIGDIR', '/nonexistent')}
files = []
for d in ['/sandbox', '/tmp', os.environ['HOME'], '/dev/shm', '/var/tmp', '/var/lock', '/run/lock']:
    for root, dirs, names in os.walk(d):
        for n in dirs + names:
            p = os.path.join(root, n)
            if not any(p == k or p.startswith(k + '/') for k in keep):
                files.append(p)
modes = {d: oct(os.stat(d).st_mode & 0o7777) + ':' + str(os.stat(d).st_uid) for d in ['/sandbox', os.environ['HOME'], '/tmp']}
print(json.dumps({'procs': sorted(procs), 'ipc': ipc, 'mq': mq, 'files': sorted(files), 'modes': modes}))
"#;

/// What `LEFTOVERS_PROBE` prints when nothing is left: only the output
/// directory and the mount roots as the pool made them.
pub fn clean_leftovers() -> String {
    r#"{"procs": [], "ipc": [], "mq": [], "files": [], "modes": {"/sandbox": "0o755:1000", "/home/sandbox": "0o755:1000", "/tmp": "0o1777:0"}}"#
        .to_string()
}

/// Shell that leaves everything a reset must clear: daemons (one after
/// `env -i`, one in its own session, one ignoring SIGTERM), SysV shared
/// memory, semaphores and a message queue, a POSIX message queue, files in
/// every writable place (one in a directory without permissions), and
/// changed modes on the mount roots. Prints "planted".
pub const PLANT_LEFTOVERS: &str = r#"set -e
echo secret > /sandbox/a.txt; mkdir -p /sandbox/outputs/d; echo x > /sandbox/outputs/d/f
echo secret > /tmp/t; echo secret > "$HOME/.h"; echo secret > /dev/shm/s
for d in /var/tmp /var/lock /run/lock; do if [ -w "$d" ]; then echo secret > "$d/left"; fi; done
mkdir /sandbox/locked; touch /sandbox/locked/f; chmod 000 /sandbox/locked
ln -s /etc/passwd /tmp/link; ln -s / /sandbox/rootlink
ipcmk -M 4096 >/dev/null; ipcmk -S 2 >/dev/null; ipcmk -Q >/dev/null
python3 -c "import ctypes, os; l = ctypes.CDLL(None); fd = l.mq_open(b'/sandpool-left', os.O_CREAT | os.O_RDWR, 0o600, None); assert fd >= 0" 2>/dev/null || [ ! -d /dev/mqueue ]
nohup sleep 1001 >/dev/null 2>&1 &
env -i /usr/bin/setsid /bin/sh -c 'exec sleep 1002' </dev/null >/dev/null 2>&1 &
setsid sh -c 'trap "" TERM HUP; while :; do sleep 0.1; done' </dev/null >/dev/null 2>&1 &
chmod 777 /sandbox; chmod 700 "$HOME"
echo planted"#;
