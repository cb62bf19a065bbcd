//! The models module against the fixtures of `tests/fixtures/gen_models.py`: outputs compared
//! with onnxruntime's (tolerance in `reference.json`), fallback, timeout, intake refusals.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ciborium::Value;

use super::{RawModel, Registry};
use crate::analytics::ops::{OpError, PrepareError, Series, Source};
use crate::wire::envelope::map_get;

pub(super) fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

pub(super) fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).expect("reference");
    serde_json::from_str(&text).expect("JSON")
}

pub(super) fn raw(tables: &str) -> BTreeMap<String, RawModel> {
    #[derive(serde::Deserialize)]
    struct File {
        models: BTreeMap<String, RawModel>,
    }
    let dir = fixtures();
    let text = tables.replace("DIR", &dir.display().to_string());
    toml::from_str::<File>(&text).expect("toml").models
}

fn registry(fallback: bool) -> Arc<Registry> {
    let fallback = if fallback {
        "fallback = \"linear\"\n"
    } else {
        ""
    };
    let tables = format!(
        "[models.linear]\npath = \"DIR/linear.onnx\"\n\
         inputs = [{{ name = \"x\", shape = [\"N\", 4], dtype = \"float32\" }}]\n\
         [models.window]\npath = \"DIR/window.onnx\"\n\
         [models.failing]\npath = \"DIR/failing.onnx\"\n{fallback}\
         [models.slow]\npath = \"DIR/slow.onnx\"\ntimeout_ms = 1\n"
    );
    Arc::new(Registry::load(&raw(&tables)).expect("fixtures load"))
}

pub(super) fn text(s: &str) -> Value {
    Value::Text(s.into())
}

pub(super) fn nested(tensor: &serde_json::Value) -> Value {
    let shape: Vec<usize> = serde_json::from_value(tensor["shape"].clone()).expect("shape");
    let data: Vec<f64> = serde_json::from_value(tensor["data"].clone()).expect("data");
    let width = shape[1];
    Value::Array(
        data.chunks(width)
            .map(|row| Value::Array(row.iter().map(|x| Value::Float(*x)).collect()))
            .collect(),
    )
}

pub(super) fn request(model: &str, input: Value) -> Value {
    Value::Map(vec![(text("model"), text(model)), (text("input"), input)])
}

pub(super) fn field<'a>(map: &'a Value, key: &str) -> &'a Value {
    let Value::Map(entries) = map else {
        panic!("not a map")
    };
    map_get(entries, key).unwrap_or_else(|| panic!("no {key}"))
}

pub(super) fn assert_close(result: &Value, expected: &serde_json::Value) {
    let tolerance = &reference()["tolerance"];
    let (rtol, atol) = (
        tolerance["rtol"].as_f64().expect("rtol"),
        tolerance["atol"].as_f64().expect("atol"),
    );
    for (name, want) in expected.as_object().expect("outputs") {
        let out = field(field(result, "outputs"), name);
        let data: Vec<f64> = field(out, "data")
            .as_array()
            .expect("data")
            .iter()
            .map(|x| x.as_float().expect("float"))
            .collect();
        let want: Vec<f64> = serde_json::from_value(want["data"].clone()).expect("data");
        assert_eq!(data.len(), want.len(), "{name}");
        for (g, w) in data.iter().zip(&want) {
            assert!((g - w).abs() <= atol + rtol * w.abs(), "{name}: {g} vs {w}");
        }
    }
}

#[test]
fn linear_matches_onnxruntime_and_names_itself() {
    let registry = registry(false);
    let case = &reference()["cases"]["linear"];
    let call = registry
        .prepare(&request("linear", nested(&case["inputs"]["x"])), 1000)
        .expect("valid");
    assert_eq!(call.op, "infer");
    assert_eq!(call.cost_key(), "infer:linear");
    assert_eq!(call.inline_len(), 12);
    assert!(matches!(call.source, Source::Own));
    let result = call.prepared.run(&Series::default()).expect("runs");
    assert_eq!(field(&result, "model"), &text("linear"));
    assert_eq!(
        field(&result, "sha256"),
        &text(&registry.get("linear").expect("linear").sha256)
    );
    assert_close(&result, &case["outputs"]);
}

