//! A device session's side link: an MQTT 5 client connection from the front door to rumqttd's
//! loopback listener, for the filters the service's replies do not cover (a device's retained
//! status, the loopback operator view).
//!
//! Fed by its session ([`Link::subscribe`]); hands the broker's PUBLISHes to an [`OnMessage`]
//! callback, acking each upstream at once in receive order.
//!
//! A link's reader and writer are two futures polled side by side, so a broker that is busy
//! writing to us can never deadlock against us writing to it. The socket gets `TCP_NODELAY` and
//! `TCP_QUICKACK` re-armed after every read (see `broker::socket`: rumqttd's Nagle stalls
//! otherwise add ~40 ms). A link ends with its broker connection or its last handle.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{Connect, Packet};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use crate::broker::socket::connect_upstream;

/// Keep Alive of a link's CONNECT; it pings at half of it.
const KEEP_ALIVE_S: u16 = 60;
/// How long the broker may take to answer a link's CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Called with every PUBLISH the broker sends on a link (already acked upstream).
pub type OnMessage = Box<dyn FnMut(Bytes) + Send>;

/// Why a link request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The link ended (a session's side link whose broker connection closed).
    #[error("the broker link is gone")]
    Gone,
}

struct Request {
    filters: Vec<(String, u8)>,
    granted_tx: oneshot::Sender<Vec<u8>>,
}

/// A handle to one upstream connection; clones share it.
#[derive(Clone)]
pub struct Link {
    requests_tx: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

/// What a link needs to (re)connect.
pub struct LinkSpec {
    /// rumqttd's MQTT 5 listener.
    pub addr: SocketAddr,
    /// Client id prefix; a counter is appended on every connect.
    pub name: String,
    /// Largest packet taken from the broker.
    pub max_packet: usize,
}

static CONNECTS: AtomicU64 = AtomicU64::new(0);

/// SUBSCRIBEs waiting for their SUBACK, by packet id.
#[derive(Default)]
struct Inflight {
    subscribes: HashMap<u16, oneshot::Sender<Vec<u8>>>,
    next: u16,
}

impl Inflight {
    fn pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next = self.next.checked_add(1).unwrap_or(1);
            if !self.subscribes.contains_key(&self.next) {
                return Some(self.next);
            }
        }
        None
    }
}

impl Link {
    /// Starts a link; it ends when its broker connection does or its last handle is dropped.
    pub fn spawn(spec: LinkSpec, on_message: OnMessage) -> Link {
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let inflight = Mutex::new(Inflight::default());
            if let Err(error) = drive(&spec, on_message, requests_rx, &inflight).await {
                tracing::debug!(link = %spec.name, %error, "side link ended");
            }
        });
        Link { requests_tx }
    }

    /// Subscribes to `filters` (filter, QoS) and returns the broker's SUBACK codes.
    pub async fn subscribe(&self, filters: Vec<(String, u8)>) -> Result<Vec<u8>, LinkError> {
        let (granted_tx, granted_rx) = oneshot::channel();
        self.requests_tx
            .send(Request {
                filters,
                granted_tx,
            })
            .map_err(|_| LinkError::Gone)?;
        granted_rx.await.map_err(|_| LinkError::Gone)
    }
}

