//! Leases: keepalive, expiry, release, and clients that die.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sandpool_client::{Error, proto as pb};
use sandpool_tests::{TestServer, code_of, python_pool, secs, wait_for};
use tonic::Code;

fn short_ttl_pool(name: &str, ttl: f64) -> pb::PoolSpec {
    let mut spec = python_pool(name);
    spec.default_lease_ttl = secs(ttl);
    spec.config.as_mut().expect("config").max_pool_size = Some(1);
    spec
}

async fn raw_acquire(server: &TestServer, pool: &str) -> pb::Lease {
    server
        .client
        .sessions()
        .acquire(pb::AcquireRequest {
            pool: pool.into(),
            ttl: None,
            ..Default::default()
        })
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_without_keepalive_expires_and_frees_its_container() {
    let server = TestServer::start().await;
    server.pool(short_ttl_pool("ttl", 1.0)).await;
    // Acquired without the client's keepalive.
    let lease = raw_acquire(&server, "ttl").await;
    assert_eq!(lease.id.len(), 32, "128-bit id in hex");
    let started = Instant::now();
    wait_for("the lease to expire", Duration::from_secs(5), || async {
        (server.stats("ttl").await.active_leases == 0).then_some(())
    })
    .await;
    let expired_after = started.elapsed();
    assert!(
        expired_after >= Duration::from_millis(800),
        "expired too early: {expired_after:?}"
    );
    assert!(
        expired_after < Duration::from_secs(3),
        "expired too late: {expired_after:?}"
    );

    let err = server
        .client
        .sessions()
        .run(pb::RunRequest {
            lease_id: lease.id.clone(),
            program: Some(pb::run_request::Program::Command(pb::Command {
                argv: vec!["true".into()],
                shell: String::new(),
            })),
            ..Default::default()
        })
        .await
        .expect_err("run on an expired lease");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("expired"), "{}", err.message());

    // The slot is free again and the container is reused.
    let next = server
        .client
        .acquire("ttl")
        .await
        .expect("acquire after expiry");
    assert_eq!(next.container_id(), lease.container_id);
    let counters = server.stats("ttl").await.counters.expect("c");
    assert_eq!(counters.lease_expirations, 1);
    next.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_holds_a_lease_past_three_ttls_and_reports_gone_leases() {
    let server = TestServer::start().await;
    server.pool(short_ttl_pool("alive", 1.0)).await;
    let session = server.client.acquire("alive").await.expect("acquire");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(session.lost().is_none(), "lease lost: {:?}", session.lost());
    let out = session
        .run_collect("print('still mine')")
        .await
        .expect("run after 3.5 TTLs");
    assert_eq!(out.stdout_text(), "still mine\n");

    // The KeepAlive stream answers for leases that are gone, without failing.
    let id = session.lease_id().to_string();
    session.release().await.expect("release");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = server
        .client
        .sessions()
        .keep_alive(tokio_stream_from(rx))
        .await
        .expect("keepalive stream")
        .into_inner();
    for lease_id in [id.clone(), "0".repeat(32)] {
        tx.send(pb::KeepAliveRequest {
            lease_id,
            ..Default::default()
        })
        .await
        .expect("send");
    }
    let first = answers.message().await.expect("answer").expect("some");
    assert_eq!(first.state, pb::LeaseState::Released as i32);
    let second = answers.message().await.expect("answer").expect("some");
    assert_eq!(second.state, pb::LeaseState::NotFound as i32);
    drop(tx);
    server.stop().await;
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_is_idempotent_and_ended_leases_say_how() {
    let server = TestServer::start().await;
    server.pool(python_pool("rel")).await;
    let lease = raw_acquire(&server, "rel").await;
    let mut sessions = server.client.sessions();
    let first = sessions
        .release(pb::ReleaseRequest {
            lease_id: lease.id.clone(),
        })
        .await
        .expect("release")
        .into_inner();
    assert_eq!(first.previous_state, pb::LeaseState::Active as i32);
    let second = sessions
        .release(pb::ReleaseRequest {
            lease_id: lease.id.clone(),
        })
        .await
        .expect("second release is fine")
        .into_inner();
    assert_eq!(second.previous_state, pb::LeaseState::Released as i32);
    let err = sessions
        .cancel(pb::CancelRequest {
            lease_id: lease.id.clone(),
            run_id: "0123456789abcdef".into(),
        })
        .await
        .expect_err("cancel on a released lease");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("released"), "{}", err.message());
    let err = sessions
        .release(pb::ReleaseRequest {
            lease_id: "f".repeat(32),
        })
        .await
        .expect_err("unknown lease");
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_session_reports_a_lost_lease() {
    let server = TestServer::start().await;
    server.pool(short_ttl_pool("lost", 1.0)).await;
    let session = server.client.acquire("lost").await.expect("acquire");
    // Someone else (an operator, a bug) releases the lease behind its back.
    server
        .client
        .sessions()
        .release(pb::ReleaseRequest {
            lease_id: session.lease_id().into(),
        })
        .await
        .expect("release");
    let err = session
        .run_collect("print(1)")
        .await
        .expect_err("the lease is gone");
    assert!(matches!(err, Error::LeaseLost { .. }), "{err:?}");
    assert_eq!(code_of(&err), Code::FailedPrecondition);
    wait_for(
        "the keepalive to notice",
        Duration::from_secs(3),
        || async { session.lost().map(|_| ()) },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_with_sigkill_holds_its_container_at_most_ttl_plus_two_seconds() {
    let server = TestServer::start().await;
    let ttl = 2.0;
    server.pool(short_ttl_pool("killed", ttl)).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hold_lease"))
        .args([format!("http://{}", server.addr), "killed".to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the holder");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read lease id");
        line
    })
    .await
    .expect("reader");
    assert_eq!(line.trim().len(), 32, "holder printed its lease: {line:?}");
    // It keeps the lease alive while it lives.
    tokio::time::sleep(Duration::from_secs_f64(ttl * 1.5)).await;
    assert_eq!(
        server.stats("killed").await.active_leases,
        1,
        "the living client holds its lease"
    );
    child.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    let _ = child.wait();
    wait_for(
        "the server to reclaim the lease",
        Duration::from_secs_f64(ttl + 2.0),
        || async { (server.stats("killed").await.active_leases == 0).then_some(()) },
    )
    .await;
    let freed_after = killed_at.elapsed();
    assert!(
        freed_after <= Duration::from_secs_f64(ttl + 2.0),
        "{freed_after:?}"
    );
    // And the container serves the next client.
    let next = server
        .client
        .acquire("killed")
        .await
        .expect("acquire after the kill");
    assert_eq!(
        next.run_collect("print(2)")
            .await
            .expect("run")
            .stdout_text(),
        "2\n"
    );
    next.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ttl_is_bounded() {
    let server = TestServer::start().await;
    server.pool(python_pool("bounds")).await;
    for (ttl, field_hint) in [(0.5, "minimum"), (100_000.0, "max_lease_ttl")] {
        let err = server
            .client
            .sessions()
            .acquire(pb::AcquireRequest {
                pool: "bounds".into(),
                ttl: secs(ttl),
                ..Default::default()
            })
            .await
            .expect_err("out of bounds ttl");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field_hint), "{}", err.message());
    }
    let lease = server
        .client
        .sessions()
        .acquire(pb::AcquireRequest {
            pool: "bounds".into(),
            ttl: secs(90.0),
            ..Default::default()
        })
        .await
        .expect("in-bounds ttl")
        .into_inner()
        .lease
        .expect("lease");
    assert_eq!(lease.ttl.expect("ttl").seconds, 90);
    server.stop().await;
}
