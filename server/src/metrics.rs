//! Prometheus metrics: GET /metrics on a listener of its own, with every
//! pool's state counts, counters and duration histograms, read from the
//! same statistics as GetPoolStats. The families are defined once, in
//! `telemetry::instruments`, which also exports them over OTLP.

use std::{fmt::Write, future::Future, sync::Arc};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::{
    pool::{PoolManager, stats::PoolStats},
    telemetry::instruments::{FAMILIES, Read, Sample},
};

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

/// The exposition text for `pools`: every family of
/// `telemetry::instruments::FAMILIES`, one sample per pool (and label), or
/// for a histogram its cumulative `_bucket` lines, `_sum` and `_count`.
pub fn render(pools: &[PoolStats]) -> String {
    let mut out = String::new();
    for family in FAMILIES {
        let kind = match family.read {
            Read::Gauge(_) => "gauge",
            Read::Counter(_) => "counter",
            Read::Histogram(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {kind}", family.name);
        for stats in pools {
            let pool = escape(&stats.pool);
            match family.read {
                Read::Gauge(read) | Read::Counter(read) => {
                    samples(&mut out, family.name, &pool, read(stats));
                }
                Read::Histogram(read) => {
                    let h = read(stats);
                    for (bound, n) in h.cumulative() {
                        let le = if bound.is_infinite() {
                            "+Inf".to_string()
                        } else {
                            bound.to_string()
                        };
                        let _ = writeln!(
                            out,
                            "{}_bucket{{pool=\"{pool}\",le=\"{le}\"}} {n}",
                            family.name
                        );
                    }
                    let _ = writeln!(out, "{}_sum{{pool=\"{pool}\"}} {}", family.name, h.sum);
                    let _ = writeln!(
                        out,
                        "{}_count{{pool=\"{pool}\"}} {}",
                        family.name,
                        h.count()
                    );
                }
            }
        }
    }
    out
}

fn samples(out: &mut String, name: &str, pool: &str, samples: Vec<Sample>) {
    for (label, value) in samples {
        let _ = match label {
            Some((key, v)) => writeln!(out, "{name}{{pool=\"{pool}\",{key}=\"{v}\"}} {value}"),
            None => writeln!(out, "{name}{{pool=\"{pool}\"}} {value}"),
        };
    }
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
    use crate::pool::stats::{Counters, LatencySummary, Meters, StateCounts};

    /// The Grafana dashboard in deploy/ queries only metrics this endpoint
    /// serves, and shows every family.
    #[test]
    fn the_dashboard_queries_the_served_families() {
        let dashboard = include_str!("../../deploy/grafana/sandpool-dashboard.json");
        let json: serde_json::Value = serde_json::from_str(dashboard).expect("valid JSON");
        let mut queried = std::collections::BTreeSet::new();
        for panel in json["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let mut rest = expr;
                while let Some(at) = rest.find("sandpool_") {
                    let name: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    rest = &rest[at + name.len()..];
                    queried.insert(name);
                }
            }
        }
        let served: std::collections::BTreeSet<String> =
            FAMILIES.iter().flat_map(|f| f.series()).collect();
        let unknown: Vec<_> = queried.difference(&served).collect();
        assert!(unknown.is_empty(), "the dashboard queries {unknown:?}");
        let unshown: Vec<_> = FAMILIES
            .iter()
            .filter(|f| !f.series().iter().any(|s| queried.contains(s)))
            .map(|f| f.name)
            .collect();
        assert!(
            unshown.is_empty(),
            "the dashboard does not show {unshown:?}"
        );
        // Histograms are read as quantiles over their buckets, never as
        // the precomputed quantiles /metrics once served.
        for f in FAMILIES
            .iter()
            .filter(|f| matches!(f.read, Read::Histogram(_)))
        {
            let bucket = format!("{}_bucket", f.name);
            assert!(
                dashboard.contains(&bucket) && dashboard.contains("histogram_quantile"),
                "no histogram_quantile over {bucket}"
            );
        }
    }

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
                wait_timeouts: 1,
                fail_fast_refusals: 5,
                temporary_refusals: 2,
                ..Default::default()
            },
            acquire_latency: LatencySummary::default(),
            meters: {
                let m = Meters::default();
                m.acquire.record(std::time::Duration::from_micros(200));
                m.acquire.record(std::time::Duration::from_millis(40));
                m.run_ended(0, std::time::Duration::from_millis(70));
                m.streamed(0, 12);
                m.reset_done(std::time::Duration::from_millis(300), true);
                m.snapshot()
            },
            temporary_containers: 0,
            waiting: 0,
            active_leases: 1,
            created: SystemTime::now(),
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
        for line in [
            "# TYPE sandpool_acquire_latency_seconds histogram",
            "sandpool_acquire_latency_seconds_bucket{pool=\"py\",le=\"0.0005\"} 1",
            "sandpool_acquire_latency_seconds_bucket{pool=\"py\",le=\"0.025\"} 1",
            "sandpool_acquire_latency_seconds_bucket{pool=\"py\",le=\"0.05\"} 2",
            "sandpool_acquire_latency_seconds_bucket{pool=\"py\",le=\"+Inf\"} 2",
            "sandpool_acquire_latency_seconds_sum{pool=\"py\"} 0.0402",
            "sandpool_acquire_latency_seconds_count{pool=\"py\"} 2",
            "sandpool_run_duration_seconds_bucket{pool=\"py\",le=\"0.1\"} 1",
            "sandpool_run_duration_seconds_count{pool=\"py\"} 1",
            "sandpool_reset_duration_seconds_count{pool=\"py\"} 1",
            "sandpool_container_create_duration_seconds_count{pool=\"py\"} 0",
            "sandpool_runs_ended_total{pool=\"py\",end_reason=\"exited\"} 1",
            "sandpool_runs_ended_total{pool=\"py\",end_reason=\"timeout\"} 0",
            "sandpool_streamed_bytes_total{pool=\"py\",stream=\"stdout\"} 12",
            "sandpool_resets_total{pool=\"py\"} 1",
            "sandpool_reset_failures_total{pool=\"py\"} 0",
            "sandpool_acquire_refusals_total{pool=\"py\",strategy=\"wait\"} 1",
            "sandpool_acquire_refusals_total{pool=\"py\",strategy=\"fail_fast\"} 3",
            "sandpool_acquire_refusals_total{pool=\"py\",strategy=\"temporary\"} 2",
        ] {
            assert!(text.contains(line), "no {line:?} in {text}");
        }
        assert!(!text.contains("quantile="), "{text}");
    }
}
