//! The front door keeps the limits an MQTT 5 device states, and states its own, on raw sockets:
//!
//! - the CONNACK advertises Receive Maximum, Maximum Packet Size and Topic Alias Maximum;
//! - the device's Receive Maximum bounds the QoS 1 messages in flight to it (MQTT-3.3.4-9);
//! - nothing over the device's Maximum Packet Size is sent (MQTT-3.1.2-24/25): a final reply
//!   too large becomes a small `413` reply, and the reply is dead-lettered, not held.

use std::time::Duration;

use crate::frontdoor_support::spec::{self, Ask};
use crate::frontdoor_support::*;
use bytes::{Bytes, BytesMut};
use gateway::wire::envelope::encode_value;
use roost_tests::Gateway;
use rumqttc::v5::mqttbytes::v5 as mq5;
use rumqttc::v5::mqttbytes::QoS as QoS5;

/// How long to listen for a PUBLISH that must not come. A wrong front door sends it at once;
/// a quiet wait can only let a bug pass, never fail a right one.
const QUIET: Duration = Duration::from_millis(700);

/// A v5 QoS 1 `histogram` request of 200 values into `bins` bins (a large result).
fn histogram(device: &str, pkid: u16, corr: &[u8], bins: u64) -> Bytes {
    let values: Vec<ciborium::Value> = (0..200)
        .map(|i| ciborium::Value::Float(f64::from(i)))
        .collect();
    let args = ciborium::Value::Map(vec![
        ("values".into(), ciborium::Value::Array(values)),
        ("bins".into(), bins.into()),
    ]);
    let properties = mq5::PublishProperties {
        correlation_data: Some(Bytes::copy_from_slice(corr)),
        ..Default::default()
    };
    let topic = format!("devices/{device}/req/histogram");
    let mut publish = mq5::Publish::new(
        topic,
        QoS5::AtLeastOnce,
        encode_value(&args),
        Some(properties),
    );
    publish.pkid = pkid;
    let mut out = BytesMut::new();
    publish.write(&mut out).expect("encode");
    out.freeze()
}

#[tokio::test]
async fn connack_advertises_the_front_doors_limits() {
    let gateway = Gateway::start_with("[limits]\nmax_payload_bytes = 10000");
    let (_raw, connack) = spec::connected(gateway.mqtt, "limits-1", &Ask::default()).await;
    let properties = connack.properties.expect("CONNACK properties");
    assert!(
        properties.receive_max.is_some_and(|max| max > 0),
        "{properties:?}"
    );
    // The largest packet the front door takes: the payload limit plus room for topic and
    // properties (frontdoor::PACKET_OVERHEAD_BYTES).
    assert_eq!(properties.max_packet_size, Some(10_000 + 64 * 1024));
    assert_eq!(properties.topic_alias_max, Some(0));
}

#[tokio::test]
async fn the_devices_receive_maximum_bounds_what_is_in_flight() {
    let gateway = Gateway::start();
    let ask = Ask {
        clean_start: true,
        receive_maximum: Some(2),
        ..Ask::default()
    };
    let (mut raw, _) = spec::connected(gateway.mqtt, "recvmax-1", &ask).await;
    raw.send(&subscribe5(1, &["devices/recvmax-1/reply/#"]))
        .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
    for n in 0..6u16 {
        raw.send(&request5("recvmax-1", 10 + n, format!("rm-{n}").as_bytes()))
            .await;
    }
    // Six requests: six 202s and six finals, never more than two unacknowledged at once.
    let mut received = 0;
    while received < 12 {
        let mut unacked = Vec::new();
        while let Some((publish, _)) = spec::publish_within(&mut raw, QUIET).await {
            unacked.push(publish.pkid);
            assert!(
                unacked.len() <= 2,
                "{} QoS 1 publishes in flight to a device with Receive Maximum 2",
                unacked.len()
            );
        }
        assert!(!unacked.is_empty(), "the window moves on once acked");
        received += unacked.len();
        for pkid in unacked {
            raw.send(&spec::puback(pkid)).await;
        }
    }
}

#[tokio::test]
async fn a_reply_over_the_devices_maximum_packet_size_is_not_sent_but_answered_and_dead_lettered() {
    let gateway = Gateway::start();
    let max = 320u32;
    let ask = Ask {
        clean_start: true,
        max_packet: Some(max),
        ..Ask::default()
    };
    // An operator watches the dead letters (the anonymous loopback view).
    let mut operator = Raw::open(gateway.mqtt).await;
    operator.send(&connect5("", None, None)).await;
    assert_eq!(connack_code(&operator.packet().await), 0);
    operator
        .send(&subscribe5(1, &["gateway/+/deadletter"]))
        .await;
    assert_eq!(suback_codes(&operator.packet().await, true), vec![1]);
    let (mut raw, _) = spec::connected(gateway.mqtt, "maxpkt-1", &ask).await;
    raw.send(&subscribe5(1, &["devices/maxpkt-1/reply/#"]))
        .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1]);
    raw.send(&histogram("maxpkt-1", 2, b"big-1", 100)).await;
    let mut statuses = Vec::new();
    while !statuses.contains(&413) {
        let (publish, bytes) = spec::publish(&mut raw).await;
        assert!(
            bytes.len() <= max as usize,
            "a {}-byte packet to a device that takes {max}",
            bytes.len()
        );
        let corr = publish
            .properties
            .as_ref()
            .and_then(|p| p.correlation_data.clone());
        assert_eq!(corr.as_deref(), Some(&b"big-1"[..]));
        statuses.push(spec::status(&publish));
        raw.send(&spec::puback(publish.pkid)).await;
    }
    assert_eq!(statuses, vec![202, 413], "the 202 fits, the final does not");
    // The reply is dead-lettered, not held for redelivery.
    let (letter, _) = spec::publish(&mut operator).await;
    let letter: serde_json::Value = serde_json::from_slice(&letter.payload).expect("JSON");
    assert_eq!(letter["device"], "maxpkt-1", "{letter}");
    assert_eq!(letter["status"], 200, "{letter}");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("reply_too_large")),
        "{letter}"
    );
    let rows = roost_tests::store_view::requests_of(&gateway, "maxpkt-1");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].delivery.as_deref(), Some("dead"), "{rows:?}");
}