/// One connection's life: `Ok` when the link's handles are all gone, `Err` when the broker
/// connection failed.
async fn drive(
    spec: &LinkSpec,
    mut on_message: OnMessage,
    mut requests_rx: mpsc::UnboundedReceiver<Request>,
    inflight: &Mutex<Inflight>,
) -> io::Result<()> {
    let n = CONNECTS.fetch_add(1, Ordering::Relaxed);
    let client_id = format!("{}-{}-{n}", spec.name, std::process::id());
    let stream = connect_upstream(spec.addr).await?;
    let (mut rx, mut tx) = stream.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let connect = Connect {
        keep_alive: KEEP_ALIVE_S,
        client_id,
        clean_start: true,
        properties: None,
    };
    let mut out = BytesMut::new();
    encode(Packet::Connect(connect, None, None), &mut out)?;
    tx.write_all(&out).await?;
    let connack = tokio::time::timeout(CONNECT_TIMEOUT, next_frame(&mut rx, &mut buf, usize::MAX))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no CONNACK"))??;
    if connack.first() != Some(&0x20) || connack.get(3) != Some(&0) {
        return Err(io::Error::other("broker refused the link's CONNECT"));
    }
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let reader = read_loop(
        rx,
        buf,
        spec.max_packet,
        &mut on_message,
        inflight,
        control_tx,
    );
    let writer = write_loop(tx, &mut requests_rx, control_rx, inflight);
    tokio::select! {
        outcome = reader => outcome,
        outcome = writer => outcome,
    }
}

mod wire;

pub use wire::publish_frame;
use wire::{encode, next_frame, read_loop, write_loop};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::frame_len;
    use rumqttc::v5::mqttbytes::v5;
    use rumqttc::v5::mqttbytes::QoS;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A broker that answers CONNECT, then hands over the socket.
    async fn fake_broker() -> (
        SocketAddr,
        tokio::task::JoinHandle<(tokio::net::TcpStream, BytesMut)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = BytesMut::new();
            loop {
                stream.read_buf(&mut buf).await.expect("read");
                if let Ok(Some(len)) = frame_len(&buf, usize::MAX) {
                    if buf.len() >= len {
                        let _ = buf.split_to(len);
                        break;
                    }
                }
            }
            stream
                .write_all(&[0x20, 3, 0, 0, 0])
                .await
                .expect("connack");
            (stream, buf)
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_side_link_subscribes_and_hands_on_acked_messages() {
        let (addr, broker) = fake_broker().await;
        let spec = LinkSpec {
            addr,
            name: "test".into(),
            max_packet: 1 << 20,
        };
        let (messages_tx, mut messages_rx) = mpsc::unbounded_channel();
        let link = Link::spawn(
            spec,
            Box::new(move |frame| {
                let _ = messages_tx.send(frame);
            }),
        );
        let granted = tokio::spawn({
            let link = link.clone();
            async move { link.subscribe(vec![("devices/d/status".into(), 1)]).await }
        });
        let (mut stream, mut buf) = broker.await.expect("broker");
        let next = async |stream: &mut tokio::net::TcpStream, buf: &mut BytesMut| loop {
            if let Ok(Some(len)) = frame_len(buf, usize::MAX) {
                if buf.len() >= len {
                    break buf.split_to(len);
                }
            }
            stream.read_buf(buf).await.expect("read");
        };
        let subscribe = next(&mut stream, &mut buf).await;
        let Packet::Subscribe(subscribe) =
            Packet::read(&mut subscribe.clone(), None).expect("parses")
        else {
            panic!("not a subscribe");
        };
        assert_eq!(subscribe.filters[0].path, "devices/d/status");
        let [hi, lo] = subscribe.pkid.to_be_bytes();
        stream
            .write_all(&[0x90, 4, hi, lo, 0, 1])
            .await
            .expect("suback");
        assert_eq!(granted.await.expect("task").expect("granted"), vec![1]);
        // A retained QoS 1 message: acked upstream, handed on whole.
        let mut publish = v5::Publish::new("devices/d/status", QoS::AtLeastOnce, "up", None);
        publish.pkid = 9;
        publish.retain = true;
        let mut frame = BytesMut::new();
        encode(Packet::Publish(publish), &mut frame).expect("encode");
        stream.write_all(&frame).await.expect("publish");
        let got = tokio::time::timeout(Duration::from_secs(5), messages_rx.recv())
            .await
            .expect("in time")
            .expect("handed on");
        assert_eq!(&got[..], &frame[..]);
        assert_eq!(&next(&mut stream, &mut buf).await[..], &[0x40, 2, 0, 9]);
    }
}
