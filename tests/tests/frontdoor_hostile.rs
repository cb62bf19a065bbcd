//! Hostile clients against the real gateway: each case is followed by a check that a fresh,
//! well-behaved device is still served ([`assert_served`]).

use crate::frontdoor_support::*;
use roost_tests::Gateway;

#[tokio::test]
async fn acl_denials_are_answered_and_the_gateway_keeps_serving() {
    let gateway = Gateway::start();
    let addr = gateway.mqtt;

    // Another device's replies and `#`, mixed with an allowed filter (v5: merged SUBACK).
    let mut spy = connected5(addr, "spy-5").await;
    spy.send(&subscribe5(
        3,
        &[
            "devices/victim/reply/#",
            "#",
            "devices/spy-5/reply/#",
            "devices/+/reply",
        ],
    ))
    .await;
    assert_eq!(
        suback_codes(&spy.packet().await, true),
        vec![0x87, 0x87, 1, 0x87]
    );
    // Wholly denied: answered by the front door alone.
    spy.send(&subscribe5(4, &["#"])).await;
    assert_eq!(suback_codes(&spy.packet().await, true), vec![0x87]);
    // Publishing in another device's name: PUBACK 0x87, and the connection stays.
    spy.send(&publish5("devices/victim/req/stats", 5, b"\xa0"))
        .await;
    assert_eq!(&spy.packet().await[..], &[0x40, 3, 0, 5, 0x87]);
    spy.send(&publish5("gateway/gw-test/status", 6, b"{}"))
        .await;
    assert_eq!(&spy.packet().await[..], &[0x40, 3, 0, 6, 0x87]);
    spy.send(&[0xC0, 0]).await;
    assert_eq!(&spy.packet().await[..], &[0xD0, 0]);
    assert_served(addr).await;
    // Nothing ran in the victim's name: a later request was served, and none is stored for it.
    let config = gateway.config_path();
    let listed = roost_tests::gateway_cmd(&[
        "requests",
        "list",
        "--config",
        config.to_str().expect("utf-8"),
        "--device",
        "victim",
        "--json",
    ]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // MQTT 3.1.1: SUBACK 0x80; a denied publish closes the connection.
    let mut spy4 = Raw::open(addr).await;
    spy4.send(&connect4("spy-4", None)).await;
    assert_eq!(connack_code(&spy4.packet().await), 0);
    spy4.send(&subscribe4(
        1,
        &["devices/victim/reply", "devices/spy-4/reply"],
    ))
    .await;
    assert_eq!(suback_codes(&spy4.packet().await, false), vec![0x80, 1]);
    spy4.send(&publish4("devices/victim/req/stats", 2, b"\xa0"))
        .await;
    assert!(
        spy4.closed().await.is_empty(),
        "dropped and closed, no PUBACK"
    );
    assert_served(addr).await;

    // A Will on a foreign topic: CONNACK 0x87.
    let mut willful = Raw::open(addr).await;
    willful
        .send(&connect5("willful", None, Some("devices/victim/presence")))
        .await;
    assert_eq!(connack_code(&willful.packet().await), 0x87);
    assert!(willful.closed().await.is_empty());
    // Its own presence topic is fine.
    let mut ok = Raw::open(addr).await;
    ok.send(&connect5("willful", None, Some("devices/willful/presence")))
        .await;
    assert_eq!(connack_code(&ok.packet().await), 0);
    assert_served(addr).await;
}

#[tokio::test]
async fn ids_and_malformed_packets_cannot_poison_the_listener() {
    let gateway = Gateway::start();
    let addr = gateway.mqtt;

    // `site/dev1` twice: refused with 0x85 both times, never reaching rumqttd.
    for _ in 0..2 {
        let mut raw = Raw::open(addr).await;
        raw.send(&connect5("site/dev1", None, None)).await;
        assert_eq!(connack_code(&raw.packet().await), 0x85);
    }
    let mut raw = Raw::open(addr).await;
    raw.send(&connect4("site/dev1", None)).await;
    assert_eq!(connack_code(&raw.packet().await), 2);
    assert_served(addr).await;

    // A malformed packet (topic length past the end), then reconnects of the same id.
    for _ in 0..3 {
        let mut raw = connected5(addr, "mal-1").await;
        raw.send(&[0x32, 0x05, 0x00, 0x10, b'a', 0x00, 0x01]).await;
        assert_eq!(
            raw.closed().await,
            vec![bytes::Bytes::from_static(&[0xE0, 1, 0x81])]
        );
    }
    let mut raw = connected5(addr, "mal-1").await;
    raw.send(&[0xE0, 0]).await;
    assert!(raw.closed().await.is_empty());
    assert_served(addr).await;

    // A reconnect storm of one id: 40 at once, each gone as soon as it is answered.
    let storm: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move {
                let mut raw = Raw::open(addr).await;
                raw.send(&connect5("storm-1", None, None)).await;
                if i % 2 == 0 {
                    // Half of them leave without waiting for the CONNACK.
                    return;
                }
                let _ = raw.next().await;
            })
        })
        .collect();
    for task in storm {
        task.await.expect("storm client");
    }
    let mut raw = connected5(addr, "storm-1").await;
    raw.send(&[0xC0, 0]).await;
    assert_eq!(&raw.packet().await[..], &[0xD0, 0]);
    assert_served(addr).await;
}

