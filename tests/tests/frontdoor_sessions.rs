//! Device sessions at the front door, on raw sockets (MQTT-3.2.2-2/3, MQTT-3.1.2-4/5/23,
//! MQTT-4.1.0-2, MQTT-4.4.0-1): a device that connects with Clean Start 0 and a Session Expiry
//! Interval keeps its subscriptions across connections and across a gateway restart, is told
//! so in CONNACK, gets its unacknowledged QoS 1 messages again with DUP 1 and the same packet
//! id, gets the replies that came while it was away, and loses the session once it expired or
//! with Clean Start 1.

use std::time::Duration;

use crate::frontdoor_support::spec::{self, Ask};
use crate::frontdoor_support::*;
use roost_tests::Gateway;

fn persistent(expiry_s: u32) -> Ask {
    Ask {
        clean_start: false,
        expiry_s: Some(expiry_s),
        ..Ask::default()
    }
}

/// Subscribes to the device's replies and checks the grant.
async fn subscribe_replies(raw: &mut Raw, id: &str) {
    raw.send(&subscribe5(1, &[&format!("devices/{id}/reply/#")]))
        .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
}

/// Sends a request and returns the final reply's status, acking every PUBLISH on the way.
async fn request_and_final(raw: &mut Raw, id: &str, pkid: u16, corr: &[u8]) -> u16 {
    raw.send(&request5(id, pkid, corr)).await;
    loop {
        let (publish, _) = spec::publish(raw).await;
        raw.send(&spec::puback(publish.pkid)).await;
        let status = spec::status(&publish);
        if status != 202 {
            return status;
        }
    }
}

async fn disconnect(mut raw: Raw) {
    raw.send(&[0xE0, 0]).await;
    raw.closed().await;
}

#[tokio::test]
async fn a_persistent_session_keeps_its_subscriptions_and_says_so() {
    let gateway = Gateway::start();
    let id = "sess-1";
    let (mut raw, connack) = spec::connected(gateway.mqtt, id, &persistent(300)).await;
    assert!(!connack.session_present, "nothing to resume yet");
    subscribe_replies(&mut raw, id).await;
    disconnect(raw).await;

    // Resumed: Session Present 1, and the subscription is there without subscribing again.
    let (mut raw, connack) = spec::connected(gateway.mqtt, id, &persistent(300)).await;
    assert!(connack.session_present, "MQTT-3.2.2-3");
    assert_eq!(request_and_final(&mut raw, id, 2, b"resumed").await, 200);
    disconnect(raw).await;

    // Clean Start 1 discards it (MQTT-3.1.2-4, MQTT-3.2.2-2): no subscription, no reply.
    let fresh = Ask {
        clean_start: true,
        expiry_s: Some(300),
        ..Ask::default()
    };
    let (mut raw, connack) = spec::connected(gateway.mqtt, id, &fresh).await;
    assert!(!connack.session_present, "MQTT-3.2.2-2");
    raw.send(&request5(id, 3, b"unsubscribed")).await;
    let quiet = spec::publish_within(&mut raw, Duration::from_millis(700)).await;
    assert!(quiet.is_none(), "the old subscription is gone: {quiet:?}");
    disconnect(raw).await;
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_and_their_packet_id() {
    let gateway = Gateway::start();
    let id = "sess-dup";
    let (mut raw, _) = spec::connected(gateway.mqtt, id, &persistent(300)).await;
    subscribe_replies(&mut raw, id).await;
    raw.send(&request5(id, 2, b"unacked")).await;
    // Both replies arrive; neither is acked before the connection drops.
    let (first, _) = spec::publish(&mut raw).await;
    let (second, _) = spec::publish(&mut raw).await;
    drop(raw);

    let (mut raw, connack) = spec::connected(gateway.mqtt, id, &persistent(300)).await;
    assert!(connack.session_present);
    for sent in [first, second] {
        let (again, _) = spec::publish(&mut raw).await;
        assert!(again.dup, "MQTT-3.3.1-1: DUP on a resend");
        assert_eq!(again.pkid, sent.pkid, "MQTT-4.4.0-1: the same packet id");
        assert_eq!(again.payload, sent.payload);
        raw.send(&spec::puback(again.pkid)).await;
    }
}

#[tokio::test]
async fn replies_that_come_while_the_device_is_away_wait_in_its_session() {
    let gateway = Gateway::start();
    let id = "sess-away";
    let (mut raw, _) = spec::connected(gateway.mqtt, id, &persistent(300)).await;
    subscribe_replies(&mut raw, id).await;
    // Request and sleep at once: the 202 (and maybe the final) come while the device is away.
    let mut both = request5(id, 2, b"away").to_vec();
    both.extend_from_slice(&[0xE0, 0]);
    raw.send(&both).await;
    raw.closed().await;
    let (mut raw, connack) = spec::connected(gateway.mqtt, id, &persistent(300)).await;
    assert!(connack.session_present);
    let mut statuses = Vec::new();
    while !statuses.contains(&200) {
        let (publish, _) = spec::publish(&mut raw).await;
        raw.send(&spec::puback(publish.pkid)).await;
        statuses.push(spec::status(&publish));
    }
    assert_eq!(
        statuses[0], 202,
        "the 202 waited in the session: {statuses:?}"
    );
}

#[tokio::test]
async fn a_session_ends_with_its_expiry_capped_by_config() {
    let gateway = Gateway::start_with("[limits]\nmax_session_expiry_s = 2");
    // Expiry 0: the session ends with the connection (MQTT-3.1.2-23 only keeps it above 0).
    let (mut raw, connack) = spec::connected(gateway.mqtt, "sess-zero", &persistent(0)).await;
    assert_eq!(
        connack.properties.and_then(|p| p.session_expiry_interval),
        None
    );
    subscribe_replies(&mut raw, "sess-zero").await;
    disconnect(raw).await;
    let (raw, connack) = spec::connected(gateway.mqtt, "sess-zero", &persistent(0)).await;
    assert!(!connack.session_present);
    disconnect(raw).await;

    // Asked for 300 s, granted the configured 2 s, and told so in CONNACK.
    let (mut raw, connack) = spec::connected(gateway.mqtt, "sess-cap", &persistent(300)).await;
    let granted = connack.properties.and_then(|p| p.session_expiry_interval);
    assert_eq!(granted, Some(2));
    subscribe_replies(&mut raw, "sess-cap").await;
    disconnect(raw).await;
    // Once its expiry passed, it is gone (MQTT-4.1.0-2). The sleep is the time passing, not a
    // wait for an event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (raw, connack) = spec::connected(gateway.mqtt, "sess-cap", &persistent(300)).await;
    assert!(!connack.session_present, "expired");
    disconnect(raw).await;
}

#[tokio::test]
async fn sessions_survive_a_gateway_restart() {
    let mut gateway = Gateway::start();
    let id = "sess-restart";
    let (mut raw, _) = spec::connected(gateway.mqtt, id, &persistent(3600)).await;
    subscribe_replies(&mut raw, id).await;
    disconnect(raw).await;
    assert!(gateway.terminate().success());
    gateway.restart();
    let (mut raw, connack) = spec::connected(gateway.mqtt, id, &persistent(3600)).await;
    assert!(
        connack.session_present,
        "the session came back with the store"
    );
    assert_eq!(
        request_and_final(&mut raw, id, 2, b"after-restart").await,
        200
    );
}
