//! PUBLISH frames re-framed for one device session ([`Delivery`]): that session's packet id and
//! granted QoS, the RETAIN flag its subscription options call for, the Subscription Identifiers
//! of the subscriptions it matched, in the device's version.
//!
//! Fed by device sessions (the service's replies and their side link's messages) through their
//! [`super::window`]. Pure byte work, no I/O. The MQTT 5 properties and the payload are copied
//! untouched (Subscription Identifiers are put in front of the properties), so Response Topic,
//! Correlation Data, Message Expiry and user properties pass byte-exact.

use crate::wire::packet::{header_len, put_varint};

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::packet::translate;
use crate::wire::packet::Version;

/// How one message goes to a device: its QoS (0 or 1), its RETAIN flag, and the Subscription
/// Identifiers of the subscriptions it matched (MQTT-3.3.4-3/4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// 0 or 1.
    pub qos: u8,
    /// The RETAIN flag to send.
    pub retain: bool,
    /// Subscription Identifiers to add (MQTT 5 only).
    pub ids: Vec<u32>,
}

/// Bytes a variable byte integer of `value` takes.
fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `frame` (a checked MQTT 5 PUBLISH) re-framed: DUP cleared, RETAIN as `delivery`
/// says, QoS 1 with packet id `pkid` when `Some`, QoS 0 without a packet id when `None`, and
/// `delivery.ids` added as Subscription Identifier properties. A frame too short to be a
/// PUBLISH appends nothing.
fn reframe(frame: &[u8], pkid: Option<u16>, delivery: &Delivery, out: &mut BytesMut) {
    let Some(first) = frame.first().copied() else {
        return;
    };
    let Some(body) = frame.get(header_len(frame)..) else {
        return;
    };
    let Some(topic_len) = body
        .get(..2)
        .map(|n| usize::from(u16::from_be_bytes([n[0], n[1]])))
    else {
        return;
    };
    let had_pkid = (first >> 1) & 0b11 > 0;
    let rest_at = 2 + topic_len + if had_pkid { 2 } else { 0 };
    let (Some(topic), Some(rest)) = (body.get(..2 + topic_len), body.get(rest_at..)) else {
        return;
    };
    let qos_bits = if pkid.is_some() { 0b010 } else { 0 };
    out.put_u8(0x30 | qos_bits | u8::from(delivery.retain));
    let pkid_len = if pkid.is_some() { 2 } else { 0 };
    if delivery.ids.is_empty() {
        put_varint(out, topic.len() + pkid_len + rest.len());
        out.put_slice(topic);
        if let Some(pkid) = pkid {
            out.put_u16(pkid);
        }
        out.put_slice(rest);
        return;
    }
    let Some((used, props_len)) = read_varint(rest) else {
        return;
    };
    let Some(after) = rest.get(used..) else {
        return;
    };
    let added: usize = delivery
        .ids
        .iter()
        .map(|id| 1 + varint_len(*id as usize))
        .sum();
    let new_props = props_len + added;
    // `after` is the old properties and the payload.
    let remaining = topic.len() + pkid_len + varint_len(new_props) + added + after.len();
    put_varint(out, remaining);
    out.put_slice(topic);
    if let Some(pkid) = pkid {
        out.put_u16(pkid);
    }
    put_varint(out, new_props);
    for id in &delivery.ids {
        out.put_u8(0x0B);
        put_varint(out, *id as usize);
    }
    out.put_slice(after);
}

/// A variable byte integer at the start of `bytes`: (bytes it took, value).
fn read_varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((i + 1, value));
        }
    }
    None
}

/// A broker message (`frame`, MQTT 5) as delivered to a device: at QoS 1 with `pkid` or at
/// QoS 0, translated to MQTT 3.1.1 for a 3.1.1 session (properties dropped).
pub fn for_device(
    frame: &[u8],
    pkid: Option<u16>,
    delivery: &Delivery,
    version: Version,
) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(frame.len() + 8);
    reframe(frame, pkid, delivery, &mut out);
    if out.is_empty() {
        return None;
    }
    match version {
        Version::V5 => Some(out.freeze()),
        Version::V4 => translate::packet_down(&out),
    }
}

