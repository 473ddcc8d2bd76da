//! Pool statistics: counters, state counts, acquire-latency percentiles
//! and the meters (duration histograms and counters kept in atomics, for
//! work recorded on the hot path without taking the pool's lock).

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

/// Samples kept for latency percentiles.
const LATENCY_WINDOW: usize = 4096;

/// Containers by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub initializing: u32,
    pub idle: u32,
    pub busy: u32,
    pub resetting: u32,
    pub unhealthy: u32,
    pub removing: u32,
}

impl StateCounts {
    pub fn total(&self) -> u32 {
        self.initializing + self.idle + self.busy + self.resetting + self.unhealthy + self.removing
    }
}

/// Why containers were recycled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecycleCounts {
    pub idle_timeout: u64,
    pub lifetime: u64,
    pub uses: u64,
    pub unhealthy: u64,
    pub no_reuse: u64,
    pub reset_failed: u64,
    pub drained: u64,
}

/// Recycling reasons, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecycleReason {
    IdleTimeout,
    Lifetime,
    Uses,
    Unhealthy,
    NoReuse,
    ResetFailed,
    Drained,
}

impl RecycleCounts {
    pub fn count(&mut self, reason: RecycleReason) {
        let c = match reason {
            RecycleReason::IdleTimeout => &mut self.idle_timeout,
            RecycleReason::Lifetime => &mut self.lifetime,
            RecycleReason::Uses => &mut self.uses,
            RecycleReason::Unhealthy => &mut self.unhealthy,
            RecycleReason::NoReuse => &mut self.no_reuse,
            RecycleReason::ResetFailed => &mut self.reset_failed,
            RecycleReason::Drained => &mut self.drained,
        };
        *c += 1;
    }
}

/// Counters since the pool was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub acquisitions: u64,
    pub waits: u64,
    pub wait_timeouts: u64,
    /// Refusals of an exhausted pool that does not wait: FAIL_FAST ones and
    /// TEMPORARY ones at their limit (the proto's field counts both).
    pub fail_fast_refusals: u64,
    /// Of those, the TEMPORARY pool's (no temporary container allowed).
    pub temporary_refusals: u64,
    pub temporaries: u64,
    pub releases: u64,
    pub lease_expirations: u64,
    pub health_failures: u64,
    pub containers_created: u64,
    pub create_failures: u64,
    pub recycled: RecycleCounts,
    pub runs: u64,
}

/// Percentiles of recent samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// The most recent latency samples.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: VecDeque<Duration>,
}

impl LatencyWindow {
    pub fn record(&mut self, sample: Duration) {
        if self.samples.len() == LATENCY_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn summary(&self) -> LatencySummary {
        if self.samples.is_empty() {
            return LatencySummary::default();
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        LatencySummary {
            samples: sorted.len() as u64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Upper bounds, in seconds, of the buckets of every duration histogram
/// (acquire latency, run, reset and container creation), one set for all so
/// that the dashboard reads them alike. What they measure spans 0.5 ms (a
/// warm acquire is an in-memory pop) to tens of seconds (a long run, a
/// creation that installs libraries, a wait for a free container under
/// acquisition_timeout's 30 s default); roughly three buckets per decade in
/// between, so `histogram_quantile` stays within a factor of about 2.5
/// anywhere. Longer than 60 s lands in +Inf (the count and sum still hold).
pub const DURATION_BOUNDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets of a histogram: one per bound, and +Inf.
const BUCKETS: usize = DURATION_BOUNDS.len() + 1;

/// A duration histogram over [`DURATION_BOUNDS`]: a relaxed atomic add per
/// sample, no lock.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Samples per bucket (not cumulative; the last is +Inf).
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn record(&self, sample: Duration) {
        let seconds = sample.as_secs_f64();
        let bucket = DURATION_BOUNDS.partition_point(|&bound| bound < seconds);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
    }
}

/// A histogram at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Samples per bucket of [`DURATION_BOUNDS`], then +Inf; not cumulative.
    pub buckets: [u64; BUCKETS],
    /// Sum of the samples, in seconds.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// The number of samples (the buckets' total: a snapshot taken while a
    /// sample is recorded may not count it in `sum` yet, never the reverse
    /// way round between count and buckets).
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// (upper bound, samples at or under it), +Inf last, as Prometheus
    /// writes `_bucket` lines.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        DURATION_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().scan(0u64, |total, n| {
                *total += n;
                Some(*total)
            }))
    }
}

/// Why runs ended, as the `end_reason` label says it: the proto's EndReason
/// names without their END_REASON_ prefix, in lower case (as every other
/// label value), in the proto's order.
pub const END_REASONS: [&str; 7] = [
    "exited",
    "signaled",
    "timeout",
    "cancelled",
    "output_limit",
    "lease_expired",
    "runner_lost",
];

