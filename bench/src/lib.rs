//! What the benchmarks share: a server in-process, the raw-exec floor,
//! waiting for a pool to settle, medians.

use std::time::{Duration, Instant};

use anyhow::bail;
use bollard::{
    exec::{StartExecOptions, StartExecResults},
    models::ExecConfig,
};
use futures::StreamExt;
use sandpool_client::Client;
use sandpool_server::{
    ServerConfig,
    backend::{BackendKind, DockerBackend},
};
use tokio::{sync::oneshot, task::JoinHandle};

/// A sandpool server on 127.0.0.1:0 in this process, and a client of it.
pub struct BenchServer {
    pub client: Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl BenchServer {
    /// Starts a server without pools; `tag` names it in container labels.
    pub async fn start(tag: &str) -> anyhow::Result<Self> {
        Self::start_with(tag, false).await
    }

    /// The same, with its runs on resident runners (`resident_runner`) or not.
    pub async fn start_with(tag: &str, resident_runner: bool) -> anyhow::Result<Self> {
        // The server's logs would interleave with the tables: only on request.
        if std::env::var_os("RUST_LOG").is_some() {
            sandpool_server::telemetry::init(sandpool_server::config::LogFormat::Text);
        }
        let mut config = ServerConfig::from_toml("", std::path::Path::new("<bench>"))?;
        config.server_id = Some(format!("bench-{tag}-{}", std::process::id()));
        config.resident_runner = resident_runner;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sandpool_server::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        let client = Client::connect(format!("http://{addr}")).await?;
        Ok(Self { client, stop, task })
    }

    /// Stops the server (it removes its containers).
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// The engine's API client, as the server reaches it.
pub async fn docker() -> anyhow::Result<bollard::Docker> {
    let backend = DockerBackend::new(
        BackendKind::Docker,
        DockerBackend::default_endpoint(BackendKind::Docker),
    );
    Ok(backend.client().await?.clone())
}

/// The floor: `argv` run through the engine API alone (create, start, read
/// to the end, inspect), as the sandbox user in /sandbox. Fails unless it
/// printed `expect` and exited 0.
pub async fn raw_exec(
    docker: &bollard::Docker,
    container: &str,
    argv: &[String],
    env: &[String],
    expect: &[u8],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let config = ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(argv.to_vec()),
        env: Some(env.to_vec()),
        user: Some("1000:1000".into()),
        working_dir: Some("/sandbox".into()),
        ..Default::default()
    };
    let exec = docker.create_exec(container, config).await?;
    let mut out = Vec::new();
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&exec.id, None::<StartExecOptions>)
        .await?
    {
        while let Some(item) = output.next().await {
            out.extend_from_slice(&item?.into_bytes());
        }
    }
    let code = docker.inspect_exec(&exec.id).await?.exit_code;
    let took = started.elapsed();
    if out != expect || code != Some(0) {
        bail!(
            "raw exec printed {:?}, exit {code:?}",
            String::from_utf8_lossy(&out)
        );
    }
    Ok(took)
}

/// Waits until `idle` containers of `pool` are idle (earlier resets done).
pub async fn settle(client: &Client, pool: &str, idle: u32) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = client.stats(pool).await?.state_counts.unwrap_or_default();
        if counts.idle == idle {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("pool {pool} did not settle: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Creates the Python pool `name` of `size` warm containers of `image` and
/// waits until it is ready.
pub async fn python_pool(
    client: &Client,
    name: &str,
    image: &str,
    size: u32,
) -> anyhow::Result<()> {
    let pool = client
        .create_pool(
            sandpool_client::proto::PoolSpec {
                name: name.into(),
                language: "python".into(),
                image: image.into(),
                config: Some(sandpool_client::proto::PoolConfig {
                    min_pool_size: Some(size),
                    max_pool_size: Some(size),
                    ..Default::default()
                }),
                ..Default::default()
            },
            true,
        )
        .await?;
    if pool.phase != sandpool_client::proto::PoolPhase::Ready as i32 {
        bail!("pool is not ready: {}", pool.status_message);
    }
    Ok(())
}

/// The median of `samples` (sorts them).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}
