//! What the engine reports: a container dead behind the pool's back, the
//! engine going away and coming back.

use std::{collections::HashSet, time::Duration};

use tokio::time::Instant;

use crate::{backend::BackendKind, error::Error, testkit::Harness};

#[tokio::test(start_paused = true)]
async fn an_idle_container_reported_dead_is_never_handed_out() {
    let h = Harness::new();
    h.warm_pool("dead", 1, 2, |_| {}).await;
    let dead = h.fake.running()[0].clone();
    // The event is in the stream; the acquire comes right after it.
    h.fake.kill_container(&dead);
    let lease = h.acquire("dead").await.expect("a lease");
    assert_ne!(lease.container_id, dead);
    assert!(h.fake.running().contains(&lease.container_id));
    let counters = h.stats("dead").counters;
    assert_eq!(counters.health_failures, 1);
    assert_eq!(counters.recycled.unhealthy, 1);
    h.until(
        "the dead container is removed",
        Duration::from_secs(5),
        || h.fake.containers().iter().all(|c| c.id != dead),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_engine_fails_acquires_and_the_pool_refills_when_it_is_back() {
    let h = Harness::new();
    h.warm_pool("outage", 2, 2, |_| {}).await;
    let before: HashSet<String> = h.fake.running().into_iter().collect();
    // The daemon goes down, its containers with it.
    h.fake.stop_all_silently();
    h.fake.set_reachable(false);
    let health = h.manager.engine_health(BackendKind::Docker);
    h.until("the engine counts as down", Duration::from_secs(1), || {
        !health.is_up()
    })
    .await;
    let err = h.acquire("outage").await.expect_err("no engine");
    assert!(matches!(err, Error::EngineUnavailable { .. }), "{err:?}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
    // It stays down as long as the engine does (the watcher keeps probing).
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!health.is_up());
    h.fake.set_reachable(true);
    let back = Instant::now();
    h.until(
        "refilled with new containers",
        Duration::from_secs(5),
        || {
            let running = h.fake.running();
            running.len() == 2 && running.iter().all(|id| !before.contains(id))
        },
    )
    .await;
    h.until_idle("outage", 2).await;
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "refilled {:?} after the engine came back",
        back.elapsed()
    );
    // The dead ones were removed from the engine, not just forgotten.
    assert!(h.fake.containers().iter().all(|c| !before.contains(&c.id)));
    let lease = h.acquire("outage").await.expect("a lease");
    assert!(!before.contains(&lease.container_id));
}
