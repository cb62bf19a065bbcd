//! The CONNECT packet: version detection, the checks rumqttc's codecs skip, and the fields the
//! session needs (client id, credentials, Will topic, keep-alive and where it sits in the frame).
//!
//! Fed by [`super::PacketReader::next_connect`]; feeds identity and the session.
//! Guarantees: MQTT 3.1 (`MQIsdp`) and unknown protocol levels are [`Violation::UnsupportedProtocol`];
//! reserved connect flags, a Will QoS of 3 or Will bits without a Will are malformed; MQTT 5
//! enhanced authentication (an Authentication Method) is refused.

use bytes::Bytes;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use super::{header_len, Version, Violation};

/// What the session needs from a CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// MQTT 3.1.1 or 5.
    pub version: Version,
    /// The client id as sent (checked against the id rule by the session).
    pub client_id: String,
    /// Keep Alive in seconds; 0 means none.
    pub keep_alive: u16,
    /// Offset of the two Keep Alive bytes in the frame, for rewriting it upstream.
    pub keep_alive_offset: usize,
    /// The Will topic, when a Will is set.
    pub will_topic: Option<String>,
    /// The Will message (payload, QoS, retain), when a Will is set.
    pub will: Option<(Bytes, u8, bool)>,
    /// User Name, when sent.
    pub username: Option<String>,
    /// Password, when sent.
    pub password: Option<String>,
    /// MQTT 5: an Authentication Method was given (enhanced auth, which we do not support).
    pub auth_method: bool,
    /// Clean Start (v5) or Clean Session (3.1.1).
    pub clean_start: bool,
    /// How long the session outlives the connection, in seconds, as asked: v5 its Session
    /// Expiry Interval (absent = 0), 3.1.1 `u32::MAX` (never) when Clean Session is 0.
    pub session_expiry_s: u32,
    /// The device's Receive Maximum (v5; 65,535 when absent, as the spec says).
    pub receive_maximum: u16,
    /// The device's Maximum Packet Size (v5), when it gave one.
    pub max_packet_size: Option<u32>,
}

/// Parses and checks a complete CONNECT frame.
pub fn parse_connect(frame: &Bytes) -> Result<ConnectInfo, Violation> {
    let header_len = header_len(frame);
    if frame.first() != Some(&0x10) {
        return Err(Violation::Malformed("CONNECT header flags".into()));
    }
    let body = &frame[header_len..];
    let short = || Violation::Malformed("short CONNECT".into());
    let name_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(short)?,
        *body.get(1).ok_or_else(short)?,
    ]));
    let name = body.get(2..2 + name_len).ok_or_else(short)?;
    let level = *body.get(2 + name_len).ok_or_else(short)?;
    let version = match (name, level) {
        (b"MQTT", 4) => Version::V4,
        (b"MQTT", 5) => Version::V5,
        (b"MQIsdp", _) => return Err(Violation::UnsupportedProtocol("MQTT 3.1 (MQIsdp)")),
        (b"MQTT", _) => return Err(Violation::UnsupportedProtocol("unknown protocol level")),
        _ => return Err(Violation::UnsupportedProtocol("not MQTT")),
    };
    let flags = *body.get(3 + name_len).ok_or_else(short)?;
    let will = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    if flags & 1 != 0 {
        return Err(Violation::Malformed("reserved connect flag".into()));
    }
    if will_qos == 3 || (!will && flags & 0b0011_1000 != 0) {
        return Err(Violation::Malformed("Will flags".into()));
    }
    if version == Version::V4 && flags & 0b1100_0000 == 0b0100_0000 {
        return Err(Violation::Malformed("password without user name".into()));
    }
    let keep_alive_offset = header_len + 4 + name_len;
    let malformed = |e: rumqttc::v5::mqttbytes::Error| Violation::Malformed(e.to_string());
    let mut info = match version {
        Version::V4 => {
            let header = rumqttc::mqttbytes::check(frame.iter(), frame.len())
                .map_err(|e| Violation::Malformed(e.to_string()))?;
            let connect = v4::Connect::read(header, frame.clone())
                .map_err(|e| Violation::Malformed(e.to_string()))?;
            ConnectInfo {
                version,
                client_id: connect.client_id,
                keep_alive: connect.keep_alive,
                keep_alive_offset,
                will: connect
                    .last_will
                    .as_ref()
                    .map(|will| (will.message.clone(), will.qos as u8, will.retain)),
                will_topic: connect.last_will.map(|will| will.topic),
                username: None,
                password: None,
                auth_method: false,
                clean_start: connect.clean_session,
                session_expiry_s: if connect.clean_session { 0 } else { u32::MAX },
                receive_maximum: u16::MAX,
                max_packet_size: None,
            }
            .with_login(connect.login.map(|l| (l.username, l.password)))
        }
        Version::V5 => {
            let header = v5::check(frame.iter(), None).map_err(malformed)?;
            let (connect, will, login) =
                v5::Connect::read(header, frame.clone()).map_err(malformed)?;
            let will_message = will
                .as_ref()
                .map(|will| (will.message.clone(), will.qos as u8, will.retain));
            let will_topic = match will {
                Some(will) => {
                    Some(String::from_utf8(will.topic.to_vec()).map_err(|_| Violation::TopicName)?)
                }
                None => None,
            };
            let properties = connect
                .properties
                .unwrap_or_else(v5::ConnectProperties::new);
            if properties.receive_maximum == Some(0) || properties.max_packet_size == Some(0) {
                // MQTT 5 §3.1.2.11.3 / §3.1.2.11.4: a value of 0 is a Protocol Error.
                return Err(Violation::Protocol(
                    "Receive Maximum or Maximum Packet Size of 0",
                ));
            }
            ConnectInfo {
                version,
                client_id: connect.client_id,
                keep_alive: connect.keep_alive,
                keep_alive_offset,
                will_topic,
                will: will_message,
                username: None,
                password: None,
                auth_method: properties.authentication_method.is_some(),
                clean_start: connect.clean_start,
                session_expiry_s: properties.session_expiry_interval.unwrap_or(0),
                receive_maximum: properties.receive_maximum.unwrap_or(u16::MAX),
                max_packet_size: properties.max_packet_size,
            }
            .with_login(login.map(|l| (l.username, l.password)))
        }
    };
    if let Some(topic) = &info.will_topic {
        if !crate::topics::is_valid_topic_name(topic) {
            return Err(Violation::TopicName);
        }
    }
    // rumqttc folds "absent" and "empty" together; so do we.
    info.username = info.username.filter(|u| !u.is_empty());
    info.password = info.password.filter(|p| !p.is_empty());
    Ok(info)
}

impl ConnectInfo {
    fn with_login(mut self, login: Option<(String, String)>) -> ConnectInfo {
        if let Some((username, password)) = login {
            self.username = Some(username);
            self.password = Some(password);
        }
        self
    }
}
