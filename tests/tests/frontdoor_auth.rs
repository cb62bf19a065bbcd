//! Identity through the front door: provisioned devices, wrong and removed credentials, and
//! operators, with the CONNACK codes of both protocol versions. The CLI runs as a separate
//! process on the same database while the gateway serves.

use crate::frontdoor_support::*;
use roost_tests::{gateway_cmd, Gateway};

fn cli(gateway: &Gateway, args: &[&str]) -> std::process::Output {
    let config = gateway.config_path();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config.to_str().expect("utf-8 path")]);
    gateway_cmd(&all)
}

#[tokio::test]
async fn devices_need_their_secret_and_removed_ones_are_refused() {
    let gateway = Gateway::start_with("[auth]\nallow_anonymous = false\n");
    let addr = gateway.mqtt;

    // No credentials at all: not authorized.
    let mut raw = Raw::open(addr).await;
    raw.send(&connect5("anon-1", None, None)).await;
    assert_eq!(connack_code(&raw.packet().await), 0x87);
    let mut raw = Raw::open(addr).await;
    raw.send(&connect4("anon-1", None)).await;
    assert_eq!(connack_code(&raw.packet().await), 5);

    // Unknown user: bad user name or password.
    let mut raw = Raw::open(addr).await;
    raw.send(&connect5("ghost", Some(("ghost", "nope")), None))
        .await;
    assert_eq!(connack_code(&raw.packet().await), 0x86);
    let mut raw = Raw::open(addr).await;
    raw.send(&connect4("ghost", Some(("ghost", "nope")))).await;
    assert_eq!(connack_code(&raw.packet().await), 4);

    // Provisioned: the secret is printed once, on stdout.
    let added = cli(&gateway, &["device", "add", "auth-dev"]);
    assert!(added.status.success(), "{added:?}");
    let secret = String::from_utf8(added.stdout).expect("utf-8");
    let secret = secret.trim();
    assert_eq!(secret.len(), 64);
    assert!(
        !cli(&gateway, &["device", "add", "auth-dev"])
            .status
            .success(),
        "no twice"
    );
    let listed = cli(&gateway, &["device", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("auth-dev"));

    let mut device = Raw::open(addr).await;
    device
        .send(&connect5("auth-dev", Some(("auth-dev", secret)), None))
        .await;
    assert_eq!(connack_code(&device.packet().await), 0);
    device
        .send(&subscribe5(
            1,
            &["devices/auth-dev/reply/#", "devices/other/reply"],
        ))
        .await;
    assert_eq!(suback_codes(&device.packet().await, true), vec![1, 0x87]);
    device.send(&[0xE0, 0]).await;
    device.closed().await;
    let mut v4 = Raw::open(addr).await;
    v4.send(&connect4("auth-dev", Some(("auth-dev", secret))))
        .await;
    assert_eq!(connack_code(&v4.packet().await), 0);
    drop(v4);

    // Wrong secret; right secret with someone else's client id.
    let mut raw = Raw::open(addr).await;
    raw.send(&connect5(
        "auth-dev",
        Some(("auth-dev", "x".repeat(64).as_str())),
        None,
    ))
    .await;
    assert_eq!(connack_code(&raw.packet().await), 0x86);
    let mut raw = Raw::open(addr).await;
    raw.send(&connect5("someone", Some(("auth-dev", secret)), None))
        .await;
    assert_eq!(connack_code(&raw.packet().await), 0x85);

    // Removed by the CLI while the gateway runs: refused on the next connect.
    assert!(cli(&gateway, &["device", "remove", "auth-dev"])
        .status
        .success());
    let mut raw = Raw::open(addr).await;
    raw.send(&connect5("auth-dev", Some(("auth-dev", secret)), None))
        .await;
    assert_eq!(connack_code(&raw.packet().await), 0x86);
}

#[tokio::test]
async fn operators_get_the_read_only_view() {
    let gateway = Gateway::start_with("[auth]\nallow_anonymous = false\n");
    gateway.add_operator("ops", "hunter2-but-longer");

    let mut ops = Raw::open(gateway.mqtt).await;
    ops.send(&connect5("ops-console", Some(("ops", "wrong")), None))
        .await;
    assert_eq!(connack_code(&ops.packet().await), 0x86);
    let mut ops = Raw::open(gateway.mqtt).await;
    ops.send(&connect5(
        "ops-console",
        Some(("ops", "hunter2-but-longer")),
        None,
    ))
    .await;
    assert_eq!(connack_code(&ops.packet().await), 0);
    ops.send(&subscribe5(
        1,
        &["gateway/#", "devices/+/status", "devices/d1/reply/#", "#"],
    ))
    .await;
    // The retained gateway status may arrive around the SUBACK.
    let codes = loop {
        let packet = ops.packet().await;
        if packet[0] == 0x90 {
            break suback_codes(&packet, true);
        }
    };
    assert_eq!(codes, vec![1, 1, 0x87, 0x87]);
    ops.send(&publish5("devices/d1/req/stats", 2, b"\xa0"))
        .await;
    loop {
        let packet = ops.packet().await;
        if packet[0] == 0x40 {
            assert_eq!(&packet[..], &[0x40, 3, 0, 2, 0x87]);
            break;
        }
    }
}
