//! A device session terminated by the front door itself: no broker connection of its own.
//!
//! Fed by [`crate::frontdoor::session`] once the CONNECT passed identity and the Will ACL;
//! feeds the service's inbox ([`super::hub`]), the device socket and presence events. It
//! answers CONNECT (resuming the device's session from [`super::sessions`] when it asked for
//! one, CONNACK with Session Present and the front door's limits), PINGREQ, SUBSCRIBE (recorded
//! here), UNSUBSCRIBE, PUBREL and DISCONNECT itself, enforces 1.5 × Keep Alive, hands the Will to the service on an abnormal end, and closes an older
//! session of the same client id (takeover). Reply filters are served by the router (the
//! service's replies); any other allowed filter (a device's own status, the loopback operator
//! view) by a side link of this session's own to rumqttd, so it gets retained messages.
//!
//! **Invariants:** a device PUBLISH reaches the service only after it parsed and passed the ACL;
//! a QoS 1 (2) publish is PUBACKed (PUBRECed) only after intake committed it; messages for the
//! device never wait on it (they arrive on a bounded channel, dropped when full).

mod inbound;
mod subscriptions;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::presence::Presence;
use super::router::Route;
use super::sessions::{SessionState, Sub};
use super::window::Window;
use crate::flow::Handled;
use crate::frontdoor::acl::Principal;
use crate::frontdoor::limits::FrontDoorStats;
use crate::frontdoor::session::{linger, read_more, SessionError, Shared};
use crate::wire::packet::outgoing::{self, reason, Accepted};
use crate::wire::packet::{ConnectInfo, PacketReader, Version, Violation};

/// Broker messages waiting for one session's task before new ones are dropped.
const DELIVERY_QUEUE: usize = 256;
/// Device publishes handed to the service and not yet acked before we stop reading.
const MAX_PENDING_ACKS: usize = 256;
/// How long a device may leave bytes we write to it untaken before its session is closed (a
/// device that stopped reading must not hold its session, and its presence, forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the last packet before a close (CONNACK refusal, DISCONNECT) may take.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a side link's subscription may take.
const SIDE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection taking over waits for the old one to park its session.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// The service handled a device publish: answer PUBACK (QoS 1) or PUBREC (QoS 2) for `pkid`,
/// with success once committed, refused when the service could not take it.
#[derive(Debug, Clone, Copy)]
struct Acked {
    pkid: u16,
    qos: u8,
    handled: Handled,
}

/// Why the loop ended.
enum End {
    /// DISCONNECT from the device (no Will unless it asked for one).
    Clean { will: bool },
    /// A newer connection of the same client id took over (no Will).
    TakenOver,
    /// The device closed its connection without DISCONNECT (Will).
    Dropped,
    /// The front door stops: what was queued for the device went out first (no Will).
    Stopping,
}

