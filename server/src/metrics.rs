//! Prometheus metrics: GET /metrics on a listener of its own, with every
//! pool's state counts, counters and acquire-latency quantiles, read from the
//! same statistics as GetPoolStats. The families are defined once, in
//! `telemetry::instruments`, which also exports them over OTLP.

use std::{fmt::Write, future::Future, sync::Arc};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::{
    pool::{PoolManager, stats::PoolStats},
    telemetry::instruments::{FAMILIES, Kind},
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
/// `telemetry::instruments::FAMILIES`, one sample per pool (and label).
pub fn render(pools: &[PoolStats]) -> String {
    let mut out = String::new();
    for family in FAMILIES {
        let kind = match family.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {kind}", family.name);
        for stats in pools {
            let pool = escape(&stats.pool);
            for (label, value) in (family.read)(stats) {
                let _ = match label {
                    Some((key, v)) => writeln!(
                        out,
                        "{}{{pool=\"{pool}\",{key}=\"{v}\"}} {value}",
                        family.name
                    ),
                    None => writeln!(out, "{}{{pool=\"{pool}\"}} {value}", family.name),
                };
            }
        }
    }
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
            FAMILIES.iter().map(|f| f.name.to_string()).collect();
        let unknown: Vec<_> = queried.difference(&served).collect();
        assert!(unknown.is_empty(), "the dashboard queries {unknown:?}");
        let unshown: Vec<_> = served.difference(&queried).collect();
        assert!(
            unshown.is_empty(),
            "the dashboard does not show {unshown:?}"
        );
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
