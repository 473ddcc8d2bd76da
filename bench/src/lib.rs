//! What the benchmarks share: a server in-process, the raw-exec floor,
//! waiting for a pool to settle, one client cycle, order statistics.

pub mod hello;
pub mod plot_capture;
pub mod report;
pub mod stats;

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use bollard::{
    container::LogOutput,
    exec::{StartExecOptions, StartExecResults},
    models::ExecConfig,
};
use futures::StreamExt;
use sandpool_client::{Client, RunEvent, proto as pb};
use sandpool_server::{
    ServerConfig,
    backend::{BackendKind, DockerBackend},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::oneshot,
    task::JoinHandle,
};

pub use stats::median;

/// How a [`BenchServer`] is set up beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Runs go to resident runners instead of one engine exec each.
    pub resident_runner: bool,
    /// Serve Prometheus /metrics on a loopback port (reset and creation
    /// durations are only there, not in GetPoolStats).
    pub metrics: bool,
    /// Largest pool (and temporaries of one pool) the policy allows (the
    /// default policy stops at 10).
    pub max_pool_size: Option<u32>,
}

/// A sandpool server on 127.0.0.1:0 in this process, and a client of it.
pub struct BenchServer {
    pub client: Client,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// The `sandpool.server` label value of its containers.
    pub server_id: String,
    /// Where /metrics is served, when asked for.
    pub metrics_addr: Option<SocketAddr>,
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
        Self::start_opts(
            tag,
            ServerOptions {
                resident_runner,
                ..Default::default()
            },
        )
        .await
    }

    /// The same, set up by `options`.
    pub async fn start_opts(tag: &str, options: ServerOptions) -> anyhow::Result<Self> {
        // The server's logs would interleave with the tables: only on request.
        if std::env::var_os("RUST_LOG").is_some() {
            sandpool_server::telemetry::init(sandpool_server::config::LogFormat::Text);
        }
        let mut config = ServerConfig::from_toml("", std::path::Path::new("<bench>"))?;
        let server_id = format!("bench-{tag}-{}", std::process::id());
        config.server_id = Some(server_id.clone());
        config.resident_runner = options.resident_runner;
        if let Some(max) = options.max_pool_size {
            config.policy.max_pool_size = config.policy.max_pool_size.max(max);
            // A pool's max_temporary defaults to its max_pool_size, which
            // the policy bounds too.
            config.policy.max_temporary = config.policy.max_temporary.max(max);
        }
        let metrics_addr = if options.metrics {
            // The server binds the metrics listener itself and does not say
            // where: take a free loopback port and hand it over (another
            // process could take it in between; a bench can live with that).
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = probe.local_addr()?;
            drop(probe);
            config.metrics_listen = Some(addr);
            Some(addr)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sandpool_server::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        let client = Client::connect(format!("http://{addr}")).await?;
        Ok(Self {
            client,
            addr,
            server_id,
            metrics_addr,
            stop,
            task,
        })
    }

    /// The Prometheus exposition text of /metrics (plain HTTP/1.0 over
    /// loopback: one request does not need an HTTP client).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let addr = self
            .metrics_addr
            .context("the server was started without metrics")?;
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to /metrics at {addr}"))?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("/metrics answered without a header end")?;
        if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
            bail!(
                "/metrics answered {}",
                head.lines().next().unwrap_or_default()
            );
        }
        Ok(body.to_string())
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

/// How a raw exec ended.
#[derive(Debug, Clone)]
pub struct RawRun {
    pub took: Duration,
    pub exit_code: Option<i64>,
    pub stderr: Vec<u8>,
}

/// `argv` run through the engine API alone (create, start, read to the
/// end, inspect), as the sandbox user in /sandbox; every stdout chunk goes
/// to `on_stdout` as it arrives, stderr is kept.
pub async fn raw_exec_with(
    docker: &bollard::Docker,
    container: &str,
    argv: &[String],
    env: &[String],
    mut on_stdout: impl FnMut(&[u8]),
) -> anyhow::Result<RawRun> {
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
    let mut stderr = Vec::new();
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&exec.id, None::<StartExecOptions>)
        .await?
    {
        while let Some(item) = output.next().await {
            match item? {
                LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                other => on_stdout(&other.into_bytes()),
            }
        }
    }
    let exit_code = docker.inspect_exec(&exec.id).await?.exit_code;
    Ok(RawRun {
        took: started.elapsed(),
        exit_code,
        stderr,
    })
}

