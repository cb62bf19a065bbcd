//! The analytics ops. Each op is one file exposing `prepare(&Args) -> Result<Box<dyn Prepared>,
//! OpError>`, which validates its arguments at intake (so bad ones get `400` before anything is
//! stored), and a [`Prepared`] whose `run` is a pure function of the series. Adding an op is one
//! file plus one line in [`OPS`].
//!
//! A series comes inline (`values`, optional `ts`) or from stored telemetry (`metric`,
//! `window_s`); the worker resolves a [`Source`] into a [`Series`] before calling `run`.
//!
//! **Invariant:** no op's result holds NaN or infinity: inputs are checked finite (at intake for
//! inline series, again in [`values`] for telemetry) and every float goes out through [`float`].

use std::fmt::Debug;

use ciborium::Value;

pub use args::Args;

pub mod anomaly;
mod args;
pub mod histogram;
pub mod spectrum;
pub mod stats;
#[cfg(test)]
mod testing;
pub mod trend;

/// Why an op refused its input or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    /// Wrong or missing arguments, an empty series, NaN or infinite values: `400`.
    #[error("{0}")]
    BadArgs(String),
    /// A series longer than `limits.max_series_len`: `413`.
    #[error("{0}")]
    TooLarge(String),
    /// The op could not compute a result from valid input: `500`.
    #[error("{0}")]
    Failed(String),
    /// The op ran past its own time limit (a model's `timeout_ms`): `504`.
    #[error("{0}")]
    TimedOut(String),
}

/// An op ready to run: its arguments validated and parsed.
pub trait Prepared: Send + Sync + Debug {
    /// Computes the result map. Pure: the same series always gives the same result.
    fn run(&self, series: &Series) -> Result<Value, OpError>;

    /// The key its run time is learned under, when not the op's name (`infer:MODEL`).
    fn cost_key(&self) -> Option<&'static str> {
        None
    }

    /// Its input size, when the op carries its own input ([`Source::Own`]).
    fn points(&self) -> Option<usize> {
        None
    }

    /// How long a run may take at most, when the op has its own limit (a model's timeout):
    /// the pool abandons it past this, as past the request's deadline.
    fn time_limit(&self) -> Option<std::time::Duration> {
        None
    }
}

/// How an op validates and parses its arguments.
pub type PrepareFn = fn(&Args<'_>) -> Result<Box<dyn Prepared>, OpError>;

/// Every analytics op by name.
pub const OPS: &[(&str, PrepareFn)] = &[
    ("stats", stats::prepare),
    ("histogram", histogram::prepare),
    ("anomaly", anomaly::prepare),
    ("trend", trend::prepare),
    ("spectrum", spectrum::prepare),
];

pub use crate::store::telemetry::Series;

/// Where an op's series comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Sent in the request.
    Inline(Series),
    /// This device's stored readings of `metric` over the `window_s` seconds before the request.
    Telemetry {
        /// The metric name.
        metric: String,
        /// The window, in seconds.
        window_s: u64,
    },
    /// No series: the prepared op carries its own input (`infer`'s tensors).
    Own,
}

/// A validated analytics request: which op, its series source, and the prepared op.
#[derive(Debug)]
pub struct Call {
    /// The op's name.
    pub op: &'static str,
    /// Where the series comes from.
    pub source: Source,
    /// The op, ready to run.
    pub prepared: Box<dyn Prepared>,
}

impl Call {
    /// Number of points known at intake (0 for telemetry), for cost estimates.
    pub fn inline_len(&self) -> usize {
        match &self.source {
            Source::Inline(series) => series.values.len(),
            Source::Telemetry { .. } => 0,
            Source::Own => self.prepared.points().unwrap_or(0),
        }
    }

    /// The key its run time is learned under: the op's name, or the model's for `infer`.
    pub fn cost_key(&self) -> &'static str {
        self.prepared.cost_key().unwrap_or(self.op)
    }
}

/// Why a request could not be prepared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrepareError {
    /// No op of that name: `404`.
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// `infer` of a model that is not configured: `404`.
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    /// The op refused its arguments.
    #[error(transparent)]
    Op(#[from] OpError),
}

/// Validates a request's arguments (a CBOR map) for the named op.
pub fn prepare(op: &str, args: &Value, max_series_len: usize) -> Result<Call, PrepareError> {
    if op == "infer" {
        return match INFER.get() {
            Some(prepare) => prepare(args, max_series_len),
            None => Err(PrepareError::UnknownModel(model_name(args))),
        };
    }
    let (name, prepare) = OPS
        .iter()
        .find(|(n, _)| *n == op)
        .ok_or_else(|| PrepareError::UnknownOp(op.to_owned()))?;
    let Value::Map(entries) = args else {
        return Err(OpError::BadArgs("arguments must be a CBOR map".into()).into());
    };
    let args = Args {
        entries,
        max_series_len,
    };
    let source = args.source()?;
    let prepared = prepare(&args)?;
    Ok(Call {
        op: name,
        source,
        prepared,
    })
}

