//! `trend`: ordinary least squares of the values on time, t = seconds since the earliest
//! timestamp. Returns `slope_per_s`, `intercept` (the fitted value at t = 0), `r2` and `forecast`
//! (the fitted value `horizon_s` seconds after the latest timestamp).
//!
//! Timestamps need not be increasing or distinct: the fit does not depend on the order of the
//! points, so "first" and "last" mean the earliest and latest. At least two distinct timestamps
//! are needed (a slope over one instant is undefined): `400`, at intake for inline series. A
//! constant series fits exactly: slope 0 and r2 = 1 (no variance left unexplained).
//!
//! Cost O(n): two passes (means, then centred sums of squares and products, which stay accurate
//! with epoch-sized timestamps and large value offsets).

use ciborium::Value;

use super::{float, result_map, values, Args, OpError, Prepared, Series};

/// A validated `trend`.
#[derive(Debug)]
pub struct Trend {
    horizon_s: f64,
}

/// Validates `horizon_s` (a finite number ≥ 0, default 0) and, for inline series, that `ts`
/// is given with at least two distinct timestamps.
pub fn prepare(args: &Args<'_>) -> Result<Box<dyn Prepared>, OpError> {
    let horizon_s = args.number("horizon_s", Some(0.0))?.unwrap_or(0.0);
    if horizon_s < 0.0 {
        return Err(OpError::BadArgs(format!(
            "horizon_s must be at least 0, got {horizon_s}"
        )));
    }
    if args.is_inline() {
        let ts = args.get("ts").and_then(Value::as_array).ok_or_else(|| {
            OpError::BadArgs("trend needs ts with inline values, or metric and window_s".into())
        })?;
        let mut distinct = ts.iter().filter_map(|t| t.as_integer()).map(i128::from);
        let first = distinct.next();
        if distinct.all(|t| Some(t) == first) {
            return Err(OpError::BadArgs(
                "trend needs at least two distinct timestamps".into(),
            ));
        }
    }
    Ok(Box::new(Trend { horizon_s }))
}

impl Prepared for Trend {
    fn run(&self, series: &Series) -> Result<Value, OpError> {
        let ys = values(series)?;
        let ts = series
            .ts
            .as_deref()
            .ok_or_else(|| OpError::BadArgs("trend needs timestamps".into()))?;
        let fit = Fit::of(ts, ys)?;
        let forecast = fit.intercept + fit.slope * (fit.span_s + self.horizon_s);
        Ok(result_map(vec![
            ("slope_per_s", float("slope_per_s", fit.slope)?),
            ("intercept", float("intercept", fit.intercept)?),
            ("r2", float("r2", fit.r2)?),
            ("forecast", float("forecast", forecast)?),
        ]))
    }
}

/// A least-squares line y = intercept + slope · t, t in seconds since the earliest timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fit {
    slope: f64,
    intercept: f64,
    r2: f64,
    /// Seconds from the earliest to the latest timestamp.
    span_s: f64,
}

impl Fit {
    fn of(ts: &[u64], ys: &[f64]) -> Result<Fit, OpError> {
        let (first, last) = ts
            .iter()
            .fold((u64::MAX, u64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        if first >= last || ts.len() != ys.len() {
            return Err(OpError::BadArgs(
                "trend needs at least two distinct timestamps".into(),
            ));
        }
        // Work in milliseconds since the earliest timestamp (integers, so their sum is exact and
        // no division per point), and convert the slope to seconds once at the end.
        let ms = |t: u64| (t - first) as f64;
        let n = ys.len() as f64;
        let sum_ms: u128 = ts.iter().map(|&t| u128::from(t - first)).sum();
        let mean_ms = sum_ms as f64 / n;
        let mean_y = ys.iter().sum::<f64>() / n;
        let (mut stt, mut sty, mut syy) = (0.0, 0.0, 0.0);
        for (&t, &y) in ts.iter().zip(ys) {
            let (dt, dy) = (ms(t) - mean_ms, y - mean_y);
            stt += dt * dt;
            sty += dt * dy;
            syy += dy * dy;
        }
        let slope_per_ms = sty / stt;
        let r2 = if syy > 0.0 {
            (sty * sty / (stt * syy)).clamp(0.0, 1.0)
        } else {
            1.0
        };
        Ok(Fit {
            slope: slope_per_ms * 1000.0,
            intercept: mean_y - slope_per_ms * mean_ms,
            r2,
            span_s: ms(last) / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{check_fixtures, number};
    use super::super::{prepare as prepare_call, result_map, uint, PrepareError};
    use super::*;

    #[test]
    fn matches_numpy_fixtures() {
        check_fixtures("trend", 1e-9);
    }

    #[test]
    fn inline_series_need_two_distinct_timestamps() {
        let floats = |xs: &[f64]| Value::Array(xs.iter().map(|&x| Value::Float(x)).collect());
        let uints = |ts: &[usize]| Value::Array(ts.iter().map(|&t| uint(t)).collect());
        for args in [
            vec![("values", floats(&[1.0, 2.0]))],
            vec![("values", floats(&[1.0, 2.0])), ("ts", uints(&[5, 5]))],
            vec![("values", floats(&[1.0])), ("ts", uints(&[5]))],
            vec![
                ("values", floats(&[1.0, 2.0])),
                ("ts", uints(&[5, 6])),
                ("horizon_s", Value::Float(-1.0)),
            ],
        ] {
            let refused =
                prepare_call("trend", &result_map(args.clone()), 10).expect_err("refused");
            assert!(
                matches!(refused, PrepareError::Op(OpError::BadArgs(_))),
                "{args:?}"
            );
        }
        let telemetry = result_map(vec![
            ("metric", Value::Text("t".into())),
            ("window_s", uint(60)),
        ]);
        let call =
            prepare_call("trend", &telemetry, 10).expect("telemetry needs no ts in the request");
        let one_instant = Series {
            values: vec![1.0, 2.0],
            ts: Some(vec![7, 7]),
        };
        assert!(matches!(
            call.prepared.run(&one_instant),
            Err(OpError::BadArgs(_))
        ));
    }

    proptest! {
        #[test]
        fn an_exact_line_is_recovered(
            slope in -1e3f64..1e3,
            intercept in -1e6f64..1e6,
            start in 0u64..2_000_000_000_000,
            steps in prop::collection::vec(1u64..100_000, 1..200),
        ) {
            let mut ts = vec![start];
            for step in steps {
                ts.push(ts[ts.len() - 1] + step);
            }
            let ys: Vec<f64> = ts.iter().map(|&t| intercept + slope * ((t - start) as f64 / 1000.0)).collect();
            let span_s = (ts[ts.len() - 1] - start) as f64 / 1000.0;
            let result = Trend { horizon_s: 10.0 }.run(&Series { values: ys, ts: Some(ts) }).expect("runs");
            let scale = intercept.abs() + slope.abs() * span_s + 1.0;
            prop_assert!((number(&result, "slope_per_s") - slope).abs() * span_s <= 1e-9 * scale);
            prop_assert!((number(&result, "intercept") - intercept).abs() <= 1e-9 * scale);
            let forecast = intercept + slope * (span_s + 10.0);
            prop_assert!((number(&result, "forecast") - forecast).abs() <= 1e-9 * (scale + slope.abs() * 10.0));
            prop_assert!(number(&result, "r2") > 1.0 - 1e-9 || slope.abs() * span_s < 1e-6 * scale);
        }
    }
}
