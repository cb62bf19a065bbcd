//! Kernel trials: which matrix-product kernel a plan runs is measured on this machine, not taken
//! on faith. tract picks a kernel per product from a cost model fitted on other hardware; on the
//! MLP benchmark here it mixed a kernel that does a multiply-add 2.5x slower than another it
//! picked for the same plan (docs/BENCHMARKS.md, "Bring your own model").
//!
//! Fed with a graph whose every dimension is bound: by [`super::plans`] (a size's plan, on its
//! background thread) and by [`super::load`] (a model declared without free dimensions, at
//! start). [`optimise`] builds the
//! plan tract chooses, then one plan per distinct f32 kernel in it with that kernel forced on
//! every f32 product (a dispatch tier of ours, [`FORCED`], which answers only on the thread and
//! for the time of such a build), times them all on zero inputs, interleaved, and keeps the
//! fastest, unless it beats tract's own by less than [`MARGIN`]. Every plan computes the same
//! products; only the tiling differs.
//!
//! Bounded: trials are skipped when the plans' runs would cost more than [`BUDGET`] in all, and
//! each run is cut at [`BUDGET`]. A
//! model that fails on zero inputs (or whose forced plan fails) is served as tract optimised
//! it: its failures are its runs' to report, never its load's.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::prelude::{
    DatumType, IntoRunnable, IntoTValue, TValue, TVec, Tensor, TractResult, TypedModel,
    TypedSimplePlan,
};
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
use tract_onnx::tract_core::tract_linalg::isa::IsaSet;
use tract_onnx::tract_core::tract_linalg::mmm::{Query, Suitable};
use tract_onnx::tract_core::tract_linalg::mmm_tiers::MmmTier;
use tract_onnx::tract_core::tract_linalg::MmmDispatch;
use tract_onnx::tract_hir::internal::DimLike;

/// Timed runs of each plan (interleaved rounds; the fastest run of each counts).
const ROUNDS: usize = 5;
/// What all the trial runs of one plan may cost together, estimated from one run of tract's;
/// also where each trial run is cut.
pub const BUDGET: Duration = Duration::from_millis(250);
/// A forced kernel must beat tract's own choice by this fraction to be kept.
pub const MARGIN: f64 = 0.05;

thread_local! {
    /// The kernel every f32 product of the plan being optimised on this thread must use.
    static FORCED: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Our dispatch tier, above tract's own: silent unless a trial has set [`FORCED`] on this thread.
/// A forced kernel that cannot serve a product leaves that product to tract's tiers.
fn forced(
    _isa: &IsaSet,
    dt: DatumType,
    query: &Query,
    _suitable: &[Suitable],
) -> Option<&'static str> {
    if dt != DatumType::F32 || query.n == Some(1) {
        return None;
    }
    FORCED.with(Cell::get)
}

inventory::submit! {
    MmmTier {
        arch: None,
        precedence: u8::MAX,
        name: "roost-kernel-trial",
        applies: |_| true,
        preferred: forced,
    }
}

/// The plan [`optimise`] kept, and what the trials measured.
pub(super) struct Tuned {
    /// The fastest plan.
    pub plan: Arc<TypedSimplePlan>,
    /// The kernel forced on every f32 product, `None` for tract's own choice.
    pub kernel: Option<&'static str>,
    /// The fastest run of tract's own plan, in µs (0 when no trial ran).
    pub tract_us: f64,
    /// The fastest run of the kept plan, in µs (0 when no trial ran).
    pub kept_us: f64,
}

