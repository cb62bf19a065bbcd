//! How messages reach a device through the front door, on raw sockets:
//!
//! - Subscription Identifiers on every delivery, all of them on one copy (MQTT-3.3.4-3/4);
//! - Retain Handling 2 and Retain As Published 0/1 on the device's status subscription
//!   (MQTT-3.3.1-11/12/13);
//! - a QoS 2 request sent again before PUBREL is answered with PUBREC and reaches the service
//!   once (MQTT-4.3.3-10).

use std::time::Duration;

use crate::frontdoor_support::spec::{self, Ask};
use crate::frontdoor_support::*;
use bytes::{Bytes, BytesMut};
use roost_tests::Gateway;
use rumqttc::v5::mqttbytes::v5 as mq5;
use rumqttc::v5::mqttbytes::QoS as QoS5;

/// How long to listen for a PUBLISH that must not come (see `frontdoor_limits`).
const QUIET: Duration = Duration::from_millis(700);

fn fresh() -> Ask {
    Ask {
        clean_start: true,
        ..Ask::default()
    }
}

/// Sends a request and acks every PUBLISH until its final reply.
async fn request_and_final(raw: &mut Raw, id: &str, pkid: u16, corr: &[u8]) {
    raw.send(&request5(id, pkid, corr)).await;
    loop {
        let (publish, _) = spec::publish(raw).await;
        raw.send(&spec::puback(publish.pkid)).await;
        if publish.topic.ends_with(b"/reply") && spec::status(&publish) != 202 {
            return;
        }
    }
}

#[tokio::test]
async fn deliveries_carry_every_matching_subscription_identifier() {
    let gateway = Gateway::start();
    let (mut raw, _) = spec::connected(gateway.mqtt, "subid-1", &fresh()).await;
    raw.send(&spec::subscribe(
        1,
        &["devices/subid-1/reply/#"],
        Some(7),
        false,
        0,
    ))
    .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
    raw.send(&spec::subscribe(
        2,
        &["devices/subid-1/reply"],
        Some(300),
        false,
        0,
    ))
    .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
    raw.send(&request5("subid-1", 3, b"ids")).await;
    let (publish, _) = spec::publish(&mut raw).await;
    let mut ids = publish
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 300], "one copy, both identifiers");
}

/// A v5 SUBSCRIBE to the device's status with these options, granted.
async fn subscribe_status(raw: &mut Raw, id: &str, rap: bool, rh: u8) {
    let filter = format!("devices/{id}/status");
    raw.send(&spec::subscribe(5, &[&filter], None, rap, rh))
        .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
}

/// Sends a request; returns the status messages that came (in order) by the time its final
/// reply and at least one status message did, acking every PUBLISH on the way.
async fn statuses_around(raw: &mut Raw, id: &str, pkid: u16, corr: &[u8]) -> Vec<mq5::Publish> {
    raw.send(&request5(id, pkid, corr)).await;
    let (mut statuses, mut done) = (Vec::new(), false);
    while !done || statuses.is_empty() {
        let (publish, _) = spec::publish(raw).await;
        if publish.qos != QoS5::AtMostOnce {
            raw.send(&spec::puback(publish.pkid)).await;
        }
        if publish.topic.ends_with(b"/status") {
            statuses.push(publish);
        } else if spec::status(&publish) != 202 {
            done = true;
        }
    }
    statuses
}

#[tokio::test]
async fn retain_handling_2_and_retain_as_published_0_on_the_status_topic() {
    let gateway = Gateway::start();
    let id = "retain-0";
    let (mut raw, _) = spec::connected(gateway.mqtt, id, &fresh()).await;
    raw.send(&subscribe5(1, &["devices/retain-0/reply/#"]))
        .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
    // A retained status exists once the device did something...
    request_and_final(&mut raw, id, 2, b"first").await;
    wait_retained_status(&gateway, id).await;
    // ...but Retain Handling 2 sends no retained message: the first one is a live change, and
    // Retain As Published 0 sends it with RETAIN 0.
    subscribe_status(&mut raw, id, false, 2).await;
    let statuses = statuses_around(&mut raw, id, 3, b"second").await;
    assert!(
        statuses.iter().all(|status| !status.retain),
        "MQTT-3.3.1-11 / -12: {statuses:?}"
    );
}

