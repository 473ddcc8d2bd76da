//! The keepalive contract, tested the same way in the Python and TypeScript
//! suites: renewals at a third of the TTL; on a connection that goes silent
//! (a proxy that stops forwarding but closes nothing) the lease is lost
//! within the TTL, calls fail with `LeaseLost` at once and none hangs; a
//! keepalive answered with a state other than ACTIVE loses the lease with
//! that state.
//!
//! Against a real sandpool-server process (`SANDPOOL_SERVER_BIN`, else
//! target/debug/sandpool-server, built when missing) on the Docker engine,
//! with the image sandpool/python:bookworm (scripts/build-images.sh).

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

use sandpool_client::{AcquireOptions, Client, Error, RunEvent, proto as pb};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
};

/// The lease TTL: renewals every second.
const TTL: Duration = Duration::from_secs(3);
/// How late past the TTL the client may notice a silent connection.
const MARGIN: Duration = Duration::from_millis(500);
const POOL: &str = "keepalive";

fn image() -> String {
    std::env::var("SANDPOOL_TEST_PYTHON_IMAGE")
        .unwrap_or_else(|_| "sandpool/python:bookworm".into())
}

fn server_binary() -> PathBuf {
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
async fn wait_for<T, F: Future<Output = Option<T>>>(
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

/// A sandpool-server process on a free port with a pool `POOL`; stopped with
/// SIGTERM, it must exit cleanly and leave no container.
struct Server {
    child: Option<Child>,
    addr: String,
    id: String,
    dir: PathBuf,
}

impl Server {
    async fn start() -> Self {
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
        let client = wait_for(
            "the server to answer ListPools",
            Duration::from_secs(30),
            || async {
                let client = server.client(Duration::from_secs(5)).await.ok()?;
                client.list_pools().await.ok().map(|_| client)
            },
        )
        .await;
        let mut spec = pb::PoolSpec {
            name: POOL.into(),
            language: "python".into(),
            image: image(),
            ..Default::default()
        };
        spec.config = Some(pb::PoolConfig {
            max_pool_size: Some(2),
            min_pool_size: Some(1),
            ..Default::default()
        });
        client
            .create_pool(spec, true)
            .await
            .expect("create the pool");
        server
    }

    async fn client(&self, timeout: Duration) -> Result<Client, Error> {
        client_of(&self.addr, timeout).await
    }

    async fn stop(mut self) {
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

async fn client_of(addr: &str, timeout: Duration) -> Result<Client, Error> {
    Client::builder(format!("http://{addr}"))
        .timeout(timeout)
        .connect()
        .await
}

/// A TCP proxy from 127.0.0.1 to `target`. After `blackhole()` it forwards
/// nothing more in either direction and accepts new connections without
/// forwarding them, yet closes nothing (no FIN, no RST): a network that
/// silently drops everything. Dropping it closes everything.
struct BlackholeProxy {
    addr: String,
    silent: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl BlackholeProxy {
    async fn start(target: &str) -> Self {
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

    fn blackhole(&self) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_at_a_third_of_the_ttl_and_a_silent_connection_loses_the_lease_within_it() {
    let server = Server::start().await;
    let proxy = BlackholeProxy::start(&server.addr).await;
    let client = client_of(&proxy.addr, TTL)
        .await
        .expect("connect through the proxy");
    let session = client
        .acquire_with(AcquireOptions::new(POOL).ttl(TTL))
        .await
        .expect("acquire");
    assert_eq!(session.lease().ttl.map(|d| d.seconds), Some(3));
    // Renewals at about TTL/3: six in two TTLs.
    tokio::time::sleep(2 * TTL).await;
    let renewals = session.renewals();
    assert!((5..=7).contains(&renewals), "{renewals} renewals");
    assert_eq!(session.lost(), None);
    let held = session.run_collect("print('held')").await.expect("run");
    assert_eq!(held.stdout_text(), "held\n");

    // A run in flight when the connection goes silent.
    let mut stream = session
        .run("import time\nprint('running', flush=True)\ntime.sleep(120)")
        .await
        .expect("run");
    loop {
        match stream.next().await {
            Some(Ok(RunEvent::Stdout(_))) => break,
            Some(Ok(_)) => {}
            other => panic!("the run ended early: {other:?}"),
        }
    }
    proxy.blackhole();
    let silent_at = Instant::now();
    let renewals = session.renewals();
    let reason = wait_for(
        "the session to give up on its lease",
        TTL + 2 * MARGIN,
        || async { session.lost() },
    )
    .await;
    let noticed = silent_at.elapsed();
    assert!(
        noticed <= TTL + MARGIN,
        "noticed {noticed:?} after the connection went silent"
    );
    assert!(
        reason.contains("keepalive failed for longer than the 3s TTL"),
        "{reason}"
    );
    assert_eq!(session.renewals(), renewals);

    // The run in flight ends with the loss, not at its deadline.
    let t0 = Instant::now();
    let cut = stream.collect().await.expect_err("the run was cut");
    assert!(t0.elapsed() < MARGIN, "cut after {:?}", t0.elapsed());
    assert!(
        matches!(&cut, Error::LeaseLost { lease_id, state: None, .. } if lease_id == session.lease_id()),
        "{cut:?}"
    );

    // Every call fails with LeaseLost at once, without a round trip.
    let t0 = Instant::now();
    let lost = session.run_collect("print(1)").await.expect_err("lost");
    assert!(t0.elapsed() < MARGIN);
    assert!(
        matches!(&lost, Error::LeaseLost { reason: r, state: None, .. } if *r == reason),
        "{lost:?}"
    );
    let upload = session.upload("/sandbox/x", "x").await.expect_err("lost");
    assert!(matches!(upload, Error::LeaseLost { .. }), "{upload:?}");

    // Telling the server is bounded by the client's deadline.
    let t0 = Instant::now();
    let released = session.release().await;
    assert!(
        matches!(
            released,
            Err(Error::DeadlineExceeded(_) | Error::Unavailable(_))
        ),
        "{released:?}"
    );
    assert!(
        t0.elapsed() < TTL + MARGIN,
        "release took {:?}",
        t0.elapsed()
    );
    drop(proxy);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_answered_with_another_state_loses_the_lease_with_that_state() {
    let server = Server::start().await;
    let client = server
        .client(Duration::from_secs(10))
        .await
        .expect("connect");
    let session = client
        .acquire_with(AcquireOptions::new(POOL).ttl(TTL))
        .await
        .expect("acquire");
    // Another holder of the lease id ends it; the next renewal hears so.
    client
        .sessions()
        .release(pb::ReleaseRequest {
            lease_id: session.lease_id().to_string(),
        })
        .await
        .expect("release behind the session's back");
    let reason = wait_for(
        "the keepalive to hear the release",
        TTL / 3 + 2 * MARGIN,
        || async { session.lost() },
    )
    .await;
    assert!(
        reason.starts_with("the server answered the keepalive with RELEASED"),
        "{reason}"
    );
    let lost = session.run_collect("print(1)").await.expect_err("lost");
    assert!(
        matches!(&lost, Error::LeaseLost { reason: r, state: Some(pb::LeaseState::Released), .. } if *r == reason),
        "{lost:?}"
    );
    session.release().await.expect("release");
    server.stop().await;
}
