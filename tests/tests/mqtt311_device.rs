//! An MQTT 3.1.1 device (no properties) uses the envelope form through the same flow:
//! `{"corr", "args"}` in, `"corr"` in the reply payload, `{"corr"}` as its ack. The device is
//! Eclipse Paho's Python client (`tests/python/paho_311_device.py`), which `tests/run.sh`
//! installs.

use std::process::Command;

use ciborium::Value;
use gateway::wire::envelope::encode_value;
use gateway::wire::{Reply, Status};
use roost_tests::device::field;
use roost_tests::store_view::requests_of;
use roost_tests::Gateway;

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn paho_311_device_gets_envelope_replies_and_its_ack_stops_redelivery() {
    let gateway = Gateway::start();
    let envelope = Value::Map(vec![
        (text("corr"), Value::Bytes(b"e-1".to_vec())),
        (
            text("args"),
            Value::Map(vec![(
                text("values"),
                Value::Array(vec![Value::Float(2.0), Value::Float(6.0)]),
            )]),
        ),
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/paho_311_device.py");
    let out = Command::new("python3")
        .arg(script)
        .args([
            &gateway.mqtt.port().to_string(),
            "old-1",
            "e-1",
            &hex(&encode_value(&envelope)),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "paho device failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<Reply> = String::from_utf8(out.stdout)
        .expect("text")
        .lines()
        .map(|line| Reply::decode(&unhex(line)).expect("CBOR reply"))
        .collect();
    assert_eq!(replies.len(), 2);
    let (accepted, done) = (&replies[0], &replies[1]);
    assert_eq!(accepted.status, Status::Accepted);
    assert_eq!(done.status, Status::Ok);
    assert_eq!(done.request_id, accepted.request_id);
    for reply in &replies {
        assert_eq!(reply.corr.as_ref().map(|c| c.as_bytes()), Some(&b"e-1"[..]));
    }
    assert_eq!(field(done.result.as_ref().expect("result"), "mean"), 4.0);

    // The device's retained status settles at nothing pending and nothing held once the ack
    // is in the store (before the ack it holds the final reply).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(roost_tests::device::wait_settled(gateway.mqtt, "old-1"));
    let rows = requests_of(&gateway, "old-1");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].delivery.as_deref(), Some("acked"), "{rows:?}");
}
