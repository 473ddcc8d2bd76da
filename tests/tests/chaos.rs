//! Leftovers of clients that go away in the middle of a call.

use std::time::Duration;

use sandpool_tests::{TestServer, containers_of};

/// Found by the randomised protocol test (SANDPOOL_CHAOS_SEED=1): an
/// Acquire on a TEMPORARY pool whose caller goes away while the temporary
/// container is being made (its deadline passes, or its process dies) must
/// leave nothing behind: not a temporary counted forever, not a container on
/// the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_acquire_given_up_midway_leaves_nothing_behind() {
    use sandpool_client::{AcquireOptions, proto as pb};
    let server = TestServer::start().await;
    let mut spec = sandpool_tests::python_pool("temp");
    let config = spec.config.as_mut().expect("config");
    config.min_pool_size = Some(1);
    config.max_pool_size = Some(1);
    config.exhaustion_strategy = pb::ExhaustionStrategy::Temporary as i32;
    server.pool(spec).await;
    let held = server
        .client
        .acquire("temp")
        .await
        .expect("the pool's one container");
    // Making a temporary container takes far longer than 100 ms.
    for round in 0..3 {
        let err = server
            .client
            .acquire_with(AcquireOptions::new("temp").wait(Duration::from_millis(100)))
            .await
            .err()
            .expect("given up before the temporary is ready");
        assert!(
            matches!(err, sandpool_client::Error::DeadlineExceeded(_)),
            "round {round}: {err:?}"
        );
        sandpool_tests::wait_for(
            "the given-up temporary to be gone",
            Duration::from_secs(10),
            || async {
                let stats = server.stats("temp").await;
                let engine = containers_of(&server.server_id).await.len();
                (stats.temporary_containers == 0 && stats.active_leases == 1 && engine == 1)
                    .then_some(())
            },
        )
        .await;
    }
    held.release().await.expect("release");
    let counters = server.stats("temp").await.counters.expect("counters");
    assert_eq!(
        counters.acquisitions, 1,
        "only the lease that reached its caller counts"
    );
    server.stop().await;
}