/// Optimises `bound` (every dimension bound) as tract chooses, tries each of the f32 kernels
/// that choice used on every product, and returns the fastest plan.
pub(super) fn optimise(bound: &TypedModel) -> TractResult<Tuned> {
    let own = bound.clone().into_optimized()?;
    let kernels = f32_kernels(&own);
    let own = own.into_runnable()?;
    let untried = Tuned {
        plan: own.clone(),
        kernel: None,
        tract_us: 0.0,
        kept_us: 0.0,
    };
    if kernels.len() < 2 {
        // One kernel (or none) everywhere: forcing it gives tract's plan again.
        return Ok(untried);
    }
    // A model that cannot run on zeros (or at all) is served as tract optimised it: its runs
    // report their own failure.
    let Ok(inputs) = zeros(bound) else {
        return Ok(untried);
    };
    let Some(once) = timed_run(&own, &inputs) else {
        return Ok(untried);
    };
    if Duration::from_secs_f64(once / 1e6) * (ROUNDS * (kernels.len() + 1)) as u32 > BUDGET {
        return Ok(untried);
    }
    let mut plans = vec![(None, own)];
    for kernel in kernels {
        // A forced plan tract cannot build (an error, or a panic) is no candidate.
        let forced = catch_unwind(AssertUnwindSafe(|| {
            with_forced(kernel, || bound.clone().into_optimized())
        }));
        if let Ok(Ok(plan)) = forced.map(|m| m.and_then(|m| m.into_runnable())) {
            plans.push((Some(kernel), plan));
        }
    }
    let mut best = vec![f64::INFINITY; plans.len()];
    best[0] = once;
    for _ in 0..ROUNDS {
        for ((_, plan), best) in plans.iter().zip(best.iter_mut()) {
            // A plan that fails (or panics) keeps an infinite time: never kept.
            let us = timed_run(plan, &inputs).unwrap_or(f64::INFINITY);
            *best = best.min(us);
        }
    }
    let kept = pick(&best);
    let (kernel, plan) = plans.swap_remove(kept);
    Ok(Tuned {
        plan,
        kernel,
        tract_us: best[0],
        kept_us: best[kept],
    })
}

/// One run of `plan` on `inputs` as a worker runs it (tract's panics caught and logged as a
/// model's are, cut past [`BUDGET`]), in µs; `None` when it fails or is cut.
pub(super) fn timed_run(plan: &Arc<TypedSimplePlan>, inputs: &TVec<TValue>) -> Option<f64> {
    let started = Instant::now();
    let ran = super::run::run_plan(plan, inputs.clone(), Some(started + BUDGET));
    ran.is_ok().then(|| started.elapsed().as_secs_f64() * 1e6)
}

/// Which of `best` (fastest run per plan, tract's own first) to keep: the fastest, unless it is
/// within [`MARGIN`] of tract's own.
pub(super) fn pick(best: &[f64]) -> usize {
    let fastest = (0..best.len())
        .min_by(|a, b| best[*a].total_cmp(&best[*b]))
        .unwrap_or(0);
    if best[fastest] < best[0] * (1.0 - MARGIN) {
        fastest
    } else {
        0
    }
}

/// Runs `build` with `kernel` forced on every f32 product optimised on this thread.
pub(super) fn with_forced<R>(kernel: &'static str, build: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCED.with(|f| f.set(None));
        }
    }
    FORCED.with(|f| f.set(Some(kernel)));
    let _reset = Reset;
    build()
}

/// The distinct kernels of `optimised`'s f32 matrix products past one column (`n > 1`), in
/// order of first use, as the names tract's dispatch knows them by.
pub(super) fn f32_kernels(optimised: &TypedModel) -> Vec<&'static str> {
    let mut kernels: Vec<&'static str> = Vec::new();
    let runnable = MmmDispatch::native().runnable();
    for node in optimised.nodes() {
        let Some(op) = node.op_as::<OptMatMul>() else {
            continue;
        };
        for mmm in &op.mmm {
            if mmm.internal_type() != DatumType::F32 || mmm.nr() < 2 {
                continue;
            }
            let name = runnable.iter().map(|k| k.name()).find(|k| *k == mmm.name());
            if let Some(name) = name.filter(|n| !kernels.contains(n)) {
                kernels.push(name);
            }
        }
    }
    kernels
}

/// Zero-filled inputs for `bound`, whose input shapes are all known.
pub(super) fn zeros(bound: &TypedModel) -> TractResult<TVec<TValue>> {
    (0..bound.inputs.len())
        .map(|ix| {
            let fact = bound.input_fact(ix)?;
            let shape: Vec<usize> = fact
                .shape
                .iter()
                .map(|d| d.to_usize().map_err(Into::into))
                .collect::<TractResult<_>>()?;
            Ok(Tensor::zero_dt(fact.datum_type, &shape)?.into_tvalue())
        })
        .collect()
}
