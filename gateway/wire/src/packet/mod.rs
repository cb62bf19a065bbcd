//! Device → broker packet checking: frames the bytes a device sends, parses each packet once with
//! rumqttc's codecs (`mqttbytes` v4 for MQTT 3.1.1, `v5::mqttbytes` for MQTT 5) and validates
//! what those codecs only parse.
//!
//! Fed by the session's device socket reads; feeds the session [`Inbound`] packets paired with
//! their original bytes, which are what gets forwarded (never a re-encoding, except for a
//! SUBSCRIBE whose denied filters are removed).
//!
//! **Invariant:** a frame is returned only once it parsed and passed every check below; any
//! other input is a [`Violation`] and the session closes. Closed here, beyond the codecs: frame
//! size limit before buffering, header flags and reserved bits, server-only packet types, a
//! second CONNECT, MQTT 3.1 (`MQIsdp`) and AUTH refused, valid short v5 DISCONNECTs (`e0 00`,
//! `e0 01 rc`) accepted, UTF-8 and wildcard-free PUBLISH topics, filter syntax, topic aliases.

pub mod connect;
pub mod outgoing;
pub mod translate;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS;

use crate::topics;

pub use connect::{parse_connect, ConnectInfo};

/// The two protocol versions the front door speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why a connection is closed. The v5 reason code goes in the DISCONNECT (or CONNACK) sent first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The bytes are not a well-formed packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A well-formed packet that is not allowed here.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The packet is larger than the limit.
    #[error("packet of {0} bytes is over the size limit")]
    TooLarge(usize),
    /// A PUBLISH topic that is empty, has a wildcard or is not UTF-8.
    #[error("invalid topic name")]
    TopicName,
    /// A subscription filter with invalid syntax.
    #[error("invalid topic filter")]
    TopicFilter,
    /// Topic aliases are not supported (the ACL needs every topic spelled out).
    #[error("topic aliases are not supported")]
    TopicAlias,
    /// A CONNECT for a protocol other than MQTT 3.1.1 and 5.
    #[error("unsupported protocol: {0}")]
    UnsupportedProtocol(&'static str),
    /// A MQTT 3.1.1 client published where it may not (3.1.1 has no way to say no but closing).
    #[error("not authorized: {0}")]
    NotAuthorized(&'static str),
}

impl Violation {
    /// The MQTT 5 reason code for this violation.
    pub fn reason_code(&self) -> u8 {
        match self {
            Violation::Malformed(_) => 0x81,
            Violation::Protocol(_) => 0x82,
            Violation::TooLarge(_) => 0x95,
            Violation::TopicName => 0x90,
            Violation::TopicFilter => 0x8F,
            Violation::TopicAlias => 0x94,
            Violation::UnsupportedProtocol(_) => 0x84,
            Violation::NotAuthorized(_) => 0x87,
        }
    }
}

fn malformed(error: impl std::fmt::Display) -> Violation {
    Violation::Malformed(error.to_string())
}

/// A checked device packet, as much of it as the session needs.
#[derive(Debug)]
pub enum Inbound {
    /// PUBLISH to `topic` (valid topic name).
    Publish {
        /// The topic.
        topic: String,
        /// QoS 0, 1 or 2.
        qos: u8,
        /// Packet id (0 for QoS 0).
        pkid: u16,
    },
    /// SUBSCRIBE with syntactically valid filters.
    Subscribe(Subscription),
    /// UNSUBSCRIBE with syntactically valid filters.
    Unsubscribe {
        /// Its packet id.
        pkid: u16,
        /// Its filters, in order.
        filters: Vec<String>,
    },
    /// PUBACK, PUBREC, PUBREL or PUBCOMP.
    Ack,
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect,
}

/// A parsed SUBSCRIBE.
#[derive(Debug)]
pub struct Subscription {
    /// Its packet id.
    pub pkid: u16,
    /// Its filters, in order.
    pub filters: Vec<String>,
    packet: SubscribePacket,
}

#[derive(Debug)]
enum SubscribePacket {
    V4(v4::Subscribe),
    V5(v5::Subscribe),
}

/// A subscription's options beyond its QoS (MQTT 5; a 3.1.1 SUBSCRIBE has the defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling: 0 send retained on every subscribe, 1 only on a new one, 2 never.
    pub retain_handling: u8,
}

