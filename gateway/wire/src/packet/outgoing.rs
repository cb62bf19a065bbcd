//! The few packets the front door writes to a device itself: refusals (CONNACK), denials (PUBACK
//! / PUBREC / SUBACK with a failure code), the v5 DISCONNECT sent before closing, and the SUBACK
//! merge that puts our denials back between the broker's answers.
//!
//! Fed by the session; feeds the device socket (through the broker→device pump, so injected
//! packets never split one of the broker's). Pure byte building, no I/O.

use super::{header_len, put_varint};
use bytes::{BufMut, Bytes, BytesMut};

use super::Version;

/// MQTT 5 reason codes the front door uses.
pub mod reason {
    /// Not authorized (denied publish, subscribe, Will, or no credentials where required).
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// Bad user name or password.
    pub const BAD_CREDENTIALS: u8 = 0x86;
    /// Client identifier not valid.
    pub const BAD_CLIENT_ID: u8 = 0x85;
    /// Unsupported protocol version.
    pub const UNSUPPORTED_PROTOCOL: u8 = 0x84;
    /// Server unavailable (the broker behind us did not answer).
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// Bad authentication method (enhanced auth is not supported).
    pub const BAD_AUTH_METHOD: u8 = 0x8C;
    /// Quota exceeded (`limits.max_connections`; a publish refused while the store is degraded).
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Connection rate exceeded: a login refused by the throttle, or no place in the password
    /// pool within `limits.connect_timeout_ms`.
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    /// Server shutting down (DISCONNECT: the gateway stops).
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// Session taken over (DISCONNECT: another connection with the same client id).
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
}

/// The MQTT 3.1.1 CONNACK return code for a v5 reason code, when 3.1.1 has one; otherwise
/// 3.1.1 says to close without a CONNACK.
fn v4_return_code(code: u8) -> Option<u8> {
    match code {
        reason::UNSUPPORTED_PROTOCOL => Some(1),
        reason::BAD_CLIENT_ID => Some(2),
        reason::SERVER_UNAVAILABLE | reason::QUOTA_EXCEEDED | reason::CONNECTION_RATE_EXCEEDED => {
            Some(3)
        }
        reason::BAD_CREDENTIALS => Some(4),
        reason::NOT_AUTHORIZED | reason::BAD_AUTH_METHOD => Some(5),
        _ => None,
    }
}

/// A refusing CONNACK for `code` (a v5 reason code), in the device's version; `None` when
/// MQTT 3.1.1 has no return code for it.
pub fn connack_refusal(version: Version, code: u8) -> Option<Bytes> {
    match version {
        Version::V5 => Some(Bytes::from(vec![0x20, 3, 0, code, 0])),
        Version::V4 => v4_return_code(code).map(|rc| Bytes::from(vec![0x20, 2, 0, rc])),
    }
}

/// What a device's v5 CONNACK tells it about the front door (MQTT-3.2.2-3 and the limits a
/// device must keep to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Session Present.
    pub session_present: bool,
    /// The Session Expiry Interval the front door uses, when it is not the one asked for.
    pub session_expiry_s: Option<u32>,
    /// How many QoS 1 and 2 publishes the front door takes unacknowledged.
    pub receive_maximum: u16,
    /// The largest packet the front door takes.
    pub max_packet: u32,
}

/// An accepting CONNACK in the device's version. v5 carries Session Expiry Interval (when
/// changed), Receive Maximum, Maximum Packet Size, Topic Alias Maximum 0 (aliases are refused:
/// the ACL needs every topic spelled out) and Shared Subscription Available 0 (a device may
/// subscribe only to its own topics).
pub fn connack(version: Version, accepted: &Accepted) -> Bytes {
    let present = u8::from(accepted.session_present);
    if version == Version::V4 {
        return Bytes::from(vec![0x20, 2, present, 0]);
    }
    let mut properties = BytesMut::with_capacity(24);
    if let Some(expiry) = accepted.session_expiry_s {
        properties.put_u8(0x11);
        properties.put_u32(expiry);
    }
    properties.put_u8(0x21);
    properties.put_u16(accepted.receive_maximum);
    properties.put_u8(0x27);
    properties.put_u32(accepted.max_packet);
    properties.put_u8(0x22);
    properties.put_u16(0);
    properties.put_u8(0x2A);
    properties.put_u8(0);
    let mut out = BytesMut::with_capacity(properties.len() + 6);
    out.put_u8(0x20);
    put_varint(&mut out, 2 + 1 + properties.len());
    out.put_u8(present);
    out.put_u8(0);
    put_varint(&mut out, properties.len());
    out.put_slice(&properties);
    out.freeze()
}

/// A v5 DISCONNECT with `code`, sent before the front door closes a connection.
pub fn disconnect(code: u8) -> Bytes {
    Bytes::from(vec![0xE0, 1, code])
}

/// A v5 PUBACK (QoS 1) or PUBREC (QoS 2) refusing publish `pkid` with `code`.
pub fn publish_refusal(qos: u8, pkid: u16, code: u8) -> Bytes {
    let kind = if qos == 2 { 0x50 } else { 0x40 };
    let [hi, lo] = pkid.to_be_bytes();
    Bytes::from(vec![kind, 3, hi, lo, code])
}

/// A PINGREQ, sent upstream on behalf of a device with Keep Alive 0.
pub const PINGREQ: [u8; 2] = [0xC0, 0];

