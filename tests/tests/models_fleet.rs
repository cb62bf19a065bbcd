//! Inference under load, like every op: a device flooding a heavy model does not starve a quiet
//! device's other ops (guarantee 6, asserted on the order replies arrive in, as
//! `fairness.rs` does), and a device-sim fleet with 10 % `infer` requests loses nothing and gets
//! every reply verified.

use std::path::PathBuf;

use ciborium::Value;
use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::{device_sim, http_get, Gateway};

const QUOTA: usize = 4;

fn model(name: &str) -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/models/{name}.onnx"));
    format!("{path:?}")
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flooding_inference_does_not_starve_a_quiet_device() {
    // slow.onnx without a timeout: 300 chained 128 × 128 layers, long to run over 256 rows.
    let gateway = Gateway::start_with(&format!(
        "[gateway]\nworkers = 1\n[limits]\nmax_pending_per_device = {QUOTA}\n\
         max_payload_bytes = 1048576\n[models.heavy]\npath = {}\n",
        model("slow")
    ));
    let mut flooder = TestDevice::connect(gateway.mqtt, "infer-flooder").await;
    let mut quiet = TestDevice::connect(gateway.mqtt, "infer-quiet").await;
    let rows = Value::Array(vec![Value::Array(vec![Value::Float(0.1); 128]); 256]);
    let heavy = Value::Map(vec![(text("model"), text("heavy")), (text("input"), rows)]);
    for i in 0..=QUOTA {
        flooder
            .request("infer", &heavy, format!("f{i}").as_bytes(), None)
            .await;
    }
    // QUOTA accepted, the next one refused with 429 and a retry hint.
    let (mut accepted, mut refused) = (0, 0);
    let mut finals = Vec::new();
    while accepted + refused < QUOTA + 1 {
        let got = flooder.next().await;
        match got.reply.status {
            Status::Accepted => {
                accepted += 1;
                assert!(got.reply.retry_after_ms.is_some_and(|ms| ms > 0));
            }
            Status::TooMany => {
                refused += 1;
                assert!(got.reply.retry_after_ms.is_some_and(|ms| ms > 0));
            }
            Status::Ok => finals.push(got.at),
            other => panic!("unexpected {other:?}: {:?}", got.reply),
        }
    }
    assert_eq!((accepted, refused), (QUOTA, 1));

    quiet
        .request("stats", &values(&[1.0, 2.0, 3.0]), b"q", None)
        .await;
    let quiet_done = loop {
        let got = quiet.reply_for(b"q").await;
        if got.reply.status == Status::Ok {
            break got.at;
        }
    };
    while finals.len() < QUOTA {
        let got = flooder.next().await;
        assert_eq!(got.reply.status, Status::Ok, "{:?}", got.reply);
        finals.push(got.at);
    }
    finals.sort();
    assert!(
        quiet_done < finals[QUOTA - 1],
        "the quiet device's stats came after the flooder's whole inference backlog (FIFO, not fair)"
    );
}

#[test]
fn a_fleet_with_ten_percent_inference_loses_nothing() {
    let gateway = Gateway::start_with(&format!(
        "[models.mlp]\npath = {}\ninputs = [{{ name = \"x\", shape = [\"N\", 8] }}]\n",
        model("mlp")
    ));
    let report = device_sim(
        &gateway,
        &[
            "--devices",
            "50",
            "--duration",
            "4s",
            "--interval",
            "50ms",
            "--mix",
            "stats=9,infer=1",
            "--infer-model",
            "mlp",
            "--infer-features",
            "8",
        ],
    );
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["mismatched"], 0, "{report}");
    assert_eq!(report["replies_ok"], report["requests"], "{report}");
    // Inference was part of the mix, and every one of them was answered 200 (and verified).
    let (code, metrics) = http_get(gateway.http.expect("http"), "/metrics");
    assert_eq!(code, 200);
    let infer_ok: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("roost_requests_finished_total{op=\"infer\",status=\"200\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(infer_ok > 0, "no infer request finished: {metrics}");
    assert!(
        !metrics.contains("op=\"infer\",status=\"5"),
        "an infer request failed: {metrics}"
    );
}
