//! A long-lived MQTT 5 client connection from the front door to rumqttd's loopback listener:
//! what device sessions share instead of one broker connection each.
//!
//! Fed by device sessions ([`Link::publish`], [`Link::subscribe`]); feeds rumqttd, and hands the
//! broker's PUBACKs back to the session that asked ([`Acked`], in the order the broker sent
//! them, which for one link is the order of the publishes) and the broker's PUBLISHes to an
//! [`OnMessage`] callback, acking each upstream at once in receive order.
//!
//! A link's reader and writer are two futures polled side by side, so a broker that is busy
//! writing to us can never deadlock against us writing to it. The socket gets `TCP_NODELAY` and `TCP_QUICKACK`
//! re-armed after every read (see [`super::relay`]: rumqttd's Nagle stalls otherwise add ~40 ms).
//! A persistent link reconnects (fresh client id, capped backoff) after a broker failure; every
//! publish that was in flight is answered [`Acked::failed`], so its device is closed and resends.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{Connect, Packet};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::relay::connect_upstream;

/// Keep Alive of a link's CONNECT; it pings at half of it.
const KEEP_ALIVE_S: u16 = 60;
/// How long the broker may take to answer a link's CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Called with every PUBLISH the broker sends on a link (already acked upstream).
pub type OnMessage = Box<dyn FnMut(Bytes) + Send>;

/// The broker's answer to one device publish, sent to the session that forwarded it.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    /// The device's packet id.
    pub pkid: u16,
    /// The device's QoS (1: answer PUBACK, 2: answer PUBREC).
    pub qos: u8,
    /// The broker's PUBACK reason code.
    pub reason: u8,
    /// The link failed before the broker answered: the device must not be acked.
    pub failed: bool,
}

/// Where the broker's PUBACK for a forwarded publish goes.
#[derive(Debug, Clone)]
pub struct AckTo {
    /// The session's ack channel.
    pub acks_tx: mpsc::UnboundedSender<Acked>,
    /// The device's packet id.
    pub pkid: u16,
    /// The device's QoS.
    pub qos: u8,
}

/// Why a link request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The link ended (a session's side link whose broker connection closed).
    #[error("the broker link is gone")]
    Gone,
}

enum Request {
    Publish {
        frame: Bytes,
        ack_to: Option<AckTo>,
    },
    Subscribe {
        filters: Vec<(String, u8)>,
        granted_tx: oneshot::Sender<Vec<u8>>,
    },
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
    /// Filters subscribed on every connect (QoS 1).
    pub filters: Vec<String>,
    /// Reconnect after a failure (the hub's links) or end (a session's side link).
    pub persistent: bool,
}

static CONNECTS: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Inflight {
    acks: HashMap<u16, AckTo>,
    subscribes: HashMap<u16, oneshot::Sender<Vec<u8>>>,
    next: u16,
}

impl Inflight {
    fn pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next = self.next.checked_add(1).unwrap_or(1);
            if !self.acks.contains_key(&self.next) && !self.subscribes.contains_key(&self.next) {
                return Some(self.next);
            }
        }
        None
    }

    fn fail_all(&mut self) {
        for (_, to) in self.acks.drain() {
            let _ = to.acks_tx.send(Acked {
                pkid: to.pkid,
                qos: to.qos,
                reason: 0x80,
                failed: true,
            });
        }
        self.subscribes.clear();
    }
}

impl Link {
    /// Starts a link; `ready_tx` fires once the first connection's subscriptions (if any) were
    /// granted.
    pub fn spawn(
        spec: LinkSpec,
        on_message: Option<OnMessage>,
        ready_tx: Option<oneshot::Sender<()>>,
    ) -> Link {
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(spec, on_message, ready_tx, requests_rx));
        Link { requests_tx }
    }

    /// Sends a checked MQTT 5 PUBLISH frame upstream: QoS 0 as is, QoS 1 and 2 as QoS 1 with a
    /// packet id of the link's, the broker's PUBACK going to `ack_to`.
    pub fn publish(&self, frame: Bytes, ack_to: Option<AckTo>) -> Result<(), LinkError> {
        self.requests_tx
            .send(Request::Publish { frame, ack_to })
            .map_err(|_| LinkError::Gone)
    }

    /// Subscribes to `filters` (filter, QoS) and returns the broker's SUBACK codes.
    pub async fn subscribe(&self, filters: Vec<(String, u8)>) -> Result<Vec<u8>, LinkError> {
        let (granted_tx, granted_rx) = oneshot::channel();
        self.requests_tx
            .send(Request::Subscribe {
                filters,
                granted_tx,
            })
            .map_err(|_| LinkError::Gone)?;
        granted_rx.await.map_err(|_| LinkError::Gone)
    }
}

async fn run(
    spec: LinkSpec,
    mut on_message: Option<OnMessage>,
    mut ready_tx: Option<oneshot::Sender<()>>,
    mut requests_rx: mpsc::UnboundedReceiver<Request>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let inflight = Arc::new(Mutex::new(Inflight::default()));
        let outcome = drive(
            &spec,
            &mut on_message,
            &mut ready_tx,
            &mut requests_rx,
            &inflight,
        )
        .await;
        inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fail_all();
        match outcome {
            Ok(()) => return,
            Err(error) if spec.persistent => {
                tracing::warn!(link = %spec.name, %error, "broker link failed; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                tracing::debug!(link = %spec.name, %error, "side link ended");
                return;
            }
        }
    }
}

