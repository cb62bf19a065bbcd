//! `stats`: count, mean, min, max, sample standard deviation and the 50th/90th/99th percentiles
//! (linear interpolation between closest ranks, numpy's default).
//!
//! Cost O(n): one pass for the moments ([`Moments`], Welford's update in four independent lanes
//! merged with Chan's formula, stable for large offsets), then selection for the percentiles
//! ([`percentiles`], `select_nth_unstable` on one copy of the series, no sort). The percentile and
//! median helpers here are shared with `anomaly`.

use ciborium::Value;

use super::{float, result_map, uint, values, Args, OpError, Prepared, Series};

/// `stats` takes no arguments beyond the series.
#[derive(Debug)]
pub struct Stats;

/// Validates `stats` arguments.
pub fn prepare(_args: &Args<'_>) -> Result<Box<dyn Prepared>, OpError> {
    Ok(Box::new(Stats))
}

impl Prepared for Stats {
    fn run(&self, series: &Series) -> Result<Value, OpError> {
        let xs = values(series)?;
        let moments = Moments::of(xs);
        let mut scratch = xs.to_vec();
        let [p50, p90, p99] = percentiles(&mut scratch, [50.0, 90.0, 99.0]);
        Ok(result_map(vec![
            ("count", uint(moments.n)),
            ("mean", float("mean", moments.mean)?),
            ("min", float("min", moments.min)?),
            ("max", float("max", moments.max)?),
            ("stddev", float("stddev", moments.sample_stddev())?),
            ("p50", float("p50", p50)?),
            ("p90", float("p90", p90)?),
            ("p99", float("p99", p99)?),
        ]))
    }
}

/// Count, mean, sum of squared deviations from the mean (`m2`), min and max of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// Number of values.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// Independent accumulators: they break the add-latency chain of a single Welford loop.
const LANES: usize = 4;