#[tokio::test]
async fn retain_as_published_1_keeps_the_retain_flag_of_live_status() {
    let gateway = Gateway::start();
    let id = "retain-1";
    let (mut raw, _) = spec::connected(gateway.mqtt, id, &fresh()).await;
    raw.send(&subscribe5(1, &["devices/retain-1/reply/#"]))
        .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
    request_and_final(&mut raw, id, 2, b"first").await;
    wait_retained_status(&gateway, id).await;
    // Retain Handling 0: the retained status comes first, RETAIN 1.
    subscribe_status(&mut raw, id, true, 0).await;
    let statuses = statuses_around(&mut raw, id, 3, b"second").await;
    assert!(statuses[0].retain, "MQTT-3.3.1-9: {statuses:?}");
    // Then a live change, published retained by the gateway: RETAIN 1 as published
    // (MQTT-3.3.1-13).
    let live = match statuses.get(1) {
        Some(live) => live.clone(),
        None => statuses_around(&mut raw, id, 4, b"third").await.remove(0),
    };
    assert!(live.retain, "MQTT-3.3.1-13: {live:?}");
}

/// Waits until `devices/{id}/status` has a retained message (read by an operator view).
async fn wait_retained_status(gateway: &Gateway, id: &str) {
    let mut operator = Raw::open(gateway.mqtt).await;
    operator.send(&connect5("", None, None)).await;
    assert_eq!(connack_code(&operator.packet().await), 0);
    operator
        .send(&subscribe5(1, &[&format!("devices/{id}/status")]))
        .await;
    assert_eq!(suback_codes(&operator.packet().await, true), vec![1]);
    spec::publish(&mut operator).await;
}

/// A v5 QoS 2 `stats` request with Correlation Data, DUP as given.
fn request_qos2(device: &str, pkid: u16, corr: &[u8], dup: bool) -> Bytes {
    let mut frame = BytesMut::from(&request5(device, pkid, corr)[..]);
    frame[0] = 0x34 | if dup { 0x08 } else { 0 };
    frame.freeze()
}

#[tokio::test]
async fn a_qos2_request_sent_again_before_pubrel_reaches_the_service_once() {
    let gateway = Gateway::start();
    let id = "qos2-1";
    let (mut raw, _) = spec::connected(gateway.mqtt, id, &fresh()).await;
    raw.send(&subscribe5(1, &["devices/qos2-1/reply/#"])).await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
    raw.send(&request_qos2(id, 9, b"exactly-once", false)).await;
    let mut replies = Vec::new();
    let mut pubrecs = 0;
    // PUBREC, then the same packet again (DUP): PUBREC again, nothing onward (MQTT-4.3.3-10).
    while pubrecs < 2 {
        let packet = raw.packet().await;
        match packet[0] >> 4 {
            5 => {
                assert_eq!(&packet[2..4], &[0, 9]);
                pubrecs += 1;
                if pubrecs == 1 {
                    raw.send(&request_qos2(id, 9, b"exactly-once", true)).await;
                }
            }
            3 => {
                let mq5::Packet::Publish(publish) = spec::parse(&packet) else {
                    unreachable!()
                };
                raw.send(&spec::puback(publish.pkid)).await;
                replies.push(spec::status(&publish));
            }
            _ => panic!("unexpected {packet:02x?}"),
        }
    }
    raw.send(&[0x62, 2, 0, 9]).await;
    while !replies.contains(&200) {
        let packet = raw.packet().await;
        match packet[0] >> 4 {
            7 => assert_eq!(&packet[2..4], &[0, 9], "PUBCOMP"),
            3 => {
                let mq5::Packet::Publish(publish) = spec::parse(&packet) else {
                    unreachable!()
                };
                raw.send(&spec::puback(publish.pkid)).await;
                replies.push(spec::status(&publish));
            }
            _ => panic!("unexpected {packet:02x?}"),
        }
    }
    while let Some((publish, _)) = spec::publish_within(&mut raw, QUIET).await {
        raw.send(&spec::puback(publish.pkid)).await;
        replies.push(spec::status(&publish));
    }
    assert_eq!(replies, vec![202, 200], "one request, one 202, one final");
}
