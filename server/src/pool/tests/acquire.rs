//! Warming, acquiring and releasing, and the exhaustion strategies.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    backend::{LABEL_POOL, LABEL_SERVER, LABEL_TEMPORARY, fake::Program},
    error::{Error, LeaseEnd},
    pool::Phase,
    spec::ExhaustionStrategy,
    testkit::{Harness, SERVER_ID},
};

/// The commands a warden gets while its container warms up.
const WARM_UP: [&str; 2] = ["discover /sandbox /home/sandbox /tmp /dev/shm", "reset"];

#[tokio::test(start_paused = true)]
async fn a_pool_warms_to_min_pool_size_and_no_further() {
    let h = Harness::new();
    h.fake.set_create_delay(Duration::from_secs(1));
    let start = Instant::now();
    h.warm_pool("warm", 3, 5, |_| {}).await;
    // Made at once, not one after the other.
    let warm = start.elapsed();
    assert!(warm < Duration::from_millis(1100), "warm after {warm:?}");
    // Without demand nothing more is made.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let containers = h.fake.containers();
    assert_eq!(containers.len(), 3);
    let journal = h.fake.journal();
    for c in &containers {
        assert!(c.running);
        assert_eq!(c.labels[LABEL_SERVER], SERVER_ID);
        assert_eq!(c.labels[LABEL_POOL], "warm");
        assert_eq!(c.labels[LABEL_TEMPORARY], "false");
        // The warden starts first, before anything else runs there, by a
        // privileged exec whose stdin the server holds.
        let first = journal
            .execs
            .iter()
            .find(|e| e.container == c.id)
            .expect("execs in the container");
        assert!(first.privileged && first.stdin, "{first:?}");
        assert!(first.argv.iter().any(|a| a == "sandpool-warden"));
        assert_eq!(first.user, "0:0");
        assert_eq!(h.fake.warden_commands(&c.id), WARM_UP);
    }
    let stats = h.stats("warm");
    assert_eq!(stats.counters.containers_created, 3);
    assert_eq!(journal.created, 3);
    let view = h.manager.get_pool(&h.who, "warm").expect("the pool");
    assert_eq!(view.phase, Phase::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_released_container_is_reset_and_idle_again() {
    let h = Harness::new();
    h.warm_pool("cycle", 1, 1, |_| {}).await;
    let execs = h.fake.journal().execs.len();
    let lease = h.acquire("cycle").await.expect("a lease");
    // From a warm pool: no engine call at all.
    assert_eq!(h.fake.journal().execs.len(), execs);
    let counts = h.stats("cycle").state_counts;
    assert_eq!((counts.busy, counts.idle), (1, 0));
    // The lease leaves a process behind.
    h.fake
        .program(Program::matching(&["daemon"]).until_killed());
    {
        let guard = h.lease(&lease).expect("a live lease");
        let argv = vec!["daemon".to_string()];
        guard
            .sandbox()
            .start(guard.sandbox().internal(argv))
            .await
            .expect("started");
    }
    let container = lease.container_id.clone();
    assert_eq!(h.fake.live_execs(&container), 1);
    h.release(&lease);
    h.until_idle("cycle", 1).await;
    // The same container, reset: the warden's reset killed the leftover.
    assert_eq!(h.fake.running(), [container.as_str()]);
    assert_eq!(
        h.fake.warden_commands(&container),
        [WARM_UP[0], WARM_UP[1], "reset"]
    );
    assert_eq!(h.fake.live_execs(&container), 0);
    let counters = h.stats("cycle").counters;
    assert_eq!((counters.acquisitions, counters.releases), (1, 1));
    assert!(matches!(
        h.lease(&lease),
        Err(Error::LeaseEnded {
            end: LeaseEnd::Released,
            ..
        })
    ));
    let again = h.acquire("cycle").await.expect("a second lease");
    assert_eq!(again.container_id, container);
}

#[tokio::test(start_paused = true)]
async fn wait_gives_up_after_acquisition_timeout() {
    let h = Harness::new();
    h.warm_pool("wait", 1, 1, |s| {
        s.config.acquisition_timeout = Some(Duration::from_secs(5))
    })
    .await;
    let _held = h.acquire("wait").await.expect("a lease");
    let start = Instant::now();
    let err = h.acquire("wait").await.expect_err("the pool is exhausted");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_millis(5050),
        "gave up after {took:?}"
    );
    match &err {
        Error::Exhausted { waited, .. } => assert!(*waited >= Duration::from_secs(5)),
        other => panic!("not Exhausted: {other:?}"),
    }
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    let stats = h.stats("wait");
    assert_eq!((stats.counters.waits, stats.counters.wait_timeouts), (1, 1));
    assert_eq!(stats.waiting, 0);
    // Waiting made nothing beyond max_pool_size.
    assert_eq!(h.fake.journal().created, 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served() {
    let h = Arc::new(Harness::new());
    h.warm_pool("fifo", 1, 1, |s| {
        s.config.acquisition_timeout = Some(Duration::from_secs(60))
    })
    .await;
    let first = h.acquire("fifo").await.expect("a lease");
    let waiter = |h: &Arc<Harness>| {
        let h = Arc::clone(h);
        tokio::spawn(async move { h.acquire("fifo").await })
    };
    let second = waiter(&h);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let third = waiter(&h);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.stats("fifo").waiting, 2);
    h.release(&first);
    let second = second
        .await
        .expect("joined")
        .expect("the first waiter is served");
    assert_eq!(second.container_id, first.container_id);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "the second waiter jumped the queue");
    h.release(&second);
    let third = third.await.expect("joined").expect("then the second");
    assert_eq!(third.container_id, first.container_id);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_refuses_at_once() {
    let h = Harness::new();
    h.warm_pool("ff", 1, 1, |s| {
        s.config.exhaustion_strategy = ExhaustionStrategy::FailFast
    })
    .await;
    let _held = h.acquire("ff").await.expect("a lease");
    let start = Instant::now();
    let err = h.acquire("ff").await.expect_err("refused");
    assert!(start.elapsed() < Duration::from_millis(50));
    assert!(
        matches!(&err, Error::Exhausted { waited, .. } if waited.is_zero()),
        "{err:?}"
    );
    let stats = h.stats("ff");
    assert_eq!(stats.counters.fail_fast_refusals, 1);
    assert_eq!(stats.counters.waits, 0);
    assert_eq!(h.fake.journal().created, 1);
}

#[tokio::test(start_paused = true)]
async fn temporary_serves_beyond_the_pool_and_is_removed_on_release() {
    let h = Harness::new();
    h.warm_pool("temp", 1, 1, |s| {
        s.config.exhaustion_strategy = ExhaustionStrategy::Temporary
    })
    .await;
    let pooled = h.acquire("temp").await.expect("a pooled lease");
    assert!(!pooled.temporary);
    let temporary = h.acquire("temp").await.expect("a temporary lease");
    assert!(temporary.temporary);
    assert_ne!(temporary.container_id, pooled.container_id);
    let made = h
        .fake
        .containers()
        .into_iter()
        .find(|c| c.id == temporary.container_id)
        .expect("the temporary container exists");
    assert!(made.running);
    assert_eq!(made.labels[LABEL_TEMPORARY], "true");
    let stats = h.stats("temp");
    assert_eq!(stats.counters.temporaries, 1);
    assert_eq!(stats.temporary_containers, 1);
    assert_eq!(stats.counters.temporary_refusals, 0);
    // Outside the pool: its size is still max_pool_size.
    assert_eq!(stats.total_size, 1);
    h.release(&temporary);
    h.until(
        "the temporary container is removed",
        Duration::from_secs(5),
        || h.fake.running() == [pooled.container_id.as_str()],
    )
    .await;
    let stats = h.stats("temp");
    assert_eq!(stats.temporary_containers, 0);
    assert_eq!(stats.state_counts.busy, 1);
}

#[tokio::test(start_paused = true)]
async fn creation_failures_back_off_then_the_pool_recovers() {
    let h = Harness::new();
    // The engine watcher connects with the first pool, and its first
    // connection counts as the engine coming back (the pools retry at once):
    // let that pass before the failures start.
    h.pool("first", |_| {}).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.fake.fail_creates(2);
    let start = Instant::now();
    h.pool("flaky", |s| {
        s.config.min_pool_size = 1;
        s.config.max_pool_size = 1;
    })
    .await;
    let phase = || h.manager.get_pool(&h.who, "flaky").expect("the pool").phase;
    h.until("the pool is failing", Duration::from_secs(1), || {
        phase() == Phase::Failing
    })
    .await;
    // Nothing is on its way: an acquire is told why at once.
    match h.acquire("flaky").await {
        Err(Error::PoolFailing { message, .. }) => {
            assert!(message.contains("injected failure"), "{message}")
        }
        other => panic!("not PoolFailing: {other:?}"),
    }
    h.until_idle("flaky", 1).await;
    // Tried again after 1 s, then after 2 more.
    let ready = start.elapsed();
    assert!(
        ready >= Duration::from_secs(3) && ready < Duration::from_secs(4),
        "warm after {ready:?}"
    );
    assert_eq!(h.stats("flaky").counters.create_failures, 2);
    assert_eq!(phase(), Phase::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_container_that_fails_to_warm_is_removed_and_another_made() {
    let h = Harness::new();
    // Both toolchain checks of the first warm-up (under SCHED_IDLE, then
    // plain) cannot even start.
    let (check, _) = crate::lang::lookup("bash").expect("bash").check();
    h.fake.program(Program::matching(&check).refuse().times(2));
    h.warm_pool("cold", 1, 1, |_| {}).await;
    let journal = h.fake.journal();
    assert_eq!(journal.created, 2);
    // The one that failed is gone from the engine, not left behind.
    assert_eq!(h.fake.containers().len(), 1);
    assert_eq!(h.stats("cold").counters.create_failures, 1);
}