/// Serves one device session until it ends.
pub async fn serve<S>(
    mut device_rx: ReadHalf<S>,
    device_tx: WriteHalf<S>,
    reader: PacketReader,
    connect: ConnectInfo,
    principal: Principal,
    shared: Arc<Shared>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let hub = &shared.hub;
    let client_id = connect.client_id.clone();
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let (deliveries_tx, deliveries_rx) = mpsc::channel(DELIVERY_QUEUE);
    let taken_over = CancellationToken::new();
    let parked = CancellationToken::new();
    // Cancelled however this function ends (even dropped at shutdown), after the park below.
    let _parked = parked.clone().drop_guard();
    let replaced = hub.router.register(
        &client_id,
        Route {
            connection,
            deliveries_tx: deliveries_tx.clone(),
            taken_over: taken_over.clone(),
            parked,
        },
    );
    if let Some(old) = replaced {
        let _ = tokio::time::timeout(TAKEOVER_WAIT, old.parked.cancelled()).await;
    }
    let expiry_s = shared.sessions.granted_expiry(connect.session_expiry_s);
    let resumed = shared.sessions.take(&client_id, connect.clean_start);
    let presence = principal.device().map(|device| Presence {
        device: device.clone(),
        connection,
        events_tx: shared.events_tx.clone(),
    });
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let accepted = Accepted {
        session_present: resumed.is_some(),
        session_expiry_s: (expiry_s != connect.session_expiry_s).then_some(expiry_s),
        receive_maximum: MAX_PENDING_ACKS as u16,
        max_packet: u32::try_from(shared.max_packet).unwrap_or(u32::MAX),
    };
    let window = Window::new(
        connect.version,
        connect.receive_maximum,
        connect.max_packet_size,
    );
    let mut session = Session {
        client_id: client_id.clone(),
        device_tx,
        reader,
        version: connect.version,
        principal,
        shared: shared.clone(),
        presence: presence.clone(),
        acks_tx,
        pending_acks: 0,
        deliveries_tx,
        subscriptions: Vec::new(),
        side: None,
        window,
        awaiting_release: HashMap::new(),
        asked_expiry_s: connect.session_expiry_s,
        expiry_s,
        max_packet: connect.max_packet_size,
        keep_alive: (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500)),
    };
    let mut out = BytesMut::from(&outgoing::connack(connect.version, &accepted)[..]);
    let resumed_replies = match resumed {
        Some(state) => session.resume(state, &mut out).await,
        None => false,
    };
    let outcome = match session.device_tx.write_all(&out).await {
        Ok(()) => {
            FrontDoorStats::bump(&shared.stats.connected);
            if let Some(presence) = &presence {
                presence.connected(connect.version).await;
                if resumed_replies {
                    // Its reply subscriptions live on: held replies can go now.
                    presence.subscribed().await;
                }
            }
            session
                .run(&mut device_rx, acks_rx, deliveries_rx, &taken_over)
                .await
        }
        Err(error) => Err(error.into()),
    };
    shared.sessions.park(&client_id, session.state());
    hub.router.unregister(&client_id, connection);
    let will = match &outcome {
        Ok(End::Clean { will }) => *will,
        Ok(End::TakenOver | End::Stopping) => false,
        Ok(End::Dropped) | Err(_) => true,
    };
    if will {
        session.publish_will(&connect).await;
    }
    match &outcome {
        Ok(end @ (End::TakenOver | End::Stopping)) if session.version == Version::V5 => {
            let code = match end {
                End::Stopping => reason::SERVER_SHUTTING_DOWN,
                _ => reason::SESSION_TAKEN_OVER,
            };
            let disconnect = outgoing::disconnect(code);
            let write = session.device_tx.write_all(&disconnect);
            let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, write).await;
        }
        Err(SessionError::Violation(violation)) => {
            if !matches!(violation, Violation::NotAuthorized(_)) {
                FrontDoorStats::bump(&shared.stats.violations);
            }
            if session.version == Version::V5 {
                let disconnect = outgoing::disconnect(violation.reason_code());
                let write = session.device_tx.write_all(&disconnect);
                let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, write).await;
            }
        }
        _ => {}
    }
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, session.device_tx.shutdown()).await;
    if let Err(SessionError::Violation(_)) = &outcome {
        linger(&mut device_rx).await;
    }
    if let Some(presence) = &presence {
        presence.disconnected().await;
    }
    outcome.map(|_| ())
}

struct Session<W> {
    client_id: String,
    device_tx: W,
    reader: PacketReader,
    version: Version,
    principal: Principal,
    shared: Arc<Shared>,
    presence: Option<Presence>,
    acks_tx: mpsc::UnboundedSender<Acked>,
    pending_acks: usize,
    deliveries_tx: mpsc::Sender<Bytes>,
    /// Granted subscriptions with their options.
    subscriptions: Vec<Sub>,
    /// A broker connection of this session's own, for filters the reply link does not carry.
    side: Option<Link>,
    /// QoS 1 messages towards the device.
    window: Window,
    /// QoS 2 publishes from the device not yet released (PUBREL), and whether intake
    /// committed them (PUBREC sent).
    awaiting_release: HashMap<u16, bool>,
    /// The Session Expiry Interval the device asked for at CONNECT.
    asked_expiry_s: u32,
    /// The one in force (capped).
    expiry_s: u32,
    /// The device's Maximum Packet Size.
    max_packet: Option<u32>,
    keep_alive: Option<Duration>,
}

