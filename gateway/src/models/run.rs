//! Running a loaded model: [`Model::run`] on a worker thread (or the warm-up at start), on the
//! plan specialised to its inputs' sizes once one is ready ([`super::plans`]), cut at
//! node granularity once past its deadline (tract evaluates the plan node by node through our
//! eval hook, which checks the clock before each node), with tract's panics caught; and the
//! warm-up that times a model at load to seed the cost model.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::prelude::{DatumType, TValue, TVec, Tensor, TypedSimplePlan, TypedSimpleState};

use super::config::{Dim, Dtype};
use super::load::{one_line, Model, Warmup};

/// Why a run produced no outputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    /// The model failed (tract's error, or a panic inside it).
    #[error("{0}")]
    Failed(String),
    /// It was still running at its deadline.
    #[error("still running at its deadline")]
    TimedOut,
}

impl Model {
    /// Runs the model on `inputs` (in graph order), on the plan specialised to their sizes when
    /// it is ready, else on the free plan ([`super::plans`]). Past `deadline` the run stops
    /// before its next node. A panic inside tract is caught and reported as a failure.
    pub fn run(
        &self,
        inputs: TVec<TValue>,
        deadline: Option<Instant>,
    ) -> Result<TVec<TValue>, RunError> {
        let plan = self.plans.for_inputs(&inputs);
        run_plan(&plan, inputs, deadline)
    }

    /// [`Model::run`] on the free plan, whatever the sizes: what a size's first runs cost
    /// (benchmarks; the warm-up).
    pub fn run_free_plan(
        &self,
        inputs: TVec<TValue>,
        deadline: Option<Instant>,
    ) -> Result<TVec<TValue>, RunError> {
        run_plan(self.plans.free(), inputs, deadline)
    }

    /// Builds the plan specialised to the sizes of `inputs` now, on this thread, instead of
    /// after [`super::plans::BUILD_AFTER`] runs in the background (benchmarks, tests). False
    /// when the model has no free dimension to bind or tract cannot specialise it.
    pub fn specialise_now(&self, inputs: &[TValue]) -> bool {
        self.plans.specialise_now(inputs)
    }

    /// Waits up to `limit` for the background build of the plan specialised to the sizes of
    /// `inputs`; true once it is ready.
    pub fn wait_specialised(&self, inputs: &[TValue], limit: Duration) -> bool {
        self.plans.wait_specialised(inputs, limit)
    }

    /// How many plans specialised to a size this model holds now.
    pub fn specialised_plans(&self) -> usize {
        self.plans.ready()
    }
}

/// Runs `plan` on `inputs`, cut at `deadline`, tract's panics caught.
pub(super) fn run_plan(
    plan: &Arc<TypedSimplePlan>,
    inputs: TVec<TValue>,
    deadline: Option<Instant>,
) -> Result<TVec<TValue>, RunError> {
    quiet_model_panics();
    let timed_out = Cell::new(false);
    IN_MODEL.with(|flag| flag.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut state = TypedSimpleState::new(plan)?;
        state.run_plan_with_eval(inputs, |ctx, op_state, node, input| {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                timed_out.set(true);
                return Err(tract_onnx::prelude::TractError::msg("deadline passed"));
            }
            tract_onnx::tract_core::plan::eval(ctx, op_state, node, input)
        })
    }));
    IN_MODEL.with(|flag| flag.set(false));
    match outcome {
        Ok(Ok(outputs)) => Ok(outputs),
        Ok(Err(_)) if timed_out.get() => Err(RunError::TimedOut),
        Ok(Err(error)) => Err(RunError::Failed(one_line(&error))),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(RunError::Failed(format!("the runtime panicked: {message}")))
        }
    }
}

impl Model {
    /// All-zero inputs with every free dimension set to `free`.
    pub fn zeros(&self, free: usize) -> TVec<TValue> {
        self.inputs
            .iter()
            .map(|input| {
                let shape: Vec<usize> = input
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => *n,
                        Dim::Free(_) => free,
                    })
                    .collect();
                let dt = match input.dtype {
                    Dtype::F32 => DatumType::F32,
                    Dtype::F64 => DatumType::F64,
                    Dtype::I32 => DatumType::I32,
                    Dtype::I64 => DatumType::I64,
                };
                Tensor::zero_dt(dt, &shape)
                    .expect("zeros of a numeric type and a concrete shape")
                    .into()
            })
            .collect()
    }

    /// Elements in inputs whose free dimensions are `free`.
    pub fn elements(&self, free: usize) -> usize {
        self.inputs
            .iter()
            .map(|input| {
                input
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => *n,
                        Dim::Free(_) => free,
                    })
                    .product::<usize>()
            })
            .sum()
    }
}

thread_local! {
    /// Set while this thread runs a model: a panic then is the model's failure, not ours.
    static IN_MODEL: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that reports a panic inside a model run as one log line instead
/// of the default message and backtrace: [`Model::run`] catches it and the run fails. tract
/// 0.23 panics on some bad inputs (an out-of-range `Gather` index) where onnxruntime raises.
fn quiet_model_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_MODEL.with(Cell::get) {
                tracing::debug!(panic = %info, "a model panicked inside the runtime");
            } else {
                default(info);
            }
        }));
    });
}

/// Sizes (free dimension) the warm-up runs at, and runs per size (the fastest counts: the first
/// run also pays for first-touch allocations).
const WARMUP_SIZES: [usize; 2] = [1, 32];
const WARMUP_RUNS: usize = 3;
/// No warm-up run may take longer than this, whatever the model's own timeout.
const WARMUP_CAP: Duration = Duration::from_secs(2);

/// Times the model on zeros at two sizes; the line through them is the cost model's start.
pub(super) fn warm_up(model: &Model) -> Warmup {
    let limit = model.timeout.unwrap_or(WARMUP_CAP).min(WARMUP_CAP);
    let mut ok = true;
    let mut best = [f64::INFINITY; 2];
    for (slot, free) in WARMUP_SIZES.into_iter().enumerate() {
        for _ in 0..WARMUP_RUNS {
            let inputs = model.zeros(free);
            let started = Instant::now();
            let outcome = model.run_free_plan(inputs, Some(started + limit));
            let us = started.elapsed().as_secs_f64() * 1e6;
            best[slot] = best[slot].min(us);
            ok &= outcome.is_ok();
            if outcome.is_err() {
                break;
            }
        }
    }
    let (small, large) = (
        model.elements(WARMUP_SIZES[0]) as f64,
        model.elements(WARMUP_SIZES[1]) as f64,
    );
    let per_element_us = if large > small {
        ((best[1] - best[0]) / (large - small)).max(0.0)
    } else {
        0.0
    };
    let base_us = (best[0] - per_element_us * small).max(0.0);
    tracing::info!(
        model = %model.name,
        base_us = format!("{base_us:.1}"),
        per_element_us = format!("{per_element_us:.4}"),
        ok,
        "model warmed up"
    );
    Warmup {
        base_us,
        per_element_us,
        ok,
    }
}
