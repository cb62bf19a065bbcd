//! The `infer` op: validated at intake into a [`Call`] that carries its tensors (or reads a
//! telemetry window), run on a worker thread with the model's timeout, retried once on the
//! model's fallback when it fails or times out. The result names the model that answered.
//!
//! Arguments: `"model"` (text) and exactly one of `"input"` (nested arrays, for a model with one
//! input), `"inputs"` (`{input name: nested arrays}`), or `"metric"` + `"window_s"` (this
//! device's stored readings, laid out as [`super::tensor::from_series`] says).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ciborium::Value;
use tract_onnx::prelude::{IntoTValue, TValue, TVec, Tensor};

use super::config::Dim;
use super::run::RunError;
use super::tensor::{self, FreeSizes};
use super::{Model, Registry};
use crate::analytics::ops::{self, Call, OpError, PrepareError, Prepared, Series, Source};
use crate::wire::envelope::map_get;

/// How far past its time limit the reaper lets a run go before abandoning it: the limit is
/// enforced between graph nodes, so only a single node overrunning it needs the reaper.
const REAPER_SLACK: Duration = Duration::from_millis(250);

/// A validated `infer` call.
#[derive(Debug)]
struct Infer {
    registry: Arc<Registry>,
    model: Arc<Model>,
    input: Input,
}

#[derive(Debug)]
enum Input {
    /// Sent in the request, in graph order, with their total element count.
    Tensors(Vec<Tensor>, usize),
    /// The telemetry window the worker reads.
    Window,
}

fn bad(message: impl Into<String>) -> PrepareError {
    PrepareError::Op(OpError::BadArgs(message.into()))
}

/// Validates `infer` arguments against `registry`.
pub fn prepare(
    registry: &Arc<Registry>,
    args: &Value,
    max_series_len: usize,
) -> Result<Call, PrepareError> {
    let Value::Map(entries) = args else {
        return Err(bad("arguments must be a CBOR map"));
    };
    let name = map_get(entries, "model")
        .and_then(Value::as_text)
        .ok_or_else(|| bad("model (text) is required"))?;
    let model = registry
        .get(name)
        .ok_or_else(|| PrepareError::UnknownModel(name.to_owned()))?
        .clone();
    let given = ["input", "inputs", "metric"].map(|k| map_get(entries, k));
    let (input, source) = match given {
        [Some(value), None, None] => {
            let [spec] = model.inputs.as_slice() else {
                return Err(bad(format!(
                    "model {name:?} has {} inputs: give them by name in \"inputs\"",
                    model.inputs.len()
                )));
            };
            let mut budget = max_series_len;
            let tensor = tensor::from_cbor(spec, value, &mut FreeSizes::new(), &mut budget)?;
            let count = max_series_len - budget;
            (Input::Tensors(vec![tensor], count), Source::Own)
        }
        [None, Some(Value::Map(named)), None] => {
            for (key, _) in named {
                let known = key
                    .as_text()
                    .is_some_and(|k| model.inputs.iter().any(|i| i.name == k));
                if !known {
                    return Err(bad(format!(
                        "inputs: {key:?} is not an input of model {name:?} (it has {})",
                        super::list::inputs_text(&model)
                    )));
                }
            }
            let mut free = FreeSizes::new();
            let mut budget = max_series_len;
            let tensors = model
                .inputs
                .iter()
                .map(|spec| {
                    let value = map_get(named, &spec.name)
                        .ok_or_else(|| bad(format!("inputs: {:?} is missing", spec.name)))?;
                    Ok(tensor::from_cbor(spec, value, &mut free, &mut budget)?)
                })
                .collect::<Result<Vec<_>, PrepareError>>()?;
            let count = max_series_len - budget;
            (Input::Tensors(tensors, count), Source::Own)
        }
        [None, Some(_), None] => return Err(bad("inputs must be a map of input name to array")),
        [None, None, Some(metric)] => {
            let metric = metric
                .as_text()
                .filter(|m| !m.is_empty())
                .ok_or_else(|| bad("metric must be non-empty text"))?;
            let window_s = map_get(entries, "window_s")
                .and_then(Value::as_integer)
                .and_then(|i| u64::try_from(i).ok())
                .filter(|w| *w > 0)
                .ok_or_else(|| bad("window_s must be given and greater than 0 with metric"))?;
            windowable(&model)?;
            let source = Source::Telemetry {
                metric: metric.to_owned(),
                window_s,
            };
            (Input::Window, source)
        }
        _ => {
            return Err(bad(
                "give exactly one of input, inputs, or metric and window_s",
            ))
        }
    };
    Ok(Call {
        op: "infer",
        source,
        prepared: Box::new(Infer {
            registry: registry.clone(),
            model,
            input,
        }),
    })
}

