//! Test harness: a real sandpool server in-process on 127.0.0.1:0, against
//! the real container engine, with a unique server id so that tests running
//! side by side never touch each other's containers, and a check at the end
//! that the engine holds nothing of the server.

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
    Ok(docker()
        .list_containers(LABEL_SERVER, Some(server_id))
        .await?
        .into_iter()
        .filter(|c| !c.labels.contains_key(LABEL_MARKER))
        .map(|c| c.id)
        .collect())
}

/// Every container on the engine labelled with `server_id`, its marker
/// included.
pub async fn labelled(server_id: &str) -> Vec<sandpool_server::backend::ListedContainer> {
    docker()
        .list_containers(LABEL_SERVER, Some(server_id))
        .await
        .expect("the docker engine must answer (run scripts/engine-up.sh)")
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

fn unique_id(prefix: &str) -> String {
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
    config
}

impl TestServer {
    /// A server without pools.
    pub async fn start() -> Self {
        Self::start_with(empty_config()).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
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
    /// marker included), without judging.
    pub async fn stop_and_list(mut self) -> Vec<String> {
        self.shutdown().await;
        labelled(&self.server_id)
            .await
            .into_iter()
            .map(|c| c.id)
            .collect()
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
