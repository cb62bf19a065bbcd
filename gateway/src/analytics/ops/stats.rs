//! `stats`: count, mean, min, max, sample standard deviation and the 50th/90th/99th percentiles
//! (linear interpolation between closest ranks, numpy's default).

use ciborium::Value;

use super::{result_map, uint, Args, OpError, Prepared, Series};

/// `stats` takes no arguments beyond the series.
#[derive(Debug)]
pub struct Stats;

/// Validates `stats` arguments.
pub fn prepare(_args: &Args<'_>) -> Result<Box<dyn Prepared>, OpError> {
    Ok(Box::new(Stats))
}

impl Prepared for Stats {
    fn run(&self, series: &Series) -> Result<Value, OpError> {
        let xs = &series.values;
        if xs.is_empty() {
            return Err(OpError::BadArgs("the series is empty".into()));
        }
        let n = xs.len();
        // Welford's algorithm: stable for large offsets.
        let (mut mean, mut m2) = (0.0f64, 0.0f64);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for (i, &x) in xs.iter().enumerate() {
            let delta = x - mean;
            mean += delta / (i + 1) as f64;
            m2 += delta * (x - mean);
            min = min.min(x);
            max = max.max(x);
        }
        let stddev = if n > 1 {
            (m2 / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let mut sorted = xs.clone();
        sorted.sort_by(f64::total_cmp);
        Ok(result_map(vec![
            ("count", uint(n)),
            ("mean", Value::Float(mean)),
            ("min", Value::Float(min)),
            ("max", Value::Float(max)),
            ("stddev", Value::Float(stddev)),
            ("p50", Value::Float(percentile_sorted(&sorted, 50.0))),
            ("p90", Value::Float(percentile_sorted(&sorted, 90.0))),
            ("p99", Value::Float(percentile_sorted(&sorted, 99.0))),
        ]))
    }
}

/// The q-th percentile (0..=100) of sorted, non-empty data, interpolating linearly.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let rank = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::map_get;

    fn field(result: &Value, key: &str) -> f64 {
        let Value::Map(m) = result else {
            panic!("not a map")
        };
        super::super::as_finite(map_get(m, key).expect(key)).expect("number")
    }

    #[test]
    fn small_series_matches_numpy() {
        // numpy: mean 2.5, std(ddof=1) 1.2909944487358056, percentile 50 -> 2.5, 90 -> 3.7, 99 -> 3.97
        let series = Series {
            values: vec![4.0, 1.0, 3.0, 2.0],
            ts: None,
        };
        let result = Stats.run(&series).expect("runs");
        assert_eq!(field(&result, "count"), 4.0);
        assert_eq!(field(&result, "mean"), 2.5);
        assert_eq!(field(&result, "min"), 1.0);
        assert_eq!(field(&result, "max"), 4.0);
        assert!((field(&result, "stddev") - 1.2909944487358056).abs() < 1e-12);
        assert!((field(&result, "p50") - 2.5).abs() < 1e-12);
        assert!((field(&result, "p90") - 3.7).abs() < 1e-12);
        assert!((field(&result, "p99") - 3.97).abs() < 1e-12);
    }
}
