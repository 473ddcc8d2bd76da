//! Order statistics of latency samples, shared by every benchmark.

use std::time::Duration;

/// The median of `samples` (sorts them).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// The `q` quantile (0..=1) of `samples` by nearest rank (sorts them);
/// zero when there are none.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let at = ((samples.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    samples[at]
}

/// The 95th percentile of `samples` (sorts them).
pub fn p95(samples: &mut [Duration]) -> Duration {
    quantile(samples, 0.95)
}

/// The median of plain numbers (ratios); NaN when there are none.
pub fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `x / y` of two durations; NaN when `y` is zero (a ratio that cannot be
/// taken shows as NaN in a table instead of an infinite one).
pub fn ratio(x: Duration, y: Duration) -> f64 {
    if y.is_zero() {
        f64::NAN
    } else {
        x.as_secs_f64() / y.as_secs_f64()
    }
}

/// A duration as milliseconds, for tables.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The usual summary of a set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub median: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub min: Duration,
    pub max: Duration,
}

impl Summary {
    /// Summarises `samples` (a copy is sorted; the caller's order stays).
    pub fn of(samples: &[Duration]) -> Self {
        let mut sorted = samples.to_vec();
        Self {
            median: quantile(&mut sorted, 0.5),
            p95: quantile(&mut sorted, 0.95),
            p99: quantile(&mut sorted, 0.99),
            min: quantile(&mut sorted, 0.0),
            max: quantile(&mut sorted, 1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_by_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(quantile(&mut v, 0.5), Duration::from_millis(51));
        assert_eq!(p95(&mut v), Duration::from_millis(95));
        assert_eq!(quantile(&mut [], 0.5), Duration::ZERO);
        assert!(ratio(Duration::from_secs(1), Duration::ZERO).is_nan());
    }
}
