//! PUBLISH frames re-framed for one device session: that session's packet id and granted QoS,
//! in the device's version, through its QoS 1 window.
//!
//! Fed by device sessions (the service's replies and their side link's messages). Pure byte
//! work, no I/O. Everything between the packet id and the end of the
//! frame (MQTT 5 properties and payload) is copied untouched, so Response Topic, Correlation
//! Data, Message Expiry and user properties pass byte-exact.

use super::codec::{header_len, put_varint};
use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::Version;
use super::translate;

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
fn set_pkid(bytes: &[u8], pkid: u16) -> Bytes {
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

/// Our own cap on QoS 1 messages sent to one device and not yet PUBACKed (the device's
/// Receive Maximum lowers it, MQTT-3.3.4-9).
pub const INFLIGHT_WINDOW: usize = 32;
/// QoS 1 messages waiting for room in the window before new ones are dropped.
pub const WINDOW_QUEUE: usize = 256;

/// Why a message was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The window and its queue are full: dropped (the outbox redelivers replies on the next
    /// wake).
    Full,
    /// It would be this many bytes, over the device's Maximum Packet Size (MQTT-3.1.2-24):
    /// not sent, as if it had been (MQTT-3.1.2-25).
    TooLarge(usize),
}

/// What a window keeps when its session is parked: unacknowledged QoS 1 messages with their
/// packet ids (in send order), queued ones, and the last packet id used. Frames are in the
/// device's protocol version.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parked {
    /// Sent, not acknowledged: (packet id, frame).
    pub inflight: Vec<(u16, Vec<u8>)>,
    /// Waiting for room: frames without their packet id yet.
    pub queued: Vec<Vec<u8>>,
    /// The last packet id used.
    pub next_pkid: u16,
}

/// One session's QoS 1 flow towards its device: its own packet ids, at most its limit
/// unacknowledged (the smaller of [`INFLIGHT_WINDOW`] and the device's Receive Maximum), then up
/// to [`WINDOW_QUEUE`] waiting; past that a message is dropped. Nothing over the device's
/// Maximum Packet Size is sent.
#[derive(Debug)]
pub struct Window {
    version: Version,
    limit: usize,
    max_packet: usize,
    inflight: VecDeque<(u16, Bytes)>,
    queued: VecDeque<Bytes>,
    next_pkid: u16,
}

impl Window {
    /// An empty window for a device speaking `version` with this Receive Maximum and Maximum
    /// Packet Size.
    pub fn new(version: Version, receive_maximum: u16, max_packet: Option<u32>) -> Window {
        Window {
            version,
            limit: INFLIGHT_WINDOW.min(usize::from(receive_maximum.max(1))),
            max_packet: max_packet.map_or(usize::MAX, |max| max as usize),
            inflight: VecDeque::new(),
            queued: VecDeque::new(),
            next_pkid: 0,
        }
    }

    /// A window resuming a parked one; its unacknowledged messages are to be resent
    /// ([`Window::resend`]). A session parked by a device of the other version resumes empty.
    pub fn resume(mut self, parked: Parked, parked_version: Version) -> Window {
        if parked_version != self.version {
            return self;
        }
        self.inflight = parked
            .inflight
            .into_iter()
            .map(|(pkid, frame)| (pkid, Bytes::from(frame)))
            .collect();
        self.queued = parked.queued.into_iter().map(Bytes::from).collect();
        self.next_pkid = parked.next_pkid;
        self
    }

    /// What to keep when the session is parked.
    pub fn park(&self) -> Parked {
        Parked {
            inflight: self
                .inflight
                .iter()
                .map(|(pkid, frame)| (*pkid, frame.to_vec()))
                .collect(),
            queued: self.queued.iter().map(|frame| frame.to_vec()).collect(),
            next_pkid: self.next_pkid,
        }
    }

    /// Appends every unacknowledged message again, DUP set, same packet ids (MQTT-4.4.0-1,
    /// MQTT-3.3.1-1), then as many queued ones as the window takes.
    pub fn resend(&mut self, out: &mut BytesMut) {
        for (_, frame) in &self.inflight {
            if let Some((&first, rest)) = frame.split_first() {
                out.put_u8(first | 0b1000);
                out.put_slice(rest);
            }
        }
        self.fill(out);
    }

