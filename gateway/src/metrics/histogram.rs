//! A fixed-bucket latency histogram with lock-free recording, rendered in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket upper bounds in seconds: 100 µs to 30 s.
const BOUNDS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_S.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BOUNDS_S.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Appends the Prometheus text for metric `name` (cumulative buckets, `_sum`, `_count`).
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// Appends one labelled series of a histogram whose HELP and TYPE lines are already out;
    /// `labels` is `key="value",` text or empty.
    pub fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let labels = labels.trim_end_matches(',');
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }

    /// The count in each bucket so far, and last the count above the largest bound.
    pub fn snapshot(&self) -> Vec<u64> {
        let mut counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let below: u64 = counts.iter().sum();
        counts.push(self.count.load(Relaxed).saturating_sub(below));
        counts
    }
}

/// The `q` quantile (0..=1) in seconds of the observations between two snapshots, interpolated
/// linearly inside its bucket (as Prometheus' `histogram_quantile` does); `None` when there were
/// none.
pub fn quantile_between(before: &[u64], after: &[u64], q: f64) -> Option<f64> {
    let delta: Vec<u64> = after
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut cumulative = 0u64;
    for (i, count) in delta.iter().enumerate() {
        let next = cumulative + count;
        if *count > 0 && next as f64 >= rank {
            let Some(upper) = BOUNDS_S.get(i) else {
                return Some(BOUNDS_S[BOUNDS_S.len() - 1]);
            };
            let lower = if i == 0 { 0.0 } else { BOUNDS_S[i - 1] };
            let within = (rank - cumulative as f64) / *count as f64;
            return Some(lower + (upper - lower) * within);
        }
        cumulative = next;
    }
    Some(BOUNDS_S[BOUNDS_S.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "test");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"30\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"));
        assert_eq!(histogram.count(), 3);
    }

    #[test]
    fn quantiles_between_snapshots() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_secs(5));
        let before = histogram.snapshot();
        for _ in 0..99 {
            histogram.observe(Duration::from_micros(700)); // bucket (0.0005, 0.001]
        }
        histogram.observe(Duration::from_millis(20)); // bucket (0.01, 0.025]
        let after = histogram.snapshot();
        let p50 = quantile_between(&before, &after, 0.5).expect("observations");
        assert!((0.0005..=0.001).contains(&p50), "{p50}");
        let p99 = quantile_between(&before, &after, 0.995).expect("observations");
        assert!((0.01..=0.025).contains(&p99), "{p99}");
        assert_eq!(quantile_between(&after, &after, 0.5), None);
    }
}
