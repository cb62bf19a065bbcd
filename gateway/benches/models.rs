//! Criterion benchmark of ONNX inference: the MLP anomaly scorer of `tests/fixtures/models`
//! (8 → 32 → 16 → 32 → 8 plus its score) over 1,000 rows, loaded and optimised exactly as
//! `gateway run` loads it. `Model::run` (on the plan specialised to 1,000 rows, as served once
//! that size has been seen) is what onnxruntime's `session.run` is compared with
//! (`python3 tests/fixtures/gen_models.py --bench`); the whole `infer` op (CBOR in, CBOR out)
//! is measured beside it. On a machine whose speed comes in spells, `models_paired` compares the
//! two in alternating blocks instead. Figures and commands: docs/BENCHMARKS.md ("Bring your own
//! model").

use std::sync::Arc;

use ciborium::Value;
use criterion::{Criterion, Throughput};
use gateway::analytics::ops::{Series, Source};
use gateway::models::Registry;
use tract_onnx::prelude::{IntoTValue, TValue, TVec, Tensor};

mod common {
    pub mod mlp;
}

use common::mlp::{registry_with, rows, ROWS};

/// As in `gateway run`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn registry() -> Arc<Registry> {
    registry_with("\"N\"")
}

fn bench(c: &mut Criterion) {
    let registry = registry();
    let model = registry.get("mlp").expect("mlp").clone();
    let data = rows();
    let tensor = Tensor::from_shape(&[ROWS, 8], &data).expect("tensor");
    let mut group = c.benchmark_group("mlp_1000_rows");
    group.throughput(Throughput::Elements(ROWS as u64));
    let inputs = || -> TVec<TValue> { std::iter::once(tensor.clone().into_tvalue()).collect() };
    // A size's first runs: the free plan (batch dimension still the symbol N).
    group.bench_function("tract_run_free_plan", |b| {
        b.iter(|| model.run_free_plan(inputs(), None).expect("runs"))
    });
    // As served once 1,000 rows have been seen twice: the plan specialised to the size, built
    // by the background thread exactly as in `gateway run`.
    for _ in 0..2 {
        model.run(inputs(), None).expect("runs");
    }
    assert!(
        model.wait_specialised(&inputs(), std::time::Duration::from_secs(120)),
        "the plan for 1,000 rows is built"
    );
    group.bench_function("tract_run", |b| {
        b.iter(|| model.run(inputs(), None).expect("runs"))
    });
    // The graph declared with exactly 1,000 rows, optimised at load: what the specialised plan
    // should match.
    let fixed = registry_with(&ROWS.to_string());
    let fixed_model = fixed.get("mlp").expect("mlp").clone();
    group.bench_function("tract_run_batch_fixed_at_1000", |b| {
        b.iter(|| fixed_model.run(inputs(), None).expect("runs"))
    });
    let input = Value::Array(
        data.chunks(8)
            .map(|row| Value::Array(row.iter().map(|x| Value::Float(f64::from(*x))).collect()))
            .collect(),
    );
    let args = Value::Map(vec![
        (Value::Text("model".into()), Value::Text("mlp".into())),
        (Value::Text("input".into()), input),
    ]);
    let call = registry.prepare(&args, 1_000_000).expect("valid call");
    assert!(matches!(call.source, Source::Own));
    group.bench_function("infer_op_cbor_to_cbor", |b| {
        b.iter(|| {
            let call = registry.prepare(&args, 1_000_000).expect("valid call");
            call.prepared.run(&Series::default()).expect("runs")
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
