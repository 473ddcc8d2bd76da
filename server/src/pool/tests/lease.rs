//! Leases: TTL expiry by the reaper, keepalive, the container dying under a
//! lease.

use std::time::Duration;

use crate::{
    error::{Error, LeaseEnd},
    pool::lease::Renewal,
    testkit::Harness,
};

async fn one_container_pool(h: &Harness, name: &str) {
    h.warm_pool(name, 1, 1, |_| {}).await;
}

fn ended(result: crate::error::Result<crate::pool::LeaseGuard>) -> Option<LeaseEnd> {
    match result {
        Err(Error::LeaseEnded { end, .. }) => Some(end),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_not_kept_alive_expires_and_its_container_comes_back() {
    let h = Harness::new();
    one_container_pool(&h, "ttl").await;
    let lease = h
        .acquire_for("ttl", Some(Duration::from_secs(2)))
        .await
        .expect("a lease");
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(h.lease(&lease).is_ok(), "expired before its TTL");
    // The reaper looks every 100 ms.
    h.until("the lease expires", Duration::from_millis(250), || {
        ended(h.lease(&lease)) == Some(LeaseEnd::Expired)
    })
    .await;
    assert_eq!(
        h.manager.keepalive(&lease.id, &h.who.name),
        Renewal::Ended(LeaseEnd::Expired)
    );
    h.until_idle("ttl", 1).await;
    // Reset and reused, not replaced.
    assert_eq!(h.fake.running(), [lease.container_id.as_str()]);
    let resets = h.fake.warden_commands(&lease.container_id);
    assert_eq!(resets.iter().filter(|c| *c == "reset").count(), 2);
    assert_eq!(h.stats("ttl").counters.lease_expirations, 1);
}

#[tokio::test(start_paused = true)]
async fn keepalives_hold_a_lease_past_its_ttl() {
    let h = Harness::new();
    one_container_pool(&h, "kept").await;
    let lease = h
        .acquire_for("kept", Some(Duration::from_secs(2)))
        .await
        .expect("a lease");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let renewal = h.manager.keepalive(&lease.id, &h.who.name);
        assert!(matches!(renewal, Renewal::Active { .. }), "{renewal:?}");
    }
    assert!(h.lease(&lease).is_ok(), "ended although kept alive");
    // Then the keepalives stop: it lapses a TTL after the last one.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(h.lease(&lease).is_ok());
    h.until("the lease expires", Duration::from_millis(250), || {
        ended(h.lease(&lease)) == Some(LeaseEnd::Expired)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_leased_container_that_dies_ends_its_lease_and_is_replaced() {
    let h = Harness::new();
    one_container_pool(&h, "lost").await;
    let lease = h.acquire("lost").await.expect("a lease");
    h.fake.kill_container(&lease.container_id);
    h.until("the lease ends", Duration::from_millis(100), || {
        ended(h.lease(&lease)) == Some(LeaseEnd::ContainerLost)
    })
    .await;
    h.until(
        "the dead container is removed",
        Duration::from_secs(5),
        || {
            h.fake
                .containers()
                .iter()
                .all(|c| c.id != lease.container_id)
        },
    )
    .await;
    h.until_idle("lost", 1).await;
    assert_eq!(h.stats("lost").counters.recycled.unhealthy, 1);
    let next = h.acquire("lost").await.expect("a lease");
    assert_ne!(next.container_id, lease.container_id);
}

/// A replica restarted under its name: its predecessor's lease ids (same
/// name, another instance) ended with the predecessor; anything else it
/// does not know is merely not found.
#[test]
fn a_restarted_replica_knows_its_predecessors_ids() {
    use crate::pool::lease::LeaseTable;
    let after = LeaseTable::for_replica(Some("a"));
    let old = crate::cluster::lease_id::Incarnation::new("a").mint();
    assert_eq!(
        after.renew(&old, "me"),
        Renewal::Ended(LeaseEnd::ReplicaGone)
    );
    assert!(matches!(
        after.guard(&old, "me"),
        Err(Error::LeaseEnded {
            end: LeaseEnd::ReplicaGone,
            ..
        })
    ));
    assert_eq!(
        after.release(&old, "me").ok(),
        Some(Some(LeaseEnd::ReplicaGone))
    );
    for unknown in [format!("b.{}", &old[2..]), format!("{:032x}", 1u128)] {
        assert_eq!(after.renew(&unknown, "me"), Renewal::NotFound, "{unknown}");
    }
    let alone = LeaseTable::for_replica(None);
    assert_eq!(alone.renew(&old, "me"), Renewal::NotFound);
}
