//! Checks a final reply's `result` against what the request asked for.
//!
//! Fed by [`crate::tracker`] with a request's [`Expect`] and the reply's `result` value. `stats` is
//! recomputed here, independently of the gateway's code (two-pass mean and variance, numpy's
//! linear-interpolation percentiles), and compared field by field within a relative tolerance of
//! 1e-9; the other ops are checked for shape.

use ciborium::Value;
use wire::envelope::map_get;

use crate::workload::Expect;

/// Relative tolerance for floating-point result fields.
pub const TOLERANCE: f64 = 1e-9;

/// `stats` recomputed locally.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsResult {
    /// Number of values.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sample standard deviation (n − 1); 0 for one value.
    pub stddev: f64,
    /// 50th percentile.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Computes `stats` over non-empty values.
pub fn stats(values: &[f64]) -> Option<StatsResult> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let squares = values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>();
    let stddev = if values.len() > 1 {
        (squares / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(StatsResult {
        count: values.len() as u64,
        mean,
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        stddev,
        p50: percentile(&sorted, 50.0),
        p90: percentile(&sorted, 90.0),
        p99: percentile(&sorted, 99.0),
    })
}

/// numpy's default percentile: linear interpolation between the closest ranks of sorted data.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q / 100.0 * (sorted.len() - 1) as f64;
    let below = rank.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    sorted[below] + (sorted[above] - sorted[below]) * (rank - below as f64)
}

/// Whether `got` equals `want` within [`TOLERANCE`], relative to the larger of the two and of
/// `scale` (the series' largest magnitude, so a mean near zero is not held to an absurd bound).
pub fn close(got: f64, want: f64, scale: f64) -> bool {
    let bound = TOLERANCE * got.abs().max(want.abs()).max(scale);
    (got - want).abs() <= bound
}

/// Why a result did not check out: a short stable reason (a JSON key) and a detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Wrong {
    /// Stable reason, counted in the report.
    pub reason: &'static str,
    /// What exactly differed.
    pub detail: String,
}

fn wrong(reason: &'static str, detail: impl Into<String>) -> Wrong {
    Wrong {
        reason,
        detail: detail.into(),
    }
}

fn number(map: &[(Value, Value)], key: &str) -> Result<f64, Wrong> {
    match map_get(map, key) {
        Some(Value::Float(f)) => Ok(*f),
        Some(Value::Integer(i)) => Ok(i128::from(*i) as f64),
        _ => Err(wrong(
            "result_shape",
            format!("`{key}` missing or not a number"),
        )),
    }
}

fn array<'a>(map: &'a [(Value, Value)], key: &str) -> Result<&'a [Value], Wrong> {
    match map_get(map, key) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(wrong(
            "result_shape",
            format!("`{key}` missing or not an array"),
        )),
    }
}

/// Checks a final `200` reply's `result` against the request's expectation.
pub fn check(expect: &Expect, result: Option<&Value>) -> Result<(), Wrong> {
    let Some(Value::Map(map)) = result else {
        return Err(wrong("result_shape", "200 reply without a `result` map"));
    };
    match expect {
        Expect::Stats(values) => check_stats(values, map),
        Expect::Histogram { n, bins } => {
            let counts = array(map, "counts")?;
            let edges = array(map, "edges")?;
            if counts.len() != *bins || edges.len() != bins + 1 {
                return Err(wrong(
                    "result_shape",
                    format!(
                        "histogram has {} counts, {} edges",
                        counts.len(),
                        edges.len()
                    ),
                ));
            }
            let total: i128 = counts
                .iter()
                .filter_map(Value::as_integer)
                .map(i128::from)
                .sum();
            if total != *n as i128 {
                return Err(wrong(
                    "result_value",
                    format!("counts sum to {total}, not {n}"),
                ));
            }
            Ok(())
        }
        Expect::Anomaly { n } => {
            let indices = array(map, "indices")?;
            let scores = array(map, "scores")?;
            let count = number(map, "count")?;
            if indices.len() as f64 != count || indices.len() > *n || scores.len() > *n {
                return Err(wrong(
                    "result_value",
                    format!("anomaly count {count}, {} indices", indices.len()),
                ));
            }
            Ok(())
        }
        Expect::Trend => {
            for key in ["slope_per_s", "intercept", "r2", "forecast"] {
                number(map, key)?;
            }
            Ok(())
        }
        Expect::Spectrum { peaks } => {
            let found = array(map, "peaks")?;
            if found.len() > *peaks {
                return Err(wrong("result_value", format!("{} peaks", found.len())));
            }
            Ok(())
        }
        Expect::Infer { model, rows } => check_infer(model, *rows, map),
    }
}

