//! Opens one model with tract: reads the `.onnx` file, applies the declared input and output
//! facts, optimises the graph once into a runnable plan (free dimensions left free; plans bound
//! to the sizes seen come later, [`super::plans`]), then has [`super::run`] time a warm-up. Fed by [`super::Registry::load`] at start; the [`Model`] it returns is shared by
//! every worker, which runs it with [`Model::run`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, TDim,
};
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use super::config::{self, Declared, Dim, Dtype, RawModel};
use super::plans::Plans;
use super::ModelError;

/// One input the model takes, as requests must give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Its name in the graph (the key in `"inputs"`).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions; free ones take any size of at least 1.
    pub dims: Vec<Dim>,
}

/// One output, as `models list` shows it.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    /// Its name in the graph (the key in the result's `"outputs"`).
    pub name: String,
    /// Element type, as tract names it.
    pub dtype: String,
    /// Dimensions as tract inferred them (symbols and expressions for free ones).
    pub dims: Vec<String>,
}

/// What the warm-up at load measured: the cost model's starting point.
#[derive(Debug, Clone, Copy)]
pub struct Warmup {
    /// Fixed cost of a run, in microseconds.
    pub base_us: f64,
    /// Cost per input element, in microseconds.
    pub per_element_us: f64,
    /// Whether the warm-up runs succeeded (a model may legitimately fail on all-zero inputs).
    pub ok: bool,
}

/// A loaded, optimised model.
pub struct Model {
    /// Its config name.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// SHA-256 of the file, hex: replies name the exact model that answered.
    pub sha256: String,
    /// Inputs, in graph order.
    pub inputs: Vec<InputSpec>,
    /// Outputs, in graph order.
    pub outputs: Vec<OutputSpec>,
    /// Per-model run timeout.
    pub timeout: Option<Duration>,
    /// The model to retry on once when this one fails.
    pub fallback: Option<String>,
    /// The cost model's key for this model (`infer:NAME`), leaked once at start.
    pub cost_key: &'static str,
    /// What the warm-up measured.
    pub warmup: Warmup,
    /// The free plan and the plans specialised per batch size ([`super::plans`]).
    pub(super) plans: Arc<Plans>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

/// Loads model `name` as configured.
pub fn load(name: &str, raw: &RawModel) -> Result<Model, ModelError> {
    let key = |field: &str| format!("models.{name}.{field}");
    let bytes = std::fs::read(&raw.path).map_err(|error| {
        ModelError::new(
            key("path"),
            format!("cannot read {}: {error}", raw.path.display()),
        )
    })?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let declared_inputs = config::declared(&key("inputs"), &raw.inputs)?;
    let declared_outputs = config::declared(&key("outputs"), &raw.outputs)?;
    let invalid = |error: tract_onnx::prelude::TractError| {
        ModelError::new(
            key("path"),
            format!(
                "{} is not a model tract can load: {}",
                raw.path.display(),
                one_line(&error)
            ),
        )
    };
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .map_err(invalid)?;

    let input_names = outlet_names(&model, true).map_err(invalid)?;
    let output_names = outlet_names(&model, false).map_err(invalid)?;
    for (declared, names, is_input) in [
        (&declared_inputs, &input_names, true),
        (&declared_outputs, &output_names, false),
    ] {
        for decl in declared {
            let Some(ix) = names.iter().position(|n| *n == decl.name) else {
                return Err(ModelError::new(
                    &decl.key,
                    format!("the graph has no {:?}; it has {names:?}", decl.name),
                ));
            };
            let current = if is_input {
                model.input_fact(ix)
            } else {
                model.output_fact(ix)
            }
            .map_err(invalid)?
            .clone();
            let fact = apply(&model, current, decl)?;
            if is_input {
                model.set_input_fact(ix, fact)
            } else {
                model.set_output_fact(ix, fact)
            }
            .map_err(invalid)?;
        }
    }
    // Every input must be fully known before optimising: an open one needs a declaration.
    for (ix, name) in input_names.iter().enumerate() {
        let fact = model.input_fact(ix).map_err(invalid)?;
        if fact.datum_type.concretize().is_none() || fact.shape.is_open() {
            return Err(ModelError::new(
                key("inputs"),
                format!(
                    "the file leaves input {name:?} open ({fact:?}): declare its shape and dtype"
                ),
            ));
        }
    }
    let cannot_take = |error: tract_onnx::prelude::TractError| {
        ModelError::new(
            key("inputs"),
            format!(
                "the graph cannot take the declared shapes: {}",
                one_line(&error)
            ),
        )
    };
    // Decluttered (free dimensions still symbols) is kept to specialise plans per size later;
    // optimised from it, the free plan serves every size. A graph with no free dimension is
    // bound already: its one plan gets the kernel trials a specialised plan gets.
    let decluttered = model
        .into_typed()
        .and_then(|typed| typed.into_decluttered())
        .map_err(cannot_take)?;
    let bound = (0..decluttered.inputs.len()).all(|ix| {
        decluttered
            .input_fact(ix)
            .is_ok_and(|fact| fact.shape.is_concrete())
    });
    let plan = if bound {
        super::kernels::optimise(&decluttered).map(|tuned| tuned.plan)
    } else {
        decluttered
            .clone()
            .into_optimized()
            .and_then(IntoRunnable::into_runnable)
    }
    .map_err(cannot_take)?;
    let typed = plan.model();
    let mut inputs = Vec::new();
    for (ix, name) in input_names.iter().enumerate() {
        let fact = typed.input_fact(ix).map_err(cannot_take)?;
        let dtype = match fact.datum_type {
            DatumType::F32 => Dtype::F32,
            DatumType::F64 => Dtype::F64,
            DatumType::I32 => Dtype::I32,
            DatumType::I64 => Dtype::I64,
            other => {
                return Err(ModelError::new(
                    key("inputs"),
                    format!(
                        "input {name:?} is {other:?}: infer takes float32, float64, int32 or int64"
                    ),
                ))
            }
        };
        let dims = fact
            .shape
            .iter()
            .map(|d| match d.to_usize() {
                Ok(n) => Dim::Fixed(n),
                Err(_) => Dim::Free(d.to_string()),
            })
            .collect();
        inputs.push(InputSpec {
            name: name.clone(),
            dtype,
            dims,
        });
    }
    let mut outputs = Vec::new();
    for (ix, name) in output_names.iter().enumerate() {
        let fact = typed.output_fact(ix).map_err(cannot_take)?;
        if !is_number(fact.datum_type) {
            return Err(ModelError::new(
                key("outputs"),
                format!(
                    "output {name:?} is {:?}: infer returns numbers only",
                    fact.datum_type
                ),
            ));
        }
        outputs.push(OutputSpec {
            name: name.clone(),
            dtype: format!("{:?}", fact.datum_type),
            dims: fact.shape.iter().map(|d| d.to_string()).collect(),
        });
    }
    let mut model = Model {
        name: name.to_owned(),
        path: raw.path.clone(),
        sha256,
        inputs,
        outputs,
        timeout: raw.timeout_ms.map(Duration::from_millis),
        fallback: raw.fallback.clone(),
        cost_key: Box::leak(format!("infer:{name}").into_boxed_str()),
        warmup: Warmup {
            base_us: 0.0,
            per_element_us: 0.0,
            ok: false,
        },
        plans: Arc::new(Plans::new(name, decluttered, plan)),
    };
    model.warmup = super::run::warm_up(&model);
    Ok(model)
}

/// The names of the graph's inputs (or outputs), in order.
fn outlet_names(
    model: &tract_onnx::prelude::InferenceModel,
    inputs: bool,
) -> tract_onnx::prelude::TractResult<Vec<String>> {
    let outlets = if inputs {
        model.input_outlets()?
    } else {
        model.output_outlets()?
    };
    Ok(outlets
        .iter()
        .map(|outlet| {
            model
                .outlet_label(*outlet)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(outlet.node).name.clone())
        })
        .collect())
}

