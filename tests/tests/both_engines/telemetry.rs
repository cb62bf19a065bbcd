//! Telemetry through the gateway's own entry points: a reading sent twice is stored once, and
//! the gateway's retention holds each device to `max_telemetry_rows_per_device`, its newest
//! readings kept.

use ciborium::Value;
use gateway::wire::{Reply, Status};
use roost_tests::device::{field, TestDevice};
use roost_tests::{http_get, workload, Gateway};

const CAP: usize = 5;

/// One reading of metric `x` (the one [`workload::windowed`] reads).
fn reading(ts: u64, value: f64) -> Vec<u8> {
    gateway::wire::envelope::encode_value(&Value::Map(vec![
        (Value::Text("ts".into()), Value::Integer(ts.into())),
        (Value::Text("x".into()), Value::Float(value)),
    ]))
}

/// `stats` over the device's recent readings of `x`: its final reply's result.
async fn stats(device: &mut TestDevice, corr: &[u8]) -> Reply {
    device
        .request("stats", &workload::windowed(), corr, None)
        .await;
    loop {
        let got = device.reply_for(corr).await;
        if got.reply.status != Status::Accepted {
            return got.reply;
        }
    }
}

fn count(reply: &Reply) -> usize {
    field(reply.result.as_ref().expect("result"), "count") as usize
}

#[tokio::test]
async fn readings_sent_twice_are_stored_once_and_held_to_the_cap() {
    let gateway = Gateway::start_with(&format!(
        "[limits]\nmax_telemetry_rows_per_device = {CAP}\n"
    ));
    let mut device = TestDevice::connect(gateway.mqtt, "tel-cap").await;
    let now = gateway::store::now_ms() as u64;
    const SENT: u64 = 8;
    for i in 1..=SENT {
        let payload = reading(now - 1_000 + i, i as f64);
        for _copy in 0..2 {
            device
                .publish_raw("devices/tel-cap/telemetry", payload.clone(), None)
                .await;
        }
    }
    // The gateway's retention prunes every 10 s: poll until the device is down to its cap.
    let deadline = std::time::Instant::now() + gateway::store::retention::EVERY * 3;
    let mut polls = 0u8;
    let held = loop {
        polls += 1;
        let reply = stats(&mut device, &[b'p', polls]).await;
        assert_eq!(reply.status, Status::Ok, "{reply:?}");
        if count(&reply) <= CAP {
            break reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never held to the cap: {reply:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let result = held.result.as_ref().expect("result");
    assert_eq!(
        (
            field(result, "count"),
            field(result, "min"),
            field(result, "max")
        ),
        (CAP as f64, (SENT as usize - CAP + 1) as f64, SENT as f64),
        "the newest {CAP} readings, each once"
    );
    let (_, metrics) = http_get(gateway.http.expect("http"), "/metrics");
    for (outcome, n) in [("stored", SENT), ("copy", SENT)] {
        let line = format!("roost_telemetry_readings_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}
