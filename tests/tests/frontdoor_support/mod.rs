//! Shared by the front-door tests: a raw MQTT client over a plain TCP socket (so tests control
//! every byte and see every packet and close), packet builders on rumqttc's codecs, and
//! [`assert_served`], the check after each hostile case that a fresh, well-behaved device is
//! still served.

#![allow(dead_code)]

pub mod spec;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5 as mq5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one expected packet may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A raw MQTT connection.
pub struct Raw {
    /// The socket.
    pub stream: TcpStream,
    buf: BytesMut,
}

/// What arrived next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole packet.
    Packet(Bytes),
    /// The server closed the connection (EOF or reset).
    Closed,
}

impl Raw {
    /// Opens a TCP connection.
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Wraps an already connected socket.
    pub fn with_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Sends bytes (errors ignored: the server may have closed already).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet or the close, within [`WAIT`].
    pub async fn next(&mut self) -> Next {
        tokio::time::timeout(WAIT, self.next_inner())
            .await
            .expect("a packet or a close within the wait")
    }

    async fn next_inner(&mut self) -> Next {
        loop {
            if let Some(len) = frame_len(&self.buf) {
                if self.buf.len() >= len {
                    return Next::Packet(self.buf.split_to(len).freeze());
                }
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }

    /// The next packet; panics on a close.
    pub async fn packet(&mut self) -> Bytes {
        match self.next().await {
            Next::Packet(packet) => packet,
            Next::Closed => panic!("connection closed, a packet was expected"),
        }
    }

    /// Waits for the close; returns the packets that came before it.
    pub async fn closed(&mut self) -> Vec<Bytes> {
        let mut before = Vec::new();
        loop {
            match self.next().await {
                Next::Packet(packet) => before.push(packet),
                Next::Closed => return before,
            }
        }
    }
}

fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(2 + i + remaining);
        }
    }
    None
}

/// A v5 CONNECT.
pub fn connect5(client_id: &str, login: Option<(&str, &str)>, will: Option<&str>) -> Bytes {
    let mut connect = mq5::Connect {
        keep_alive: 30,
        client_id: client_id.into(),
        clean_start: true,
        properties: None,
    };
    connect.keep_alive = 30;
    let will = will.map(|topic| mq5::LastWill::new(topic, "gone", QoS5::AtLeastOnce, false, None));
    let login = login.map(|(user, password)| mq5::Login::new(user, password));
    let mut out = BytesMut::new();
    mq5::Packet::Connect(connect, will, login)
        .write(&mut out, None)
        .expect("encode");
    out.freeze()
}

/// A 3.1.1 CONNECT.
pub fn connect4(client_id: &str, login: Option<(&str, &str)>) -> Bytes {
    let mut connect = rumqttc::Connect::new(client_id);
    connect.keep_alive = 30;
    if let Some((user, password)) = login {
        connect.set_login(user, password);
    }
    let mut out = BytesMut::new();
    connect.write(&mut out).expect("encode");
    out.freeze()
}

/// A v5 SUBSCRIBE of `filters` at QoS 1.
pub fn subscribe5(pkid: u16, filters: &[&str]) -> Bytes {
    let filters = filters
        .iter()
        .map(|f| mq5::Filter::new(*f, QoS5::AtLeastOnce));
    let mut subscribe = mq5::Subscribe::new_many(filters, None);
    subscribe.pkid = pkid;
    let mut out = BytesMut::new();
    subscribe.write(&mut out).expect("encode");
    out.freeze()
}

/// A 3.1.1 SUBSCRIBE of `filters` at QoS 1.
pub fn subscribe4(pkid: u16, filters: &[&str]) -> Bytes {
    let filters = filters
        .iter()
        .map(|f| rumqttc::SubscribeFilter::new((*f).into(), rumqttc::QoS::AtLeastOnce));
    let mut subscribe = rumqttc::Subscribe::new_many(filters);
    subscribe.pkid = pkid;
    let mut out = BytesMut::new();
    subscribe.write(&mut out).expect("encode");
    out.freeze()
}

/// A v5 QoS 1 PUBLISH.
pub fn publish5(topic: &str, pkid: u16, payload: &[u8]) -> Bytes {
    let mut publish = mq5::Publish::new(topic, QoS5::AtLeastOnce, payload.to_vec(), None);
    publish.pkid = pkid;
    let mut out = BytesMut::new();
    publish.write(&mut out).expect("encode");
    out.freeze()
}

