//! What the client's integration tests share: a real sandpool-server
//! process (`SANDPOOL_SERVER_BIN`, else target/debug/sandpool-server, built
//! when missing) on the Docker engine, and a TCP proxy that can go silent.

#![allow(dead_code)] // each test crate uses its own part

use std::{
    future::Future,
    path::PathBuf,
    process::{Child, Command},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sandpool_client::{Client, Error, proto as pb};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
};

/// A pool spec of the test image with `min` warm containers, at most `max`.
pub fn python_spec(name: &str, min: u32, max: u32) -> pb::PoolSpec {
    pb::PoolSpec {
        name: name.into(),
        language: "python".into(),
        image: image(),
        config: Some(pb::PoolConfig {
            max_pool_size: Some(max),
            min_pool_size: Some(min),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn image() -> String {
    std::env::var("SANDPOOL_TEST_PYTHON_IMAGE")
        .unwrap_or_else(|_| "sandpool/python:bookworm".into())
}

pub fn server_binary() -> PathBuf {
    if let Ok(explicit) = std::env::var("SANDPOOL_SERVER_BIN") {
        return explicit.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let binary = target.join("debug/sandpool-server");
    if !binary.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-p", "sandpool-server"])
            .current_dir(&root)
            .status()
            .expect("cargo build -p sandpool-server");
        assert!(built.success(), "cargo build -p sandpool-server failed");
    }
    binary
}

/// Polls `check` until it gives a value or `within` passes.
pub async fn wait_for<T, F: Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let until = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sandpool-server process on a free port, without pools; stopped with
/// SIGTERM, it must exit cleanly and leave no container.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    id: String,
    dir: PathBuf,
}

impl Server {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let id = format!("rust-client-{}-{port}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("server.toml");
        std::fs::write(&config, "shutdown_grace = 2\n").expect("config");
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(server_binary())
            .args(["--listen", &addr, "--config"])
            .arg(&config)
            .args(["--server-id", &id])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sandpool-server");
        let server = Self {
            child: Some(child),
            addr,
            id,
            dir,
        };
        wait_for(
            "the server to answer ListPools",
            Duration::from_secs(30),
            || async {
                let client = server.client(Duration::from_secs(5)).await.ok()?;
                client.list_pools().await.ok().map(|_| client)
            },
        )
        .await;
        server
    }

    pub async fn client(&self, timeout: Duration) -> Result<Client, Error> {
        client_of(&self.addr, timeout).await
    }

    pub async fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        assert!(
            status.success(),
            "sandpool-server exited with {status}:\n{log}"
        );
        let left = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=sandpool.server={}", self.id),
            ])
            .output()
            .expect("docker ps");
        assert!(
            left.stdout.is_empty(),
            "containers left behind by {}",
            self.id
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A test that failed before stop(): the server goes too (its log
        // stays in the temp dir).
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn client_of(addr: &str, timeout: Duration) -> Result<Client, Error> {
    Client::builder(format!("http://{addr}"))
        .timeout(timeout)
        .connect()
        .await
}

/// A TCP proxy from 127.0.0.1 to `target`. After `blackhole()` it forwards
/// nothing more in either direction and accepts new connections without
/// forwarding them, yet closes nothing (no FIN, no RST): a network that
/// silently drops everything. Dropping it closes everything.
pub struct BlackholeProxy {
    pub addr: String,
    silent: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl BlackholeProxy {
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let silent = Arc::new(AtomicBool::new(false));
        let target = target.to_string();
        let flag = Arc::clone(&silent);
        let accept = tokio::spawn(async move {
            let mut pumps = tokio::task::JoinSet::new();
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    held.push(conn); // held open, never forwarded
                    continue;
                }
                let upstream = TcpStream::connect(&target).await.expect("connect upstream");
                let (client_read, client_write) = conn.into_split();
                let (server_read, server_write) = upstream.into_split();
                pumps.spawn(pump(client_read, server_write, Arc::clone(&flag)));
                pumps.spawn(pump(server_read, client_write, Arc::clone(&flag)));
            }
        });
        Self {
            addr,
            silent,
            accept,
        }
    }

    pub fn blackhole(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }
}

impl Drop for BlackholeProxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its pumps and held connections.
        self.accept.abort();
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, silent: Arc<AtomicBool>) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            // Hold the data and both connections until the proxy is dropped.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