#[tokio::test]
async fn garbage_and_codec_gaps() {
    let gateway = Gateway::start();
    let addr = gateway.mqtt;

    // Garbage bytes instead of a CONNECT: closed, nothing answered.
    let mut raw = Raw::open(addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw.closed().await.is_empty());
    let mut raw = Raw::open(addr).await;
    raw.send(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert!(raw.closed().await.is_empty());
    assert_served(addr).await;

    // MQTT 3.1 (MQIsdp): CONNACK rc 1, unacceptable protocol version.
    let mut raw = Raw::open(addr).await;
    let mut v31 = vec![0x10, 0x12, 0, 6];
    v31.extend_from_slice(b"MQIsdp");
    v31.extend_from_slice(&[3, 2, 0, 30, 0, 4]);
    v31.extend_from_slice(b"old1");
    raw.send(&v31).await;
    assert_eq!(
        raw.closed().await,
        vec![bytes::Bytes::from_static(&[0x20, 2, 0, 1])]
    );

    // Keep Alive 0 is legal; rumqttd refuses it, the front door accepts it.
    let mut connect = connect5("ka-zero", None, None).to_vec();
    connect[10..12].copy_from_slice(&[0, 0]);
    let mut raw = Raw::open(addr).await;
    raw.send(&connect).await;
    assert_eq!(connack_code(&raw.packet().await), 0);
    // The short v5 DISCONNECT with a reason code is valid: clean close, no DISCONNECT back.
    raw.send(&[0xE0, 1, 0]).await;
    assert!(raw.closed().await.is_empty());

    // AUTH, a wildcard in a PUBLISH topic, a bad filter, a server packet: DISCONNECT, close.
    let wildcard = publish5("devices/x/req/+", 1, b"");
    let bad_filter = subscribe5(1, &["devices/gaps/reply/#/x"]);
    for (bytes, code) in [
        (&[0xF0, 0][..], 0x82),
        (&wildcard[..], 0x90),
        (&bad_filter[..], 0x8F),
        (&[0x20, 2, 0, 0][..], 0x82),
        (&[0xC1, 0][..], 0x81),
    ] {
        let mut raw = connected5(addr, "gaps").await;
        raw.send(bytes).await;
        assert_eq!(
            raw.closed().await,
            vec![bytes::Bytes::from(vec![0xE0, 1, code])],
            "{bytes:02x?}"
        );
    }
    assert_served(addr).await;
}

#[tokio::test]
async fn limits_close_only_the_offending_connection() {
    let gateway = Gateway::start_with(
        "[limits]\nconnect_timeout_ms = 300\nmax_payload_bytes = 1024\nmax_connections = 4\n",
    );
    let addr = gateway.mqtt;

    // A client that never sends CONNECT is closed after connect_timeout_ms.
    let mut silent = Raw::open(addr).await;
    assert!(silent.closed().await.is_empty());
    assert_served(addr).await;

    // An oversized packet: DISCONNECT 0x95 before its body is even buffered.
    let mut big = connected5(addr, "big-1").await;
    big.send(&publish5(
        "devices/big-1/req/stats",
        1,
        &vec![0u8; 200 * 1024],
    ))
    .await;
    assert_eq!(
        big.closed().await,
        vec![bytes::Bytes::from_static(&[0xE0, 1, 0x95])]
    );
    assert_served(addr).await;

    // More connections than the limit: the extra one is closed at once. (Earlier sessions
    // free their slots once the front door has finished closing them.)
    drop((silent, big));
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(connect_when_slot_frees(addr, &format!("held-{i}")).await);
    }
    let mut extra = Raw::open(addr).await;
    extra.send(&connect5("extra", None, None)).await;
    assert!(extra.closed().await.is_empty());
    // One leaves; a slot frees as soon as the front door has closed its session.
    let mut leaving = held.pop().expect("held");
    leaving.send(&[0xE0, 0]).await;
    assert!(leaving.closed().await.is_empty());
    connect_when_slot_frees(addr, "after-limit").await;
    drop(held);
}

/// Connects as `id`, retrying while the front door is at `limits.max_connections` (it closes
/// over-limit connections at once), until [`WAIT`] has passed.
async fn connect_when_slot_frees(addr: std::net::SocketAddr, id: &str) -> Raw {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut raw = Raw::open(addr).await;
        raw.send(&connect5(id, None, None)).await;
        if let Next::Packet(connack) = raw.next().await {
            assert_eq!(connack_code(&connack), 0);
            return raw;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a slot freed in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
