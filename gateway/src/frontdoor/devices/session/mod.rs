//! A device session terminated by the front door itself: no broker connection of its own.
//!
//! Fed by [`super::session`] once the CONNECT passed identity and the Will ACL; feeds the
//! service's inbox ([`super::hub`]), the device socket and presence events. It answers CONNECT
//! (`session_present = 0`: held replies live in the outbox, which redelivers them on wake),
//! PINGREQ, SUBSCRIBE (recorded here), UNSUBSCRIBE, PUBREL and DISCONNECT itself, enforces
//! 1.5 × Keep Alive, hands the Will to the service on an abnormal end, and closes an older
//! session of the same client id (takeover). Reply filters are served by the router (the
//! service's replies); any other allowed filter (a device's own status, the loopback operator
//! view) by a side link of this session's own to rumqttd, so it gets retained messages.
//!
//! **Invariants:** a device PUBLISH reaches the service only after it parsed and passed the ACL;
//! a QoS 1 (2) publish is PUBACKed (PUBRECed) only after intake committed it; messages for the
//! device never wait on it (they arrive on a bounded channel, dropped when full).

mod subscriptions;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::downstream::Window;
use super::hub::parse_publish;
use super::link::Link;
use super::presence::Presence;
use super::router::Route;
use crate::flow::{Ack, Handled};
use crate::frontdoor::acl::Principal;
use crate::frontdoor::limits::FrontDoorStats;
use crate::frontdoor::session::{linger, read_more, SessionError, Shared};
use crate::wire::packet::outgoing::{self, reason};
use crate::wire::packet::translate;
use crate::wire::packet::{ConnectInfo, Inbound, PacketReader, Version, Violation};

