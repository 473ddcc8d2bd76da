//! Pool statistics: counters, state counts and acquire-latency percentiles.

use std::{
    collections::VecDeque,
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
    pub fail_fast_refusals: u64,
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
    pub temporary_containers: u32,
    pub waiting: u32,
    pub active_leases: u32,
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