impl Subscription {
    /// The options of each filter, in order.
    pub fn options(&self) -> Vec<SubscribeOptions> {
        match &self.packet {
            SubscribePacket::V4(packet) => vec![SubscribeOptions::default(); packet.filters.len()],
            SubscribePacket::V5(packet) => packet
                .filters
                .iter()
                .map(|f| SubscribeOptions {
                    retain_as_published: f.preserve_retain,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => 0,
                        v5::RetainForwardRule::OnNewSubscribe => 1,
                        v5::RetainForwardRule::Never => 2,
                    },
                })
                .collect(),
        }
    }

    /// The Subscription Identifier (MQTT 5), if given.
    pub fn id(&self) -> Option<u32> {
        match &self.packet {
            SubscribePacket::V4(_) => None,
            SubscribePacket::V5(packet) => packet
                .properties
                .as_ref()
                .and_then(|p| p.id)
                .and_then(|id| u32::try_from(id).ok()),
        }
    }

    /// The requested QoS of each filter, in order.
    pub fn qos(&self) -> Vec<u8> {
        match &self.packet {
            SubscribePacket::V4(packet) => packet.filters.iter().map(|f| f.qos as u8).collect(),
            SubscribePacket::V5(packet) => packet.filters.iter().map(|f| f.qos as u8).collect(),
        }
    }

    /// Re-encodes the SUBSCRIBE as MQTT 5 (the broker's side) with only the filters whose
    /// `keep` is true, same packet id.
    pub fn encode_v5(&self, keep: &[bool]) -> Result<Bytes, Violation> {
        let mut keep = keep.iter().copied();
        let mut packet = match &self.packet {
            SubscribePacket::V5(packet) => packet.clone(),
            SubscribePacket::V4(packet) => {
                let filters = packet.filters.iter().map(|filter| {
                    let qos = match filter.qos {
                        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
                        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
                        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
                    };
                    v5::Filter::new(filter.path.clone(), qos)
                });
                let mut converted = v5::Subscribe::new_many(filters, None);
                converted.pkid = packet.pkid;
                converted
            }
        };
        packet.filters.retain(|_| keep.next().unwrap_or(false));
        let mut out = BytesMut::new();
        packet.write(&mut out).map_err(malformed)?;
        Ok(out.freeze())
    }
}

/// Length of the next frame in `buf` (fixed header + remaining length), once its fixed header is
/// complete; a frame over `max_packet` bytes is refused before any of its body is buffered.
pub fn frame_len(buf: &[u8], max_packet: usize) -> Result<Option<usize>, Violation> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 2 + i + remaining;
            if total > max_packet {
                return Err(Violation::TooLarge(total));
            }
            return Ok(Some(total));
        }
    }
    Err(Violation::Malformed("remaining length over 4 bytes".into()))
}

/// Reads checked packets out of the bytes a device sends.
#[derive(Debug)]
pub struct PacketReader {
    buf: BytesMut,
    max_packet: usize,
}

impl PacketReader {
    /// A reader refusing frames over `max_packet` bytes.
    pub fn new(max_packet: usize) -> PacketReader {
        PacketReader {
            buf: BytesMut::with_capacity(4096),
            max_packet,
        }
    }

    /// The buffer socket reads append to.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Splits off the next complete frame, if there is one.
    fn next_frame(&mut self) -> Result<Option<Bytes>, Violation> {
        match frame_len(&self.buf, self.max_packet)? {
            Some(len) if self.buf.len() >= len => Ok(Some(self.buf.split_to(len).freeze())),
            _ => Ok(None),
        }
    }

