//! Prometheus metrics: GET /metrics on a listener of its own, with every
//! pool's state counts, counters and acquire-latency quantiles, read from the
//! same statistics as GetPoolStats.

use std::{fmt::Write, future::Future, sync::Arc};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::pool::{PoolManager, stats::PoolStats};

/// Serves /metrics until `shutdown` resolves.
pub async fn serve(
    manager: Arc<PoolManager>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let manager = Arc::clone(&manager);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(
                        &manager
                            .all_pools()
                            .into_iter()
                            .map(|p| p.stats)
                            .collect::<Vec<_>>(),
                    ),
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A metric family read off each pool's statistics: name, help, reader.
type Metric<T> = (&'static str, &'static str, fn(&PoolStats) -> T);

/// The exposition text for `pools`.
pub fn render(pools: &[PoolStats]) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, values: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in values {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
    let label = |s: &PoolStats| format!("pool=\"{}\"", escape(&s.pool));
    family(
        "sandpool_pool_containers",
        "gauge",
        "Containers of the pool by state.",
        &mut pools.iter().flat_map(|s| {
            let c = s.state_counts;
            [
                ("initializing", c.initializing),
                ("idle", c.idle),
                ("busy", c.busy),
                ("resetting", c.resetting),
                ("unhealthy", c.unhealthy),
                ("removing", c.removing),
            ]
            .into_iter()
            .map(move |(state, n)| (format!("{},state=\"{state}\"", label(s)), f64::from(n)))
        }),
    );
    let gauges: [Metric<f64>; 6] = [
        ("sandpool_pool_max_size", "max_pool_size.", |s| {
            f64::from(s.max_size)
        }),
        ("sandpool_pool_min_size", "min_pool_size.", |s| {
            f64::from(s.min_size)
        }),
        (
            "sandpool_pool_waiting",
            "Acquires waiting for a container.",
            |s| f64::from(s.waiting),
        ),
        ("sandpool_pool_active_leases", "Leases alive.", |s| {
            f64::from(s.active_leases)
        }),
        (
            "sandpool_pool_temporary_containers",
            "Temporary containers alive.",
            |s| f64::from(s.temporary_containers),
        ),
        ("sandpool_pool_closed", "1 once the pool is deleted.", |s| {
            f64::from(u8::from(s.closed))
        }),
    ];
    for (name, help, value) in gauges {
        family(
            name,
            "gauge",
            help,
            &mut pools.iter().map(|s| (label(s), value(s))),
        );
    }
    let counters: [Metric<u64>; 11] = [
        ("sandpool_acquisitions_total", "Leases granted.", |s| {
            s.counters.acquisitions
        }),
        (
            "sandpool_waits_total",
            "Acquires that waited for a container.",
            |s| s.counters.waits,
        ),
        (
            "sandpool_wait_timeouts_total",
            "Waiting acquires that gave up.",
            |s| s.counters.wait_timeouts,
        ),
        (
            "sandpool_fail_fast_refusals_total",
            "Acquires refused under FAIL_FAST.",
            |s| s.counters.fail_fast_refusals,
        ),
        (
            "sandpool_temporaries_total",
            "Temporary containers created.",
            |s| s.counters.temporaries,
        ),
        (
            "sandpool_releases_total",
            "Leases released by their client.",
            |s| s.counters.releases,
        ),
        (
            "sandpool_lease_expirations_total",
            "Leases revoked for want of keepalive.",
            |s| s.counters.lease_expirations,
        ),
        (
            "sandpool_health_failures_total",
            "Failed health checks.",
            |s| s.counters.health_failures,
        ),
        (
            "sandpool_containers_created_total",
            "Containers created.",
            |s| s.counters.containers_created,
        ),
        (
            "sandpool_create_failures_total",
            "Container creations that failed.",
            |s| s.counters.create_failures,
        ),
        ("sandpool_runs_total", "Runs started.", |s| s.counters.runs),
    ];
    for (name, help, value) in counters {
        family(
            name,
            "counter",
            help,
            &mut pools.iter().map(|s| (label(s), value(s) as f64)),
        );
    }
    family(
        "sandpool_recycled_total",
        "counter",
        "Containers recycled, by reason.",
        &mut pools.iter().flat_map(|s| {
            let r = s.counters.recycled;
            [
                ("idle_timeout", r.idle_timeout),
                ("lifetime", r.lifetime),
                ("uses", r.uses),
                ("unhealthy", r.unhealthy),
                ("no_reuse", r.no_reuse),
                ("reset_failed", r.reset_failed),
                ("drained", r.drained),
            ]
            .into_iter()
            .map(move |(reason, n)| (format!("{},reason=\"{reason}\"", label(s)), n as f64))
        }),
    );
    family(
        "sandpool_acquire_latency_seconds",
        "gauge",
        "Acquire latency quantiles over the most recent acquires.",
        &mut pools.iter().flat_map(|s| {
            let l = s.acquire_latency;
            [
                ("0.5", l.p50),
                ("0.9", l.p90),
                ("0.99", l.p99),
                ("1", l.max),
            ]
            .into_iter()
            .map(move |(q, d)| (format!("{},quantile=\"{q}\"", label(s)), d.as_secs_f64()))
        }),
    );
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::pool::stats::{Counters, LatencySummary, StateCounts};

    #[test]
    fn renders_every_family_per_pool() {
        let stats = PoolStats {
            pool: "py".into(),
            total_size: 3,
            max_size: 10,
            min_size: 2,
            state_counts: StateCounts {
                idle: 2,
                busy: 1,
                ..Default::default()
            },
            closed: false,
            counters: Counters {
                acquisitions: 7,
                ..Default::default()
            },
            acquire_latency: LatencySummary::default(),
            temporary_containers: 0,
            waiting: 0,
            active_leases: 1,
            time: SystemTime::now(),
        };
        let text = render(&[stats]);
        assert!(
            text.contains("sandpool_pool_containers{pool=\"py\",state=\"idle\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sandpool_acquisitions_total{pool=\"py\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sandpool_runs_total counter"),
            "{text}"
        );
        assert!(
            text.contains("sandpool_acquire_latency_seconds{pool=\"py\",quantile=\"0.99\"} 0"),
            "{text}"
        );
    }
}