/// Writes `pkid` into a QoS 1 PUBLISH in the device's form (after its topic).
pub(super) fn set_pkid(bytes: &[u8], pkid: u16) -> Bytes {
    let mut out = BytesMut::from(bytes);
    let at = header_len(bytes);
    if let Some(n) = bytes.get(at..at + 2) {
        let topic_len = usize::from(u16::from_be_bytes([n[0], n[1]]));
        if let Some(slot) = out.get_mut(at + 2 + topic_len..at + 4 + topic_len) {
            slot.copy_from_slice(&pkid.to_be_bytes());
        }
    }
    out.freeze()
}

/// The topic of a PUBLISH frame, when it is UTF-8.
pub fn topic(frame: &[u8]) -> Option<&str> {
    let body = frame.get(header_len(frame)..)?;
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    std::str::from_utf8(body.get(2..2 + len)?).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;

    /// A QoS 1 PUBLISH frame with packet id 9, DUP and RETAIN set (also used by the window's
    /// tests).
    pub(crate) fn publish_frame(
        topic: &str,
        payload: &str,
        properties: Option<PublishProperties>,
    ) -> Bytes {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_owned(), properties);
        publish.pkid = 9;
        publish.dup = true;
        publish.retain = true;
        let mut frame = BytesMut::new();
        Packet::Publish(publish)
            .write(&mut frame, None)
            .expect("encode");
        frame.freeze()
    }

    /// Parses a PUBLISH frame back.
    pub(crate) fn parse(bytes: &[u8]) -> Publish {
        let mut bytes = BytesMut::from(bytes);
        let Packet::Publish(parsed) = Packet::read(&mut bytes, None).expect("parses") else {
            panic!("not a publish");
        };
        parsed
    }

    #[test]
    fn reframe_keeps_properties_and_sets_qos_pkid_retain_and_ids() {
        let properties = PublishProperties {
            correlation_data: Some(Bytes::from_static(b"c1")),
            response_topic: Some("devices/d/reply".into()),
            ..Default::default()
        };
        let frame = publish_frame("devices/d/reply", "hi", Some(properties.clone()));
        for (pkid, retain, ids) in [
            (Some(300), false, vec![]),
            (None, true, vec![]),
            (Some(2), false, vec![7, 200_000]),
        ] {
            let mut out = BytesMut::new();
            let delivery = Delivery {
                qos: 1,
                retain,
                ids: ids.clone(),
            };
            reframe(&frame, pkid, &delivery, &mut out);
            let parsed = parse(&out);
            assert_eq!(parsed.pkid, pkid.unwrap_or(0));
            assert_eq!(
                parsed.qos,
                if pkid.is_some() {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                }
            );
            assert!(!parsed.dup);
            assert_eq!(parsed.retain, retain);
            let got = parsed.properties.expect("properties");
            assert_eq!(got.correlation_data, properties.correlation_data);
            assert_eq!(got.response_topic, properties.response_topic);
            let ids: Vec<usize> = ids.iter().map(|id| *id as usize).collect();
            assert_eq!(got.subscription_identifiers, ids);
            assert_eq!(&parsed.payload[..], b"hi");
        }
        assert_eq!(topic(&frame), Some("devices/d/reply"));
        let v4 = for_device(&frame, Some(2), &Delivery::default(), Version::V4).expect("v4");
        let mut expected = vec![0x32, 2 + 15 + 2 + 2, 0, 15];
        expected.extend_from_slice(b"devices/d/reply");
        expected.extend_from_slice(&[0, 2, b'h', b'i']);
        assert_eq!(&v4[..], &expected[..]);
    }
}
