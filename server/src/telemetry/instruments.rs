//! The metrics, defined once: each family reads its samples off a pool's
//! statistics (the same ones GetPoolStats returns). `/metrics` renders them
//! as Prometheus text (`crate::metrics`); [`register`] makes each an
//! OpenTelemetry observable instrument read at every OTLP export.

use std::sync::{Arc, Weak};

use opentelemetry::{KeyValue, global, metrics::Meter};

use crate::pool::{PoolManager, stats::PoolStats};

/// What a family is, in both worlds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// Monotonic. Prometheus names end in `_total`; the OTLP instrument's
    /// name drops it (a Prometheus exporter of OTLP adds it back).
    Counter,
}

/// One sample: its label beside `pool` (if any) and its value.
pub type Sample = (Option<(&'static str, &'static str)>, f64);

pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub read: fn(&PoolStats) -> Vec<Sample>,
}

impl Family {
    /// The OTLP instrument's name.
    pub fn otlp_name(&self) -> &'static str {
        match self.kind {
            Kind::Counter => self.name.trim_end_matches("_total"),
            Kind::Gauge => self.name,
        }
    }
}

macro_rules! single {
    ($name:literal, $kind:ident, $help:literal, |$s:ident| $value:expr) => {
        Family {
            name: $name,
            help: $help,
            kind: Kind::$kind,
            read: |$s| vec![(None, $value as f64)],
        }
    };
}

/// Every family, in the order /metrics shows them.
pub static FAMILIES: &[Family] = &[
    Family {
        name: "sandpool_pool_containers",
        help: "Containers of the pool by state.",
        kind: Kind::Gauge,
        read: |s| {
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
            .map(|(state, n)| (Some(("state", state)), f64::from(n)))
            .collect()
        },
    },
    single!("sandpool_pool_max_size", Gauge, "max_pool_size.", |s| s
        .max_size),
    single!("sandpool_pool_min_size", Gauge, "min_pool_size.", |s| s
        .min_size),
    single!(
        "sandpool_pool_waiting",
        Gauge,
        "Acquires waiting for a container.",
        |s| s.waiting
    ),
    single!("sandpool_pool_active_leases", Gauge, "Leases alive.", |s| {
        s.active_leases
    }),
    single!(
        "sandpool_pool_temporary_containers",
        Gauge,
        "Temporary containers alive.",
        |s| s.temporary_containers
    ),
    single!(
        "sandpool_pool_closed",
        Gauge,
        "1 once the pool is deleted.",
        |s| u8::from(s.closed)
    ),
    single!(
        "sandpool_acquisitions_total",
        Counter,
        "Leases granted.",
        |s| s.counters.acquisitions
    ),
    single!(
        "sandpool_waits_total",
        Counter,
        "Acquires that waited for a container.",
        |s| s.counters.waits
    ),
    single!(
        "sandpool_wait_timeouts_total",
        Counter,
        "Waiting acquires that gave up.",
        |s| s.counters.wait_timeouts
    ),
    single!(
        "sandpool_fail_fast_refusals_total",
        Counter,
        "Acquires refused under FAIL_FAST.",
        |s| s.counters.fail_fast_refusals
    ),
    single!(
        "sandpool_temporaries_total",
        Counter,
        "Temporary containers created.",
        |s| s.counters.temporaries
    ),
    single!(
        "sandpool_releases_total",
        Counter,
        "Leases released by their client.",
        |s| s.counters.releases
    ),
    single!(
        "sandpool_lease_expirations_total",
        Counter,
        "Leases revoked for want of keepalive.",
        |s| s.counters.lease_expirations
    ),
    single!(
        "sandpool_health_failures_total",
        Counter,
        "Failed health checks.",
        |s| s.counters.health_failures
    ),
    single!(
        "sandpool_containers_created_total",
        Counter,
        "Containers created.",
        |s| s.counters.containers_created
    ),
    single!(
        "sandpool_create_failures_total",
        Counter,
        "Container creations that failed.",
        |s| s.counters.create_failures
    ),
    single!("sandpool_runs_total", Counter, "Runs started.", |s| s
        .counters
        .runs),
    Family {
        name: "sandpool_recycled_total",
        help: "Containers recycled, by reason.",
        kind: Kind::Counter,
        read: |s| {
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
            .map(|(reason, n)| (Some(("reason", reason)), n as f64))
            .collect()
        },
    },
    Family {
        name: "sandpool_acquire_latency_seconds",
        help: "Acquire latency quantiles over the most recent acquires.",
        kind: Kind::Gauge,
        read: |s| {
            let l = s.acquire_latency;
            [
                ("0.5", l.p50),
                ("0.9", l.p90),
                ("0.99", l.p99),
                ("1", l.max),
            ]
            .into_iter()
            .map(|(q, d)| (Some(("quantile", q)), d.as_secs_f64()))
            .collect()
        },
    },
];

/// Registers every family as an observable instrument on the global meter
/// (a no-op meter when OTLP export is off: nothing is then ever read). The
/// callbacks hold the manager weakly: a stopped server is not kept alive by
/// its meter.
pub fn register(manager: &Arc<PoolManager>) {
    let meter = global::meter("sandpool-server");
    for family in FAMILIES {
        observe(&meter, family, Arc::downgrade(manager));
    }
}

fn observe(meter: &Meter, family: &'static Family, manager: Weak<PoolManager>) {
    let samples = move || -> Vec<(f64, Vec<KeyValue>)> {
        let Some(manager) = manager.upgrade() else {
            return Vec::new();
        };
        manager
            .all_pools()
            .into_iter()
            .flat_map(|p| {
                let pool = p.stats.pool.clone();
                (family.read)(&p.stats)
                    .into_iter()
                    .map(move |(label, value)| {
                        let mut attributes = vec![KeyValue::new("pool", pool.clone())];
                        if let Some((key, value)) = label {
                            attributes.push(KeyValue::new(key, value));
                        }
                        (value, attributes)
                    })
            })
            .collect()
    };
    match family.kind {
        Kind::Gauge => {
            meter
                .f64_observable_gauge(family.otlp_name())
                .with_description(family.help)
                .with_callback(move |observer| {
                    for (value, attributes) in samples() {
                        observer.observe(value, &attributes);
                    }
                })
                .build();
        }
        Kind::Counter => {
            meter
                .f64_observable_counter(family.otlp_name())
                .with_description(family.help)
                .with_callback(move |observer| {
                    for (value, attributes) in samples() {
                        observer.observe(value, &attributes);
                    }
                })
                .build();
        }
    }
}
