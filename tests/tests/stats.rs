//! GetPool, GetPoolStats and WatchPoolStats.

use std::time::Duration;

use sandpool_client::proto as pb;
use sandpool_tests::{TestServer, python_pool};

fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pool_shows_the_effective_spec() {
    let server = TestServer::start().await;
    server
        .pool(pb::PoolSpec {
            config: Some(pb::PoolConfig {
                min_pool_size: Some(1),
                ..Default::default()
            }),
            ..python_pool("defaults")
        })
        .await;
    let pool = server
        .client
        .pools()
        .get_pool(pb::GetPoolRequest {
            name: "defaults".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .pool
        .expect("pool");
    assert_eq!(pool.phase, pb::PoolPhase::Ready as i32);
    let spec = pool.spec.expect("spec");
    let c = spec.config.expect("config");
    assert_eq!(c.max_pool_size, Some(10));
    assert_eq!(c.idle_timeout.expect("idle").seconds, 300);
    assert_eq!(c.acquisition_timeout.expect("acq").seconds, 30);
    assert_eq!(c.health_check_interval.expect("hc").seconds, 60);
    assert_eq!(c.max_container_lifetime.expect("life").seconds, 3600);
    assert_eq!(c.max_container_uses, Some(0));
    assert_eq!(c.exhaustion_strategy, pb::ExhaustionStrategy::Wait as i32);
    assert_eq!(c.enable_prewarming, Some(true));
    assert_eq!(spec.reuse, Some(true));
    assert_eq!(spec.default_lease_ttl.expect("ttl").seconds, 30);
    assert_eq!(spec.output_limit_bytes, Some(10 << 20));
    let rt = spec.runtime.expect("runtime");
    assert_eq!(rt.network.as_deref(), Some("none"));
    assert_eq!(rt.user.as_deref(), Some("1000:1000"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_at_most_every_100ms_and_ends_on_delete() {
    let server = TestServer::start().await;
    server.pool(python_pool("watched")).await;
    let mut watch = server.client.watch_stats("watched").await.expect("watch");
    let first = watch
        .message()
        .await
        .expect("msg")
        .expect("first")
        .stats
        .expect("stats");
    assert_eq!(first.state_counts.expect("s").busy, 0);

    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(server.client.acquire("watched").await.expect("acquire"));
    }
    let mut times = vec![millis(&first.time.expect("time"))];
    let mut saw_two_busy = false;
    while !saw_two_busy {
        let stats = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a message in time")
            .expect("msg")
            .expect("some")
            .stats
            .expect("stats");
        times.push(millis(&stats.time.expect("time")));
        saw_two_busy = stats.state_counts.expect("s").busy == 2;
    }
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 90,
            "messages {}ms apart",
            pair[1] - pair[0]
        );
    }
    let stats = server.stats("watched").await;
    let lat = stats.acquire_latency.expect("latency");
    assert_eq!(lat.samples, 2);
    assert!(lat.p50.is_some() && lat.p99.is_some());
    assert_eq!(stats.active_leases, 2);

    for s in sessions {
        s.release().await.expect("release");
    }
    server
        .client
        .delete_pool("watched", false)
        .await
        .expect("delete");
    let mut closed = false;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("the watch ends after the pool is gone")
        .expect("msg")
    {
        closed = message.stats.expect("stats").closed;
    }
    assert!(closed, "the last message says the pool is closed");
    server.stop().await;
}

/// Found by the randomised protocol test: a lease released while its run
/// was still being stopped went on counting as active until the run was
/// gone, so stats read right after the Release showed a lease nobody held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_stops_counting_at_once_while_its_run_is_stopped() {
    use sandpool_client::RunEvent;
    let server = TestServer::start().await;
    server
        .pool(pb::PoolSpec {
            config: Some(pb::PoolConfig {
                min_pool_size: Some(1),
                max_pool_size: Some(1),
                ..Default::default()
            }),
            ..python_pool("counted")
        })
        .await;
    let session = server.client.acquire("counted").await.expect("acquire");
    let mut events = session
        .run("import time\nprint('running', flush=True)\ntime.sleep(60)")
        .await
        .expect("run");
    // Wait until the program is running, so that the release has a run to stop.
    loop {
        match events.next().await.expect("an event").expect("ok") {
            RunEvent::Stdout(d) if d.starts_with(b"running") => break,
            RunEvent::Exit(e) => panic!("the run ended early: {e:?}"),
            _ => {}
        }
    }
    assert_eq!(server.stats("counted").await.active_leases, 1);
    session.release().await.expect("release");
    let stats = server.stats("counted").await;
    assert_eq!(
        stats.active_leases, 0,
        "the lease was released: it is not active any more"
    );
    assert_eq!(stats.counters.expect("counters").releases, 1);
    drop(events);
    server.stop().await;
}

/// GET `path` over plain HTTP/1.1; returns the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of the sample `series` (name and labels, as written) in
/// Prometheus text, if there.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A histogram's lines for one pool are whole: every bound, cumulative
/// counts that never drop, +Inf equal to `_count`. Returns `_count`.
fn histogram_count(text: &str, name: &str, pool: &str) -> f64 {
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{pool=\"{pool}\",le=")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect();
    assert_eq!(
        buckets.len(),
        sandpool_server::pool::stats::DURATION_BOUNDS.len() + 1,
        "{name}: {text}"
    );
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "{name} not cumulative: {buckets:?}"
    );
    let count = sample(text, &format!("{name}_count{{pool=\"{pool}\"}}")).expect("a _count");
    let inf = sample(
        text,
        &format!("{name}_bucket{{pool=\"{pool}\",le=\"+Inf\"}}"),
    );
    assert_eq!(inf, Some(count), "{name}: +Inf is the count");
    assert!(
        sample(text, &format!("{name}_sum{{pool=\"{pool}\"}}")).is_some(),
        "{name}_sum"
    );
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_follow_the_pools() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut config = sandpool_tests::empty_config();
    config.metrics_listen = Some(metrics);
    let server = TestServer::start_with(config).await;
    server.pool(python_pool("metered")).await;
    let session = server.client.acquire("metered").await.expect("acquire");
    let before = http_get(metrics, "/metrics").await;
    assert_eq!(
        histogram_count(&before, "sandpool_run_duration_seconds", "metered"),
        0.0
    );
    assert_eq!(
        histogram_count(&before, "sandpool_acquire_latency_seconds", "metered"),
        1.0
    );
    assert!(
        histogram_count(
            &before,
            "sandpool_container_create_duration_seconds",
            "metered"
        ) >= 1.0
    );
    assert!(
        !before.contains("quantile="),
        "no precomputed quantiles: {before}"
    );

    // Two real runs: one exits, one is killed by its timeout.
    session.run_collect("print(1)").await.expect("run");
    let timed_out = session
        .run_request(pb::RunRequest {
            program: Some(pb::run_request::Program::Code(pb::Code {
                source: Some(pb::code::Source::Text("import time\ntime.sleep(30)".into())),
                language: String::new(),
            })),
            timeout: sandpool_tests::secs(1.0),
            ..Default::default()
        })
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    assert_eq!(timed_out.end_reason(), pb::EndReason::Timeout);
    let text = http_get(metrics, "/metrics").await;
    for line in [
        "sandpool_pool_containers{pool=\"metered\",state=\"busy\"} 1",
        "sandpool_acquisitions_total{pool=\"metered\"} 1",
        "sandpool_runs_total{pool=\"metered\"} 2",
        "sandpool_pool_max_size{pool=\"metered\"} 2",
        "# TYPE sandpool_recycled_total counter",
        "# TYPE sandpool_run_duration_seconds histogram",
        "sandpool_runs_ended_total{pool=\"metered\",end_reason=\"exited\"} 1",
        "sandpool_runs_ended_total{pool=\"metered\",end_reason=\"timeout\"} 1",
        "sandpool_runs_ended_total{pool=\"metered\",end_reason=\"cancelled\"} 0",
        "sandpool_run_failures_total{pool=\"metered\"} 0",
        // "1\n", and nothing from the sleeper.
        "sandpool_streamed_bytes_total{pool=\"metered\",stream=\"stdout\"} 2",
        "sandpool_resets_total{pool=\"metered\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(
        histogram_count(&text, "sandpool_run_duration_seconds", "metered"),
        2.0
    );
    // The sleeper ran for its 1 s timeout: its duration is over 1 s.
    let under_one_second = sample(
        &text,
        "sandpool_run_duration_seconds_bucket{pool=\"metered\",le=\"1\"}",
    );
    assert_eq!(under_one_second, Some(1.0), "{text}");
    let run_sum = sample(&text, "sandpool_run_duration_seconds_sum{pool=\"metered\"}");
    assert!(run_sum.is_some_and(|s| s >= 1.0), "{run_sum:?}");

    // The release's reset, in the background.
    session.release().await.expect("release");
    let mut text = String::new();
    for _ in 0..300 {
        text = http_get(metrics, "/metrics").await;
        if sample(&text, "sandpool_resets_total{pool=\"metered\"}") == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&text, "sandpool_resets_total{pool=\"metered\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sandpool_reset_failures_total{pool=\"metered\"}"),
        Some(0.0)
    );
    assert_eq!(
        histogram_count(&text, "sandpool_reset_duration_seconds", "metered"),
        1.0
    );
    server.stop().await;
}
