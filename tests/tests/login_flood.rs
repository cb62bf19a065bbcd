//! Logging in cannot be used to take the gateway down. Wrong passwords for an existing operator
//! flood in from 16 connections over 4 loopback source addresses (`device-sim flood`, the
//! product's own attacker) while a small fleet runs, with the default limits. What must hold:
//! the flood is throttled (the attacker sees 0x9F refusals, `/metrics` and the status count
//! them), no device request is lost, and the operator, logging in from another address with
//! the right password in the middle of the flood, gets in.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::frontdoor_support::*;
use roost_tests::{device_sim, http_get, sibling_binary, Gateway};

const PASSWORD: &str = "correct horse battery staple";

#[test]
fn a_login_flood_is_throttled_and_neither_the_fleet_nor_the_operator_notice() {
    let gateway = Gateway::start();
    gateway.add_operator("admin", PASSWORD);
    let http = gateway.http.expect("the test config enables HTTP");
    let flood_json = gateway.dir().join("flood.json");
    let mut flood = Command::new(sibling_binary("roost-device-sim"))
        .args(["flood", "--broker", &gateway.mqtt.to_string()])
        .args(["--user", "admin", "--connections", "16", "--sources", "4"])
        .args(["--duration", "12s", "--json"])
        .arg(&flood_json)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("device-sim flood runs");

    let fleet = std::thread::scope(|scope| {
        let fleet = scope.spawn(|| {
            device_sim(
                &gateway,
                &["--devices", "10", "--duration", "8s", "--interval", "100ms"],
            )
        });
        // Once the throttle refuses the flood and the name itself has reached the default
        // limits.max_auth_failures (10), the operator logs in from 127.0.0.1, an address the
        // flood does not use (it sends from 127.0.0.2 to 127.0.0.5).
        let refused = wait_for(http, |metrics| {
            let refused = counter(
                metrics,
                "roost_frontdoor_throttled_total{action=\"refused\"}",
            );
            let failed = counter(
                metrics,
                "roost_frontdoor_auth_failures_total{reason=\"bad_password\"}",
            );
            (refused > 0 && failed >= 10).then_some(refused)
        });
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let code = runtime.block_on(async {
            let mut operator = Raw::open(gateway.mqtt).await;
            operator
                .send(&connect5("ops-console", Some(("admin", PASSWORD)), None))
                .await;
            connack_code(&operator.packet().await)
        });
        assert_eq!(code, 0, "the operator's own login during the flood");
        assert!(
            flood.try_wait().expect("flood status").is_none(),
            "the flood ended before the operator logged in (after {refused} refusals): \
             the test did not test anything"
        );
        fleet.join().expect("fleet thread")
    });
    assert!(flood.wait().expect("flood exits").success());

    // No device request lost, every reply verified.
    assert_eq!(fleet["lost"], 0, "{fleet}");
    assert_eq!(fleet["mismatched"], 0, "{fleet}");
    assert_eq!(fleet["replies_ok"], fleet["requests"], "{fleet}");
    assert!(fleet["requests"].as_u64().is_some_and(|n| n > 0), "{fleet}");

    // The attacker saw refusals, and most of its attempts were never hashed.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&flood_json).expect("flood report"))
            .expect("flood JSON");
    eprintln!("flood: {report}");
    let answers = &report["answers"];
    let refused_seen = answers["connack_0x9f"].as_u64().unwrap_or(0);
    assert!(refused_seen > 0, "{report}");
    let metrics = http_get(http, "/metrics").1;
    let hashed_failures = counter(
        &metrics,
        "roost_frontdoor_auth_failures_total{reason=\"bad_password\"}",
    );
    assert!(hashed_failures > 0, "{metrics}");
    assert!(
        counter(
            &metrics,
            "roost_frontdoor_throttled_total{action=\"delayed\"}"
        ) > 0,
        "{metrics}"
    );
    let attempts = report["attempts"].as_u64().unwrap_or(0);
    assert_eq!(
        answers["connack_0x86"].as_u64().unwrap_or(0) + refused_seen,
        attempts,
        "every attempt is answered with 0x86 or 0x9f: {report}"
    );

    // The gateway status carries the same counters.
    let (_, status) = http_get(http, "/api/status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(
        status["logins"]["auth_failures"]["bad_password"], hashed_failures,
        "{status}"
    );
    assert!(
        status["logins"]["throttled"]["refused"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{status}"
    );
    // One warning per attacking address, not one per attempt.
    let warnings = gateway
        .log()
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("failed logins from this address"))
        .count();
    assert!(
        (1..=4).contains(&warnings),
        "{warnings} warnings:\n{}",
        gateway.log()
    );
}

/// A counter's value in Prometheus text (0 when absent).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Polls `/metrics` until `ready` says so (at most 60 s).
fn wait_for<T>(http: SocketAddr, ready: impl Fn(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = http_get(http, "/metrics").1;
        if let Some(value) = ready(&metrics) {
            return value;
        }
        assert!(Instant::now() < deadline, "never ready:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
