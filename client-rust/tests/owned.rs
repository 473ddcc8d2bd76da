//! Owned pools, tested the same way in the Python and TypeScript suites: a
//! pool that belongs to its creator is kept alive in the background on the
//! KeepAlive stream, deleted at once by `delete()` (and on drop), by the
//! server within its owner TTL when the creator is killed, and lost (calls
//! fail with `PoolLost` at once, none hangs) when the connection goes
//! silent.
//!
//! Against a real sandpool-server process on the Docker engine (see
//! tests/common), with the example `hold_owned_pool` as the process that is
//! killed.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{BlackholeProxy, Server, client_of, image, python_spec, wait_for};
use sandpool_client::{AcquireOptions, Client, Error, proto as pb};

/// The owner TTL: renewals every 2/3 s.
const OWNER_TTL: Duration = Duration::from_secs(2);
/// How late past the TTL the client may notice a silent connection.
const MARGIN: Duration = Duration::from_millis(500);

fn nanos(t: Option<prost_types::Timestamp>) -> i128 {
    t.map_or(0, |t| {
        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
    })
}

async fn names(client: &Client) -> Vec<String> {
    client
        .list_pools()
        .await
        .expect("list pools")
        .into_iter()
        .filter_map(|p| p.spec.map(|s| s.name))
        .collect()
}