    /// The CONNECT, once complete: the first packet must be one.
    pub fn next_connect(&mut self) -> Result<Option<(ConnectInfo, Bytes)>, Violation> {
        if let Some(&first) = self.buf.first() {
            if first != 0x10 {
                return Err(Violation::Protocol("the first packet is not CONNECT"));
            }
        }
        match self.next_frame()? {
            Some(frame) => Ok(Some((parse_connect(&frame)?, frame))),
            None => Ok(None),
        }
    }

    /// The next packet after CONNECT, once complete.
    pub fn next(&mut self, version: Version) -> Result<Option<(Inbound, Bytes)>, Violation> {
        match self.next_frame()? {
            Some(frame) => Ok(Some((check(version, &frame)?, frame))),
            None => Ok(None),
        }
    }
}

/// Checks one complete frame sent after CONNECT.
pub fn check(version: Version, frame: &Bytes) -> Result<Inbound, Violation> {
    // Exactly one whole frame: rumqttc's readers do arithmetic on the declared remaining length
    // and can underflow (v4 UNSUBSCRIBE) when more bytes follow it.
    if frame_len(frame, usize::MAX)? != Some(frame.len()) {
        return Err(Violation::Malformed("not exactly one frame".into()));
    }
    let byte1 = frame.first().copied().unwrap_or(0);
    let (kind, flags) = (byte1 >> 4, byte1 & 0x0F);
    let remaining = frame.len().saturating_sub(header_len(frame));
    let required_flags = match kind {
        3 => None,
        6 | 8 | 10 => Some(0b0010),
        _ => Some(0),
    };
    if required_flags.is_some_and(|required| flags != required) {
        return Err(Violation::Malformed("reserved header flags".into()));
    }
    match kind {
        1 => Err(Violation::Protocol("a second CONNECT")),
        2 | 9 | 11 | 13 => Err(Violation::Protocol("a server-to-client packet")),
        15 => Err(Violation::Protocol("AUTH is not supported")),
        12 if remaining == 0 => Ok(Inbound::PingReq),
        14 if remaining == 0 => Ok(Inbound::Disconnect),
        // A v5 DISCONNECT with just a reason code: valid, but rumqttc's codec wants properties.
        14 if version == Version::V5 && remaining == 1 => disconnect_reason(frame[frame.len() - 1]),
        12 | 14 if version == Version::V4 => Err(Violation::Malformed("non-empty body".into())),
        0 => Err(Violation::Malformed("packet type 0".into())),
        _ => match version {
            Version::V4 => check_v4(frame),
            Version::V5 => check_v5(frame),
        },
    }
}

fn disconnect_reason(code: u8) -> Result<Inbound, Violation> {
    v5::DisconnectReasonCode::try_from(code)
        .map(|_| Inbound::Disconnect)
        .map_err(malformed)
}

/// Length of a frame's fixed header: the type byte and its 1 to 4 remaining-length bytes.
pub fn header_len(frame: &[u8]) -> usize {
    1 + frame
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(4, |i| i + 1)
}

fn check_v4(frame: &Bytes) -> Result<Inbound, Violation> {
    let header = rumqttc::mqttbytes::check(frame.iter(), frame.len()).map_err(malformed)?;
    let bytes = frame.clone();
    match frame[0] >> 4 {
        3 => {
            let publish = v4::Publish::read(header, bytes).map_err(malformed)?;
            publish_checked(publish.topic, publish.qos as u8, publish.pkid, publish.dup)
        }
        4 => v4::PubAck::read(header, bytes)
            .map(|_| Inbound::Ack)
            .map_err(malformed),
        5 => v4::PubRec::read(header, bytes)
            .map(|_| Inbound::Ack)
            .map_err(malformed),
        6 => v4::PubRel::read(header, bytes)
            .map(|_| Inbound::Ack)
            .map_err(malformed),
        7 => v4::PubComp::read(header, bytes)
            .map(|_| Inbound::Ack)
            .map_err(malformed),
        8 => {
            let subscribe = v4::Subscribe::read(header, bytes).map_err(malformed)?;
            let filters = subscribe.filters.iter().map(|f| f.path.clone()).collect();
            subscription(subscribe.pkid, filters, SubscribePacket::V4(subscribe))
        }
        10 => {
            let unsubscribe = v4::Unsubscribe::read(header, bytes).map_err(malformed)?;
            unsubscription(unsubscribe.pkid, unsubscribe.topics)
        }
        _ => Err(Violation::Malformed("unknown packet type".into())),
    }
}

