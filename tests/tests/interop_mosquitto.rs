//! Interop with a client nobody here wrote: `mosquitto_rr` (Debian's mosquitto-clients, which
//! `.ci/run` installs) sends a CBOR request as an anonymous device and gets `202`; run again with
//! the same Correlation Data, as a device retrying after waking would, it gets the final `200`.

use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use gateway::wire::{Reply, Status};
use roost_tests::device::field;
use roost_tests::Gateway;

/// Runs mosquitto_rr once and returns the reply it printed (`%x`: payload as hex).
fn mosquitto_rr(gateway: &Gateway, payload: &[u8]) -> Reply {
    let out = Command::new("mosquitto_rr")
        .args(["-h", "127.0.0.1", "-p", &gateway.mqtt.port().to_string()])
        .args(["-i", "mrr-dev", "-q", "1", "-W", "20", "-F", "%P|%x"])
        .args([
            "-t",
            "devices/mrr-dev/req/stats",
            "-e",
            "devices/mrr-dev/reply",
        ])
        .args(["-D", "PUBLISH", "correlation-data", "mrr-corr-1"])
        .arg("-m")
        .arg(std::ffi::OsStr::from_bytes(payload))
        .output()
        .expect("mosquitto_rr is installed (apt-get install mosquitto-clients; .ci/run does)");
    assert!(
        out.status.success(),
        "mosquitto_rr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("text");
    let (props, hex) = line.trim().split_once('|').expect("%P|%x");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let reply = Reply::decode(&bytes).expect("CBOR reply");
    assert!(
        props.contains(&format!("status:{}", reply.status.code())),
        "{props}"
    );
    reply
}

#[test]
fn mosquitto_rr_request_gets_202_then_final_reply_on_retry() {
    let gateway = Gateway::start();
    // {"values": [1, 2, 3, 4]}: no NUL bytes, so it can go through `-m` (mosquitto_rr 2.0.11
    // sends an empty payload with `-f`).
    let payload = [
        0xa1, 0x66, b'v', b'a', b'l', b'u', b'e', b's', 0x84, 0x01, 0x02, 0x03, 0x04,
    ];
    let first = mosquitto_rr(&gateway, &payload);
    assert_eq!(first.status, Status::Accepted);
    let request_id = first.request_id.expect("request_id");
    // Bounded: each retry is answered at once, 202 while pending, the final reply once done.
    for _ in 0..50 {
        let again = mosquitto_rr(&gateway, &payload);
        assert_eq!(again.request_id, Some(request_id));
        if again.status == Status::Ok {
            let result = again.result.expect("result");
            assert_eq!(field(&result, "mean"), 2.5);
            assert_eq!(field(&result, "count"), 4.0);
            return;
        }
        assert_eq!(again.status, Status::Accepted);
    }
    panic!("no final reply after 50 retries");
}
