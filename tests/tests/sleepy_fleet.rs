//! device-sim's sleepy mode against the real gateway: 200 devices, each waking every 2 s (connect,
//! presence, collect and ack held replies, one request, listen, disconnect) with telemetry and
//! every op mixed in, over several wakes; nothing may be lost or mismatched.

use roost_tests::{device_sim, Gateway};

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
