//! Run-time estimates per op and input size, learned from the runs themselves; the scheduler
//! sums them over the work ahead to answer `retry_after_ms`.
//!
//! Model: a run of op `o` over `n` points costs `BASE_US + per_point_us(o) × n`. `per_point_us`
//! starts at [`DEFAULT_PER_POINT_US`] and follows each completed run with an exponentially
//! weighted average (α = 0.2). A telemetry window's size is unknown until it is read, so it is
//! estimated as [`TELEMETRY_POINTS`]. A model (`infer:NAME`) is [`CostModel::seed`]ed at load
//! with its warm-up's fixed cost, which replaces `BASE_US` for it, and per-element cost.

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
    /// Fixed costs measured for a key (a model's warm-up), instead of [`BASE_US`].
    base_us: HashMap<&'static str, f64>,
}

impl CostModel {
    /// Estimated run time of `op` over `points` points, in microseconds.
    pub fn estimate_us(&self, op: &str, points: usize) -> f64 {
        let per_point = self
            .per_point_us
            .get(op)
            .copied()
            .unwrap_or(DEFAULT_PER_POINT_US);
        self.base(op) + per_point * points.max(1) as f64
    }

    fn base(&self, op: &str) -> f64 {
        self.base_us.get(op).copied().unwrap_or(BASE_US)
    }

    /// Starts `key` from measured figures (a model's warm-up at load) instead of the defaults;
    /// later runs refine the per-point cost as for any op.
    pub fn seed(&mut self, key: &'static str, base_us: f64, per_point_us: f64) {
        self.base_us.insert(key, BASE_US.max(base_us));
        self.per_point_us.insert(key, per_point_us.max(0.0));
    }

    /// Learns from a completed run.
    pub fn observe(&mut self, op: &'static str, points: usize, elapsed: Duration) {
        let sample =
            ((elapsed.as_secs_f64() * 1e6 - self.base(op)).max(0.0)) / points.max(1) as f64;
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

    #[test]
    fn a_seeded_model_starts_from_its_warm_up_and_keeps_learning() {
        let mut model = CostModel::default();
        model.seed("infer:mlp", 500.0, 0.5);
        assert!((model.estimate_us("infer:mlp", 1000) - 1000.0).abs() < 1e-9);
        // Runs of 8000 elements taking 8.5 ms: 1 µs per element over the 500 µs base.
        for _ in 0..50 {
            model.observe("infer:mlp", 8000, Duration::from_micros(8500));
        }
        assert!((model.estimate_us("infer:mlp", 8000) - 8500.0).abs() < 1.0);
    }
}
