//! A duration histogram of one pool, read from the server's Prometheus
//! exposition text.

/// Cumulative buckets (upper bound in seconds, samples at or under it),
/// +Inf last, with the sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// The family `name`'s histogram for `pool` in `text`; None when the
    /// pool has none.
    pub fn parse(text: &str, name: &str, pool: &str) -> Option<Self> {
        let label = format!("pool=\"{pool}\"");
        let mut h = Histogram::default();
        let mut found = false;
        for line in text.lines() {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if !key.contains(&label) {
                continue;
            }
            let number = value.trim();
            if let Some(labels) = key.strip_prefix(&format!("{name}_bucket{{")) {
                let le = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("le=\""))
                    .map(|l| l.trim_end_matches(['"', '}']))?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                h.buckets.push((bound, number.parse().ok()?));
                found = true;
            } else if key.starts_with(&format!("{name}_sum{{")) {
                h.sum = number.parse().ok()?;
            } else if key.starts_with(&format!("{name}_count{{")) {
                h.count = number.parse().ok()?;
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        found.then_some(h)
    }

    /// The upper bound of the bucket holding the `q` quantile, in seconds
    /// (what a histogram can say of it); NaN without samples.
    pub fn quantile_bound(&self, q: f64) -> f64 {
        let want = (q * self.count as f64).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= want)
            .map_or(f64::NAN, |(bound, _)| *bound)
    }

    /// The mean sample, in seconds; NaN without samples.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_pool() {
        let text = "# TYPE sandpool_reset_duration_seconds histogram\n\
            sandpool_reset_duration_seconds_bucket{pool=\"a\",le=\"0.05\"} 1\n\
            sandpool_reset_duration_seconds_bucket{pool=\"a\",le=\"0.1\"} 3\n\
            sandpool_reset_duration_seconds_bucket{pool=\"a\",le=\"+Inf\"} 4\n\
            sandpool_reset_duration_seconds_sum{pool=\"a\"} 0.4\n\
            sandpool_reset_duration_seconds_count{pool=\"a\"} 4\n\
            sandpool_reset_duration_seconds_count{pool=\"b\"} 9\n";
        let h = Histogram::parse(text, "sandpool_reset_duration_seconds", "a").unwrap();
        assert_eq!(h.count, 4);
        assert_eq!(h.quantile_bound(0.5), 0.1);
        assert!(h.quantile_bound(0.95).is_infinite());
        assert!((h.mean() - 0.1).abs() < 1e-9);
        assert!(Histogram::parse(text, "sandpool_reset_duration_seconds", "c").is_none());
    }
}
