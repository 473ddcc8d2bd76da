//! Every PoolConfig field's behaviour, and the exhaustion strategies, on a
//! real engine.

use std::time::{Duration, Instant};

use sandpool_client::{AcquireOptions, proto as pb};
use sandpool_tests::{TestServer, code_of, containers_of, python_pool, secs, wait_for};
use tonic::Code;

fn with_config(name: &str, f: impl FnOnce(&mut pb::PoolConfig)) -> pb::PoolSpec {
    let mut spec = python_pool(name);
    f(spec.config.as_mut().expect("config"));
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarming_fills_min_and_never_exceeds_max() {
    let server = TestServer::start().await;
    let pool = server
        .pool(with_config("warm", |c| {
            c.min_pool_size = Some(2);
            c.max_pool_size = Some(3);
        }))
        .await;
    let stats = pool.stats.expect("stats");
    assert_eq!(
        stats.state_counts.expect("counts").idle,
        2,
        "min_pool_size containers warm"
    );
    assert_eq!((stats.min_size, stats.max_size), (2, 3));
    assert_eq!(containers_of(&server.server_id).await.len(), 2);

    // Three leases fit; the pool grows to max and no further.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(server.client.acquire("warm").await.expect("acquire"));
    }
    let stats = server.stats("warm").await;
    assert_eq!(stats.total_size, 3);
    assert_eq!(stats.state_counts.expect("counts").busy, 3);
    for s in sessions {
        s.release().await.expect("release");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prewarming_the_pool_starts_empty_and_fills_after_first_use() {
    let server = TestServer::start().await;
    server
        .pool(with_config("lazy", |c| {
            c.min_pool_size = Some(2);
            c.enable_prewarming = Some(false);
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.stats("lazy").await.total_size,
        0,
        "nothing created before first use"
    );
    let session = server.client.acquire("lazy").await.expect("acquire");
    session.release().await.expect("release");
    wait_for(
        "pool to fill to min_pool_size",
        Duration::from_secs(20),
        || async {
            let s = server.stats("lazy").await;
            (s.state_counts.expect("counts").idle >= 2).then_some(())
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_strategy_times_out_with_resource_exhausted() {
    let server = TestServer::start().await;
    server
        .pool(with_config("wait", |c| {
            c.max_pool_size = Some(1);
            c.acquisition_timeout = secs(1.0);
        }))
        .await;
    let held = server.client.acquire("wait").await.expect("first acquire");
    let started = Instant::now();
    let err = match server.client.acquire("wait").await {
        Ok(_) => panic!("second acquire must not succeed while the only container is leased"),
        Err(e) => e,
    };
    let waited = started.elapsed();
    assert_eq!(code_of(&err), Code::ResourceExhausted, "{err}");
    assert!(
        waited >= Duration::from_millis(900),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert!(err.to_string().contains("acquisition_timeout"), "{err}");

    // A call deadline shorter than acquisition_timeout bounds the wait too.
    let started = Instant::now();
    let err = match server
        .client
        .acquire_with(AcquireOptions::new("wait").wait(Duration::from_millis(400)))
        .await
    {
        Ok(_) => panic!("must not succeed"),
        Err(e) => e,
    };
    let waited = started.elapsed();
    assert_eq!(code_of(&err), Code::ResourceExhausted, "{err}");
    assert!(
        waited < Duration::from_millis(900),
        "the call deadline was ignored: {waited:?}"
    );

    let stats = server.stats("wait").await;
    let counters = stats.counters.expect("counters");
    assert_eq!(counters.wait_timeouts, 2);
    assert!(counters.waits >= 2);
    held.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_strategy_hands_over_a_released_container() {
    let server = TestServer::start().await;
    server
        .pool(with_config("handover", |c| {
            c.max_pool_size = Some(1);
        }))
        .await;
    let held = server.client.acquire("handover").await.expect("acquire");
    let first_container = held.container_id().to_string();
    let client = server.client.clone();
    let waiter = tokio::spawn(async move { client.acquire("handover").await });
    wait_for(
        "the second acquire to wait",
        Duration::from_secs(10),
        || async { (server.stats("handover").await.waiting == 1).then_some(()) },
    )
    .await;
    held.release().await.expect("release");
    let second = waiter
        .await
        .expect("join")
        .expect("the waiter gets the container");
    assert_eq!(
        second.container_id(),
        first_container,
        "same container, reset and reused"
    );
    second.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_refuses_at_once() {
    let server = TestServer::start().await;
    server
        .pool(with_config("ff", |c| {
            c.max_pool_size = Some(1);
            c.exhaustion_strategy = pb::ExhaustionStrategy::FailFast as i32;
        }))
        .await;
    let held = server.client.acquire("ff").await.expect("acquire");
    let started = Instant::now();
    let err = match server.client.acquire("ff").await {
        Ok(_) => panic!("FAIL_FAST must refuse"),
        Err(e) => e,
    };
    assert_eq!(code_of(&err), Code::ResourceExhausted);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server
            .stats("ff")
            .await
            .counters
            .expect("c")
            .fail_fast_refusals,
        1
    );
    held.release().await.expect("release");
    // Right after a release the container is being reset, not leased: the
    // pool is not exhausted, and FAIL_FAST waits the moment it takes.
    for _ in 0..3 {
        let again = server
            .client
            .acquire("ff")
            .await
            .expect("acquire right after a release");
        again.release().await.expect("release");
    }
    let refusals = server
        .stats("ff")
        .await
        .counters
        .expect("c")
        .fail_fast_refusals;
    assert_eq!(refusals, 1, "no refusal while a container was on its way");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_containers_live_outside_the_pool() {
    let server = TestServer::start().await;
    server
        .pool(with_config("temp", |c| {
            c.max_pool_size = Some(1);
            c.exhaustion_strategy = pb::ExhaustionStrategy::Temporary as i32;
        }))
        .await;
    let held = server.client.acquire("temp").await.expect("acquire");
    assert!(!held.lease().temporary);
    let extra = server
        .client
        .acquire("temp")
        .await
        .expect("temporary acquire");
    assert!(
        extra.lease().temporary,
        "the second lease is on a temporary container"
    );
    let out = extra
        .run_collect("print(6 * 7)")
        .await
        .expect("run on the temporary");
    assert_eq!(out.stdout_text(), "42\n");
    let stats = server.stats("temp").await;
    assert_eq!(stats.total_size, 1, "temporaries do not count in the pool");
    assert_eq!(stats.temporary_containers, 1);
    assert_eq!(containers_of(&server.server_id).await.len(), 2);
    let temp_container = extra.container_id().to_string();
    extra.release().await.expect("release");
    wait_for(
        "the temporary container to be destroyed",
        Duration::from_secs(20),
        || async {
            let left = containers_of(&server.server_id).await;
            (!left.contains(&temp_container)).then_some(())
        },
    )
    .await;
    assert_eq!(server.stats("temp").await.temporary_containers, 0);
    held.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_trims_to_min_pool_size() {
    let server = TestServer::start().await;
    server
        .pool(with_config("idle", |c| {
            c.min_pool_size = Some(0);
            c.max_pool_size = Some(2);
            c.idle_timeout = secs(1.0);
        }))
        .await;
    let session = server.client.acquire("idle").await.expect("acquire");
    session.release().await.expect("release");
    wait_for(
        "the idle container to be recycled",
        Duration::from_secs(15),
        || async {
            let s = server.stats("idle").await;
            (s.total_size == 0).then_some(())
        },
    )
    .await;
    let counters = server.stats("idle").await.counters.expect("c");
    assert_eq!(counters.recycled.expect("r").idle_timeout, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_container_uses_and_lifetime_recycle() {
    let server = TestServer::start().await;
    server
        .pool(with_config("uses", |c| {
            c.max_pool_size = Some(1);
            c.max_container_uses = Some(2);
        }))
        .await;
    let a = server.client.acquire("uses").await.expect("1st");
    let first = a.container_id().to_string();
    a.release().await.expect("release");
    let b = server.client.acquire("uses").await.expect("2nd");
    assert_eq!(b.container_id(), first, "second use of the same container");
    b.release().await.expect("release");
    let c = server.client.acquire("uses").await.expect("3rd");
    assert_ne!(c.container_id(), first, "recycled after max_container_uses");
    c.release().await.expect("release");
    assert_eq!(
        server
            .stats("uses")
            .await
            .counters
            .expect("c")
            .recycled
            .expect("r")
            .uses,
        1
    );

    server
        .pool(with_config("life", |c| {
            c.max_pool_size = Some(1);
            c.max_container_lifetime = secs(1.5);
        }))
        .await;
    let s = server.client.acquire("life").await.expect("acquire");
    let first = s.container_id().to_string();
    s.release().await.expect("release");
    wait_for(
        "a container past its lifetime to be replaced",
        Duration::from_secs(20),
        || async {
            let stats = server.stats("life").await;
            let recycled = stats.counters.expect("c").recycled.expect("r").lifetime;
            (recycled >= 1 && stats.state_counts.expect("s").idle == 1).then_some(())
        },
    )
    .await;
    let s = server.client.acquire("life").await.expect("acquire");
    assert_ne!(s.container_id(), first);
    s.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_replace_a_container_removed_behind_our_back() {
    let server = TestServer::start().await;
    server
        .pool(with_config("health", |c| {
            c.min_pool_size = Some(1);
            c.max_pool_size = Some(1);
            c.health_check_interval = secs(1.0);
        }))
        .await;
    let victim = containers_of(&server.server_id)
        .await
        .pop()
        .expect("one container");
    let removed = std::process::Command::new("docker")
        .args(["rm", "-f", &victim])
        .output()
        .expect("docker rm");
    assert!(removed.status.success());
    let replacement = wait_for(
        "a replacement container",
        Duration::from_secs(20),
        || async {
            let stats = server.stats("health").await;
            let now = containers_of(&server.server_id).await;
            let idle = stats.state_counts.expect("s").idle;
            (idle == 1 && now.len() == 1 && now[0] != victim).then(|| now[0].clone())
        },
    )
    .await;
    let counters = server.stats("health").await.counters.expect("c");
    assert!(counters.health_failures >= 1);
    // The slot is not lost: the pool serves a lease on the new container.
    let s = server
        .client
        .acquire("health")
        .await
        .expect("acquire after replacement");
    assert_eq!(s.container_id(), replacement);
    assert_eq!(
        s.run_collect("print('ok')")
            .await
            .expect("run")
            .stdout_text(),
        "ok\n"
    );
    s.release().await.expect("release");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reuse_gives_every_lease_a_fresh_container() {
    let server = TestServer::start().await;
    let mut spec = with_config("fresh", |c| {
        c.max_pool_size = Some(2);
        c.min_pool_size = Some(1);
    });
    spec.reuse = Some(false);
    server.pool(spec).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let s = server.client.acquire("fresh").await.expect("acquire");
        assert!(
            !seen.contains(&s.container_id().to_string()),
            "a container served two leases"
        );
        seen.push(s.container_id().to_string());
        s.release().await.expect("release");
    }
    assert_eq!(
        server
            .stats("fresh")
            .await
            .counters
            .expect("c")
            .recycled
            .expect("r")
            .no_reuse,
        3
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_name_the_field() {
    let server = TestServer::start().await;
    let cases: Vec<(pb::PoolSpec, &str)> = vec![
        (
            with_config("bad1", |c| {
                c.min_pool_size = Some(5);
                c.max_pool_size = Some(2);
            }),
            "config.min_pool_size",
        ),
        (
            with_config("bad2", |c| c.max_pool_size = Some(0)),
            "config.max_pool_size",
        ),
        (
            with_config("bad3", |c| {
                c.idle_timeout = Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                });
            }),
            "config.idle_timeout",
        ),
        (
            with_config("bad4", |c| c.health_check_interval = secs(0.0)),
            "config.health_check_interval",
        ),
        (
            pb::PoolSpec {
                language: "cobol".into(),
                ..python_pool("bad5")
            },
            "language",
        ),
        (python_pool("Not A Name"), "name"),
    ];
    for (spec, field) in cases {
        let err = server
            .client
            .create_pool(spec, false)
            .await
            .expect_err("invalid spec");
        assert_eq!(code_of(&err), Code::InvalidArgument, "{err}");
        let status = err.status().expect("status");
        assert!(
            status.message().contains(field),
            "message {:?} should name {field}",
            status.message()
        );
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, field);
    }
    let dup = server.client.create_pool(python_pool("twice"), false).await;
    assert!(dup.is_ok());
    let err = server
        .client
        .create_pool(python_pool("twice"), false)
        .await
        .expect_err("duplicate");
    assert_eq!(code_of(&err), Code::AlreadyExists);
    assert!(
        server.client.list_pools().await.expect("list").len() == 1,
        "invalid pools are not created"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_the_pool_with_advice_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let spec = pb::PoolSpec {
        image: "sandpool/does-not-exist:nowhere".into(),
        ..python_pool("ghost")
    };
    let pool = server
        .client
        .create_pool(spec, true)
        .await
        .expect("created, failing");
    assert_eq!(pool.phase, pb::PoolPhase::Failing as i32);
    assert!(
        pool.status_message.contains("scripts/build-images.sh"),
        "{}",
        pool.status_message
    );
    let err = server
        .client
        .acquire("ghost")
        .await
        .err()
        .expect("no container");
    assert_eq!(code_of(&err), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("does-not-exist"));
    // Other pools are unaffected.
    server.pool(python_pool("fine")).await;
    let s = server.client.acquire("fine").await.expect("acquire");
    assert_eq!(
        s.run_collect("print(1)").await.expect("run").stdout_text(),
        "1\n"
    );
    s.release().await.expect("release");
    server.stop().await;
}