/// The file's fact for a tensor, with the declaration applied over it; a declared fixed size or
/// dtype that contradicts the file is refused here, the rest by tract's analysis.
fn apply(
    model: &tract_onnx::prelude::InferenceModel,
    current: InferenceFact,
    decl: &Declared,
) -> Result<InferenceFact, ModelError> {
    let mut fact = current.clone();
    if let Some(dtype) = decl.dtype {
        let dt = match dtype {
            Dtype::F32 => DatumType::F32,
            Dtype::F64 => DatumType::F64,
            Dtype::I32 => DatumType::I32,
            Dtype::I64 => DatumType::I64,
        };
        if let Some(file) = current.datum_type.concretize() {
            if file != dt {
                return Err(ModelError::new(
                    &decl.key,
                    format!(
                        "{}: declared {} but the file says {file:?}",
                        decl.name,
                        dtype.name()
                    ),
                ));
            }
        }
        fact = fact.with_datum_type(dt);
    }
    if let Some(shape) = &decl.shape {
        if !current.shape.is_open() && current.shape.dims().count() != shape.len() {
            return Err(ModelError::new(
                &decl.key,
                format!(
                    "{}: declared rank {} but the file's is {}",
                    decl.name,
                    shape.len(),
                    current.shape.dims().count()
                ),
            ));
        }
        for (ix, (file, declared)) in current.shape.dims().zip(shape).enumerate() {
            if let (Some(Ok(file)), Dim::Fixed(n)) =
                (file.concretize().map(|d| d.to_usize()), declared)
            {
                if file != *n {
                    return Err(ModelError::new(
                        &decl.key,
                        format!(
                            "{}: dimension {ix} is {file} in the file, declared {n}",
                            decl.name
                        ),
                    ));
                }
            }
        }
        let dims: Vec<TDim> = shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => TDim::from(*n),
                Dim::Free(s) => TDim::from(model.sym(s)),
            })
            .collect();
        fact = fact.with_shape(dims);
    }
    Ok(fact)
}

fn is_number(dt: DatumType) -> bool {
    dt.is_float() || dt.is_integer() || dt == DatumType::Bool
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// tract's error chain on one line.
pub(super) fn one_line(error: &tract_onnx::prelude::TractError) -> String {
    format!("{error:#}").replace('\n', " ")
}
