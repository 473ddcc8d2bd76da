//! The metrics, defined once: each family reads its samples off a pool's
//! statistics (the same ones GetPoolStats returns, and the pool's meters).
//! `/metrics` renders them as Prometheus text (`crate::metrics`); the OTLP
//! metrics exporter (`super::metrics_export`) sends the same families, read
//! at each export, as OTLP gauges, sums and histograms. One registry, two
//! encodings: a value cannot differ between the two.

use crate::pool::stats::{END_REASONS, HistogramSnapshot, PoolStats, STREAMS};

/// One sample: its label beside `pool` (if any) and its value.
pub type Sample = (Option<(&'static str, &'static str)>, f64);

/// What a family is, and how its samples are read.
#[derive(Clone, Copy)]
pub enum Read {
    Gauge(fn(&PoolStats) -> Vec<Sample>),
    /// Monotonic. Prometheus names end in `_total`; the OTLP instrument's
    /// name drops it (a Prometheus exporter of OTLP adds it back).
    Counter(fn(&PoolStats) -> Vec<Sample>),
    /// Durations in seconds over `pool::stats::DURATION_BOUNDS`: Prometheus
    /// `_bucket`/`_sum`/`_count` lines, an OTLP histogram point.
    Histogram(fn(&PoolStats) -> HistogramSnapshot),
}

pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    /// The OTLP unit (UCUM): "s", "By", or "" for a plain count.
    pub unit: &'static str,
    pub read: Read,
}

impl Family {
    /// The OTLP instrument's name.
    pub fn otlp_name(&self) -> &'static str {
        match self.read {
            Read::Counter(_) => self.name.trim_end_matches("_total"),
            Read::Gauge(_) | Read::Histogram(_) => self.name,
        }
    }

    /// The series names Prometheus shows for it.
    pub fn series(&self) -> Vec<String> {
        match self.read {
            Read::Histogram(_) => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{}{suffix}", self.name))
                .collect(),
            Read::Gauge(_) | Read::Counter(_) => vec![self.name.to_string()],
        }
    }
}

macro_rules! single {
    ($name:literal, $kind:ident, $help:literal, |$s:ident| $value:expr) => {
        Family {
            name: $name,
            help: $help,
            unit: "",
            read: Read::$kind(|$s| vec![(None, $value as f64)]),
        }
    };
}

macro_rules! histogram {
    ($name:literal, $help:literal, |$s:ident| $value:expr) => {
        Family {
            name: $name,
            help: $help,
            unit: "s",
            read: Read::Histogram(|$s| $value),
        }
    };
}

/// One sample per label value, read off an array in the labels' order.
fn labelled(key: &'static str, names: &[&'static str], values: &[u64]) -> Vec<Sample> {
    names
        .iter()
        .zip(values)
        .map(|(name, n)| (Some((key, *name)), *n as f64))
        .collect()
}

/// Every family, in the order /metrics shows them.
pub static FAMILIES: &[Family] = &[
    Family {
        name: "sandpool_pool_containers",
        help: "Containers of the pool by state.",
        unit: "",
        read: Read::Gauge(|s| {
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
        }),
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
    Family {
        name: "sandpool_acquire_refusals_total",
        help: "Acquires refused, by the pool's exhaustion strategy (wait: the wait ran out; temporary: no temporary container allowed).",
        unit: "",
        read: Read::Counter(|s| {
            let c = &s.counters;
            labelled(
                "strategy",
                &["wait", "fail_fast", "temporary"],
                &[
                    c.wait_timeouts,
                    c.fail_fast_refusals.saturating_sub(c.temporary_refusals),
                    c.temporary_refusals,
                ],
            )
        }),
    },
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
        unit: "",
        read: Read::Counter(|s| {
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
        }),
    },
    Family {
        name: "sandpool_runs_ended_total",
        help: "Runs that ended with an exit, by end reason (the proto's EndReason).",
        unit: "",
        read: Read::Counter(|s| labelled("end_reason", &END_REASONS, &s.meters.runs_ended)),
    },
    single!(
        "sandpool_run_failures_total",
        Counter,
        "Runs that ended without an exit (the engine failed, the container died).",
        |s| s.meters.run_failures
    ),
    Family {
        name: "sandpool_streamed_bytes_total",
        help: "Run output sent to clients, by stream.",
        unit: "By",
        read: Read::Counter(|s| labelled("stream", &STREAMS, &s.meters.bytes)),
    },
    Family {
        name: "sandpool_run_buffer_dropped_bytes_total",
        help: "Output of resumable runs that their buffer dropped before any client was sent it (clients that attach later get a gap event).",
        unit: "By",
        read: Read::Counter(|s| vec![(None, s.meters.buffer_dropped as f64)]),
    },
    single!(
        "sandpool_resets_total",
        Counter,
        "Resets of released containers.",
        |s| s.meters.resets
    ),
    single!(
        "sandpool_reset_failures_total",
        Counter,
        "Resets that failed (the container was replaced).",
        |s| s.meters.reset_failures
    ),
    histogram!(
        "sandpool_acquire_latency_seconds",
        "From an Acquire's arrival to its lease.",
        |s| s.meters.acquire
    ),
    histogram!(
        "sandpool_run_duration_seconds",
        "From a run's start to its exit.",
        |s| s.meters.run
    ),
    histogram!(
        "sandpool_reset_duration_seconds",
        "Resets of released containers, failed ones included.",
        |s| s.meters.reset
    ),
    histogram!(
        "sandpool_container_create_duration_seconds",
        "Container creations up to warm (libraries installed), successful ones.",
        |s| s.meters.create
    ),
];
