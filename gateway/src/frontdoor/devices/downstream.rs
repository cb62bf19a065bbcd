//! PUBLISH frames re-framed for one device session: that session's packet id and granted QoS,
//! in the device's version, through its QoS 1 window.
//!
//! Fed by device sessions (the service's replies and their side link's messages). Pure byte
//! work, no I/O. Everything between the packet id and the end of the
//! frame (MQTT 5 properties and payload) is copied untouched, so Response Topic, Correlation
//! Data, Message Expiry and user properties pass byte-exact.

use crate::wire::packet::{header_len, put_varint};
use std::collections::{HashSet, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::packet::translate;
use crate::wire::packet::Version;

/// Appends `frame` (a checked MQTT 5 PUBLISH) re-framed: DUP cleared, the retain flag kept,
/// QoS 1 with packet id `pkid` when `Some`, QoS 0 without a packet id when `None`.
/// A frame too short to be a PUBLISH appends nothing.
fn reframe(frame: &[u8], pkid: Option<u16>, out: &mut BytesMut) {
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

/// QoS 1 messages sent to a device and not yet PUBACKed.
pub const INFLIGHT_WINDOW: usize = 32;
/// QoS 1 messages waiting for room in the window before new ones are dropped.
pub const WINDOW_QUEUE: usize = 256;

/// One session's QoS 1 flow towards its device: its own packet ids, at most
/// [`INFLIGHT_WINDOW`] unacknowledged, then up to [`WINDOW_QUEUE`] waiting; past that a message
/// is dropped (the outbox redelivers replies on the device's next wake).
#[derive(Debug)]
pub struct Window {
    version: Version,
    inflight: HashSet<u16>,
    queued: VecDeque<Bytes>,
    next_pkid: u16,
}

impl Window {
    /// An empty window for a device speaking `version`.
    pub fn new(version: Version) -> Window {
        Window {
            version,
            inflight: HashSet::new(),
            queued: VecDeque::new(),
            next_pkid: 0,
        }
    }

    /// Appends broker message `frame` to `out` at QoS `min(granted, its QoS)`, or queues it;
    /// `false` when it had to be dropped.
    pub fn send(&mut self, frame: Bytes, granted: u8, out: &mut BytesMut) -> bool {
        let message_qos = frame.first().map_or(0, |b| (b >> 1) & 0b11);
        if granted.min(message_qos) == 0 {
            if let Some(bytes) = for_device(&frame, None, self.version) {
                out.extend_from_slice(&bytes);
            }
        } else if self.inflight.len() < INFLIGHT_WINDOW {
            self.send_qos1(&frame, out);
        } else if self.queued.len() < WINDOW_QUEUE {
            self.queued.push_back(frame);
        } else {
            return false;
        }
        true
    }

    /// The device PUBACKed `pkid`: the window moves on.
    pub fn acked(&mut self, pkid: u16, out: &mut BytesMut) {
        if !self.inflight.remove(&pkid) {
            return;
        }
        while self.inflight.len() < INFLIGHT_WINDOW {
            let Some(frame) = self.queued.pop_front() else {
                return;
            };
            self.send_qos1(&frame, out);
        }
    }

    fn send_qos1(&mut self, frame: &[u8], out: &mut BytesMut) {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains(&self.next_pkid) {
                break;
            }
        }
        if let Some(bytes) = for_device(frame, Some(self.next_pkid), self.version) {
            self.inflight.insert(self.next_pkid);
            out.extend_from_slice(&bytes);
        }
    }
}

/// The topic of a PUBLISH frame, when it is UTF-8.
pub fn topic(frame: &[u8]) -> Option<&str> {
    let body = frame.get(header_len(frame)..)?;
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    std::str::from_utf8(body.get(2..2 + len)?).ok()
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

    #[test]
    fn window_bounds_what_a_device_has_not_acked() {
        let mut publish = Publish::new("devices/d/reply", QoS::AtLeastOnce, "r", None);
        publish.pkid = 1;
        let mut frame = BytesMut::new();
        Packet::Publish(publish)
            .write(&mut frame, None)
            .expect("encode");
        let frame = frame.freeze();
        let mut window = Window::new(Version::V5);
        let mut out = BytesMut::new();
        for _ in 0..INFLIGHT_WINDOW + WINDOW_QUEUE {
            assert!(window.send(frame.clone(), 1, &mut out));
        }
        assert!(!window.send(frame.clone(), 1, &mut out), "full: dropped");
        // QoS 0 subscriptions bypass the window.
        assert!(window.send(frame.clone(), 0, &mut out));
        let sent = out.len();
        window.acked(999, &mut out);
        assert_eq!(out.len(), sent, "an unknown packet id moves nothing");
        window.acked(1, &mut out);
        let Packet::Publish(next) = Packet::read(&mut out.split_off(sent), None).expect("one")
        else {
            panic!("not a publish");
        };
        assert_eq!(
            next.pkid,
            u16::try_from(INFLIGHT_WINDOW + 1).expect("small")
        );
    }
}