/// A telemetry window fits a model with one floating-point input with one free dimension.
fn windowable(model: &Model) -> Result<(), PrepareError> {
    let free = |m: &Model| {
        m.inputs.first().map_or(0, |i| {
            i.dims.iter().filter(|d| matches!(d, Dim::Free(_))).count()
        })
    };
    match model.inputs.as_slice() {
        [spec] if !spec.dtype.is_integer() && free(model) == 1 => Ok(()),
        _ => Err(bad(format!(
            "a telemetry window needs a model with one float input with one free dimension; \
             {:?} takes {}",
            model.name,
            super::list::inputs_text(model)
        ))),
    }
}

/// Why one model's attempt produced no result.
enum Failure {
    Failed(String),
    TimedOut(Duration),
}

impl Failure {
    fn describe(&self, model: &Model) -> String {
        match self {
            Failure::Failed(why) => format!("model {:?} failed: {why}", model.name),
            Failure::TimedOut(limit) => format!(
                "model {:?} ran longer than its timeout_ms = {}",
                model.name,
                limit.as_millis()
            ),
        }
    }
}

/// Runs `model` once on `inputs` within its timeout; the outputs as CBOR.
fn attempt(model: &Model, inputs: TVec<TValue>) -> Result<Value, Failure> {
    let deadline = model.timeout.map(|t| Instant::now() + t);
    match model.run(inputs, deadline) {
        Ok(outputs) => {
            let names: Vec<String> = model.outputs.iter().map(|o| o.name.clone()).collect();
            tensor::outputs_to_cbor(&names, &outputs).map_err(Failure::Failed)
        }
        Err(RunError::Failed(why)) => Err(Failure::Failed(why)),
        Err(RunError::TimedOut) => Err(Failure::TimedOut(model.timeout.unwrap_or_default())),
    }
}

fn result(model: &Model, outputs: Value, instead_of: Option<(&Model, String)>) -> Value {
    let mut entries = vec![
        ("model", Value::Text(model.name.clone())),
        ("sha256", Value::Text(model.sha256.clone())),
        ("outputs", outputs),
    ];
    if let Some((primary, why)) = instead_of {
        entries.push((
            "fallback_from",
            ops::result_map(vec![
                ("model", Value::Text(primary.name.clone())),
                ("error", Value::Text(why)),
            ]),
        ));
    }
    ops::result_map(entries)
}

impl Infer {
    fn inputs(&self, series: &Series) -> Result<TVec<TValue>, OpError> {
        Ok(match &self.input {
            Input::Tensors(tensors, _) => tensors.iter().map(|t| t.clone().into_tvalue()).collect(),
            Input::Window => {
                let values = ops::values(series)?;
                let tensor = tensor::from_series(&self.model.inputs[0], values)?;
                std::iter::once(tensor.into_tvalue()).collect()
            }
        })
    }

    fn fallback(&self) -> Option<&Arc<Model>> {
        self.model
            .fallback
            .as_deref()
            .and_then(|name| self.registry.get(name))
    }
}

impl Prepared for Infer {
    fn run(&self, series: &Series) -> Result<Value, OpError> {
        let first = match attempt(&self.model, self.inputs(series)?) {
            Ok(outputs) => return Ok(result(&self.model, outputs, None)),
            Err(failure) => failure,
        };
        let why = first.describe(&self.model);
        let Some(fallback) = self.fallback() else {
            return Err(match first {
                Failure::Failed(_) => OpError::Failed(why),
                Failure::TimedOut(_) => OpError::TimedOut(why),
            });
        };
        tracing::info!(model = %self.model.name, fallback = %fallback.name, error = %why, "retrying on the fallback");
        match attempt(fallback, self.inputs(series)?) {
            Ok(outputs) => Ok(result(fallback, outputs, Some((&self.model, why)))),
            Err(second) => {
                let message = format!("{why}; its fallback: {}", second.describe(fallback));
                Err(match second {
                    Failure::Failed(_) => OpError::Failed(message),
                    Failure::TimedOut(_) => OpError::TimedOut(message),
                })
            }
        }
    }

    fn cost_key(&self) -> Option<&'static str> {
        Some(self.model.cost_key)
    }

    fn points(&self) -> Option<usize> {
        match &self.input {
            Input::Tensors(_, count) => Some(*count),
            Input::Window => None,
        }
    }

    fn time_limit(&self) -> Option<Duration> {
        let own = self.model.timeout?;
        let fallback = match self.fallback() {
            Some(fallback) => fallback.timeout?,
            None => Duration::ZERO,
        };
        Some(own + fallback + REAPER_SLACK)
    }
}