/// How `infer` requests are prepared: against the models loaded at start, which live in a stage
/// above this one (`crate::models`), so it registers this once ([`install_infer`]).
pub type InferPrepare = Box<dyn Fn(&Value, usize) -> Result<Call, PrepareError> + Send + Sync>;

static INFER: std::sync::OnceLock<InferPrepare> = std::sync::OnceLock::new();

/// Registers how `infer` is prepared, once per process (before serving); false if one was
/// already registered. Without one, every model is unknown (`404`).
pub fn install_infer(prepare: InferPrepare) -> bool {
    INFER.set(prepare).is_ok()
}

fn model_name(args: &Value) -> String {
    match args {
        Value::Map(entries) => crate::wire::envelope::map_get(entries, "model")
            .and_then(Value::as_text)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

/// A CBOR number as a finite f64.
pub fn as_finite(value: &Value) -> Option<f64> {
    let x = match value {
        Value::Integer(i) => i128::from(*i) as f64,
        Value::Float(f) => *f,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// Builds a result map from (key, value) pairs.
pub fn result_map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.to_owned()), v))
            .collect(),
    )
}

/// A CBOR uint.
pub fn uint(n: usize) -> Value {
    Value::Integer((n as u64).into())
}

/// The series' values: `400` when empty or not all finite. Inline series were checked at intake;
/// this guards telemetry windows, which can be empty.
pub fn values(series: &Series) -> Result<&[f64], OpError> {
    if series.values.is_empty() {
        return Err(OpError::BadArgs("the series is empty".into()));
    }
    if !series.values.iter().all(|x| x.is_finite()) {
        return Err(OpError::BadArgs("values must all be finite numbers".into()));
    }
    Ok(&series.values)
}

/// A result float. Finite inputs can still overflow f64 arithmetic (values near 1e308): that is
/// `500`, never a NaN or infinity in a reply.
pub fn float(name: &str, x: f64) -> Result<Value, OpError> {
    if x.is_finite() {
        Ok(Value::Float(x))
    } else {
        Err(OpError::Failed(format!(
            "{name} overflowed float64: the values are too large"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(entries: Vec<(&str, Value)>) -> Value {
        result_map(entries)
    }

    fn floats(xs: &[f64]) -> Value {
        Value::Array(xs.iter().map(|x| Value::Float(*x)).collect())
    }

    #[test]
    fn unknown_op_is_404_worthy() {
        assert!(matches!(
            prepare("nope", &args(vec![]), 10),
            Err(PrepareError::UnknownOp(_))
        ));
    }

    #[test]
    fn series_validation() {
        let bad = |a: Value| prepare("stats", &a, 4).expect_err("must be refused");
        assert!(matches!(
            bad(args(vec![])),
            PrepareError::Op(OpError::BadArgs(_))
        ));
        assert!(matches!(
            bad(args(vec![("values", floats(&[]))])),
            PrepareError::Op(OpError::BadArgs(_))
        ));
        assert!(matches!(
            bad(args(vec![("values", floats(&[f64::NAN]))])),
            PrepareError::Op(OpError::BadArgs(_))
        ));
        assert!(matches!(
            bad(args(vec![("values", floats(&[f64::INFINITY]))])),
            PrepareError::Op(OpError::BadArgs(_))
        ));
        assert!(matches!(
            bad(args(vec![("values", floats(&[1.0; 5]))])),
            PrepareError::Op(OpError::TooLarge(_))
        ));
        assert!(matches!(
            bad(args(vec![
                ("values", floats(&[1.0])),
                ("ts", Value::Array(vec![]))
            ])),
            PrepareError::Op(OpError::BadArgs(_))
        ));
        assert!(matches!(
            bad(args(vec![("metric", Value::Text("t".into()))])),
            PrepareError::Op(OpError::BadArgs(_))
        ));
        assert!(matches!(
            bad(Value::Integer(1.into())),
            PrepareError::Op(OpError::BadArgs(_))
        ));
    }

    #[test]
    fn integers_and_telemetry_sources_are_accepted() {
        let call = prepare(
            "stats",
            &args(vec![(
                "values",
                Value::Array(vec![Value::Integer(2.into())]),
            )]),
            4,
        )
        .expect("valid");
        assert_eq!(
            call.source,
            Source::Inline(Series {
                values: vec![2.0],
                ts: None
            })
        );
        let call = prepare(
            "stats",
            &args(vec![
                ("metric", Value::Text("temp".into())),
                ("window_s", Value::Integer(60.into())),
            ]),
            4,
        )
        .expect("valid");
        assert_eq!(
            call.source,
            Source::Telemetry {
                metric: "temp".into(),
                window_s: 60
            }
        );
    }
}