    /// Appends broker message `frame` to `out` as `delivery` says, or queues it.
    pub fn send(
        &mut self,
        frame: &[u8],
        delivery: &Delivery,
        out: &mut BytesMut,
    ) -> Result<(), Refused> {
        let qos1 = delivery.qos > 0 && frame.first().is_some_and(|b| (b >> 1) & 0b11 > 0);
        let pkid = qos1.then_some(0);
        let Some(bytes) = for_device(frame, pkid, delivery, self.version) else {
            return Ok(());
        };
        if bytes.len() > self.max_packet {
            return Err(Refused::TooLarge(bytes.len()));
        }
        if !qos1 {
            out.extend_from_slice(&bytes);
        } else if self.queued.len() >= WINDOW_QUEUE {
            return Err(Refused::Full);
        } else {
            self.queued.push_back(bytes);
            self.fill(out);
        }
        Ok(())
    }

    /// The device PUBACKed `pkid`: the window moves on.
    pub fn acked(&mut self, pkid: u16, out: &mut BytesMut) {
        let Some(at) = self.inflight.iter().position(|(id, _)| *id == pkid) else {
            return;
        };
        self.inflight.remove(at);
        self.fill(out);
    }

    /// Messages sent and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn fill(&mut self, out: &mut BytesMut) {
        while self.inflight.len() < self.limit {
            let Some(bytes) = self.queued.pop_front() else {
                return;
            };
            loop {
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                if !self.inflight.iter().any(|(id, _)| *id == self.next_pkid) {
                    break;
                }
            }
            let bytes = set_pkid(&bytes, self.next_pkid);
            out.extend_from_slice(&bytes);
            self.inflight.push_back((self.next_pkid, bytes));
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

    fn publish_frame(topic: &str, payload: &str, properties: Option<PublishProperties>) -> Bytes {
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

    fn parse(bytes: &[u8]) -> Publish {
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

    #[test]
    fn window_keeps_to_the_receive_maximum_and_resends_with_dup() {
        let frame = publish_frame("devices/d/reply", "r", None);
        let qos1 = Delivery {
            qos: 1,
            ..Delivery::default()
        };
        let mut window = Window::new(Version::V5, 2, None);
        let mut out = BytesMut::new();
        for _ in 0..2 + WINDOW_QUEUE {
            window.send(&frame, &qos1, &mut out).expect("taken");
        }
        assert_eq!(window.in_flight(), 2, "the device's Receive Maximum");
        assert_eq!(
            window.send(&frame, &qos1, &mut out),
            Err(Refused::Full),
            "full: dropped"
        );
        // QoS 0 bypasses the window.
        let sent = out.len();
        window
            .send(&frame, &Delivery::default(), &mut out)
            .expect("qos 0");
        assert!(out.len() > sent);
        let sent = out.len();
        window.acked(999, &mut out);
        assert_eq!(out.len(), sent, "an unknown packet id moves nothing");
        window.acked(1, &mut out);
        assert_eq!(parse(&out.split_off(sent)).pkid, 3);
        // Parked and resumed: the unacknowledged ones again, DUP set, same packet ids.
        let parked = window.park();
        assert_eq!(
            parked
                .inflight
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        let mut resumed = Window::new(Version::V5, 10, None).resume(parked, Version::V5);
        let mut again = BytesMut::new();
        resumed.resend(&mut again);
        let first = parse(&again);
        assert!(first.dup);
        assert_eq!(first.pkid, 2);
        assert_eq!(
            resumed.in_flight(),
            10,
            "queued ones fill the larger window"
        );
    }

    #[test]
    fn nothing_over_the_device_maximum_packet_size_is_sent() {
        let frame = publish_frame("devices/d/reply", &"x".repeat(100), None);
        let mut window = Window::new(Version::V5, 10, Some(64));
        let mut out = BytesMut::new();
        let qos1 = Delivery {
            qos: 1,
            ..Delivery::default()
        };
        assert!(matches!(
            window.send(&frame, &qos1, &mut out),
            Err(Refused::TooLarge(size)) if size > 64
        ));
        assert!(out.is_empty());
        assert_eq!(
            window.in_flight(),
            0,
            "as if sent: nothing waits for an ack"
        );
    }
}
