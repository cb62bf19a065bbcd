//! Plans specialised per batch size ([`super::plans`]): built after a size is seen twice, on the
//! background thread, answering as onnxruntime does; bounded per model; deadlines still cut
//! runs on them.

use std::sync::Arc;
use std::time::Duration;

use ciborium::Value;
use tract_onnx::prelude::{TValue, TVec};

use super::plans::{BUILD_AFTER, KEEP};
use super::tests::{assert_close, nested, raw, reference, request};
use super::{Model, Registry};
use crate::analytics::ops::{OpError, Series};

/// Generous: the optimisation runs on a debug build of tract beside other tests.
const BUILT_WITHIN: Duration = Duration::from_secs(120);

fn registry() -> Arc<Registry> {
    let tables = "[models.mlp]\npath = \"DIR/mlp.onnx\"\n\
                  inputs = [{ name = \"x\", shape = [\"N\", 8], dtype = \"float32\" }]\n\
                  [models.slow]\npath = \"DIR/slow.onnx\"\ntimeout_ms = 1\n";
    Arc::new(Registry::load(&raw(tables)).expect("fixtures load"))
}

fn specialised(model: &Model, inputs: &TVec<TValue>) -> bool {
    let plan = model.plans.for_inputs(inputs);
    !Arc::ptr_eq(&plan, model.plans.free())
}

#[test]
fn a_size_seen_twice_gets_its_own_plan_which_answers_as_onnxruntime() {
    let registry = registry();
    let model = registry.get("mlp").expect("mlp");
    let case = &reference()["cases"]["mlp"];
    let args = request("mlp", nested(&case["inputs"]["x"]));
    let inputs = model.zeros(5);
    for run in 1..=BUILD_AFTER {
        assert_eq!(model.specialised_plans(), 0, "none before run {run}");
        let call = registry.prepare(&args, 1000).expect("valid");
        let result = call.prepared.run(&Series::default()).expect("runs");
        assert_close(&result, &case["outputs"]);
    }
    assert!(model.wait_specialised(&inputs, BUILT_WITHIN), "built");
    assert_eq!(model.specialised_plans(), 1);
    assert!(specialised(model, &inputs), "5 rows run on their own plan");
    assert!(!specialised(model, &model.zeros(6)), "6 rows do not");
    let call = registry.prepare(&args, 1000).expect("valid");
    let result = call.prepared.run(&Series::default()).expect("runs");
    assert_close(&result, &case["outputs"]);
}

#[test]
fn sizes_seen_once_build_nothing_and_few_plans_are_kept() {
    let registry = registry();
    let model = registry.get("mlp").expect("mlp");
    model.run(model.zeros(3), None).expect("runs");
    assert!(
        !model.wait_specialised(&model.zeros(3), Duration::ZERO),
        "one sighting queues no build"
    );
    for rows in 10..10 + KEEP + 2 {
        for _ in 0..BUILD_AFTER {
            model.run(model.zeros(rows), None).expect("runs");
        }
        assert!(model.wait_specialised(&model.zeros(rows), BUILT_WITHIN));
        assert!(model.specialised_plans() <= KEEP);
    }
    assert_eq!(model.specialised_plans(), KEEP);
    assert!(
        specialised(model, &model.zeros(10 + KEEP + 1)),
        "the latest size is kept"
    );
    assert!(
        !specialised(model, &model.zeros(10)),
        "the least recently used is dropped"
    );
}

#[test]
fn a_specialised_plan_is_still_cut_at_the_models_timeout() {
    let registry = registry();
    let model = registry.get("slow").expect("slow");
    let rows = Value::Array(vec![Value::Array(vec![Value::Float(0.1); 128]); 64]);
    let args = request("slow", rows);
    let timed_out = || {
        let call = registry.prepare(&args, 100_000).expect("valid");
        matches!(
            call.prepared.run(&Series::default()),
            Err(OpError::TimedOut(_))
        )
    };
    for _ in 0..BUILD_AFTER {
        assert!(timed_out());
    }
    assert!(model.wait_specialised(&model.zeros(64), BUILT_WITHIN));
    assert!(specialised(model, &model.zeros(64)));
    assert!(timed_out(), "504 on the specialised plan too");
}