#[test]
fn a_window_fills_the_free_length_axis() {
    let registry = registry(false);
    let case = &reference()["cases"]["window"];
    let args = Value::Map(vec![
        (text("model"), text("window")),
        (text("metric"), text("level")),
        (text("window_s"), Value::Integer(60.into())),
    ]);
    let call = registry.prepare(&args, 1000).expect("valid");
    assert!(matches!(call.source, Source::Telemetry { .. }));
    let values: Vec<f64> =
        serde_json::from_value(case["inputs"]["x"]["data"].clone()).expect("data");
    let result = call
        .prepared
        .run(&Series { values, ts: None })
        .expect("runs");
    assert_close(&result, &case["outputs"]);
    // Any single float input with one free dimension takes a window: [N, 128] in rows of 128.
    let args = Value::Map(vec![
        (text("model"), text("slow")),
        (text("metric"), text("level")),
        (text("window_s"), Value::Integer(60.into())),
    ]);
    assert!(
        registry.prepare(&args, 1000).is_ok(),
        "[N, 128] takes rows of 128"
    );
}

#[test]
fn a_failing_model_falls_back_once_and_says_so() {
    let case = &reference()["cases"]["linear"];
    let input = nested(&case["inputs"]["x"]);
    let with = registry(true);
    let call = with
        .prepare(&request("failing", input.clone()), 1000)
        .expect("valid");
    let result = call
        .prepared
        .run(&Series::default())
        .expect("fallback answers");
    assert_eq!(field(&result, "model"), &text("linear"));
    assert_eq!(
        field(field(&result, "fallback_from"), "model"),
        &text("failing")
    );
    assert_close(&result, &case["outputs"]);

    let without = registry(false);
    let call = without
        .prepare(&request("failing", input), 1000)
        .expect("valid");
    match call.prepared.run(&Series::default()) {
        Err(OpError::Failed(message)) => assert!(message.contains("failing"), "{message}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_model_past_its_timeout_times_out_and_has_a_hard_limit() {
    let registry = registry(false);
    let rows = Value::Array(vec![Value::Array(vec![Value::Float(0.1); 128]); 64]);
    let call = registry
        .prepare(&request("slow", rows), 100_000)
        .expect("valid");
    assert!(call.prepared.time_limit().is_some());
    match call.prepared.run(&Series::default()) {
        Err(OpError::TimedOut(message)) => assert!(message.contains("timeout_ms = 1"), "{message}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[test]
fn intake_refuses_unknown_models_bad_shapes_and_oversize() {
    let registry = registry(false);
    let row = |n| Value::Array(vec![Value::Float(1.0); n]);
    assert!(matches!(
        registry.prepare(&request("nope", Value::Array(vec![row(4)])), 1000),
        Err(PrepareError::UnknownModel(_))
    ));
    let bad = |args: Value| {
        matches!(
            registry.prepare(&args, 1000),
            Err(PrepareError::Op(OpError::BadArgs(_)))
        )
    };
    assert!(bad(request("linear", Value::Array(vec![row(3)]))));
    assert!(bad(request("linear", row(4))));
    assert!(bad(Value::Map(vec![(text("model"), text("linear"))])));
    assert!(bad(Value::Map(vec![
        (text("model"), text("linear")),
        (
            text("inputs"),
            Value::Map(vec![(text("y"), Value::Array(vec![row(4)]))])
        ),
    ])));
    assert!(matches!(
        registry.prepare(&request("linear", Value::Array(vec![row(4); 300])), 1000),
        Err(PrepareError::Op(OpError::TooLarge(_)))
    ));
}

#[test]
fn declarations_the_graph_cannot_take_name_their_key() {
    for (tables, key) in [
        ("[models.m]\npath = \"DIR/nothing.onnx\"\n", "models.m.path"),
        ("[models.m]\npath = \"DIR/reference.json\"\n", "models.m.path"),
        (
            "[models.m]\npath = \"DIR/linear.onnx\"\ninputs = [{ name = \"x\", shape = [\"N\", 5] }]\n",
            "models.m.inputs",
        ),
        ("[models.m]\npath = \"DIR/linear.onnx\"\n", "models.m.inputs"),
        (
            "[models.m]\npath = \"DIR/window.onnx\"\ninputs = [{ name = \"x\", dtype = \"int64\" }]\n",
            "models.m.inputs",
        ),
        (
            "[models.m]\npath = \"DIR/window.onnx\"\nfallback = \"s\"\n[models.s]\npath = \"DIR/slow.onnx\"\n",
            "models.m.fallback",
        ),
    ] {
        let error = Registry::load(&raw(tables)).expect_err(tables);
        assert_eq!(error.key, key, "{tables}: {error}");
    }
}
