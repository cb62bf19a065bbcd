//! device-sim against the real gateway: a fleet of connected devices, then a sleepy fleet over
//! several wake cycles, each verifying every reply; both must report nothing lost or mismatched.
//!
//! The connected fleet is larger than the service link's outgoing window (1,024 publishes):
//! with one MQTT connection for both publishing and acking, the burst of device status
//! messages this many devices cause used to deadlock the gateway (acks queued behind
//! publishes waiting on a broker that waited on those acks).

use std::process::Command;

use roost_tests::{sibling_binary, Gateway};

fn device_sim(gateway: &Gateway, args: &[&str]) -> serde_json::Value {
    let report = gateway.dir().join(format!(
        "report-{}.json",
        args.join("_").replace(['/', ' '], "")
    ));
    let out = Command::new(sibling_binary("roost-device-sim"))
        .arg("run")
        .args(["--broker", &gateway.mqtt.to_string(), "--quiet", "--json"])
        .arg(&report)
        .args(args)
        .output()
        .expect("device-sim runs");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written"))
            .expect("JSON report");
    assert!(
        out.status.success(),
        "device-sim failed: {json}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    json
}

#[test]
fn a_connected_fleet_of_1500_devices_loses_nothing() {
    let gateway = Gateway::start_with("[limits]\nmax_connections = 2000\n");
    let report = device_sim(
        &gateway,
        &[
            "--devices",
            "1500",
            "--duration",
            "8s",
            "--interval",
            "200ms",
        ],
    );
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["mismatched"], 0, "{report}");
    assert!(
        report["replies_ok"].as_u64().is_some_and(|n| n >= 1500),
        "{report}"
    );
    assert_eq!(report["replies_ok"], report["requests"], "{report}");
}

#[test]
fn a_sleepy_fleet_over_several_wakes_loses_nothing() {
    let gateway = Gateway::start();
    let report = device_sim(
        &gateway,
        &[
            "--devices",
            "200",
            "--duration",
            "8s",
            "--wake-every",
            "2s",
            "--listen",
            "500ms",
            "--telemetry-every",
            "2",
            "--mix",
            "stats=6,histogram=1,anomaly=1,trend=1,spectrum=1",
        ],
    );
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["mismatched"], 0, "{report}");
    assert!(
        report["requests"].as_u64().is_some_and(|n| n >= 400),
        "several wakes each: {report}"
    );
}