/// Broker messages waiting for one session's task before new ones are dropped.
const DELIVERY_QUEUE: usize = 256;
/// Device publishes handed to the service and not yet acked before we stop reading.
const MAX_PENDING_ACKS: usize = 256;
/// MQTT 5 reason code: session taken over.
const TAKEN_OVER: u8 = 0x8E;
/// How long a device may leave bytes we write to it untaken before its session is closed (a
/// device that stopped reading must not hold its session, and its presence, forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the last packet before a close (CONNACK refusal, DISCONNECT) may take.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a side link's subscription may take.
const SIDE_TIMEOUT: Duration = Duration::from_secs(10);

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
    hub.router.register(
        &client_id,
        Route {
            connection,
            deliveries_tx: deliveries_tx.clone(),
            taken_over: taken_over.clone(),
        },
    );
    let presence = principal.device().map(|device| Presence {
        device: device.clone(),
        connection,
        events_tx: shared.events_tx.clone(),
    });
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let mut session = Session {
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
        window: Window::new(connect.version),
        keep_alive: (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500)),
    };
    let connack: &[u8] = match connect.version {
        Version::V5 => &[0x20, 3, 0, 0, 0],
        Version::V4 => &[0x20, 2, 0, 0],
    };
    let outcome = match session.device_tx.write_all(connack).await {
        Ok(()) => {
            FrontDoorStats::bump(&shared.stats.connected);
            if let Some(presence) = &presence {
                presence.connected(connect.version).await;
            }
            session
                .run(&mut device_rx, acks_rx, deliveries_rx, &taken_over)
                .await
        }
        Err(error) => Err(error.into()),
    };
    hub.router.unregister(&client_id, connection);
    let will = match &outcome {
        Ok(End::Clean { will }) => *will,
        Ok(End::TakenOver) => false,
        Ok(End::Dropped) | Err(_) => true,
    };
    if will {
        session.publish_will(&connect).await;
    }
    match &outcome {
        Ok(End::TakenOver) if session.version == Version::V5 => {
            let disconnect = outgoing::disconnect(TAKEN_OVER);
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
    device_tx: W,
    reader: PacketReader,
    version: Version,
    principal: Principal,
    shared: Arc<Shared>,
    presence: Option<Presence>,
    acks_tx: mpsc::UnboundedSender<Acked>,
    pending_acks: usize,
    deliveries_tx: mpsc::Sender<Bytes>,
    /// Granted filters and their QoS (0 or 1).
    subscriptions: Vec<(String, u8)>,
    /// A broker connection of this session's own, for filters the reply link does not carry.
    side: Option<Link>,
    /// QoS 1 messages towards the device.
    window: Window,
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

    /// Handles one checked device packet; `Some` ends the session.
    async fn handle(
        &mut self,
        packet: Inbound,
        frame: Bytes,
        out: &mut BytesMut,
    ) -> Result<Option<End>, SessionError> {
        match packet {
            Inbound::Publish { topic, qos, pkid } => {
                self.publish(&topic, qos, pkid, frame, out).await?
            }
            Inbound::Subscribe(subscription) => self.subscribe(subscription, out).await,
            Inbound::Unsubscribe { pkid, filters } => {
                let mut codes = Vec::with_capacity(filters.len());
                for filter in &filters {
                    let before = self.subscriptions.len();
                    self.subscriptions.retain(|(f, _)| f != filter);
                    // 0x11: no subscription existed.
                    codes.push(if self.subscriptions.len() < before {
                        0
                    } else {
                        0x11
                    });
                }
                let [hi, lo] = pkid.to_be_bytes();
                match self.version {
                    Version::V4 => out.extend_from_slice(&[0xB0, 2, hi, lo]),
                    Version::V5 => {
                        let len = u8::try_from(3 + codes.len()).unwrap_or(u8::MAX);
                        if len < 0x80 {
                            out.extend_from_slice(&[0xB0, len, hi, lo, 0]);
                            out.extend_from_slice(&codes);
                        } else {
                            out.extend_from_slice(&[0xB0, 3, hi, lo, 0]);
                        }
                    }
                }
            }
            Inbound::Ack => self.device_ack(&frame, out),
            Inbound::PingReq => out.extend_from_slice(&[0xD0, 0]),
            Inbound::Disconnect => {
                // v5 reason 0x04: disconnect with Will message.
                let will = self.version == Version::V5 && frame.len() >= 3 && frame[2] == 0x04;
                return Ok(Some(End::Clean { will }));
            }
        }
        Ok(None)
    }

    async fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        pkid: u16,
        frame: Bytes,
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        if !self.principal.may_publish(topic) {
            FrontDoorStats::bump(&self.shared.stats.denied_publish);
            tracing::info!(principal = ?self.principal, %topic, "publish denied");
            match self.version {
                Version::V4 => return Err(Violation::NotAuthorized("publish").into()),
                Version::V5 if qos > 0 => {
                    out.extend_from_slice(&outgoing::publish_refusal(
                        qos,
                        pkid,
                        reason::NOT_AUTHORIZED,
                    ));
                }
                Version::V5 => {}
            }
            return Ok(());
        }
        let upstream = match self.version {
            Version::V5 => frame,
            Version::V4 => {
                let mut translated = BytesMut::with_capacity(frame.len() + 1);
                translate::packet_up(&frame, &mut translated);
                translated.freeze()
            }
        };
        let Some(publish) = parse_publish(upstream) else {
            return Err(Violation::Malformed("unreadable PUBLISH".into()).into());
        };
        let ack = if qos > 0 {
            self.pending_acks += 1;
            let acks_tx = self.acks_tx.clone();
            Ack::Local(Box::new(move |handled| {
                let _ = acks_tx.send(Acked { pkid, qos, handled });
            }))
        } else {
            Ack::Local(Box::new(|_| {}))
        };
        self.shared
            .hub
            .hand_over(publish, ack)
            .await
            .map_err(|()| SessionError::Upstream)
    }

    /// The service handled a publish: ack the device (never before), with success only when
    /// it was committed. A refusal is a PUBACK (PUBREC) with reason 0x97 on MQTT 5 (the
    /// device's client frees its slot; the `503` reply says when to retry) and nothing on
    /// MQTT 3.1.1, which has no negative acknowledgement.
    fn acked(&mut self, acked: Acked, out: &mut BytesMut) {
        self.pending_acks = self.pending_acks.saturating_sub(1);
        match (acked.handled, self.version) {
            (Handled::Committed, _) => {
                let kind = if acked.qos == 2 { 0x50 } else { 0x40 };
                let [hi, lo] = acked.pkid.to_be_bytes();
                out.extend_from_slice(&[kind, 2, hi, lo]);
            }
            (Handled::Refused, Version::V5) => out.extend_from_slice(&outgoing::publish_refusal(
                acked.qos,
                acked.pkid,
                reason::QUOTA_EXCEEDED,
            )),
            (Handled::Refused, Version::V4) => {}
        }
    }

    /// PUBACK frees a slot of the window; PUBREL is answered with PUBCOMP (QoS 2 from the device,
    /// already forwarded when it arrived); PUBREC / PUBCOMP are not expected (we send QoS ≤ 1).
    fn device_ack(&mut self, frame: &[u8], out: &mut BytesMut) {
        let pkid = frame
            .get(2..4)
            .map_or(0, |id| u16::from_be_bytes([id[0], id[1]]));
        match frame.first().map(|b| b >> 4) {
            Some(4) => self.window.acked(pkid, out),
            Some(6) => {
                let [hi, lo] = pkid.to_be_bytes();
                out.extend_from_slice(&[0x70, 2, hi, lo]);
            }
            _ => {}
        }
    }

    /// Hands the device's Will to the service (its topic passed the ACL at CONNECT).
    async fn publish_will(&self, connect: &ConnectInfo) {
        let (Some(topic), Some((payload, qos, retain))) = (&connect.will_topic, &connect.will)
        else {
            return;
        };
        let frame = super::link::publish_frame(topic, (*qos).min(1), *retain, payload.clone());
        if let Some(publish) = frame.and_then(parse_publish) {
            let send = self
                .shared
                .hub
                .hand_over(publish, Ack::Local(Box::new(|_| {})));
            let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, send).await;
        }
    }
}

async fn keep_alive(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