/// Output streams, as the `stream` label says them.
pub const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// What the pool's work records as it happens: atomics, no lock, so that a
/// run's every output chunk can count itself.
#[derive(Debug, Default)]
pub struct Meters {
    /// From an Acquire's arrival to its grant.
    pub acquire: Histogram,
    /// From a run's start to its exit (runs that end with an exit event).
    pub run: Histogram,
    /// A released container's reset, successful or not.
    pub reset: Histogram,
    /// A container's creation, up to warm (pooled and temporary; those that
    /// fail are counted in create_failures instead).
    pub create: Histogram,
    runs_ended: [AtomicU64; END_REASONS.len()],
    run_failures: AtomicU64,
    bytes: [AtomicU64; STREAMS.len()],
    resets: AtomicU64,
    reset_failures: AtomicU64,
    buffer_dropped: AtomicU64,
}

impl Meters {
    /// A resumable run's buffer dropped `bytes` of output no client had
    /// been sent (a client that attaches later is told, as a gap).
    pub fn buffer_dropped(&self, bytes: u64) {
        self.buffer_dropped.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A run ended with an exit event; `reason` indexes [`END_REASONS`].
    pub fn run_ended(&self, reason: usize, duration: Duration) {
        if let Some(counter) = self.runs_ended.get(reason) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.run.record(duration);
    }

    /// A run ended without an exit (the engine failed, the container died).
    pub fn run_failed(&self) {
        self.run_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Output sent to a client; `stream` indexes [`STREAMS`].
    pub fn streamed(&self, stream: usize, bytes: usize) {
        if let Some(counter) = self.bytes.get(stream) {
            counter.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// A reset is over, after `duration`.
    pub fn reset_done(&self, duration: Duration, ok: bool) {
        self.resets.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.reset_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.reset.record(duration);
    }

    pub fn snapshot(&self) -> MetersSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetersSnapshot {
            acquire: self.acquire.snapshot(),
            run: self.run.snapshot(),
            reset: self.reset.snapshot(),
            create: self.create.snapshot(),
            runs_ended: std::array::from_fn(|i| load(&self.runs_ended[i])),
            run_failures: load(&self.run_failures),
            bytes: std::array::from_fn(|i| load(&self.bytes[i])),
            resets: load(&self.resets),
            reset_failures: load(&self.reset_failures),
            buffer_dropped: load(&self.buffer_dropped),
        }
    }
}

/// [`Meters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetersSnapshot {
    pub acquire: HistogramSnapshot,
    pub run: HistogramSnapshot,
    pub reset: HistogramSnapshot,
    pub create: HistogramSnapshot,
    /// Runs per [`END_REASONS`].
    pub runs_ended: [u64; END_REASONS.len()],
    pub run_failures: u64,
    /// Bytes per [`STREAMS`].
    pub bytes: [u64; STREAMS.len()],
    pub resets: u64,
    pub reset_failures: u64,
    /// Output bytes resumable runs' buffers dropped unsent.
    pub buffer_dropped: u64,
}

/// A pool's statistics at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStats {
    pub pool: String,
    pub total_size: u32,
    pub max_size: u32,
    pub min_size: u32,
    pub state_counts: StateCounts,
    pub closed: bool,
    pub counters: Counters,
    pub acquire_latency: LatencySummary,
    pub meters: MetersSnapshot,
    pub temporary_containers: u32,
    pub waiting: u32,
    pub active_leases: u32,
    /// When the pool was created: where its counters start.
    pub created: SystemTime,
    pub time: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_series() {
        let mut w = LatencyWindow::default();
        for ms in 1..=100 {
            w.record(Duration::from_millis(ms));
        }
        let s = w.summary();
        assert_eq!(s.samples, 100);
        assert_eq!(s.p50, Duration::from_millis(51));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let h = Histogram::default();
        h.record(Duration::from_micros(100));
        h.record(Duration::from_millis(1));
        h.record(Duration::from_millis(7));
        h.record(Duration::from_secs(120));
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert!((s.sum - 120.0081).abs() < 1e-9, "{}", s.sum);
        let cumulative: Vec<_> = s.cumulative().collect();
        assert_eq!(cumulative.len(), DURATION_BOUNDS.len() + 1);
        // A sample on a bound counts in that bound's bucket (le: <=).
        assert_eq!(cumulative[0], (0.0005, 1));
        assert_eq!(cumulative[1], (0.001, 2));
        assert_eq!(cumulative[4], (0.01, 3));
        assert_eq!(cumulative[15], (60.0, 3));
        assert_eq!(cumulative[16], (f64::INFINITY, 4));
    }

    #[test]
    fn meters_count_by_label() {
        let m = Meters::default();
        m.run_ended(2, Duration::from_secs(1));
        m.run_ended(99, Duration::from_secs(1));
        m.streamed(1, 10);
        m.streamed(1, 5);
        m.reset_done(Duration::from_millis(300), false);
        let s = m.snapshot();
        assert_eq!(s.runs_ended, [0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(s.run.count(), 2);
        assert_eq!(s.bytes, [0, 15]);
        assert_eq!((s.resets, s.reset_failures), (1, 1));
        assert_eq!(s.reset.count(), 1);
    }

    #[test]
    fn window_keeps_only_recent_samples() {
        let mut w = LatencyWindow::default();
        for _ in 0..LATENCY_WINDOW {
            w.record(Duration::from_secs(1));
        }
        for _ in 0..LATENCY_WINDOW {
            w.record(Duration::from_millis(1));
        }
        assert_eq!(w.summary().max, Duration::from_millis(1));
    }
}