impl Moments {
    const EMPTY: Moments = Moments {
        n: 0,
        mean: 0.0,
        m2: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    /// The moments of `xs` in one pass.
    pub fn of(xs: &[f64]) -> Self {
        let mut mean = [0.0f64; LANES];
        let mut m2 = [0.0f64; LANES];
        let mut min = [f64::INFINITY; LANES];
        let mut max = [f64::NEG_INFINITY; LANES];
        let chunks = xs.chunks_exact(LANES);
        let rest = chunks.remainder();
        for (k, chunk) in chunks.enumerate() {
            // All lanes have seen k values: one division serves the four of them.
            let inv = 1.0 / (k + 1) as f64;
            for lane in 0..LANES {
                let x = chunk[lane];
                let delta = x - mean[lane];
                mean[lane] += delta * inv;
                m2[lane] += delta * (x - mean[lane]);
                min[lane] = min[lane].min(x);
                max[lane] = max[lane].max(x);
            }
        }
        let per_lane = xs.len() / LANES;
        let mut total = Self::EMPTY;
        for lane in 0..LANES {
            total = total.merge(Moments {
                n: per_lane,
                mean: mean[lane],
                m2: m2[lane],
                min: min[lane],
                max: max[lane],
            });
        }
        for &x in rest {
            total = total.merge(Moments {
                n: 1,
                mean: x,
                m2: 0.0,
                min: x,
                max: x,
            });
        }
        total
    }

    /// Combines the moments of two disjoint parts (Chan et al.).
    fn merge(self, other: Moments) -> Moments {
        if other.n == 0 {
            return self;
        }
        if self.n == 0 {
            return other;
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        let weight = other.n as f64 / n as f64;
        Moments {
            n,
            mean: self.mean + delta * weight,
            m2: self.m2 + other.m2 + delta * delta * self.n as f64 * weight,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    /// Sample standard deviation (n − 1). One value has no spread to estimate: 0, not NaN.
    pub fn sample_stddev(&self) -> f64 {
        if self.n > 1 {
            (self.m2 / (self.n - 1) as f64).sqrt()
        } else {
            0.0
        }
    }
}

/// The percentiles `qs` (0..=100, ascending) of non-empty `data`, as numpy.percentile's default
/// ("linear") method computes them. Reorders `data`. Expected O(n) for a few percentiles.
pub fn percentiles<const K: usize>(data: &mut [f64], qs: [f64; K]) -> [f64; K] {
    debug_assert!(!data.is_empty() && qs.windows(2).all(|w| w[0] <= w[1]));
    let last = data.len() - 1;
    let mut placed = 0;
    qs.map(|q| {
        let rank = last as f64 * (q / 100.0);
        let lo = (rank.floor() as usize).min(last);
        let t = rank - lo as f64;
        let a = select(data, &mut placed, lo);
        if t > 0.0 && lo < last {
            lerp(a, select(data, &mut placed, lo + 1), t)
        } else {
            a
        }
    })
}

/// The median of non-empty `data` (the mean of the two middle values for even n, as numpy.median).
/// Reorders `data`.
pub fn median(data: &mut [f64]) -> f64 {
    let mut placed = 0;
    let n = data.len();
    if n % 2 == 1 {
        select(data, &mut placed, n / 2)
    } else {
        let a = select(data, &mut placed, n / 2 - 1);
        let b = select(data, &mut placed, n / 2);
        // Halving first cannot overflow and rounds the same as (a + b) / 2.
        a / 2.0 + b / 2.0
    }
}

/// The k-th smallest value. `data[..placed]` holds everything below the last index selected, and
/// that index already holds its sorted value, so calls with non-decreasing `k` (never below the
/// previous one) only partition what is left.
fn select(data: &mut [f64], placed: &mut usize, k: usize) -> f64 {
    if k < *placed {
        return data[k];
    }
    let (_, kth, _) = data[*placed..].select_nth_unstable_by(k - *placed, f64::total_cmp);
    let value = *kth;
    *placed = k + 1;
    value
}

/// numpy's `_lerp`: the form it uses depends on which end is nearer, for monotonicity.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{check_fixtures, number};
    use super::*;

    #[test]
    fn matches_numpy_fixtures() {
        check_fixtures("stats", 1e-9);
    }

    /// The textbook way: sort, then interpolate between closest ranks.
    fn percentile_by_sorting(xs: &[f64], q: f64) -> f64 {
        let mut sorted = xs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = (sorted.len() - 1) as f64 * (q / 100.0);
        let lo = rank.floor() as usize;
        let hi = (lo + 1).min(sorted.len() - 1);
        lerp(sorted[lo], sorted[hi], rank - lo as f64)
    }

    #[test]
    fn one_value_has_zero_stddev() {
        let result = Stats
            .run(&Series {
                values: vec![-3.5],
                ts: None,
            })
            .expect("runs");
        assert_eq!(number(&result, "stddev"), 0.0);
        assert_eq!(number(&result, "p99"), -3.5);
    }

    #[test]
    fn overflow_is_an_error_not_infinity() {
        let series = Series {
            values: vec![f64::MAX, -f64::MAX, f64::MAX],
            ts: None,
        };
        assert!(matches!(Stats.run(&series), Err(OpError::Failed(_))));
        assert!(matches!(
            Stats.run(&Series::default()),
            Err(OpError::BadArgs(_))
        ));
    }

    proptest! {
        #[test]
        fn order_holds(xs in prop::collection::vec(-1e12f64..1e12, 1..300)) {
            let result = Stats.run(&Series { values: xs, ts: None }).expect("finite input runs");
            let [min, p50, p90, p99, max] = ["min", "p50", "p90", "p99", "max"].map(|k| number(&result, k));
            prop_assert!(min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max);
            prop_assert!(number(&result, "stddev") >= 0.0);
        }

        #[test]
        fn selection_agrees_with_sorting(
            xs in prop::collection::vec(-1e6f64..1e6, 1..300),
            mut qs in prop::array::uniform4(0.0f64..=100.0),
        ) {
            qs.sort_by(f64::total_cmp);
            let mut scratch = xs.clone();
            let got = percentiles(&mut scratch, qs);
            prop_assert_eq!(got, qs.map(|q| percentile_by_sorting(&xs, q)));
            let mut scratch = xs.clone();
            prop_assert_eq!(median(&mut scratch), {
                let mut sorted = xs.clone();
                sorted.sort_by(f64::total_cmp);
                let n = sorted.len();
                if n % 2 == 1 { sorted[n / 2] } else { sorted[n / 2 - 1] / 2.0 + sorted[n / 2] / 2.0 }
            });
        }
    }
}