/// A 3.1.1 QoS 1 PUBLISH.
pub fn publish4(topic: &str, pkid: u16, payload: &[u8]) -> Bytes {
    let mut publish = rumqttc::Publish::new(topic, rumqttc::QoS::AtLeastOnce, payload.to_vec());
    publish.pkid = pkid;
    let mut out = BytesMut::new();
    publish.write(&mut out).expect("encode");
    out.freeze()
}

/// The reason / return code of a CONNACK.
pub fn connack_code(packet: &[u8]) -> u8 {
    assert_eq!(packet[0], 0x20, "not a CONNACK: {packet:02x?}");
    packet[3]
}

/// The codes of a SUBACK (v5: after an empty property block).
pub fn suback_codes(packet: &[u8], v5: bool) -> Vec<u8> {
    assert_eq!(packet[0], 0x90, "not a SUBACK: {packet:02x?}");
    let skip = if v5 {
        2 + 2 + 1 + usize::from(packet[4])
    } else {
        4
    };
    packet[skip..].to_vec()
}

/// A v5 CONNECT that the front door accepts, answered with CONNACK 0.
pub async fn connected5(addr: SocketAddr, client_id: &str) -> Raw {
    let mut raw = Raw::open(addr).await;
    raw.send(&connect5(client_id, None, None)).await;
    assert_eq!(connack_code(&raw.packet().await), 0, "{client_id} connects");
    raw
}

/// A v5 QoS 1 request with Correlation Data: `stats` of three values.
pub fn request5(device: &str, pkid: u16, corr: &[u8]) -> Bytes {
    let properties = mq5::PublishProperties {
        correlation_data: Some(Bytes::copy_from_slice(corr)),
        ..Default::default()
    };
    let args = roost_tests::device::values(&[1.0, 2.0, 3.0]);
    let payload = gateway::wire::envelope::encode_value(&args);
    let topic = format!("devices/{device}/req/stats");
    let mut publish = mq5::Publish::new(topic, QoS5::AtLeastOnce, payload, Some(properties));
    publish.pkid = pkid;
    let mut out = BytesMut::new();
    publish.write(&mut out).expect("encode");
    out.freeze()
}

/// The topic of a PUBLISH packet.
pub fn publish_topic(packet: &[u8]) -> String {
    assert_eq!(packet[0] >> 4, 3, "not a PUBLISH: {packet:02x?}");
    let header = 1
        + packet[1..]
            .iter()
            .position(|b| b & 0x80 == 0)
            .expect("length")
        + 1;
    let len = usize::from(u16::from_be_bytes([packet[header], packet[header + 1]]));
    String::from_utf8(packet[header + 2..header + 2 + len].to_vec()).expect("utf-8")
}

static FRESH: AtomicU32 = AtomicU32::new(0);

/// A fresh device connects, subscribes to its replies (granted), sends a request (PUBACK
/// success) and gets a reply from the gateway on its reply topic. Panics otherwise.
pub async fn assert_served(addr: SocketAddr) {
    let id = format!(
        "fresh-{}-{}",
        std::process::id(),
        FRESH.fetch_add(1, Ordering::Relaxed)
    );
    let mut raw = connected5(addr, &id).await;
    let reply = format!("devices/{id}/reply/#");
    raw.send(&subscribe5(7, &[&reply, &format!("devices/{id}/reply")]))
        .await;
    assert_eq!(suback_codes(&raw.packet().await, true), vec![1, 1]);
    raw.send(&request5(&id, 9, b"served")).await;
    let (mut acked, mut replied) = (false, false);
    while !(acked && replied) {
        let packet = raw.packet().await;
        match packet[0] >> 4 {
            4 => {
                assert_eq!(
                    &packet[2..4],
                    &[0, 9],
                    "PUBACK for our request: {packet:02x?}"
                );
                assert!(packet.get(4).is_none_or(|code| *code == 0), "{packet:02x?}");
                acked = true;
            }
            3 => {
                assert!(publish_topic(&packet).starts_with(&format!("devices/{id}/reply")));
                replied = true;
            }
            _ => panic!("unexpected packet {packet:02x?}"),
        }
    }
    raw.send(&[0xE0, 0]).await;
    raw.closed().await;
}
