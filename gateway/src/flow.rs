//! Everything that crosses a thread or a task, declared in one place (as rumqttd's router
//! declares its events): a reader learns the whole traffic between the stages from this file.
//!
//! ```text
//! front door / service link ──Inbound──▶ intake ──Job──▶ scheduler ──▶ workers
//!        │                                 │                               │
//!        └──────DeviceEvent──▶ outbox ◀────┴──────────FinalReply───────────┘
//!                                │
//! intake, outbox ──OutboundReply──▶ Replies (front door router | service link) ──▶ device
//! intake, outbox, status ──announce──▶ Replies ──▶ broker (retained status, dead letters)
//! ```
//!
//! The stage types that carry them (`Job`, `FinalReply`) live with their owners (`analytics`,
//! `store`), since their fields are the store's rows; the channels' message enums and the two
//! sinks that leave the gateway live here.
//!
//! **Invariant:** an [`Inbound`] is acknowledged ([`Inbound::ack`]) once, in receive order,
//! only after intake committed what it carries.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::wire::{Correlation, DeviceId, Status};

/// Capacity of the inbox channel (well above any broker's inflight window).
const INBOX: usize = 4096;

/// A publish for the service, and whom to acknowledge once intake has handled it.
pub struct Inbound {
    /// The publish as received.
    pub publish: Publish,
    /// Where its acknowledgement goes.
    pub ack: Ack,
    /// When the gateway read it (ms since the epoch): when its device was seen. Stamped on
    /// arrival, not when intake gets to it, so that what two gateways write of one device to
    /// its row (an `awake` here, an `asleep` there) keeps the order the device sent it in. The
    /// gateway's own view of the device's wake, which decides whether a reply is published or
    /// held, still counts from when the event reached the outbox.
    pub received_ms: i64,
    /// The share of the front door's inbox budget it holds until handled (released when it
    /// is dropped); none from a broker, whose inflight window bounds it.
    #[allow(dead_code, reason = "held for its Drop")]
    pub budget: Option<OwnedSemaphorePermit>,
}

impl Inbound {
    /// A publish just read, stamped with the time ([`Inbound::received_ms`]).
    pub fn new(publish: Publish, ack: Ack, budget: Option<OwnedSemaphorePermit>) -> Inbound {
        Inbound {
            publish,
            ack,
            received_ms: crate::wire::now_ms(),
            budget,
        }
    }

    /// Acknowledges the publish (PUBACK to the broker it came from, or the front door's own
    /// PUBACK to its device). Call in receive order, after the commit.
    pub async fn ack(self) {
        self.handled(Handled::Committed).await;
    }

    /// Tells the sender the publish was **not** taken (nothing of it was committed: the store is
    /// degraded). The front door answers its device with no success PUBACK (see
    /// [`Handled::Refused`]); a broker is still acked, in receive order, since it acknowledged
    /// the device long ago and a broker that waits for the ack stops delivering: the device's
    /// answer is the `503` reply. Call in receive order, like [`Inbound::ack`].
    pub async fn refuse(self) {
        self.handled(Handled::Refused).await;
    }

    async fn handled(self, handled: Handled) {
        match self.ack {
            Ack::Broker(client, connection) => {
                let Some(_acking) = connection.acking() else {
                    tracing::debug!("not acked: the link connection it came on has ended");
                    return;
                };
                if let Err(error) = client.ack(&self.publish).await {
                    tracing::error!(%error, "ack not handed to the MQTT client");
                }
            }
            Ack::Local(ack) => ack(handled),
        }
    }
}

/// What became of a publish the front door handed to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Committed: PUBACK (PUBREC) with success.
    Committed,
    /// Not taken, nothing committed (the store is degraded): an MQTT 5 device gets a PUBACK
    /// with reason `0x97` (quota exceeded: not accepted), an MQTT 3.1.1 device, which has no
    /// negative acknowledgement, gets none.
    Refused,
}

/// How a handled publish is acknowledged.
pub enum Ack {
    /// A PUBACK to the broker it came from, through the service link's acking connection
    /// (nothing for QoS 0), unless that connection has ended since ([`LinkConnection`]).
    Broker(rumqttc::v5::AsyncClient, LinkConnection),
    /// A publish the front door handed over directly: called once, after the commit (or the
    /// refusal).
    Local(Box<dyn FnOnce(Handled) + Send>),
}

