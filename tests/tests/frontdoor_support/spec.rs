//! Packets for the spec-conformance tests: a v5 CONNECT with session and limit properties, a
//! SUBSCRIBE with options and an identifier, and PUBLISH parsing with rumqttc's codec.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5 as mq5;
use rumqttc::v5::mqttbytes::QoS as QoS5;

use super::{Next, Raw};

/// What a v5 CONNECT asks for.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Clean Start.
    pub clean_start: bool,
    /// Session Expiry Interval.
    pub expiry_s: Option<u32>,
    /// Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size.
    pub max_packet: Option<u32>,
}

/// A v5 CONNECT for `client_id` as `ask` says.
pub fn connect(client_id: &str, ask: &Ask) -> Bytes {
    let mut properties = mq5::ConnectProperties::new();
    properties.session_expiry_interval = ask.expiry_s;
    properties.receive_maximum = ask.receive_maximum;
    properties.max_packet_size = ask.max_packet;
    let connect = mq5::Connect {
        keep_alive: 30,
        client_id: client_id.into(),
        clean_start: ask.clean_start,
        properties: Some(properties),
    };
    let mut out = BytesMut::new();
    mq5::Packet::Connect(connect, None, None)
        .write(&mut out, None)
        .expect("encode");
    out.freeze()
}

/// Connects and returns the connection and its CONNACK (reason code 0 checked).
pub async fn connected(
    addr: std::net::SocketAddr,
    client_id: &str,
    ask: &Ask,
) -> (Raw, mq5::ConnAck) {
    let mut raw = Raw::open(addr).await;
    raw.send(&connect(client_id, ask)).await;
    let packet = raw.packet().await;
    let mq5::Packet::ConnAck(connack) = parse(&packet) else {
        panic!("not a CONNACK: {packet:02x?}");
    };
    assert_eq!(connack.code as u8, 0, "{client_id} connects");
    (raw, connack)
}

/// A v5 SUBSCRIBE of one filter at QoS 1 with options and an optional identifier.
pub fn subscribe(pkid: u16, filters: &[&str], id: Option<usize>, rap: bool, rh: u8) -> Bytes {
    let filters = filters.iter().map(|path| {
        let mut filter = mq5::Filter::new(*path, QoS5::AtLeastOnce);
        filter.preserve_retain = rap;
        filter.retain_forward_rule = match rh {
            0 => mq5::RetainForwardRule::OnEverySubscribe,
            1 => mq5::RetainForwardRule::OnNewSubscribe,
            _ => mq5::RetainForwardRule::Never,
        };
        filter
    });
    let properties = id.map(|id| mq5::SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    });
    let mut subscribe = mq5::Subscribe::new_many(filters, properties);
    subscribe.pkid = pkid;
    let mut out = BytesMut::new();
    subscribe.write(&mut out).expect("encode");
    out.freeze()
}

/// Parses one whole v5 packet.
pub fn parse(packet: &[u8]) -> mq5::Packet {
    mq5::Packet::read(&mut BytesMut::from(packet), None).expect("a v5 packet")
}

/// The next PUBLISH (other packets skipped, not acked), or `None` if none comes within `wait`.
pub async fn publish_within(raw: &mut Raw, wait: Duration) -> Option<(mq5::Publish, Bytes)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = tokio::time::timeout_at(deadline, raw.next()).await.ok()?;
        match next {
            Next::Packet(packet) if packet[0] >> 4 == 3 => {
                let mq5::Packet::Publish(publish) = parse(&packet) else {
                    unreachable!("a PUBLISH");
                };
                return Some((publish, packet));
            }
            Next::Packet(_) => {}
            Next::Closed => panic!("closed while a PUBLISH was expected"),
        }
    }
}

/// The next PUBLISH; panics if none comes within the usual wait.
pub async fn publish(raw: &mut Raw) -> (mq5::Publish, Bytes) {
    publish_within(raw, super::WAIT)
        .await
        .expect("a PUBLISH within the wait")
}

/// A PUBACK for `pkid`.
pub fn puback(pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [0x40, 2, hi, lo]
}

/// The reply status carried in a PUBLISH's payload.
pub fn status(publish: &mq5::Publish) -> u16 {
    gateway::wire::Reply::decode(&publish.payload)
        .expect("a reply payload")
        .status
        .code()
}