/// `infer`: the model asked for answered (or its fallback, saying so), with a SHA-256, and every
/// output's data fills its shape with finite numbers; a batch-first output has `rows` rows.
fn check_infer(model: &str, rows: usize, map: &[(Value, Value)]) -> Result<(), Wrong> {
    let text_of = |map: &[(Value, Value)], key: &str| match map_get(map, key) {
        Some(Value::Text(t)) => Ok(t.clone()),
        _ => Err(wrong(
            "result_shape",
            format!("`{key}` missing or not text"),
        )),
    };
    let answered = text_of(map, "model")?;
    let asked = match map_get(map, "fallback_from") {
        Some(Value::Map(from)) => text_of(from, "model")?,
        _ => answered,
    };
    if asked != model {
        return Err(wrong(
            "result_value",
            format!("answered for model {asked:?}"),
        ));
    }
    let sha = text_of(map, "sha256")?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(wrong("result_value", format!("sha256 {sha:?}")));
    }
    let Some(Value::Map(outputs)) = map_get(map, "outputs") else {
        return Err(wrong("result_shape", "`outputs` missing or not a map"));
    };
    if outputs.is_empty() {
        return Err(wrong("result_shape", "no outputs"));
    }
    for (name, output) in outputs {
        let Value::Map(output) = output else {
            return Err(wrong(
                "result_shape",
                format!("output {name:?} is not a map"),
            ));
        };
        let shape: Vec<usize> = array(output, "shape")?
            .iter()
            .map(|d| d.as_integer().and_then(|i| usize::try_from(i).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| wrong("result_shape", "shape is not uints"))?;
        let data = array(output, "data")?;
        let finite = data.iter().all(|x| match x {
            Value::Float(f) => f.is_finite(),
            Value::Integer(_) => true,
            _ => false,
        });
        if data.len() != shape.iter().product::<usize>() || !finite {
            return Err(wrong(
                "result_value",
                format!("output {name:?}: {} values for shape {shape:?}", data.len()),
            ));
        }
        if shape.len() > 1 && shape[0] != rows {
            return Err(wrong(
                "result_value",
                format!("output {name:?} has {} rows, {rows} were sent", shape[0]),
            ));
        }
    }
    Ok(())
}

fn check_stats(values: &[f64], map: &[(Value, Value)]) -> Result<(), Wrong> {
    let want = stats(values).ok_or_else(|| wrong("result_value", "no values were sent"))?;
    let count = number(map, "count")?;
    if count != want.count as f64 {
        return Err(wrong(
            "result_value",
            format!("count {count} != {}", want.count),
        ));
    }
    let scale = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let fields = [
        ("mean", want.mean),
        ("min", want.min),
        ("max", want.max),
        ("stddev", want.stddev),
        ("p50", want.p50),
        ("p90", want.p90),
        ("p99", want.p99),
    ];
    for (key, expected) in fields {
        let got = number(map, key)?;
        if !close(got, expected, scale) {
            return Err(wrong("result_value", format!("{key} {got} != {expected}")));
        }
    }
    Ok(())
}