/// Waits until `name` is no longer listed, at most `within`.
async fn wait_gone(client: &Client, name: &str, within: Duration) {
    wait_for(&format!("pool {name} to be gone"), within, || async {
        (!names(client).await.contains(&name.to_string())).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owned_pool_lives_while_renewed_and_delete_removes_it_at_once() {
    let server = Server::start().await;
    let client = server
        .client(Duration::from_secs(30))
        .await
        .expect("connect");
    let admin = server
        .client(Duration::from_secs(10))
        .await
        .expect("connect");
    let pool = client
        .create_owned_pool(python_spec("owned", 1, 2), OWNER_TTL, true)
        .await
        .expect("create the owned pool");
    assert_eq!(pool.name(), "owned");
    assert_eq!(pool.pool().phase, pb::PoolPhase::Ready as i32);
    assert!(!pool.pool().owner.is_empty());
    assert!(pool.pool().owner_expire_time.is_some());
    assert_eq!(pool.owner_ttl(), OWNER_TTL);
    assert_eq!(pool.lost(), None);
    assert!(!pool.closed());

    // The deadline moves on with every renewal, across more than two TTLs.
    let mut seen = vec![nanos(
        admin
            .get_pool("owned")
            .await
            .expect("get")
            .owner_expire_time,
    )];
    let until = Instant::now() + OWNER_TTL * 5 / 2;
    while Instant::now() < until {
        tokio::time::sleep(OWNER_TTL / 2).await;
        seen.push(nanos(
            admin
                .get_pool("owned")
                .await
                .expect("get")
                .owner_expire_time,
        ));
    }
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
    let listed = admin
        .list_pools()
        .await
        .expect("list")
        .into_iter()
        .find(|p| p.spec.as_ref().is_some_and(|s| s.name == "owned"))
        .expect("listed");
    assert_eq!(listed.owner, pool.pool().owner);
    assert!(listed.owner_expire_time.is_some());
    assert_eq!(pool.lost(), None);
    assert!(pool.renewals() >= 6, "{} renewals", pool.renewals());

    let session = pool
        .acquire_with(AcquireOptions::new("ignored").ttl(Duration::from_secs(5)))
        .await
        .expect("acquire");
    let out = session
        .run_collect("print('in an owned pool')")
        .await
        .expect("run");
    assert_eq!(out.stdout_text(), "in an owned pool\n");
    session.release().await.expect("release");
    assert_eq!(
        pool.get().await.expect("get").phase,
        pb::PoolPhase::Ready as i32
    );
    assert_eq!(pool.stats().await.expect("stats").max_size, 2);

    // delete() removes it at once: no new lease, gone as soon as its
    // containers are.
    assert_eq!(pool.delete().await.expect("delete"), 0);
    assert!(pool.closed());
    match admin.get_pool("owned").await {
        Ok(p) => assert_eq!(p.phase, pb::PoolPhase::Draining as i32),
        Err(Error::NotFound(_)) => {}
        Err(other) => panic!("{other:?}"),
    }
    wait_gone(&admin, "owned", Duration::from_secs(10)).await;
    let Err(err) = pool.acquire().await else {
        panic!("a deleted pool leased a container")
    };
    assert!(
        matches!(&err, Error::PoolLost { pool, reason, .. } if pool == "owned" && reason.contains("deleted by this client")),
        "{err:?}"
    );
    assert_eq!(pool.delete().await.expect("idempotent"), 0);

    // Dropped undeleted: deleted in the background.
    let dropped = client
        .create_owned_pool(python_spec("dropped", 0, 1), OWNER_TTL * 10, false)
        .await
        .expect("create");
    drop(dropped);
    wait_gone(&admin, "dropped", Duration::from_secs(5)).await;

    // Out of range: refused, naming the field.
    let err = client
        .create_owned_pool(
            python_spec("badttl", 0, 1),
            Duration::from_millis(500),
            false,
        )
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(err.field().as_deref(), Some("owner_ttl"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_deleted_behind_its_owners_back_is_lost_with_not_found() {
    let server = Server::start().await;
    let client = server
        .client(Duration::from_secs(10))
        .await
        .expect("connect");
    let pool = client
        .create_owned_pool(python_spec("behind", 0, 1), OWNER_TTL, false)
        .await
        .expect("create");
    client
        .delete_pool("behind", true)
        .await
        .expect("delete behind its back");
    let reason = wait_for(
        "the keepalive to hear the pool is gone",
        OWNER_TTL / 3 + 2 * MARGIN,
        || async { pool.lost() },
    )
    .await;
    assert!(
        reason.starts_with("the server answered the keepalive with NOT_FOUND"),
        "{reason}"
    );
    let Err(err) = pool.acquire().await else {
        panic!("a lost pool leased a container")
    };
    assert!(
        matches!(&err, Error::PoolLost { state: Some(pb::LeaseState::NotFound), reason: r, .. } if *r == reason),
        "{err:?}"
    );
    let t0 = Instant::now();
    assert_eq!(pool.delete().await.expect("nothing to send"), 0);
    assert!(t0.elapsed() < MARGIN);
    server.stop().await;
}

/// The example that creates an owned pool and holds it until killed.
fn hold_owned_pool() -> PathBuf {
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "sandpool-client",
            "--example",
            "hold_owned_pool",
        ])
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .expect("cargo build --example hold_owned_pool");
    assert!(
        built.success(),
        "cargo build --example hold_owned_pool failed"
    );
    // This test runs from <target>/debug/deps.
    let exe = std::env::current_exe().expect("current exe");
    let debug = exe.parent().and_then(|d| d.parent()).expect("target dir");
    debug.join("examples/hold_owned_pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_process_leaves_no_pool_and_its_leases_end() {
    let server = Server::start().await;
    let admin = server
        .client(Duration::from_secs(10))
        .await
        .expect("connect");
    let binary = tokio::task::spawn_blocking(hold_owned_pool)
        .await
        .expect("join");
    let mut child = Command::new(binary)
        .args(["killed", &OWNER_TTL.as_millis().to_string()])
        .env("SANDPOOL_ADDR", format!("http://{}", server.addr))
        .env("SANDPOOL_IMAGE", image())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("read its line");
    assert!(line.starts_with("POOL killed "), "{line:?}");
    let info = admin.get_pool("killed").await.expect("get");
    assert!(!info.owner.is_empty() && info.owner_expire_time.is_some());
    let session = admin
        .acquire_with(AcquireOptions::new("killed").ttl(Duration::from_secs(3)))
        .await
        .expect("acquire");
    // The child's keepalive holds the pool past its TTL.
    tokio::time::sleep(OWNER_TTL + MARGIN).await;
    assert!(names(&admin).await.contains(&"killed".to_string()));
    assert_eq!(session.lost(), None);

    child.kill().expect("SIGKILL"); // std's kill is SIGKILL
    let _ = child.wait();
    let killed = Instant::now();
    wait_gone(&admin, "killed", OWNER_TTL + Duration::from_secs(2)).await;
    assert!(killed.elapsed() <= OWNER_TTL + Duration::from_secs(2));
    // The lease on it ended with a typed reason.
    let reason = wait_for("the lease to be lost", Duration::from_secs(5), || async {
        session.lost()
    })
    .await;
    assert!(reason.contains("POOL_DELETED"), "{reason}");
    let err = session.run_collect("print(1)").await.expect_err("lost");
    assert!(
        matches!(
            err,
            Error::LeaseLost {
                state: Some(pb::LeaseState::PoolDeleted),
                ..
            }
        ),
        "{err:?}"
    );
    session.release().await.expect("release");
    // The server serves on.
    let other = admin
        .create_owned_pool(python_spec("after", 0, 1), OWNER_TTL, false)
        .await
        .expect("create");
    let s = other.acquire().await.expect("acquire");
    assert_eq!(
        s.run_collect("print('still serving')")
            .await
            .expect("run")
            .stdout_text(),
        "still serving\n"
    );
    s.release().await.expect("release");
    other.delete().await.expect("delete");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_loses_the_owned_pool_within_its_ttl() {
    let server = Server::start().await;
    let proxy = BlackholeProxy::start(&server.addr).await;
    let admin = server
        .client(Duration::from_secs(10))
        .await
        .expect("connect");
    let client = client_of(&proxy.addr, OWNER_TTL + Duration::from_secs(1))
        .await
        .expect("connect through the proxy");
    let mut spec = python_spec("silent", 1, 1);
    if let Some(config) = spec.config.as_mut() {
        config.acquisition_timeout = Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        });
    }
    let pool = client
        .create_owned_pool(spec, OWNER_TTL, true)
        .await
        .expect("create through the proxy");
    // Renewals at about TTL/3: six in two TTLs (some ran while it warmed up).
    let before = pool.renewals();
    tokio::time::sleep(2 * OWNER_TTL).await;
    let renewed = pool.renewals() - before;
    assert!((5..=7).contains(&renewed), "{renewed} renewals");
    assert_eq!(pool.lost(), None);
    // Another client holds the only container, on a connection of its own.
    let held = admin
        .acquire_with(AcquireOptions::new("silent").ttl(Duration::from_secs(3)))
        .await
        .expect("acquire");

    let pool = std::sync::Arc::new(pool);
    // An acquire waiting for that container when the connection goes silent.
    let waiting = {
        let pool = std::sync::Arc::clone(&pool);
        tokio::spawn(async move {
            pool.acquire_with(AcquireOptions::new("silent").wait(Duration::from_secs(60)))
                .await
                .map(|_| ())
        })
    };
    // Until the call waits at the server (a fixed pause may end before it
    // got there on a busy machine, and then nothing is in flight to cut).
    let t0 = Instant::now();
    while admin.stats("silent").await.expect("stats").waiting == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the acquire never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.blackhole();
    let silent_at = Instant::now();
    let renewals = pool.renewals();
    let reason = wait_for(
        "the owner to give up on its pool",
        OWNER_TTL + 2 * MARGIN,
        || async { pool.lost() },
    )
    .await;
    let noticed = silent_at.elapsed();
    assert!(
        noticed <= OWNER_TTL + MARGIN,
        "noticed {noticed:?} after the connection went silent"
    );
    assert!(
        reason.contains("keepalive failed for longer than the 2s owner TTL"),
        "{reason}"
    );
    assert_eq!(pool.renewals(), renewals);
    // The call in flight ends with the loss, not at its deadline.
    let cut = tokio::time::timeout(MARGIN, waiting)
        .await
        .expect("the waiting acquire ended")
        .expect("join")
        .expect_err("cut");
    assert!(
        matches!(&cut, Error::PoolLost { pool, state: None, .. } if pool == "silent"),
        "{cut:?}"
    );

    // Every call fails with PoolLost at once, without a round trip.
    let t0 = Instant::now();
    let Err(lost) = pool.acquire().await else {
        panic!("a lost pool leased a container")
    };
    assert!(
        matches!(&lost, Error::PoolLost { reason: r, .. } if *r == reason),
        "{lost:?}"
    );
    assert!(matches!(pool.stats().await, Err(Error::PoolLost { .. })));
    assert_eq!(pool.delete().await.expect("nothing to send"), 0);
    assert!(t0.elapsed() < MARGIN, "{:?}", t0.elapsed());

    // The server heard no keepalive either: it deleted the pool, and the
    // lease on it ended with a typed reason.
    wait_gone(&admin, "silent", Duration::from_secs(4)).await;
    wait_for(
        "the lease on it to be lost",
        Duration::from_secs(3),
        || async { held.lost() },
    )
    .await;
    let ended = held.run_collect("print(1)").await.expect_err("lost");
    assert!(
        matches!(
            ended,
            Error::LeaseLost {
                state: Some(pb::LeaseState::PoolDeleted),
                ..
            }
        ),
        "{ended:?}"
    );
    held.release().await.expect("release");
    drop(proxy);
    server.stop().await;
}
