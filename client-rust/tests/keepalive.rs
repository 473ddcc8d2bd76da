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

mod common;

use std::time::{Duration, Instant};

use common::{BlackholeProxy, Server, client_of, python_spec, wait_for};
use sandpool_client::{AcquireOptions, Error, RunEvent, proto as pb};

/// The lease TTL: renewals every second.
const TTL: Duration = Duration::from_secs(3);
/// How late past the TTL the client may notice a silent connection.
const MARGIN: Duration = Duration::from_millis(500);
const POOL: &str = "keepalive";

/// A server with the pool `POOL` (one warm container, two at most).
async fn server_with_pool() -> Server {
    let server = Server::start().await;
    server
        .client(Duration::from_secs(30))
        .await
        .expect("connect")
        .create_pool(python_spec(POOL, 1, 2), true)
        .await
        .expect("create the pool");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_at_a_third_of_the_ttl_and_a_silent_connection_loses_the_lease_within_it() {
    let server = server_with_pool().await;
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
    let server = server_with_pool().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_waited_longer_than_its_ttl_for_a_container_is_held_on_arrival() {
    const SINGLE: &str = "keepalive-wait";
    let ttl = Duration::from_secs(1);
    let server = Server::start().await;
    let client = server
        .client(Duration::from_secs(30))
        .await
        .expect("connect");
    let mut spec = python_spec(SINGLE, 1, 1);
    if let Some(config) = spec.config.as_mut() {
        config.exhaustion_strategy = pb::ExhaustionStrategy::Wait.into();
        config.acquisition_timeout = Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        });
    }
    client
        .create_pool(spec, true)
        .await
        .expect("create the pool");
    let holder = client
        .acquire(SINGLE)
        .await
        .expect("acquire the only container");
    // The only container is held: this Acquire waits 2.5 TTLs.
    let behind = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .acquire_with(
                    AcquireOptions::new(SINGLE)
                        .ttl(ttl)
                        .wait(Duration::from_secs(20)),
                )
                .await
        }
    });
    tokio::time::sleep(ttl * 5 / 2).await;
    holder.release().await.expect("release the holder");
    let session = behind
        .await
        .expect("the acquiring task")
        .expect("acquire behind the holder");
    // Its TTL runs from the grant, not from the Acquire sent 2.5 TTLs ago.
    assert_eq!(session.lost(), None);
    let held = session.run_collect("print('held')").await.expect("run");
    assert_eq!(held.stdout_text(), "held\n");
    tokio::time::sleep(2 * ttl).await;
    assert_eq!(session.lost(), None);
    assert!(session.renewals() >= 3, "{} renewals", session.renewals());
    session.release().await.expect("release");
    server.stop().await;
}