/// Builds the `result` map for `stats`, as the gateway would (used by `device-sim echo`).
pub fn stats_value(values: &[f64]) -> Option<Value> {
    let s = stats(values)?;
    let f = |key: &str, v: f64| (Value::Text(key.into()), Value::Float(v));
    Some(Value::Map(vec![
        (Value::Text("count".into()), Value::Integer(s.count.into())),
        f("mean", s.mean),
        f("min", s.min),
        f("max", s.max),
        f("stddev", s.stddev),
        f("p50", s.p50),
        f("p90", s.p90),
        f("p99", s.p99),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_match_numpy_reference() {
        // numpy: mean 2.5, std(ddof=1) 1.2909944487358056, percentiles 2.5, 3.7, 3.97
        let s = stats(&[4.0, 1.0, 3.0, 2.0]).expect("non-empty");
        assert_eq!((s.count, s.mean, s.min, s.max), (4, 2.5, 1.0, 4.0));
        assert!(close(s.stddev, 1.2909944487358056, 0.0));
        assert!(close(s.p50, 2.5, 0.0) && close(s.p90, 3.7, 0.0) && close(s.p99, 3.97, 0.0));
        let one = stats(&[7.0]).expect("non-empty");
        assert_eq!((one.stddev, one.p50, one.p99), (0.0, 7.0, 7.0));
        assert!(stats(&[]).is_none());
    }

    #[test]
    fn correct_stats_pass_and_wrong_ones_are_named() {
        let values = [10.0, -3.5, 7.25, 99.0, 0.0];
        let expect = Expect::Stats(values.to_vec());
        let good = stats_value(&values).expect("non-empty");
        assert_eq!(check(&expect, Some(&good)), Ok(()));

        let Value::Map(mut entries) = good else {
            panic!("map")
        };
        for (key, value) in entries.iter_mut() {
            if key.as_text() == Some("p90") {
                *value = Value::Float(value.as_float().expect("float") * (1.0 + 1e-6));
            }
        }
        let err = check(&expect, Some(&Value::Map(entries))).expect_err("p90 off");
        assert_eq!(err.reason, "result_value");
        assert!(err.detail.starts_with("p90"), "{}", err.detail);
        assert_eq!(
            check(&expect, None).map_err(|e| e.reason),
            Err("result_shape")
        );
    }

    #[test]
    fn tolerance_is_relative_with_a_scale_floor() {
        assert!(close(1e6, 1e6 * (1.0 + 5e-10), 0.0));
        assert!(!close(1e6, 1e6 * (1.0 + 5e-9), 0.0));
        assert!(close(1e-12, 0.0, 100.0));
        assert!(!close(1e-3, 0.0, 100.0));
    }

    #[test]
    fn histogram_is_checked_for_shape_and_total() {
        let expect = Expect::Histogram { n: 3, bins: 2 };
        let ints =
            |xs: &[u64]| Value::Array(xs.iter().map(|&x| Value::Integer(x.into())).collect());
        let result = |counts: &[u64]| {
            Value::Map(vec![
                (Value::Text("counts".into()), ints(counts)),
                (Value::Text("edges".into()), ints(&[0, 1, 2])),
            ])
        };
        assert_eq!(check(&expect, Some(&result(&[1, 2]))), Ok(()));
        assert!(check(&expect, Some(&result(&[1, 1]))).is_err());
        assert!(check(&expect, Some(&result(&[3]))).is_err());
    }

    #[test]
    fn infer_results_are_checked_for_model_hash_and_shapes() {
        let t = |s: &str| Value::Text(s.into());
        let output = |shape: &[u64], n: usize| {
            Value::Map(vec![
                (
                    t("shape"),
                    Value::Array(shape.iter().map(|d| Value::Integer((*d).into())).collect()),
                ),
                (t("data"), Value::Array(vec![Value::Float(0.5); n])),
            ])
        };
        let result = |model: &str, out: Value| {
            Value::Map(vec![
                (t("model"), t(model)),
                (t("sha256"), t(&"ab".repeat(32))),
                (t("outputs"), Value::Map(vec![(t("score"), out)])),
            ])
        };
        let expect = Expect::Infer {
            model: "mlp".into(),
            rows: 2,
        };
        assert!(check(&expect, Some(&result("mlp", output(&[2, 1], 2)))).is_ok());
        assert!(check(&expect, Some(&result("other", output(&[2, 1], 2)))).is_err());
        assert!(check(&expect, Some(&result("mlp", output(&[2, 1], 3)))).is_err());
        assert!(check(&expect, Some(&result("mlp", output(&[3, 1], 3)))).is_err());
    }
}
