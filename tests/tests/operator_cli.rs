//! The operator CLI on the same database while the gateway serves, `--json` on each:
//! `status`, `devices list|show`, `requests show|cancel`, `deadletters requeue`; and
//! `device-sim send`, the by-hand request of the README tour. A request cancelled from the CLI
//! reaches its device as a `410` on its next wake, and never runs.

use std::process::Command;

use gateway::wire::Status;
use roost_tests::device::{values, TestDevice};
use roost_tests::{gateway_cmd, sibling_binary, Gateway};
use serde_json::Value;

fn cli_json(args: &[&str]) -> (bool, Value) {
    let out = gateway_cmd(args);
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), value)
}

#[tokio::test]
async fn operators_inspect_and_cancel_from_the_terminal() {
    // One worker kept busy by large requests, so the victim stays queued long enough.
    let gateway =
        Gateway::start_with("[gateway]\nworkers = 1\n[limits]\nmax_payload_bytes = 8388608\n");
    // The same config with the HTTP port the gateway really took, so `status` can ask it.
    let http = gateway.http.expect("http");
    let text = std::fs::read_to_string(gateway.config_path()).expect("config");
    let live = gateway.dir().join("live.toml");
    std::fs::write(&live, text.replace("127.0.0.1:0", &http.to_string())).expect("write");
    let config = live.to_str().expect("utf-8 path");

    let busy = TestDevice::connect(gateway.mqtt, "cli-busy").await;
    let big: Vec<f64> = (0..400_000u64)
        .map(|i| ((i * 7919) % 100_003) as f64)
        .collect();
    for i in 0..4u8 {
        busy.request("stats", &values(&big), &[b'b', i], None).await;
    }
    let mut device = TestDevice::connect(gateway.mqtt, "cli-dev").await;
    // Long requests of its own ahead of the victim: the fair scheduler alternates devices, so
    // the victim waits behind five long ops, not one.
    for ahead in [b"ahead-1", b"ahead-2"] {
        device.request("stats", &values(&big), ahead, None).await;
    }
    device
        .request("stats", &values(&[1.0]), b"victim", None)
        .await;
    let accepted = device.reply_for(b"victim").await.reply;
    assert_eq!(accepted.status, Status::Accepted);
    let id = accepted.request_id.expect("request id").to_string();

    let (ok, cancelled) = cli_json(&["requests", "cancel", &id, "--json", "--config", config]);
    assert!(ok, "{cancelled}");
    assert_eq!(cancelled["cancelled"], true);
    let (_, again) = cli_json(&["requests", "cancel", &id, "--json", "--config", config]);
    assert_eq!(again["state"], "cancelled", "already finished: {again}");

    // Its next wake brings the 410.
    device.disconnect().await;
    let mut device = TestDevice::connect(gateway.mqtt, "cli-dev").await;
    let gone = device.reply_for(b"victim").await.reply;
    assert_eq!(gone.status, Status::Gone, "{gone:?}");
    assert_eq!(gone.request_id.map(|r| r.to_string()), Some(id.clone()));

    let (ok, shown) = cli_json(&["requests", "show", &id, "--json", "--config", config]);
    assert!(ok);
    assert_eq!(shown["state"], "cancelled");
    assert_eq!(shown["status"], 410);
    assert_eq!(shown["executions"], 0, "a cancelled request never runs");
    assert_eq!(shown["args"], serde_json::json!({"values": [1.0]}));

    let (ok, list) = cli_json(&[
        "devices", "list", "--search", "cli-d", "--json", "--config", config,
    ]);
    assert!(ok);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["devices"][0]["id"], "cli-dev");
    let (ok, one) = cli_json(&["devices", "show", "cli-dev", "--json", "--config", config]);
    assert!(ok);
    assert_eq!(one["recent_requests"][0]["id"], id.as_str());
    let unknown = gateway_cmd(&["devices", "show", "nobody", "--json", "--config", config]);
    assert_eq!(
        unknown.status.code(),
        Some(1),
        "an unknown device is an error"
    );

    let (ok, status) = cli_json(&["status", "--json", "--config", config]);
    assert!(ok);
    assert_eq!(status["gateway"]["state"], "online", "{status}");
    assert!(status["store"]["devices"].as_u64() >= Some(2), "{status}");

    let (ok, requeue) = cli_json(&[
        "deadletters",
        "requeue",
        "999",
        "--json",
        "--config",
        config,
    ]);
    assert!(!ok);
    assert_eq!(requeue["requeued"], false);
}

#[test]
fn device_sim_send_prints_the_202_and_the_final_reply_as_json() {
    let gateway = Gateway::start();
    let out = Command::new(sibling_binary("roost-device-sim"))
        .args([
            "send",
            "--broker",
            &gateway.mqtt.to_string(),
            "--device",
            "hand-1",
        ])
        .args(["--op", "stats", "--args", r#"{"values": [1, 2, 3, 4]}"#])
        .output()
        .expect("device-sim send runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["status"], 202);
    assert_eq!(lines[1]["status"], 200);
    assert_eq!(lines[1]["result"]["mean"], 2.5);
    assert_eq!(lines[0]["request_id"], lines[1]["request_id"]);

    let out = Command::new(sibling_binary("roost-device-sim"))
        .args([
            "send",
            "--broker",
            &gateway.mqtt.to_string(),
            "--device",
            "hand-1",
        ])
        .args(["--op", "no_such_op"])
        .output()
        .expect("device-sim send runs");
    assert_eq!(out.status.code(), Some(1), "an error reply exits 1");
    let line: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(line["status"], 404);
}
