//! The maintainer and the recycling it does off the hot path: idle timeout,
//! lifetime, use count, health checks, failed resets, removals that fail.

use std::time::Duration;

use crate::{backend::fake::Program, testkit::Harness};

/// [`Harness::warm_pool`], returning its first container.
async fn warm_pool(
    h: &Harness,
    name: &str,
    min: u32,
    max: u32,
    configure: impl FnOnce(&mut crate::spec::PoolSpec),
) -> String {
    h.warm_pool(name, min, max, configure).await;
    h.fake.running()[0].clone()
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_trims_the_pool_down_to_min_pool_size() {
    let h = Harness::new();
    warm_pool(&h, "trim", 1, 3, |s| {
        s.config.idle_timeout = Some(Duration::from_secs(10))
    })
    .await;
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(h.acquire("trim").await.expect("a lease"));
    }
    assert_eq!(h.fake.running().len(), 3);
    for lease in &leases {
        h.release(lease);
    }
    h.until_idle("trim", 3).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(h.stats("trim").state_counts.idle, 3, "trimmed too early");
    h.until("trimmed to min_pool_size", Duration::from_secs(3), || {
        h.fake.running().len() == 1
    })
    .await;
    h.until_idle("trim", 1).await;
    assert_eq!(h.stats("trim").counters.recycled.idle_timeout, 2);
    // And not below min_pool_size, however long it stays idle.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.fake.running().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_container_past_its_lifetime_is_replaced() {
    let h = Harness::new();
    let first = warm_pool(&h, "old", 1, 1, |s| {
        s.config.idle_timeout = None;
        s.config.max_container_lifetime = Some(Duration::from_secs(20));
    })
    .await;
    tokio::time::sleep(Duration::from_secs(19)).await;
    assert_eq!(h.fake.running(), [first.as_str()]);
    h.until("replaced", Duration::from_secs(5), || {
        h.fake.containers().iter().all(|c| c.id != first) && h.fake.running().len() == 1
    })
    .await;
    h.until_idle("old", 1).await;
    assert_eq!(h.stats("old").counters.recycled.lifetime, 1);
}

#[tokio::test(start_paused = true)]
async fn a_container_is_replaced_after_max_container_uses() {
    let h = Harness::new();
    let first = warm_pool(&h, "uses", 1, 1, |s| s.config.max_container_uses = Some(2)).await;
    for _ in 0..2 {
        let lease = h.acquire("uses").await.expect("a lease");
        assert_eq!(lease.container_id, first);
        h.release(&lease);
        h.until_idle("uses", 1).await;
    }
    assert_eq!(h.stats("uses").counters.recycled.uses, 1);
    let third = h.acquire("uses").await.expect("a lease");
    assert_ne!(third.container_id, first);
    assert!(h.fake.containers().iter().all(|c| c.id != first));
}

#[tokio::test(start_paused = true)]
async fn a_failed_health_check_replaces_an_idle_container() {
    let h = Harness::new();
    let first = warm_pool(&h, "health", 1, 1, |s| {
        s.config.health_check_interval = Duration::from_secs(5)
    })
    .await;
    // The first check passes: the toolchain answers, so does the warden.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert!(h.fake.warden_commands(&first).iter().any(|c| c == "ping"));
    assert_eq!(h.fake.running(), [first.as_str()]);
    assert_eq!(h.stats("health").counters.health_failures, 0);
    // The next one finds the toolchain broken.
    let (check, _) = crate::lang::lookup("bash").expect("bash").check();
    h.fake.program(
        Program::matching(&check)
            .stdout("broken\n")
            .exit(1)
            .times(1),
    );
    h.until("replaced", Duration::from_secs(6), || {
        h.fake.containers().iter().all(|c| c.id != first)
    })
    .await;
    h.until_idle("health", 1).await;
    let counters = h.stats("health").counters;
    assert_eq!(counters.health_failures, 1);
    assert_eq!(counters.recycled.unhealthy, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_reset_replaces_the_container() {
    let h = Harness::new();
    let first = warm_pool(&h, "dirty", 1, 1, |_| {}).await;
    h.fake
        .warden_answer("reset", "err could not empty the writable places", 1);
    let lease = h.acquire("dirty").await.expect("a lease");
    h.release(&lease);
    h.until("replaced", Duration::from_secs(5), || {
        h.fake.containers().iter().all(|c| c.id != first)
    })
    .await;
    h.until_idle("dirty", 1).await;
    assert_eq!(h.stats("dirty").counters.recycled.reset_failed, 1);
    let next = h.acquire("dirty").await.expect("a lease");
    assert_ne!(next.container_id, first);
}

#[tokio::test(start_paused = true)]
async fn a_failed_removal_is_retried_and_its_slot_stays_counted() {
    let h = Harness::new();
    let first = warm_pool(&h, "stuck", 1, 1, |s| s.config.max_container_uses = Some(1)).await;
    h.fake.fail_removes(3);
    let lease = h.acquire("stuck").await.expect("a lease");
    h.release(&lease);
    // Retried after 100, 200 and 400 ms: until then the old container still
    // exists, its slot counts, and no replacement may be made.
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(h.stats("stuck").total_size, 1);
        assert_eq!(h.fake.journal().created, 1);
        assert!(h.fake.containers().iter().any(|c| c.id == first));
    }
    h.until("removed and replaced", Duration::from_secs(5), || {
        h.fake.containers().iter().all(|c| c.id != first)
    })
    .await;
    h.until_idle("stuck", 1).await;
    let journal = h.fake.journal();
    assert_eq!(journal.remove_attempts, 4);
    assert_eq!(
        journal.peak, 1,
        "more containers than max_pool_size at once"
    );
    assert_eq!(h.stats("stuck").counters.recycled.uses, 1);
}