/// One connection's life: `Ok` when the link's handles are all gone, `Err` when the broker
/// connection failed.
async fn drive(
    spec: &LinkSpec,
    on_message: &mut Option<OnMessage>,
    ready_tx: &mut Option<oneshot::Sender<()>>,
    requests_rx: &mut mpsc::UnboundedReceiver<Request>,
    inflight: &Arc<Mutex<Inflight>>,
) -> io::Result<()> {
    let n = CONNECTS.fetch_add(1, Ordering::Relaxed);
    let client_id = format!("{}-{}-{n}", spec.name, std::process::id());
    let stream = connect_upstream(spec.addr).await?;
    let (mut rx, mut tx) = stream.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let connect = Connect {
        keep_alive: KEEP_ALIVE_S,
        client_id,
        clean_start: true,
        properties: None,
    };
    let mut out = BytesMut::new();
    encode(Packet::Connect(connect, None, None), &mut out)?;
    tx.write_all(&out).await?;
    out.clear();
    let connack = tokio::time::timeout(CONNECT_TIMEOUT, next_frame(&mut rx, &mut buf, usize::MAX))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no CONNACK"))??;
    if connack.first() != Some(&0x20) || connack.get(3) != Some(&0) {
        return Err(io::Error::other("broker refused the link's CONNECT"));
    }
    let mut subscribed_rx = None;
    if !spec.filters.is_empty() {
        let (granted_tx, granted_rx) = oneshot::channel();
        let filters = spec.filters.iter().map(|f| (f.clone(), 1)).collect();
        subscribe(filters, granted_tx, inflight, &mut out)?;
        tx.write_all(&out).await?;
        out.clear();
        subscribed_rx = Some(granted_rx);
    }
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let reader = read_loop(rx, buf, spec.max_packet, on_message, inflight, control_tx);
    let writer = write_loop(tx, requests_rx, control_rx, inflight);
    let ready = async {
        if let Some(granted_rx) = subscribed_rx {
            if let Ok(codes) = granted_rx.await {
                if codes.iter().any(|code| *code >= 0x80) {
                    tracing::error!(?codes, "broker refused the front door's reply filter");
                }
            }
        }
        if let Some(ready_tx) = ready_tx.take() {
            let _ = ready_tx.send(());
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        outcome = reader => outcome,
        outcome = writer => outcome,
        () = ready => Ok(()),
    }
}

mod wire;

pub use wire::publish_frame;
use wire::{encode, next_frame, read_loop, subscribe, write_loop};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontdoor::codec::frame_len;
    use rumqttc::v5::mqttbytes::v5;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
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
    async fn a_device_publish_is_acked_only_after_the_broker_acked_it() {
        let (addr, broker) = fake_broker().await;
        let spec = LinkSpec {
            addr,
            name: "test".into(),
            max_packet: 1 << 20,
            filters: Vec::new(),
            persistent: false,
        };
        let link = Link::spawn(spec, None, None);
        let properties = PublishProperties {
            correlation_data: Some(Bytes::from_static(b"corr")),
            response_topic: Some("devices/d/reply".into()),
            ..Default::default()
        };
        let mut publish =
            v5::Publish::new("devices/d/req/x", QoS::ExactlyOnce, "p", Some(properties));
        publish.pkid = 77;
        let mut frame = BytesMut::new();
        encode(Packet::Publish(publish.clone()), &mut frame).expect("encode");
        let (acks_tx, mut acks_rx) = mpsc::unbounded_channel();
        let ack_to = AckTo {
            acks_tx,
            pkid: 77,
            qos: 2,
        };
        link.publish(frame.freeze(), Some(ack_to)).expect("queued");
        let (mut stream, mut buf) = broker.await.expect("broker");
        // The broker gets the publish as QoS 1 with the link's packet id, properties intact.
        let upstream = loop {
            if let Ok(Some(len)) = frame_len(&buf, usize::MAX) {
                if buf.len() >= len {
                    break buf.split_to(len);
                }
            }
            stream.read_buf(&mut buf).await.expect("read");
        };
        let Packet::Publish(got) = Packet::read(&mut upstream.clone(), None).expect("parses")
        else {
            panic!("not a publish");
        };
        assert_eq!(got.qos, QoS::AtLeastOnce);
        assert_eq!(got.properties, publish.properties);
        // Nothing for the device until the broker acks.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(acks_rx.try_recv().is_err());
        let [hi, lo] = got.pkid.to_be_bytes();
        stream.write_all(&[0x40, 2, hi, lo]).await.expect("puback");
        let acked = tokio::time::timeout(Duration::from_secs(5), acks_rx.recv())
            .await
            .expect("in time")
            .expect("acked");
        assert_eq!(
            (acked.pkid, acked.qos, acked.reason, acked.failed),
            (77, 2, 0, false)
        );
        // A publish in flight when the broker connection dies is answered `failed`.
        let (acks_tx, mut acks_rx) = mpsc::unbounded_channel();
        let mut frame = BytesMut::new();
        encode(Packet::Publish(publish), &mut frame).expect("encode");
        link.publish(
            frame.freeze(),
            Some(AckTo {
                acks_tx,
                pkid: 78,
                qos: 1,
            }),
        )
        .expect("queued");
        let _ = stream.read_buf(&mut buf).await;
        drop(stream);
        let acked = tokio::time::timeout(Duration::from_secs(5), acks_rx.recv())
            .await
            .expect("in time")
            .expect("answered");
        assert!(acked.failed);
    }
}
