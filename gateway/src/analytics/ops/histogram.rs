//! `histogram`: `bins` equal-width bins over [min, max], with numpy.histogram's semantics: edges
//! as numpy.linspace makes them, every bin half-open except the last, which is closed; a constant
//! series x gets the range [x − 0.5, x + 0.5].
//!
//! Cost O(n + bins): one pass for min/max, one to count (bin index by arithmetic, corrected by
//! one against the edges as numpy does for values within an ulp of an edge).

use ciborium::Value;

use super::{float, result_map, uint, values, Args, OpError, Prepared, Series};

/// Default number of bins.
pub const DEFAULT_BINS: u64 = 10;
/// Most bins a request may ask for: keeps a reply within a few hundred kilobytes.
pub const MAX_BINS: u64 = 10_000;

/// A validated `histogram`.
#[derive(Debug)]
pub struct Histogram {
    bins: usize,
}

/// Validates `bins`: an unsigned integer in 1..=[`MAX_BINS`], default [`DEFAULT_BINS`].
pub fn prepare(args: &Args<'_>) -> Result<Box<dyn Prepared>, OpError> {
    let bins = args.uint("bins", DEFAULT_BINS)?;
    if !(1..=MAX_BINS).contains(&bins) {
        return Err(OpError::BadArgs(format!(
            "bins must be between 1 and {MAX_BINS}, got {bins}"
        )));
    }
    let bins = usize::try_from(bins).expect("at most MAX_BINS fits in usize");
    Ok(Box::new(Histogram { bins }))
}

impl Prepared for Histogram {
    fn run(&self, series: &Series) -> Result<Value, OpError> {
        let xs = values(series)?;
        let (min, max) = xs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        let (first, last) = if min == max {
            (min - 0.5, max + 0.5)
        } else {
            (min, max)
        };
        if !(last - first).is_finite() {
            return Err(OpError::Failed(
                "the range of the values overflows float64".into(),
            ));
        }
        let edges = linspace(first, last, self.bins + 1);
        if edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(OpError::BadArgs(format!(
                "too many bins for the data's range: {} bins over [{first}, {last}] would not \
                 all have a width in float64",
                self.bins
            )));
        }
        let counts = count(xs, &edges);
        Ok(result_map(vec![
            (
                "edges",
                Value::Array(
                    edges
                        .iter()
                        .map(|&e| float("edges", e))
                        .collect::<Result<_, _>>()?,
                ),
            ),
            (
                "counts",
                Value::Array(counts.into_iter().map(uint).collect()),
            ),
        ]))
    }
}

/// `num` evenly spaced values from `start` to `stop` inclusive, as numpy.linspace computes them.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut edges: Vec<f64> = (0..num)
        .map(|i| {
            if step == 0.0 {
                i as f64 / div * delta + start
            } else {
                i as f64 * step + start
            }
        })
        .collect();
    if let Some(end) = edges.last_mut() {
        *end = stop;
    }
    edges
}

/// Counts `xs` (all within the edges) into the bins `edges` delimits.
fn count(xs: &[f64], edges: &[f64]) -> Vec<usize> {
    let bins = edges.len() - 1;
    let (first, last) = (edges[0], edges[bins]);
    // numpy divides by the range, then multiplies by bins; one multiplication by their ratio can
    // land one bin off near an edge, and the comparisons below settle that exactly as numpy's do,
    // so each value ends in the bin whose edges hold it.
    let scale = bins as f64 / (last - first);
    let mut counts = vec![0usize; bins];
    for &x in xs {
        // Saturating float → int cast; the corrections below settle values near an edge.
        let position = if scale.is_finite() {
            (x - first) * scale
        } else {
            // A subnormal range: numpy's order of operations avoids the overflow.
            (x - first) / (last - first) * bins as f64
        };
        let mut index = position as usize;
        index = index.min(bins - 1);
        if x < edges[index] {
            index = index.saturating_sub(1);
        } else if index != bins - 1 && x >= edges[index + 1] {
            index += 1;
        }
        counts[index] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{check_fixtures, field};
    use super::super::{prepare as prepare_call, result_map, PrepareError};
    use super::*;

    #[test]
    fn matches_numpy_fixtures() {
        check_fixtures("histogram", 1e-12);
    }

    #[test]
    fn bins_are_validated_at_intake() {
        let values = Value::Array(vec![Value::Float(1.0)]);
        for bins in [0, MAX_BINS + 1] {
            let args = result_map(vec![
                ("values", values.clone()),
                ("bins", uint(bins as usize)),
            ]);
            let refused = prepare_call("histogram", &args, 10).expect_err("refused");
            assert!(
                matches!(refused, PrepareError::Op(OpError::BadArgs(_))),
                "bins = {bins}"
            );
        }
        let args = result_map(vec![("values", values), ("bins", Value::Float(2.0))]);
        assert!(prepare_call("histogram", &args, 10).is_err());
    }

    #[test]
    fn a_range_too_narrow_for_the_bins_is_refused() {
        let series = Series {
            values: vec![1.0, 1.0 + f64::EPSILON],
            ts: None,
        };
        assert!(matches!(
            Histogram { bins: 10 }.run(&series),
            Err(OpError::BadArgs(_))
        ));
        let series = Series {
            values: vec![-f64::MAX, f64::MAX],
            ts: None,
        };
        assert!(matches!(
            Histogram { bins: 10 }.run(&series),
            Err(OpError::Failed(_))
        ));
    }

    proptest! {
        #[test]
        fn counts_sum_to_n(xs in prop::collection::vec(-1e9f64..1e9, 1..500), bins in 1usize..64) {
            let result = Histogram { bins }.run(&Series { values: xs.clone(), ts: None }).expect("runs");
            let Value::Array(counts) = field(&result, "counts") else { panic!("counts") };
            let Value::Array(edges) = field(&result, "edges") else { panic!("edges") };
            prop_assert_eq!(counts.len(), bins);
            prop_assert_eq!(edges.len(), bins + 1);
            let total: u64 = counts
                .iter()
                .map(|c| u64::try_from(c.as_integer().expect("uint")).expect("u64"))
                .sum();
            prop_assert_eq!(total, xs.len() as u64);
        }

        #[test]
        fn each_value_lands_between_its_edges(
            base in -1e12f64..1e12,
            offsets in prop::collection::vec(0.0f64..1.0, 1..300),
            width in prop::sample::select(vec![1e-6, 1e-3, 1.0, 1e6]),
            bins in 1usize..200,
        ) {
            let xs: Vec<f64> = offsets.iter().map(|o| base + o * width).collect();
            let Ok(result) = (Histogram { bins }).run(&Series { values: xs.clone(), ts: None }) else {
                return Ok(()); // too many bins for a range narrow relative to base
            };
            let edges: Vec<f64> = match field(&result, "edges") {
                Value::Array(edges) => edges.iter().map(|e| e.as_float().expect("float")).collect(),
                _ => panic!("edges"),
            };
            let mut expected = vec![0u64; bins];
            for &x in &xs {
                // The bin whose edges hold x, the last one closed.
                let index = edges[1..bins].partition_point(|&edge| edge <= x);
                expected[index] += 1;
            }
            let Value::Array(counts) = field(&result, "counts") else { panic!("counts") };
            let counts: Vec<u64> = counts
                .iter()
                .map(|c| u64::try_from(c.as_integer().expect("uint")).expect("u64"))
                .collect();
            prop_assert_eq!(counts, expected);
        }
    }
}
