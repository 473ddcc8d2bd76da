//! The randomised protocol test (issue 9): chaos clients in separate
//! processes, some killed with SIGKILL, against a live server; the driver
//! (`sandpool_tests::chaos::driver`) checks the invariants. Prints its seed;
//! `SANDPOOL_CHAOS_SEED=<seed>` makes the same decisions again
//! (`SANDPOOL_CHAOS_VERBOSE=1` prints every step).

use std::time::{Duration, Instant};

use sandpool_tests::{
    Engine, TestServer,
    chaos::driver::{self, Config},
    python_image,
};

sandpool_tests::on_both_engines!(
    chaos =>
    random_clients_some_killed_never_break_the_invariants,
    random_clients_some_killed_never_break_the_invariants_on_podman
);

async fn chaos(engine: Engine) {
    let seed = driver::seed_from_env();
    println!("SANDPOOL_CHAOS_SEED={seed}");
    let started = Instant::now();
    let server = TestServer::start().await;
    let config = Config {
        seed,
        slots: 4,
        clients: 12,
        min_leases: 0,
        steps: 24,
        kill_fraction: 0.3,
        budget: Duration::from_secs(45),
        program: env!("CARGO_BIN_EXE_chaos_client").into(),
        program_args: Vec::new(),
        tag: format!("chaos-{:06x}", rand::random::<u32>() & 0xff_ffff),
        image: python_image(),
        engine,
        server_id: server.server_id.clone(),
        verbose: std::env::var_os("SANDPOOL_CHAOS_VERBOSE").is_some(),
    };
    let report = driver::run(config, server.addr, server.client.clone()).await;
    println!("{}", report.summary());
    let id = server.server_id.clone();
    server.stop().await;
    assert!(
        engine.containers_of(&id).await.is_empty(),
        "containers left after shutdown"
    );
    println!("{engine:?}: chaos test took {:?}", started.elapsed());
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {} invariant violations (SANDPOOL_CHAOS_SEED={seed} to replay):\n{}",
        report.violations.len(),
        report.violations.join("\n")
    );
    // The run did what it is for.
    assert!(report.leases_served >= 10, "{}", report.summary());
    let kills = (report.clients as f64 * 0.3).floor() as u64;
    assert!(kills >= 1, "{}", report.summary());
    assert_eq!(report.killed, kills, "{}", report.summary());
    assert_eq!(report.leaked_containers, 0);
    assert_eq!(report.stuck_slots, 0);
}

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
        // The client's deadline, or the server's own enforcement of it
        // (tonic answers CANCELLED "Timeout expired"): either way the
        // Acquire's handler was dropped mid-way.
        let code = err.status().map(|s| s.code());
        assert!(
            matches!(err, sandpool_client::Error::DeadlineExceeded(_))
                || code == Some(tonic::Code::Cancelled),
            "round {round}: {err:?}"
        );
        sandpool_tests::wait_for(
            "the given-up temporary to be gone",
            Duration::from_secs(10),
            || async {
                let stats = server.stats("temp").await;
                let engine = Engine::Docker.containers_of(&server.server_id).await.len();
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
