//! Work that is tiny to send and long to run: a device's stored telemetry ([`READINGS`] readings
//! of metric `x`, one a millisecond, ending now) and windowed ops over it. A `spectrum` over that
//! window keeps a worker busy for a good while from a request of a few bytes, so tests can build
//! a real backlog (fairness, drain) without multi-megabyte payloads. Or, with no telemetry to
//! upload first, `infer` on the slow fixture model ([`slow_model`], [`slow_infer`]): its cost
//! grows with the rows, its payload stays small.

use ciborium::Value;
use gateway::wire::Status;

use crate::device::{field, TestDevice};

/// Readings [`store_telemetry`] uploads.
pub const READINGS: usize = 100_000;

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// Telemetry readings `from..to` of [`READINGS`], `{"ts", "x"}`, ending at `now_ms`.
fn telemetry(from: usize, to: usize, now_ms: u64) -> Value {
    Value::Array(
        (from..to)
            .map(|i| {
                let ts = now_ms - (READINGS - i) as u64;
                let x = (i as f64 * 0.37).sin() + (i % 17) as f64 * 0.01;
                Value::Map(vec![
                    (text("ts"), Value::Integer(ts.into())),
                    (text("x"), Value::Float(x)),
                ])
            })
            .collect(),
    )
}

/// Args of an op over the device's last 1000 s of `x` readings (all of them).
pub fn windowed() -> Value {
    Value::Map(vec![
        (text("metric"), text("x")),
        (text("window_s"), Value::Integer(1000.into())),
    ])
}

/// Args of a `spectrum` over the stored window: the long op.
pub fn windowed_spectrum() -> Value {
    let mut args = windowed();
    if let Value::Map(entries) = &mut args {
        entries.push((text("peaks"), Value::Integer(3.into())));
    }
    args
}

/// Uploads [`READINGS`] readings as `device` (ten publishes of about 240 KB: give the gateway a
/// `limits.max_payload_bytes` above that), then checks with windowed `stats` probes that all
/// are stored. The device must be subscribed to its replies.
pub async fn store_telemetry(device: &mut TestDevice) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let topic = gateway::wire::topics::telemetry(&device.id);
    for chunk in 0..10 {
        let readings = telemetry(chunk * READINGS / 10, (chunk + 1) * READINGS / 10, now_ms);
        let payload = gateway::wire::envelope::encode_value(&readings);
        device.publish_raw(&topic, payload, None).await;
    }
    // Telemetry travels on another topic than requests, so a probe may run before the last
    // chunk is stored: probe again (a new request each time), a bounded number of times.
    let mut stored = 0;
    for attempt in 0..50 {
        let corr = format!("probe-{attempt}");
        device
            .request("stats", &windowed(), corr.as_bytes(), None)
            .await;
        let done = loop {
            let got = device.reply_for(corr.as_bytes()).await;
            if got.reply.status != Status::Accepted {
                break got;
            }
        };
        assert_eq!(done.reply.status, Status::Ok, "{:?}", done.reply);
        stored = field(done.reply.result.as_ref().expect("result"), "count") as usize;
        if stored == READINGS {
            break;
        }
    }
    assert_eq!(stored, READINGS, "all telemetry stored");
}

/// `[models.slow]` (300 chained 128 x 128 layers, `tests/fixtures/models`) for a gateway's
/// config, with room for long runs.
pub fn slow_model() -> String {
    let slow = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/slow.onnx");
    format!("[models.slow]\npath = {slow:?}\ntimeout_ms = 120000\n")
}

/// Args of an `infer` of the slow model over `rows` rows of 128 features.
pub fn slow_infer(rows: usize) -> Value {
    let row = Value::Array(vec![Value::Float(0.5); 128]);
    Value::Map(vec![
        (text("model"), text("slow")),
        (text("input"), Value::Array(vec![row; rows])),
    ])
}