/// The service link's connection a publish came in on. A packet id means something on its own
/// connection only: the link reconnects with a clean start, so the same id on the next
/// connection names whatever the broker sends there. A publish whose connection has ended is
/// therefore not acked at all; the broker, which never got its ack, sends it again (in a share
/// group, possibly to another gateway), and dedupe answers the copy.
#[derive(Debug, Clone)]
pub struct LinkConnection {
    /// Its number.
    number: u64,
    /// The link's connections.
    link: Arc<LinkConnections>,
}

impl LinkConnection {
    /// Starts handing this connection's ack to rumqttc, if the connection is still the link's:
    /// the ack must be handed over before the guard is dropped. Until then
    /// [`LinkConnections::end`] waits, so that an ack checked just before a connection ended
    /// cannot reach rumqttc after the link dropped the ended connection's acks.
    pub fn acking(&self) -> Option<Acking> {
        self.link.acking.fetch_add(1, SeqCst);
        let acking = Acking(self.link.clone());
        (self.link.current.load(SeqCst) == self.number).then_some(acking)
    }
}

/// An ack being handed to rumqttc ([`LinkConnection::acking`]).
#[derive(Debug)]
pub struct Acking(Arc<LinkConnections>);

impl Drop for Acking {
    fn drop(&mut self) {
        self.0.acking.fetch_sub(1, SeqCst);
    }
}

/// The service link's connections, as acks see them: the number of the current one (raised
/// when one ends) and the acks being handed to rumqttc now.
#[derive(Debug, Default)]
pub struct LinkConnections {
    current: AtomicU64,
    acking: AtomicUsize,
}

impl LinkConnections {
    /// The current connection.
    pub fn now(self: &Arc<Self>) -> LinkConnection {
        LinkConnection {
            number: self.current.load(SeqCst),
            link: self.clone(),
        }
    }

    /// Ends the current connection: no ack of its publishes is handed to rumqttc from now on.
    /// Returns once the acks that were being handed over are, calling `drop_acks` meanwhile and
    /// once after the last (it must make room in rumqttc's request channel and drop the acks in
    /// it: `EventLoop::clean`). rumqttc drops the acks queued when the connection failed; an
    /// ack checked before the end but queued after that would go out on the next connection.
    pub async fn end(&self, mut drop_acks: impl FnMut()) {
        self.current.fetch_add(1, SeqCst);
        loop {
            let settled = self.acking.load(SeqCst) == 0;
            drop_acks();
            if settled {
                return;
            }
            tokio::task::yield_now().await;
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ack::Broker(..) => "Broker",
            Ack::Local(_) => "Local",
        })
    }
}

/// The channel intake reads: the service link and, in embedded mode, the front door feed it.
pub fn inbox() -> (mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>) {
    mpsc::channel(INBOX)
}

/// What the rest of the gateway tells the outbox about devices.
#[derive(Debug, Clone)]
pub enum DeviceEvent {
    /// The device published something, at the time given (when the gateway read the publish,
    /// ms since the epoch): awake for this long from then.
    Seen(DeviceId, Duration, i64),
    /// The device is connected through the front door and subscribed: awake until it leaves.
    Connected(DeviceId),
    /// The device's last connection ended.
    Disconnected(DeviceId),
    /// The device said it is going to sleep, at the time given (as for [`DeviceEvent::Seen`]).
    Asleep(DeviceId, i64),
    /// The device acknowledged a reply.
    Acked(DeviceId),
    /// The device was answered with an error (`"code: message"`): its status's `last_error`.
    Rejected(DeviceId, String),
    /// A reply could not be sent to the device (over its MQTT Maximum Packet Size): dead-letter
    /// it, and stop holding it.
    Undeliverable(DeviceId, Undeliverable),
}

/// A reply the front door could not send to its device.
#[derive(Debug, Clone)]
pub struct Undeliverable {
    /// Its Correlation Data.
    pub corr: Option<Correlation>,
    /// Its status code.
    pub status: u16,
    /// Why.
    pub reason: String,
}

