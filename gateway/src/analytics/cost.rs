//! Run-time estimates per op and input size, learned from the runs themselves; the scheduler
//! sums them over the work ahead to answer `retry_after_ms`.
//!
//! Model: a run of op `o` over `n` points costs `BASE_US + per_point_us(o) × n`. `per_point_us`
//! starts at [`DEFAULT_PER_POINT_US`] and follows each completed run with an exponentially
//! weighted average (α = 0.2). A telemetry window's size is unknown until it is read, so it is
//! estimated as [`TELEMETRY_POINTS`].

use std::collections::HashMap;
use std::time::Duration;

/// Fixed cost of any run (decode, dispatch, encode), in microseconds.
pub const BASE_US: f64 = 20.0;
/// Per-point cost before an op has run: 10 ns, about `stats`.
pub const DEFAULT_PER_POINT_US: f64 = 0.01;
/// Assumed size of a telemetry window.
pub const TELEMETRY_POINTS: usize = 1000;
const ALPHA: f64 = 0.2;

/// Learned per-point costs.
#[derive(Debug, Default)]
pub struct CostModel {
    per_point_us: HashMap<&'static str, f64>,
}

impl CostModel {
    /// Estimated run time of `op` over `points` points, in microseconds.
    pub fn estimate_us(&self, op: &str, points: usize) -> f64 {
        let per_point = self
            .per_point_us
            .get(op)
            .copied()
            .unwrap_or(DEFAULT_PER_POINT_US);
        BASE_US + per_point * points.max(1) as f64
    }

    /// Learns from a completed run.
    pub fn observe(&mut self, op: &'static str, points: usize, elapsed: Duration) {
        let sample = ((elapsed.as_secs_f64() * 1e6 - BASE_US).max(0.0)) / points.max(1) as f64;
        let cost = self.per_point_us.entry(op).or_insert(sample);
        *cost = (1.0 - ALPHA) * *cost + ALPHA * sample;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_per_point_cost_and_scales_with_size() {
        let mut model = CostModel::default();
        assert_eq!(model.estimate_us("stats", 100), BASE_US + 1.0);
        // 1000 points in 1020 µs: 1 µs per point.
        model.observe("stats", 1000, Duration::from_micros(1020));
        assert!((model.estimate_us("stats", 10_000) - (BASE_US + 10_000.0)).abs() < 1e-6);
        // Another op is unaffected.
        assert_eq!(model.estimate_us("spectrum", 100), BASE_US + 1.0);
        // Later runs move the average by a fifth of the difference.
        model.observe("stats", 1000, Duration::from_micros(20));
        assert!((model.estimate_us("stats", 1) - (BASE_US + 0.8)).abs() < 1e-9);
    }
}
