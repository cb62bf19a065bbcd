//! device-sim against the real gateway: a fleet of connected devices, every reply verified;
//! nothing may be lost or mismatched. (The sleepy fleet is `sleepy_fleet.rs`: cargo runs test
//! files one after another, so the two fleets do not share the 2 cores.)
//!
//! The connected fleet is larger than the service link's outgoing window (1,024 publishes):
//! with one MQTT connection for both publishing and acking, the burst of device status
//! messages this many devices cause used to deadlock the gateway (acks queued behind
//! publishes waiting on a broker that waited on those acks).

use roost_tests::{device_sim, Gateway};

#[test]
fn a_connected_fleet_of_1200_devices_loses_nothing() {
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
        report["replies_ok"].as_u64().is_some_and(|n| n >= 1200),
        "{report}"
    );
    assert_eq!(report["replies_ok"], report["requests"], "{report}");
}