impl<W: AsyncWrite + Unpin> Session<W> {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        device_rx: &mut ReadHalf<R>,
        mut acks_rx: mpsc::UnboundedReceiver<Acked>,
        mut deliveries_rx: mpsc::Receiver<Bytes>,
        taken_over: &CancellationToken,
    ) -> Result<End, SessionError> {
        let mut out = BytesMut::with_capacity(1024);
        let mut last_heard = Instant::now();
        loop {
            while let Some((packet, frame)) = self.reader.next(self.version)? {
                last_heard = Instant::now();
                if let Some(end) = self.handle(packet, frame, &mut out).await? {
                    self.write(&out, taken_over).await?;
                    return Ok(end);
                }
                if self.pending_acks >= MAX_PENDING_ACKS {
                    break;
                }
            }
            if !out.is_empty() {
                match self.write(&out, taken_over).await {
                    Ok(()) => {}
                    Err(_) if taken_over.is_cancelled() => return Ok(End::TakenOver),
                    Err(error) => return Err(error),
                }
                out.clear();
            }
            let deadline = self.keep_alive.map(|period| last_heard + period);
            tokio::select! {
                biased;
                () = taken_over.cancelled() => return Ok(End::TakenOver),
                () = self.shared.stopping.cancelled() => {
                    // What intake and the outbox already handed this session goes out first.
                    while let Ok(acked) = acks_rx.try_recv() {
                        self.acked(acked, &mut out);
                    }
                    while let Ok(frame) = deliveries_rx.try_recv() {
                        self.deliver(frame, &mut out);
                    }
                    let write = self.device_tx.write_all(&out);
                    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, write).await;
                    return Ok(End::Stopping);
                }
                Some(acked) = acks_rx.recv() => {
                    self.acked(acked, &mut out);
                    while let Ok(acked) = acks_rx.try_recv() {
                        self.acked(acked, &mut out);
                    }
                }
                Some(frame) = deliveries_rx.recv() => {
                    self.deliver(frame, &mut out);
                    while let Ok(frame) = deliveries_rx.try_recv() {
                        self.deliver(frame, &mut out);
                    }
                }
                read = read_more(device_rx, &mut self.reader),
                    if self.pending_acks < MAX_PENDING_ACKS => {
                    if read? == 0 {
                        return Ok(End::Dropped);
                    }
                }
                () = keep_alive(deadline) => {
                    return Err(SessionError::KeepAlive);
                }
            }
        }
    }

    /// Writes to the device, giving up after [`WRITE_TIMEOUT`] or when taken over.
    async fn write(
        &mut self,
        bytes: &[u8],
        taken_over: &CancellationToken,
    ) -> Result<(), SessionError> {
        tokio::select! {
            written = tokio::time::timeout(WRITE_TIMEOUT, self.device_tx.write_all(bytes)) => {
                match written {
                    Ok(written) => Ok(written?),
                    Err(_) => Err(SessionError::WriteTimeout),
                }
            }
            () = taken_over.cancelled() => Err(SessionError::WriteTimeout),
        }
    }

    /// What this session keeps when its connection ends.
    fn state(&self) -> SessionState {
        SessionState {
            version: match self.version {
                Version::V4 => 4,
                Version::V5 => 5,
            },
            expiry_s: self.expiry_s,
            subscriptions: self.subscriptions.clone(),
            window: self.window.park(),
            awaiting_release: self
                .awaiting_release
                .iter()
                .filter(|(_, committed)| **committed)
                .map(|(pkid, _)| *pkid)
                .collect(),
            pending: Vec::new(),
        }
    }

    /// Picks up a kept session: its QoS 2 state, its unacknowledged messages again (DUP, same
    /// packet ids) and its subscriptions (side ones on a new side link). Returns whether it has
    /// reply subscriptions.
    async fn resume(&mut self, state: SessionState, out: &mut BytesMut) -> bool {
        let version = if state.version == 4 {
            Version::V4
        } else {
            Version::V5
        };
        self.awaiting_release = state
            .awaiting_release
            .iter()
            .map(|pkid| (*pkid, true))
            .collect();
        let window = Window::new(self.version, 1, self.max_packet);
        let window = std::mem::replace(&mut self.window, window);
        self.window = window.resume(state.window, version);
        self.window.resend(out);
        self.subscriptions = state.subscriptions;
        let side: Vec<(String, u8)> = self
            .subscriptions
            .iter_mut()
            .filter(|sub| sub.side)
            .map(|sub| {
                // Resumed, not new: retained messages only with Retain Handling 0.
                sub.retained_wanted = sub.retain_handling == 0;
                (sub.filter.clone(), sub.qos)
            })
            .collect();
        if !side.is_empty() {
            let link = self.side_link();
            let _ = tokio::time::timeout(SIDE_TIMEOUT, link.subscribe(side)).await;
        }
        // Replies that came while the device was away, in order.
        for frame in state.pending {
            self.deliver(Bytes::from(frame), out);
        }
        self.subscriptions.iter().any(|sub| !sub.side)
    }
}

async fn keep_alive(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
