//! PUBLISH frames re-framed for one hop: upstream with the link's packet id, or down to one
//! device session with that session's packet id and granted QoS, in the device's version.
//!
//! Fed by [`super::link`] (device publishes going up) and by device sessions (broker messages
//! going down). Pure byte work, no I/O. Everything between the packet id and the end of the
//! frame (MQTT 5 properties and payload) is copied untouched, so Response Topic, Correlation
//! Data, Message Expiry and user properties pass byte-exact.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::Version;
use super::translate;

/// Appends `frame` (a checked MQTT 5 PUBLISH) re-framed: DUP cleared, the retain flag kept,
/// QoS 1 with packet id `pkid` when `Some`, QoS 0 without a packet id when `None`.
/// A frame too short to be a PUBLISH appends nothing.
pub fn reframe(frame: &[u8], pkid: Option<u16>, out: &mut BytesMut) {
    let Some(first) = frame.first().copied() else {
        return;
    };
    let header_len = 1 + frame
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(4, |i| i + 1);
    let Some(body) = frame.get(header_len..) else {
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
    let retain = first & 1;
    let qos_bits = if pkid.is_some() { 0b010 } else { 0 };
    out.put_u8(0x30 | qos_bits | retain);
    let remaining = topic.len() + if pkid.is_some() { 2 } else { 0 } + rest.len();
    put_varint(out, remaining);
    out.put_slice(topic);
    if let Some(pkid) = pkid {
        out.put_u16(pkid);
    }
    out.put_slice(rest);
}

/// A broker message (`frame`, MQTT 5) as delivered to a device: at QoS 1 with `pkid` or at
/// QoS 0, translated to MQTT 3.1.1 for a 3.1.1 session (properties dropped).
pub fn for_device(frame: &[u8], pkid: Option<u16>, version: Version) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(frame.len() + 2);
    reframe(frame, pkid, &mut out);
    if out.is_empty() {
        return None;
    }
    match version {
        Version::V5 => Some(out.freeze()),
        Version::V4 => translate::packet_down(&out),
    }
}

/// The topic of a PUBLISH frame, when it is UTF-8.
pub fn topic(frame: &[u8]) -> Option<&str> {
    let header_len = 1 + frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let body = frame.get(header_len..)?;
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    std::str::from_utf8(body.get(2..2 + len)?).ok()
}

fn put_varint(out: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;

    #[test]
    fn reframe_keeps_properties_and_changes_qos_and_pkid() {
        let properties = PublishProperties {
            correlation_data: Some(Bytes::from_static(b"c1")),
            response_topic: Some("devices/d/reply".into()),
            ..Default::default()
        };
        let mut publish = Publish::new("devices/d/reply", QoS::ExactlyOnce, "hi", Some(properties));
        publish.pkid = 9;
        publish.dup = true;
        publish.retain = true;
        let mut frame = BytesMut::new();
        Packet::Publish(publish.clone())
            .write(&mut frame, None)
            .expect("encode");
        for pkid in [Some(300), None] {
            let mut out = BytesMut::new();
            reframe(&frame, pkid, &mut out);
            let Packet::Publish(parsed) = Packet::read(&mut out, None).expect("parses") else {
                panic!("not a publish");
            };
            assert_eq!(parsed.pkid, pkid.unwrap_or(0));
            assert_eq!(
                parsed.qos,
                if pkid.is_some() {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                }
            );
            assert!(!parsed.dup && parsed.retain);
            assert_eq!(parsed.properties, publish.properties);
            assert_eq!(&parsed.payload[..], b"hi");
        }
        assert_eq!(topic(&frame), Some("devices/d/reply"));
        let v4 = for_device(&frame, Some(2), Version::V4).expect("translated");
        assert_eq!(
            &v4[..],
            &[
                0x33,
                2 + 15 + 2 + 2,
                0,
                15,
                b'd',
                b'e',
                b'v',
                b'i',
                b'c',
                b'e',
                b's',
                b'/',
                b'd',
                b'/',
                b'r',
                b'e',
                b'p',
                b'l',
                b'y',
                0,
                2,
                b'h',
                b'i'
            ][..]
        );
    }
}