fn check_v5(frame: &Bytes) -> Result<Inbound, Violation> {
    let header = v5::check(frame.iter(), None).map_err(malformed)?;
    let bytes = frame.clone();
    match frame[0] >> 4 {
        3 => {
            let publish = v5::Publish::read(header, bytes).map_err(malformed)?;
            if let Some(properties) = &publish.properties {
                if properties.topic_alias.is_some() {
                    return Err(Violation::TopicAlias);
                }
                if !properties.subscription_identifiers.is_empty() {
                    return Err(Violation::Protocol("subscription identifier in PUBLISH"));
                }
            }
            let topic =
                String::from_utf8(publish.topic.to_vec()).map_err(|_| Violation::TopicName)?;
            publish_checked(topic, publish.qos as u8, publish.pkid, publish.dup)
        }
        4 => v5::PubAck::read(header, bytes)
            .map(|_| Inbound::Ack)
            .map_err(malformed),
        5 => v5::PubRec::read(header, bytes)
            .map(|_| Inbound::Ack)
            .map_err(malformed),
        6 => v5::PubRel::read(header, bytes)
            .map(|_| Inbound::Ack)
            .map_err(malformed),
        7 => v5::PubComp::read(header, bytes)
            .map(|_| Inbound::Ack)
            .map_err(malformed),
        8 => {
            let subscribe = v5::Subscribe::read(header, bytes).map_err(malformed)?;
            let filters = subscribe.filters.iter().map(|f| f.path.clone()).collect();
            subscription(subscribe.pkid, filters, SubscribePacket::V5(subscribe))
        }
        10 => {
            let unsubscribe = v5::Unsubscribe::read(header, bytes).map_err(malformed)?;
            unsubscription(unsubscribe.pkid, unsubscribe.filters)
        }
        14 => v5::Disconnect::read(header, bytes)
            .map(|_| Inbound::Disconnect)
            .map_err(malformed),
        _ => Err(Violation::Malformed("unknown packet type".into())),
    }
}

fn publish_checked(topic: String, qos: u8, pkid: u16, dup: bool) -> Result<Inbound, Violation> {
    if !topics::is_valid_topic_name(&topic) {
        return Err(Violation::TopicName);
    }
    if qos == 0 && dup {
        return Err(Violation::Malformed("DUP set on a QoS 0 PUBLISH".into()));
    }
    Ok(Inbound::Publish { topic, qos, pkid })
}

fn subscription(
    pkid: u16,
    filters: Vec<String>,
    packet: SubscribePacket,
) -> Result<Inbound, Violation> {
    if pkid == 0 {
        return Err(Violation::Malformed("packet id 0".into()));
    }
    if filters.is_empty() {
        return Err(Violation::Protocol("SUBSCRIBE without filters"));
    }
    if !filters.iter().all(|f| topics::is_valid_filter(f)) {
        return Err(Violation::TopicFilter);
    }
    Ok(Inbound::Subscribe(Subscription {
        pkid,
        filters,
        packet,
    }))
}

fn unsubscription(pkid: u16, filters: Vec<String>) -> Result<Inbound, Violation> {
    if filters.is_empty() {
        return Err(Violation::Protocol("UNSUBSCRIBE without filters"));
    }
    if !filters.iter().all(|f| topics::is_valid_filter(f)) {
        return Err(Violation::TopicFilter);
    }
    Ok(Inbound::Unsubscribe { pkid, filters })
}

/// Appends an MQTT variable byte integer (a remaining length or a property length).
pub fn put_varint(out: &mut bytes::BytesMut, mut value: usize) {
    use bytes::BufMut;
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
