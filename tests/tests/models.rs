//! Bring your own model: the `infer` op end to end through a real gateway, against the ONNX
//! fixtures of `tests/fixtures/gen_models.py` and the outputs onnxruntime computed for them.
//!
//! Tolerance (stated in `reference.json`): |roost − onnxruntime| ≤ atol + rtol·|onnxruntime|,
//! atol = 1e-5, rtol = 1e-4: both compute in float32 but may sum in another order.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use ciborium::Value;
use gateway::wire::envelope::map_get;
use gateway::wire::Status;
use roost_tests::device::{Received, TestDevice};
use roost_tests::Gateway;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

/// The `[models]` tables every test here uses. linear.onnx and mlp.onnx (skl2onnx) leave the
/// batch dimension unnamed, so the config names it.
fn models_config() -> String {
    let dir = fixtures();
    let path = |name: &str| format!("{:?}", dir.join(format!("{name}.onnx")));
    format!(
        "[models.linear]\npath = {}\ninputs = [{{ name = \"x\", shape = [\"N\", 4], dtype = \"float32\" }}]\n\
         [models.mlp]\npath = {}\ninputs = [{{ name = \"x\", shape = [\"N\", 8] }}]\n\
         [models.window]\npath = {}\n\
         [models.failing]\npath = {}\nfallback = \"linear\"\n\
         [models.slow]\npath = {}\ntimeout_ms = 1\n",
        path("linear"),
        path("mlp"),
        path("window"),
        path("failing"),
        path("slow"),
    )
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// A reference tensor `{"shape", "data"}` as nested CBOR arrays.
fn nested(tensor: &serde_json::Value) -> Value {
    let shape: Vec<usize> = serde_json::from_value(tensor["shape"].clone()).expect("shape");
    let data: Vec<f64> = serde_json::from_value(tensor["data"].clone()).expect("data");
    fn build(shape: &[usize], data: &[f64]) -> Value {
        match shape {
            [] => Value::Float(data[0]),
            [n, rest @ ..] => {
                let stride: usize = rest.iter().product();
                Value::Array(
                    (0..*n)
                        .map(|i| build(rest, &data[i * stride..(i + 1) * stride]))
                        .collect(),
                )
            }
        }
    }
    build(&shape, &data)
}

fn args(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (text(k), v)).collect())
}

/// Sends a request and returns its final reply (skipping the `202`).
async fn final_reply(device: &mut TestDevice, args: &Value, corr: &[u8]) -> Received {
    device.request("infer", args, corr, None).await;
    loop {
        let got = device.reply_for(corr).await;
        if got.reply.status != Status::Accepted {
            return got;
        }
    }
}

fn get<'a>(map: &'a Value, key: &str) -> &'a Value {
    let Value::Map(entries) = map else {
        panic!("not a map: {map:?}")
    };
    map_get(entries, key).unwrap_or_else(|| panic!("no {key:?} in {map:?}"))
}

fn as_text(value: &Value) -> &str {
    value.as_text().expect("text")
}

