//! `anomaly`: flags the points whose robust z-score (`"mad"`, the default: 0.6745·(x − median)/MAD,
//! Iglewicz and Hoaglin) or plain z-score (`"zscore"`: (x − mean)/sample stddev) exceeds
//! `threshold` in absolute value. Returns the flagged points only: `indices` ascending, `scores`
//! the same length (the score of each flagged point, in the same order), and `count`.
//!
//! When the spread is zero no score is defined: for `"mad"` with MAD = 0 (more than half the
//! points equal the median) the score falls back to the mean absolute deviation around the
//! median, 0.7979·(x − median)/MeanAD (same scale for normal data: both estimate x/σ); when that
//! is zero too (a constant series), or the stddev is zero or undefined for `"zscore"` (constant,
//! or one point), nothing is flagged.
//!
//! Cost O(n): `"mad"` selects two medians (median, then MAD) on one scratch copy; `"zscore"` is
//! one pass for the moments plus one to score.

use ciborium::Value;

use super::stats::{median, Moments};
use super::{float, result_map, uint, values, Args, OpError, Prepared, Series};

/// Default threshold on abs(score).
pub const DEFAULT_THRESHOLD: f64 = 3.5;
/// The MAD of a normal distribution is 0.6745 σ.
const MAD_SCALE: f64 = 0.6745;
/// The mean absolute deviation of a normal distribution is sqrt(2/π) σ.
const MEAN_AD_SCALE: f64 = 0.797_884_560_802_865_4;

/// How points are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Median absolute deviation (robust to the outliers it looks for).
    Mad,
    /// Distance from the mean in sample standard deviations.
    ZScore,
}

/// A validated `anomaly`.
#[derive(Debug)]
pub struct Anomaly {
    method: Method,
    threshold: f64,
}

/// Validates `method` (`"mad"` or `"zscore"`) and `threshold` (a finite number ≥ 0).
pub fn prepare(args: &Args<'_>) -> Result<Box<dyn Prepared>, OpError> {
    let method = match args.text("method", "mad")? {
        "mad" => Method::Mad,
        "zscore" => Method::ZScore,
        other => {
            return Err(OpError::BadArgs(format!(
                "method must be \"mad\" or \"zscore\", got {other:?}"
            )))
        }
    };
    let threshold = args
        .number("threshold", Some(DEFAULT_THRESHOLD))?
        .unwrap_or(DEFAULT_THRESHOLD);
    if threshold < 0.0 {
        return Err(OpError::BadArgs(format!(
            "threshold must be at least 0, got {threshold}"
        )));
    }
    Ok(Box::new(Anomaly { method, threshold }))
}

impl Prepared for Anomaly {
    fn run(&self, series: &Series) -> Result<Value, OpError> {
        let xs = values(series)?;
        let flagged = match self.method {
            Method::Mad => self.flag(xs, mad_score(xs)),
            Method::ZScore => self.flag(xs, z_score(xs)),
        };
        let (indices, scores): (Vec<usize>, Vec<f64>) = flagged.into_iter().unzip();
        Ok(result_map(vec![
            ("count", uint(indices.len())),
            (
                "indices",
                Value::Array(indices.into_iter().map(uint).collect()),
            ),
            (
                "scores",
                Value::Array(
                    scores
                        .into_iter()
                        .map(|s| float("scores", s))
                        .collect::<Result<_, _>>()?,
                ),
            ),
        ]))
    }
}

impl Anomaly {
    /// The (index, score) of every point over the threshold; none when `score` is undefined.
    fn flag(&self, xs: &[f64], score: Option<impl Fn(f64) -> f64>) -> Vec<(usize, f64)> {
        let Some(score) = score else {
            return Vec::new();
        };
        xs.iter()
            .enumerate()
            .map(|(i, &x)| (i, score(x)))
            .filter(|(_, s)| s.abs() > self.threshold)
            .collect()
    }
}

/// The MAD score function, with the MeanAD fallback; `None` for a constant series.
fn mad_score(xs: &[f64]) -> Option<impl Fn(f64) -> f64> {
    let mut scratch = xs.to_vec();
    let center = median(&mut scratch);
    for (dev, &x) in scratch.iter_mut().zip(xs) {
        *dev = (x - center).abs();
    }
    let mean_ad = scratch.iter().sum::<f64>() / xs.len() as f64;
    let mad = median(&mut scratch);
    let (scale, spread) = if mad > 0.0 {
        (MAD_SCALE, mad)
    } else {
        (MEAN_AD_SCALE, mean_ad)
    };
    (spread > 0.0).then_some(move |x: f64| scale * (x - center) / spread)
}

/// The z-score function; `None` when the sample stddev is zero or undefined.
fn z_score(xs: &[f64]) -> Option<impl Fn(f64) -> f64> {
    let moments = Moments::of(xs);
    let (mean, stddev) = (moments.mean, moments.sample_stddev());
    (stddev > 0.0).then_some(move |x: f64| (x - mean) / stddev)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{check_fixtures, field};
    use super::super::{prepare as prepare_call, result_map};
    use super::*;

    #[test]
    fn matches_numpy_fixtures() {
        check_fixtures("anomaly", 1e-9);
    }

    #[test]
    fn arguments_are_validated_at_intake() {
        let values = ("values", Value::Array(vec![Value::Float(1.0)]));
        for bad in [
            ("method", Value::Text("iqr".into())),
            ("method", Value::Integer(1.into())),
            ("threshold", Value::Float(-1.0)),
            ("threshold", Value::Float(f64::NAN)),
            ("threshold", Value::Text("3".into())),
        ] {
            let args = result_map(vec![values.clone(), bad.clone()]);
            assert!(prepare_call("anomaly", &args, 10).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zero_spread_flags_nothing() {
        for method in [Method::Mad, Method::ZScore] {
            for values in [vec![2.0; 7], vec![5.0]] {
                let op = Anomaly {
                    method,
                    threshold: 0.0,
                };
                let result = op.run(&Series { values, ts: None }).expect("runs");
                assert_eq!(field(&result, "count"), &uint(0));
            }
        }
    }

    proptest! {
        #[test]
        fn indices_are_in_range_and_sorted(
            xs in prop::collection::vec(-1e6f64..1e6, 1..300),
            zscore in any::<bool>(),
            threshold in 0.0f64..4.0,
        ) {
            let method = if zscore { Method::ZScore } else { Method::Mad };
            let result = Anomaly { method, threshold }.run(&Series { values: xs.clone(), ts: None }).expect("runs");
            let Value::Array(indices) = field(&result, "indices") else { panic!("indices") };
            let Value::Array(scores) = field(&result, "scores") else { panic!("scores") };
            let indices: Vec<u64> = indices.iter().map(|i| u64::try_from(i.as_integer().expect("uint")).expect("u64")).collect();
            prop_assert!(indices.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(indices.iter().all(|&i| (i as usize) < xs.len()));
            prop_assert_eq!(scores.len(), indices.len());
            prop_assert_eq!(field(&result, "count"), &uint(indices.len()));
        }
    }
}