/// The failure code of a denied subscription in `version`.
pub fn denied_subscription(version: Version) -> u8 {
    match version {
        Version::V5 => reason::NOT_AUTHORIZED,
        Version::V4 => 0x80,
    }
}

/// A SUBACK for `pkid` carrying `codes`, for a SUBSCRIBE the broker never saw.
pub fn suback(version: Version, pkid: u16, codes: &[u8]) -> Bytes {
    let properties: &[u8] = match version {
        Version::V5 => &[0],
        Version::V4 => &[],
    };
    build_suback(pkid, properties, codes)
}

fn build_suback(pkid: u16, properties: &[u8], codes: &[u8]) -> Bytes {
    let remaining = 2 + properties.len() + codes.len();
    let mut out = BytesMut::with_capacity(remaining + 5);
    out.put_u8(0x90);
    put_varint(&mut out, remaining);
    out.put_u16(pkid);
    out.put_slice(properties);
    out.put_slice(codes);
    out.freeze()
}

/// Rewrites the broker's SUBACK `frame` so it answers every filter the device sent: `plan`
/// holds our code for each filter we removed and `None` where the broker's next code goes.
/// Returns `None` when the frame is not a SUBACK matching the plan.
pub fn merge_suback(version: Version, frame: &[u8], plan: &[Option<u8>]) -> Option<Bytes> {
    let body = frame.get(header_len(frame)..)?;
    let pkid = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let rest = body.get(2..)?;
    let properties_len = match version {
        Version::V4 => 0,
        Version::V5 => {
            let varint_len = rest.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
            let mut value = 0usize;
            for (i, byte) in rest[..varint_len].iter().enumerate() {
                value |= usize::from(byte & 0x7F) << (7 * i);
            }
            varint_len + value
        }
    };
    let (properties, mut broker_codes) = (rest.get(..properties_len)?, rest.get(properties_len..)?);
    let mut codes = Vec::with_capacity(plan.len());
    for step in plan {
        match step {
            Some(code) => codes.push(*code),
            None => {
                let (first, tail) = broker_codes.split_first()?;
                codes.push(*first);
                broker_codes = tail;
            }
        }
    }
    broker_codes
        .is_empty()
        .then(|| build_suback(pkid, properties, &codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_in_both_versions() {
        assert_eq!(
            connack_refusal(Version::V5, reason::BAD_CREDENTIALS).as_deref(),
            Some(&[0x20, 3, 0, 0x86, 0][..])
        );
        assert_eq!(
            connack_refusal(Version::V4, reason::BAD_CREDENTIALS).as_deref(),
            Some(&[0x20, 2, 0, 4][..])
        );
        assert_eq!(
            connack_refusal(Version::V4, reason::NOT_AUTHORIZED).as_deref(),
            Some(&[0x20, 2, 0, 5][..])
        );
        assert_eq!(connack_refusal(Version::V4, 0x81), None);
        assert_eq!(
            &publish_refusal(1, 0x0102, 0x87)[..],
            &[0x40, 3, 1, 2, 0x87]
        );
        assert_eq!(&publish_refusal(2, 7, 0x87)[..], &[0x50, 3, 0, 7, 0x87]);
    }

    #[test]
    fn accepting_connack_advertises_the_limits() {
        use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet};
        let accepted = Accepted {
            session_present: true,
            session_expiry_s: Some(600),
            receive_maximum: 256,
            max_packet: 327_680,
        };
        assert_eq!(&connack(Version::V4, &accepted)[..], &[0x20, 2, 1, 0]);
        let mut frame = BytesMut::from(&connack(Version::V5, &accepted)[..]);
        let Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties: Some(properties),
        }) = Packet::read(&mut frame, None).expect("parses")
        else {
            panic!("not a CONNACK with properties");
        };
        assert!(session_present);
        assert_eq!(code as u8, 0);
        assert_eq!(properties.session_expiry_interval, Some(600));
        assert_eq!(properties.receive_max, Some(256));
        assert_eq!(properties.max_packet_size, Some(327_680));
        assert_eq!(properties.topic_alias_max, Some(0));
        assert_eq!(properties.shared_subscription_available, Some(0));
    }

    #[test]
    fn suback_merge_puts_denials_in_place() {
        // Broker granted two filters (QoS 1, QoS 0); the device had sent four, two denied.
        let broker = [0x90, 5, 0, 9, 0, 1, 0];
        let plan = [Some(0x87), None, Some(0x87), None];
        let merged = merge_suback(Version::V5, &broker, &plan).expect("matches");
        assert_eq!(&merged[..], &[0x90, 7, 0, 9, 0, 0x87, 1, 0x87, 0]);
        let broker_v4 = [0x90, 3, 0, 9, 1];
        let merged = merge_suback(Version::V4, &broker_v4, &[None, Some(0x80)]).expect("ok");
        assert_eq!(&merged[..], &[0x90, 4, 0, 9, 1, 0x80]);
        // Too few broker codes for the plan: not ours to patch.
        assert!(merge_suback(Version::V4, &broker_v4, &[None, None]).is_none());
        assert_eq!(
            &suback(Version::V4, 3, &[0x80, 0x80])[..],
            &[0x90, 4, 0, 3, 0x80, 0x80]
        );
    }
}
