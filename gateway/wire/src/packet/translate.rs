//! MQTT 3.1.1 ↔ 5 translation, so every device reaches rumqttd through its MQTT 5 listener.
//!
//! Why: rumqttd 0.20's v4 listener panics (`protocol/v4/mod.rs:364`, "unreachable") when it must
//! write a PUBLISH that carries MQTT 5 properties to a 3.1.1 client, and the panic takes the
//! whole v4 listener down. Every reply and status message the gateway publishes has properties,
//! so one 3.1.1 device receiving its reply would stop all 3.1.1 service. Measured here with
//! paho; the watchdog caught it and the gateway exited.
//!
//! Fed by the session (checked 3.1.1 packets going up, v5 packets coming down for a 3.1.1
//! device); feeds the broker and the device. Up: CONNECT re-encoded as v5, PUBLISH and
//! UNSUBSCRIBE get an empty property block, SUBSCRIBE is re-encoded by the codec module; acks,
//! PINGREQ and DISCONNECT are the same bytes in both versions. Down: properties and reason codes
//! are dropped, SUBACK failures become 0x80, a server DISCONNECT (3.1.1 has none) is dropped.

use super::put_varint;
use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS;

use super::Violation;

fn qos5(qos: rumqttc::mqttbytes::QoS) -> QoS {
    match qos {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// A checked 3.1.1 CONNECT re-encoded as MQTT 5 (credentials dropped: rumqttd does no auth).
/// `clean_session = false` becomes Clean Start 0 with a session that never expires.
pub fn connect_up(frame: &Bytes, keep_alive: u16) -> Result<Bytes, Violation> {
    let malformed = |e: rumqttc::mqttbytes::Error| Violation::Malformed(e.to_string());
    let header = rumqttc::mqttbytes::check(frame.iter(), frame.len()).map_err(malformed)?;
    let connect = v4::Connect::read(header, frame.clone()).map_err(malformed)?;
    let properties = (!connect.clean_session).then(|| v5::ConnectProperties {
        session_expiry_interval: Some(u32::MAX),
        ..v5::ConnectProperties::new()
    });
    let will = connect
        .last_will
        .map(|will| v5::LastWill::new(will.topic, will.message, qos5(will.qos), will.retain, None));
    let upstream = v5::Connect {
        keep_alive,
        client_id: connect.client_id,
        clean_start: connect.clean_session,
        properties,
    };
    let mut out = BytesMut::new();
    v5::Packet::Connect(upstream, will, None)
        .write(&mut out, None)
        .map_err(|e| Violation::Malformed(e.to_string()))?;
    Ok(out.freeze())
}

/// Appends the MQTT 5 form of a checked 3.1.1 packet (not CONNECT or SUBSCRIBE) to `out`.
pub fn packet_up(frame: &[u8], out: &mut BytesMut) {
    let (header_len, remaining) = header(frame);
    let body = &frame[header_len..];
    let insert_at = match frame[0] >> 4 {
        3 => {
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let pkid_len = if frame[0] & 0b0110 != 0 { 2 } else { 0 };
            2 + topic_len + pkid_len
        }
        10 => 2,
        _ => {
            out.put_slice(frame);
            return;
        }
    };
    out.put_u8(frame[0]);
    put_varint(out, remaining + 1);
    out.put_slice(&body[..insert_at]);
    out.put_u8(0);
    out.put_slice(&body[insert_at..]);
}

/// The 3.1.1 form of a packet the MQTT 5 listener sends; `None` to drop it.
pub fn packet_down(frame: &[u8]) -> Option<Bytes> {
    let first = *frame.first()?;
    let (header_len, _) = header(frame);
    let body = frame.get(header_len..)?;
    let mut out = BytesMut::with_capacity(frame.len());
    match first >> 4 {
        2 => {
            let code = match *body.get(1)? {
                0 => 0,
                0x84 => 1,
                0x85 => 2,
                0x86 => 4,
                0x87 => 5,
                _ => 3,
            };
            out.put_slice(&[0x20, 2, *body.first()? & 1, code]);
        }
        3 => {
            let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
            let pkid_len = if first & 0b0110 != 0 { 2 } else { 0 };
            let props_at = 2 + topic_len + pkid_len;
            let (varint_len, props_len) = varint(body.get(props_at..)?)?;
            let payload = body.get(props_at + varint_len + props_len..)?;
            out.put_u8(first);
            put_varint(&mut out, props_at + payload.len());
            out.put_slice(&body[..props_at]);
            out.put_slice(payload);
        }
        4..=7 | 11 => {
            out.put_slice(&[first, 2, *body.first()?, *body.get(1)?]);
        }
        9 => {
            let (varint_len, props_len) = varint(body.get(2..)?)?;
            let codes = body.get(2 + varint_len + props_len..)?;
            out.put_u8(0x90);
            put_varint(&mut out, 2 + codes.len());
            out.put_slice(&body[..2]);
            out.extend(
                codes
                    .iter()
                    .map(|&code| if code < 0x80 { code } else { 0x80 }),
            );
        }
        12 | 13 => out.put_slice(&[first, 0]),
        _ => return None,
    }
    Some(out.freeze())
}

fn header(frame: &[u8]) -> (usize, usize) {
    frame
        .get(1..)
        .and_then(varint)
        .map(|(len, value)| (1 + len, value))
        .unwrap_or((frame.len(), 0))
}

/// A variable byte integer: (bytes it took, value).
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((i + 1, value));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_through_both_forms() {
        let mut v4_publish = v4::Publish::new("a/b", rumqttc::mqttbytes::QoS::AtLeastOnce, "hi");
        v4_publish.pkid = 7;
        let mut frame = BytesMut::new();
        v4_publish.write(&mut frame).expect("encode");
        let mut up = BytesMut::new();
        packet_up(&frame, &mut up);
        let mut parse = up.clone();
        let v5::Packet::Publish(parsed) = v5::Packet::read(&mut parse, None).expect("v5") else {
            panic!("not a publish");
        };
        assert_eq!(
            (&parsed.topic[..], parsed.pkid, &parsed.payload[..]),
            (&b"a/b"[..], 7, &b"hi"[..])
        );
        // A v5 publish with properties comes down as the 3.1.1 bytes we started from.
        let properties = v5::PublishProperties {
            correlation_data: Some(Bytes::from_static(b"c")),
            ..Default::default()
        };
        let mut with_props = v5::Publish::new("a/b", QoS::AtLeastOnce, "hi", Some(properties));
        with_props.pkid = 7;
        let mut v5_frame = BytesMut::new();
        with_props.write(&mut v5_frame).expect("encode");
        assert_eq!(packet_down(&v5_frame).as_deref(), Some(&frame[..]));
    }

    #[test]
    fn acks_and_subacks_come_down_plain() {
        assert_eq!(
            packet_down(&[0x40, 3, 0, 5, 0x10]).as_deref(),
            Some(&[0x40, 2, 0, 5][..])
        );
        assert_eq!(
            packet_down(&[0x90, 6, 0, 5, 0, 1, 0x87, 0]).as_deref(),
            Some(&[0x90, 5, 0, 5, 1, 0x80, 0][..])
        );
        assert_eq!(
            packet_down(&[0xB0, 4, 0, 5, 0, 0]).as_deref(),
            Some(&[0xB0, 2, 0, 5][..])
        );
        assert_eq!(
            packet_down(&[0x20, 3, 0, 0, 0]).as_deref(),
            Some(&[0x20, 2, 0, 0][..])
        );
        assert_eq!(packet_down(&[0xE0, 1, 0x8E]), None);
        let mut up = BytesMut::new();
        packet_up(&[0xA2, 5, 0, 9, 0, 1, b'x'], &mut up);
        assert_eq!(&up[..], &[0xA2, 6, 0, 9, 0, 0, 1, b'x']);
    }

    #[test]
    fn connect_becomes_v5() {
        let mut connect = v4::Connect::new("dev-1");
        connect.clean_session = false;
        connect.set_login("u", "p");
        let mut frame = BytesMut::new();
        connect.write(&mut frame).expect("encode");
        let up = connect_up(&frame.freeze(), 600).expect("translated");
        let mut parse = BytesMut::from(&up[..]);
        let v5::Packet::Connect(parsed, None, None) =
            v5::Packet::read(&mut parse, None).expect("v5")
        else {
            panic!("not a connect without will and login");
        };
        assert_eq!(
            (
                parsed.client_id.as_str(),
                parsed.keep_alive,
                parsed.clean_start
            ),
            ("dev-1", 600, false)
        );
    }
}
