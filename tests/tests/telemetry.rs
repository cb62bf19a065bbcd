//! Telemetry through the gateway's own entry points: a reading sent twice is stored once, and
//! the gateway's retention holds each device to `max_telemetry_rows_per_device`, its newest
//! readings kept.

use ciborium::Value;
use gateway::wire::{Reply, Status};
use roost_tests::device::TestDevice;
use roost_tests::{http_get, Gateway};

const CAP: usize = 5;

/// One reading of metric `t`.
fn reading(ts: u64, value: f64) -> Vec<u8> {
    gateway::wire::envelope::encode_value(&Value::Map(vec![
        (Value::Text("ts".into()), Value::Integer(ts.into())),
        (Value::Text("t".into()), Value::Float(value)),
    ]))
}

/// `stats` over the device's readings of `t` in the last hour.
async fn stats(device: &mut TestDevice, corr: &[u8]) -> Reply {
    let args = Value::Map(vec![
        (Value::Text("metric".into()), Value::Text("t".into())),
        (Value::Text("window_s".into()), Value::Integer(3_600.into())),
    ]);
    device.request("stats", &args, corr, None).await;
    loop {
        let got = device.reply_for(corr).await;
        if got.reply.status != Status::Accepted {
            return got.reply;
        }
    }
}

fn field(reply: &Reply, key: &str) -> f64 {
    let Some(Value::Map(entries)) = &reply.result else {
        panic!("no result map: {reply:?}")
    };
    let value = gateway::wire::envelope::map_get(entries, key).unwrap_or_else(|| panic!("{key}"));
    match value {
        Value::Integer(i) => i128::from(*i) as f64,
        Value::Float(f) => *f,
        other => panic!("{key}: {other:?}"),
    }
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
        if field(&reply, "count") as usize <= CAP {
            break reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never held to the cap: {reply:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        (
            field(&held, "count"),
            field(&held, "min"),
            field(&held, "max")
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