/// The floor: `argv` run through the engine API alone. Fails unless it
/// printed `expect` on stdout and exited 0.
pub async fn raw_exec(
    docker: &bollard::Docker,
    container: &str,
    argv: &[String],
    env: &[String],
    expect: &[u8],
) -> anyhow::Result<Duration> {
    let mut out = Vec::new();
    let run = raw_exec_with(docker, container, argv, env, |c| out.extend_from_slice(c)).await?;
    if out != expect || run.exit_code != Some(0) {
        bail!(
            "raw exec printed {:?}, exit {:?}: {}",
            String::from_utf8_lossy(&out),
            run.exit_code,
            String::from_utf8_lossy(&run.stderr)
        );
    }
    Ok(run.took)
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

/// A pool of `size` warm containers (min = max) of `language` on `image`.
pub fn pool_spec(name: &str, language: &str, image: &str, size: u32) -> pb::PoolSpec {
    pb::PoolSpec {
        name: name.into(),
        language: language.into(),
        image: image.into(),
        config: Some(pb::PoolConfig {
            min_pool_size: Some(size),
            max_pool_size: Some(size),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the pool `spec` and waits until it is ready.
pub async fn create_ready_pool(client: &Client, spec: pb::PoolSpec) -> anyhow::Result<()> {
    let name = spec.name.clone();
    let pool = client
        .create_pool(spec, true)
        .await
        .with_context(|| format!("creating pool {name}"))?;
    if pool.phase != pb::PoolPhase::Ready as i32 {
        bail!("pool {name} is not ready: {}", pool.status_message);
    }
    Ok(())
}

/// Creates the Python pool `name` of `size` warm containers of `image` and
/// waits until it is ready.
pub async fn python_pool(
    client: &Client,
    name: &str,
    image: &str,
    size: u32,
) -> anyhow::Result<()> {
    create_ready_pool(client, pool_spec(name, "python", image, size)).await
}

/// One client cycle on `pool`: Acquire, Run `code`, Release. Fails unless
/// the run printed `expect` and exited 0.
pub async fn cycle(
    client: &Client,
    pool: &str,
    code: &str,
    expect: &[u8],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let session = client.acquire(pool).await?;
    let lease_id = session.lease_id().to_string();
    let out = session.run_collect(code).await?;
    session.release().await?;
    let took = started.elapsed();
    if out.stdout != expect || out.exit_code() != 0 {
        bail!(
            "run {} on lease {lease_id} printed {:?}, exit {}, gaps {:?}: {}",
            out.run_id,
            out.stdout_text(),
            out.exit_code(),
            out.gaps,
            out.stderr_text()
        );
    }
    Ok(took)
}

/// The program of the first-byte measurements: it prints the wall clock,
/// which the container shares with the host.
pub const PRINT_TIME: &str = "import time\nprint(repr(time.time()), flush=True)";

/// How long after the program printed `printed` (seconds since the epoch,
/// as text) it is now.
fn lag_since(printed: &[u8]) -> anyhow::Result<Duration> {
    let arrived = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let text = String::from_utf8_lossy(printed);
    let printed: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("the program printed {text:?}, not a time"))?;
    Ok(Duration::from_secs_f64((arrived - printed).max(0.0)))
}

/// A leased run on `pool` that prints the time it printed at: how long
/// after that the client had the byte.
pub async fn first_byte_lag(client: &Client, pool: &str) -> anyhow::Result<Duration> {
    let session = client.acquire(pool).await?;
    let mut events = session.run(PRINT_TIME).await?;
    let mut lag = None;
    while let Some(event) = events.next().await {
        if let (RunEvent::Stdout(data), None) = (event?, lag) {
            lag = Some(lag_since(&data)?);
        }
    }
    drop(events);
    session.release().await?;
    lag.context("the run printed nothing")
}

/// The floor of [`first_byte_lag`]: the same program through a raw engine
/// exec, the lag taken when its first output chunk arrives.
pub async fn raw_first_byte_lag(
    docker: &bollard::Docker,
    container: &str,
) -> anyhow::Result<Duration> {
    let argv = ["python3", "-c", PRINT_TIME].map(String::from);
    let mut lag = None;
    let mut error = None;
    raw_exec_with(docker, container, &argv, &[], |chunk| {
        if lag.is_none() && error.is_none() {
            match lag_since(chunk) {
                Ok(l) => lag = Some(l),
                Err(e) => error = Some(e),
            }
        }
    })
    .await?;
    if let Some(e) = error {
        return Err(e);
    }
    lag.context("the raw exec printed nothing")
}