fn sha256_of(name: &str) -> String {
    let bytes = std::fs::read(fixtures().join(format!("{name}.onnx"))).expect("model file");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks every output of `result` against onnxruntime's, within the stated tolerance.
fn assert_matches_onnxruntime(result: &Value, expected: &serde_json::Value) {
    let tolerance = &reference()["tolerance"];
    let (rtol, atol) = (
        tolerance["rtol"].as_f64().expect("rtol"),
        tolerance["atol"].as_f64().expect("atol"),
    );
    let outputs = get(result, "outputs");
    let expected = expected.as_object().expect("outputs");
    let Value::Map(got) = outputs else {
        panic!("outputs is not a map")
    };
    assert_eq!(got.len(), expected.len(), "same outputs: {outputs:?}");
    for (name, want) in expected {
        let out = get(outputs, name);
        let shape: Vec<u64> = get(out, "shape")
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| u64::try_from(d.as_integer().expect("uint")).expect("uint"))
            .collect();
        let want_shape: Vec<u64> = serde_json::from_value(want["shape"].clone()).expect("shape");
        assert_eq!(shape, want_shape, "shape of {name}");
        let data: Vec<f64> = get(out, "data")
            .as_array()
            .expect("data")
            .iter()
            .map(|x| x.as_float().expect("float"))
            .collect();
        let want_data: Vec<f64> = serde_json::from_value(want["data"].clone()).expect("data");
        assert_eq!(data.len(), want_data.len(), "length of {name}");
        for (i, (g, w)) in data.iter().zip(&want_data).enumerate() {
            assert!(
                (g - w).abs() <= atol + rtol * w.abs(),
                "{name}[{i}]: roost {g}, onnxruntime {w}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_inputs_are_answered_as_onnxruntime_answers() {
    let gateway = Gateway::start_with(&models_config());
    let mut device = TestDevice::connect(gateway.mqtt, "infer-inline").await;
    let reference = reference();

    // One input: "input" is the tensor itself.
    let linear = &reference["cases"]["linear"];
    let request = args(vec![
        ("model", text("linear")),
        ("input", nested(&linear["inputs"]["x"])),
    ]);
    let got = final_reply(&mut device, &request, b"linear").await;
    assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
    let result = got.reply.result.expect("result");
    assert_eq!(as_text(get(&result, "model")), "linear");
    assert_eq!(as_text(get(&result, "sha256")), sha256_of("linear"));
    assert_matches_onnxruntime(&result, &linear["outputs"]);

    // The same by name, through "inputs", for the MLP anomaly scorer (two outputs).
    let mlp = &reference["cases"]["mlp"];
    let request = args(vec![
        ("model", text("mlp")),
        ("inputs", args(vec![("x", nested(&mlp["inputs"]["x"]))])),
    ]);
    let got = final_reply(&mut device, &request, b"mlp").await;
    assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
    let result = got.reply.result.expect("result");
    assert_eq!(as_text(get(&result, "model")), "mlp");
    assert_matches_onnxruntime(&result, &mlp["outputs"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_window_is_the_models_free_axis() {
    let gateway = Gateway::start_with(&models_config());
    let mut device = TestDevice::connect(gateway.mqtt, "infer-window").await;
    let case = &reference()["cases"]["window"];
    let values: Vec<f64> =
        serde_json::from_value(case["inputs"]["x"]["data"].clone()).expect("data");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let readings = Value::Array(
        values
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let ts = now_ms - 10 * (values.len() - i) as u64;
                args(vec![
                    ("ts", Value::Integer(ts.into())),
                    ("level", Value::Float(*x)),
                ])
            })
            .collect(),
    );
    device
        .publish_raw(
            "devices/infer-window/telemetry",
            gateway::wire::envelope::encode_value(&readings),
            None,
        )
        .await;
    let request = args(vec![
        ("model", text("window")),
        ("metric", text("level")),
        ("window_s", Value::Integer(600.into())),
    ]);
    // Telemetry travels on its own topic, so the first request may run before it is stored:
    // ask again (a new request each time), a bounded number of times.
    for attempt in 0..50 {
        let got = final_reply(&mut device, &request, format!("w{attempt}").as_bytes()).await;
        if got.reply.status == Status::Failed {
            continue; // "no level telemetry in the window" yet
        }
        assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
        let result = got.reply.result.expect("result");
        assert_eq!(as_text(get(&result, "model")), "window");
        assert_matches_onnxruntime(&result, &case["outputs"]);
        return;
    }
    panic!("the telemetry was never stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_at_intake() {
    let gateway = Gateway::start_with(&format!(
        "{}[limits]\nmax_series_len = 100\n",
        models_config()
    ));
    let mut device = TestDevice::connect(gateway.mqtt, "infer-bad").await;
    let row = |n: usize| Value::Array(vec![Value::Float(0.5); n]);
    let cases = [
        // Rows of 3 for a model that takes rows of 4.
        (
            args(vec![
                ("model", text("linear")),
                ("input", Value::Array(vec![row(3)])),
            ]),
            Status::BadRequest,
            "bad_args",
        ),
        // Rank 1 for a rank-2 input.
        (
            args(vec![("model", text("linear")), ("input", row(4))]),
            Status::BadRequest,
            "bad_args",
        ),
        // Text where numbers go (wrong dtype).
        (
            args(vec![
                ("model", text("linear")),
                (
                    "input",
                    Value::Array(vec![Value::Array(vec![text("a"); 4])]),
                ),
            ]),
            Status::BadRequest,
            "bad_args",
        ),
        // An input the model does not have.
        (
            args(vec![
                ("model", text("linear")),
                ("inputs", args(vec![("y", Value::Array(vec![row(4)]))])),
            ]),
            Status::BadRequest,
            "bad_args",
        ),
        (
            args(vec![
                ("model", text("nope")),
                ("input", Value::Array(vec![row(4)])),
            ]),
            Status::NotFound,
            "unknown_model",
        ),
        // 30 × 4 = 120 elements, past max_series_len = 100.
        (
            args(vec![
                ("model", text("linear")),
                ("input", Value::Array(vec![row(4); 30])),
            ]),
            Status::TooLarge,
            "too_large",
        ),
    ];
    for (i, (request, status, code)) in cases.into_iter().enumerate() {
        let corr = format!("bad-{i}");
        device
            .request("infer", &request, corr.as_bytes(), None)
            .await;
        let got = device.reply_for(corr.as_bytes()).await;
        assert_eq!(got.reply.status, status, "case {i}: {:?}", got.reply);
        assert_eq!(
            got.reply.error.as_ref().map(|e| e.code.as_str()),
            Some(code),
            "case {i}"
        );
    }
    // Still serving.
    let got = final_reply(
        &mut device,
        &args(vec![
            ("model", text("linear")),
            ("input", Value::Array(vec![row(4)])),
        ]),
        b"ok",
    )
    .await;
    assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_is_answered_by_its_fallback() {
    let gateway = Gateway::start_with(&models_config());
    let mut device = TestDevice::connect(gateway.mqtt, "infer-fallback").await;
    let linear = &reference()["cases"]["linear"];
    let request = args(vec![
        ("model", text("failing")),
        ("input", nested(&linear["inputs"]["x"])),
    ]);
    let got = final_reply(&mut device, &request, b"fb").await;
    assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
    let result = got.reply.result.expect("result");
    assert_eq!(
        as_text(get(&result, "model")),
        "linear",
        "the fallback answered"
    );
    assert_eq!(as_text(get(&result, "sha256")), sha256_of("linear"));
    let from = get(&result, "fallback_from");
    assert_eq!(as_text(get(from, "model")), "failing");
    assert_matches_onnxruntime(&result, &linear["outputs"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_past_its_timeout_is_answered_504() {
    let gateway = Gateway::start_with(&models_config());
    let mut device = TestDevice::connect(gateway.mqtt, "infer-slow").await;
    // 300 chained 128 × 128 layers over 64 rows: far past a 1 ms timeout_ms.
    let rows = Value::Array(vec![Value::Array(vec![Value::Float(0.1); 128]); 64]);
    let request = args(vec![("model", text("slow")), ("input", rows)]);
    let got = final_reply(&mut device, &request, b"slow").await;
    assert_eq!(got.reply.status, Status::Timeout, "{:?}", got.reply);
    let error = got.reply.error.expect("error");
    assert_eq!(error.code, "deadline_exceeded");
    assert!(
        error.message.contains("timeout_ms = 1"),
        "{}",
        error.message
    );
    // The worker is free again: the next request is served.
    let linear = &reference()["cases"]["linear"];
    let request = args(vec![
        ("model", text("linear")),
        ("input", nested(&linear["inputs"]["x"])),
    ]);
    let got = final_reply(&mut device, &request, b"after").await;
    assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
}

fn run_config(config: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).expect("write config");
    std::fs::write(dir.path().join("garbage.onnx"), b"this is not a protobuf").expect("write");
    let out = Command::new(Gateway::binary())
        .args(args)
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run gateway");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_model_stops_the_start_with_exit_2_naming_the_key() {
    let linear = format!("{:?}", fixtures().join("linear.onnx"));
    let window = format!("{:?}", fixtures().join("window.onnx"));
    for (config, key) in [
        (
            "[models.m]\npath = \"missing.onnx\"\n".to_owned(),
            "models.m.path",
        ),
        (
            "[models.m]\npath = \"garbage.onnx\"\n".to_owned(),
            "models.m.path",
        ),
        // The file fixes 4 features; 5 cannot be.
        (
            format!(
                "[models.m]\npath = {linear}\ninputs = [{{ name = \"x\", shape = [\"N\", 5] }}]\n"
            ),
            "models.m.inputs",
        ),
        // The file leaves the batch dimension open and nothing declares it.
        (format!("[models.m]\npath = {linear}\n"), "models.m.inputs"),
        // No such input in the graph.
        (
            format!(
                "[models.m]\npath = {window}\ninputs = [{{ name = \"y\", shape = [1, \"L\"] }}]\n"
            ),
            "models.m.inputs",
        ),
        (
            format!("[models.m]\npath = {window}\nfallback = \"other\"\n"),
            "models.m.fallback",
        ),
    ] {
        let config = format!("[http]\nlisten = \"\"\n[broker]\nlisten = \"127.0.0.1:0\"\n{config}");
        let (code, _, stderr) = run_config(&config, &["run"]);
        assert_eq!(code, Some(2), "{config}: {stderr}");
        assert!(stderr.contains(key), "{config}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn models_list_shows_inputs_outputs_and_measured_cost() {
    let (code, stdout, stderr) = run_config(&models_config(), &["models", "list", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let mlp = list
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["name"] == "mlp")
        .expect("mlp listed");
    assert_eq!(mlp["inputs"][0]["name"], "x");
    assert_eq!(mlp["inputs"][0]["dtype"], "float32");
    assert_eq!(mlp["inputs"][0]["shape"], serde_json::json!(["N", 8]));
    assert_eq!(mlp["outputs"][0]["name"], "score");
    assert_eq!(mlp["outputs"][1]["name"], "reconstruction");
    assert_eq!(mlp["sha256"], sha256_of("mlp"));
    assert_eq!(mlp["cost"]["warmup_ok"], true);
    assert!(mlp["cost"]["base_us"].as_f64().expect("base_us") > 0.0);
    let failing = list
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["name"] == "failing")
        .expect("failing listed");
    assert_eq!(failing["fallback"], "linear");
    assert_eq!(failing["cost"]["warmup_ok"], false);
}