impl DeviceEvent {
    /// The device the event is about.
    pub fn device(&self) -> &DeviceId {
        match self {
            DeviceEvent::Seen(d, _, _)
            | DeviceEvent::Connected(d)
            | DeviceEvent::Disconnected(d)
            | DeviceEvent::Asleep(d, _)
            | DeviceEvent::Acked(d)
            | DeviceEvent::Rejected(d, _)
            | DeviceEvent::Undeliverable(d, _) => d,
        }
    }
}

/// A reply on its way to a device: everything needed to encode it once, for its device.
#[derive(Debug, Clone)]
pub struct OutboundReply {
    /// The device it is for (the reply topic is below `devices/{device}/reply`).
    pub device: DeviceId,
    /// The reply topic.
    pub topic: String,
    /// The CBOR payload.
    pub payload: Vec<u8>,
    /// The request's Correlation Data, copied.
    pub corr: Option<Correlation>,
    /// The reply's status (the `status` user property).
    pub status: Status,
    /// The time left of the reply TTL (Message Expiry Interval).
    pub expiry: Duration,
    /// An MQTT 3.1.1 device: no properties (its payload carries `corr`).
    pub envelope: bool,
}

impl OutboundReply {
    /// The contract's properties on every reply to an MQTT 5 device.
    pub fn properties(&self) -> PublishProperties {
        PublishProperties {
            correlation_data: self.corr.as_ref().map(|c| c.0.clone()),
            content_type: Some("application/cbor".into()),
            user_properties: vec![("status".into(), self.status.code().to_string())],
            message_expiry_interval: Some(
                self.expiry.as_secs().clamp(1, u64::from(u32::MAX)) as u32
            ),
            ..Default::default()
        }
    }
}

/// A boxed future, for the object-safe [`Sink`].
pub type Sent<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where the gateway's outgoing messages leave it: replies to devices, and JSON for operators
/// (retained status, dead letters). Implemented by the service link (external mode: both go
/// to the broker) and by the embedded wiring (replies to the front door's router, JSON to
/// rumqttd through the service link).
pub trait Sink: Send + Sync + 'static {
    /// Sends a reply to its device (never to another device: see `wire::topics`).
    fn reply(&self, reply: OutboundReply) -> Sent<'_>;
    /// Publishes JSON for operators, retained or not, without properties (MQTT 3.1.1
    /// operators subscribe to these too).
    fn announce(&self, topic: String, payload: Vec<u8>, retain: bool) -> Sent<'_>;
}

/// A cheap handle to the gateway's [`Sink`].
#[derive(Clone)]
pub struct Replies(Arc<dyn Sink>);

impl Replies {
    /// Wraps a sink.
    pub fn new(sink: impl Sink) -> Replies {
        Replies(Arc::new(sink))
    }

    /// See [`Sink::reply`].
    pub async fn reply(&self, reply: OutboundReply) {
        self.0.reply(reply).await;
    }

    /// See [`Sink::announce`].
    pub async fn announce(&self, topic: String, payload: Vec<u8>, retain: bool) {
        self.0.announce(topic, payload, retain).await;
    }
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replies")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// An ack that passed the check just before its connection ended is handed to rumqttc
    /// before the link's last drop of the ended connection's acks, and none checks after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_ends_after_the_acks_that_passed_its_check() {
        let link = Arc::new(LinkConnections::default());
        let from = link.now();
        let acking = from.acking().expect("the connection is current");
        let handed = Arc::new(AtomicBool::new(false));
        // Whether the ack had been handed over, at each of the link's drops of acks.
        let drops = Arc::new(std::sync::Mutex::new(Vec::new()));
        let end = {
            let (link, handed, drops) = (link.clone(), handed.clone(), drops.clone());
            tokio::spawn(async move {
                let drop_acks = || drops.lock().expect("drops").push(handed.load(SeqCst));
                link.end(drop_acks).await
            })
        };
        // The link raises the number before its first drop: no ack passes the check after it.
        while drops.lock().expect("drops").is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(
            from.acking().is_none(),
            "the ended connection's acks are not sent"
        );
        handed.store(true, SeqCst);
        drop(acking);
        end.await.expect("end");
        assert_eq!(
            drops.lock().expect("drops").last(),
            Some(&true),
            "the link's last drop of acks came after the ack in flight was handed over"
        );
        assert!(link.now().acking().is_some(), "the next connection acks");
    }
}
