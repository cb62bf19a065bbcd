//! Kernel trials ([`super::kernels`]): our dispatch tier forces a kernel only while a trial
//! builds; the plan kept answers as tract's own; a forced kernel is kept only past the margin.

use std::sync::Arc;

use tract_onnx::prelude::{
    DatumType, Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor, TypedModel,
    TypedSimplePlan,
};
use tract_onnx::tract_core::internal::DatumExt;
use tract_onnx::tract_core::tract_linalg::MmmDispatch;

use super::kernels::{f32_kernels, optimise, pick, timed_run, with_forced, zeros, MARGIN};
use super::tests::{fixtures, raw};
use super::Registry;

const ROWS: usize = 1000;

/// The MLP fixture with its batch bound to 1,000 rows, decluttered, not optimised.
fn bound_mlp() -> TypedModel {
    bound("mlp.onnx", [ROWS, 8])
}

/// A fixture with its one input bound to `shape`, decluttered, not optimised.
fn bound(file: &str, shape: [usize; 2]) -> TypedModel {
    tract_onnx::onnx()
        .model_for_path(fixtures().join(file))
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_decluttered())
        .expect("the fixture loads")
}

/// `bound` optimised as tract chooses, runnable.
fn tracts_plan(bound: &TypedModel) -> Arc<TypedSimplePlan> {
    bound
        .clone()
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .expect("optimises")
}

fn rows() -> Tensor {
    let data: Vec<f32> = (0..ROWS * 8)
        .map(|i| ((i * 7919) % 1000) as f32 / 300.0 - 1.5)
        .collect();
    Tensor::from_shape(&[ROWS, 8], &data).expect("tensor")
}

/// An f32 kernel of this machine's own instruction set (tract's dispatch ignores a generic one)
/// with more than one column, other than `not`.
fn another_kernel(not: &[&str]) -> &'static str {
    MmmDispatch::native()
        .runnable()
        .iter()
        .filter(|k| k.internal_type() == DatumType::F32 && k.nr() > 1 && k.arch().is_some())
        .map(|k| k.name())
        .find(|k| !not.contains(k))
        .expect("an f32 kernel for this machine beside tract's choice")
}

#[test]
fn a_forced_kernel_serves_every_f32_product_only_while_forced() {
    let bound = bound_mlp();
    let own = f32_kernels(&bound.clone().into_optimized().expect("optimises"));
    assert!(!own.is_empty(), "the MLP's products run f32 kernels");
    let kernel = another_kernel(&own);
    let forced = with_forced(kernel, || bound.clone().into_optimized()).expect("optimises");
    assert_eq!(
        f32_kernels(&forced),
        vec![kernel],
        "every product on the forced kernel"
    );
    let after = f32_kernels(&bound.clone().into_optimized().expect("optimises"));
    assert_eq!(after, own, "tract chooses again once the trial is over");
}

#[test]
fn the_plan_kept_answers_as_tracts_own() {
    let bound = bound_mlp();
    let own = tracts_plan(&bound);
    let tuned = optimise(&bound).expect("optimises");
    if let Some(kernel) = tuned.kernel {
        assert!(
            f32_kernels(&bound.clone().into_optimized().expect("optimises")).contains(&kernel),
            "a kept kernel is one tract chose somewhere in the plan"
        );
        assert!(
            tuned.kept_us < tuned.tract_us * (1.0 - MARGIN),
            "kept past the margin"
        );
    }
    let expected = own.run(tvec(rows())).expect("runs");
    let got = tuned.plan.run(tvec(rows())).expect("runs");
    assert_eq!(expected.len(), got.len());
    for (e, g) in expected.iter().zip(&got) {
        e.close_enough(g, true).expect("same outputs");
    }
}

fn tvec(t: Tensor) -> tract_onnx::prelude::TVec<tract_onnx::prelude::TValue> {
    std::iter::once(t.into_tvalue()).collect()
}

#[test]
fn a_forced_kernel_is_kept_only_when_clearly_faster() {
    assert_eq!(
        pick(&[100.0, 80.0, 90.0]),
        1,
        "the fastest, well past the margin"
    );
    assert_eq!(pick(&[100.0, 97.0]), 0, "within the margin: tract's own");
    assert_eq!(pick(&[100.0, 120.0]), 0, "slower: tract's own");
    assert_eq!(pick(&[100.0]), 0);
}

#[test]
fn a_model_that_fails_when_run_is_served_as_tract_optimised_it() {
    let tuned =
        optimise(&bound("failing_late.onnx", [ROWS, 8])).expect("it optimises all the same");
    assert_eq!(tuned.kernel, None, "no trial without a run");
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tuned.plan.run(tvec(rows()))
    }));
    assert!(
        !matches!(ran, Ok(Ok(_))),
        "its runs fail (tract panics), as they should"
    );
    let declared = "[models.late]\npath = \"DIR/failing_late.onnx\"\n\
                    inputs = [{ name = \"x\", shape = [1000, 8], dtype = \"float32\" }]\n";
    let registry =
        Registry::load(&raw(declared)).expect("declared without free dimensions, it loads");
    let model = registry.get("late").expect("late");
    assert!(
        model.run(model.zeros(1000), None).is_err(),
        "and fails when run"
    );
}

#[test]
fn a_trial_run_past_the_budget_is_cut_and_counts_as_no_time() {
    // 300 products of 4,096 x 128 x 128: seconds of work even in a release build.
    let bound = bound("slow.onnx", [4096, 128]);
    let plan = tracts_plan(&bound);
    let inputs = zeros(&bound).expect("zeros");
    assert_eq!(timed_run(&plan, &inputs), None, "cut, not timed");
}
