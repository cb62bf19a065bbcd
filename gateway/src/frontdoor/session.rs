//! One device connection, from its CONNECT to its close.
//!
//! Fed by the accept loop (a TCP or TLS stream, and the client certificate's CN); feeds the
//! broker's loopback listener, the device, and presence events. Phases:
//!
//! 1. CONNECT within `limits.connect_timeout_ms`, checked ([`super::connect`]);
//! 2. identity ([`super::identity`]) and the Will ACL; a refusal is a CONNACK with its code;
//! 3. upstream: CONNECT forwarded (Keep Alive 0 rewritten, since rumqttd refuses it), CONNACK
//!    awaited and relayed, all under the client id's gate ([`super::limits::IdGates`]);
//! 4. relay: device → broker here, every packet checked before a byte of it is forwarded;
//!    broker → device in [`super::relay::Downstream`].
//!
//! **Invariant:** nothing the device sends reaches rumqttd unless it parsed and passed the ACL.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::Interval;

use super::acl::Principal;
use super::codec::{ConnectInfo, Inbound, PacketReader, Subscription, Version, Violation};
use super::identity::Identity;
use super::limits::{FrontDoorStats, IdGates};
use super::outgoing::{self, reason};
use super::relay::{self, Control, Downstream, Slot};
use super::translate;
use super::{FrontDoorEvent, Presence};
use crate::broker::EmbeddedBroker;
use crate::wire::topics;

/// Keep Alive forwarded for a device that asked for none (rumqttd refuses 0); we ping upstream
/// at half of it on the device's behalf.
const UPSTREAM_KEEP_ALIVE_S: u16 = 600;
/// How long the broker may take to answer a CONNECT.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    /// The embedded broker's loopback listeners.
    pub broker: EmbeddedBroker,
    /// Largest packet accepted from a device, in bytes.
    pub max_packet: usize,
    /// `limits.connect_timeout_ms`.
    pub connect_timeout: Duration,
    /// Credentials and anonymous policy.
    pub identity: Identity,
    /// Counters.
    pub stats: Arc<FrontDoorStats>,
    /// Presence events.
    pub events_tx: mpsc::Sender<FrontDoorEvent>,
    /// Per-client-id CONNECT serialisation.
    pub gates: IdGates,
    /// Numbers connections in presence events.
    pub next_connection: AtomicU64,
    /// The shared upstream links device sessions use.
    pub hub: super::hub::Hub,
}

/// How a session ended, other than cleanly.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The device broke the protocol or the ACL (3.1.1 publish).
    #[error(transparent)]
    Violation(#[from] Violation),
    /// No CONNECT in time.
    #[error("no CONNECT within limits.connect_timeout_ms")]
    ConnectTimeout,
    /// The CONNECT was refused with this reason code.
    #[error("CONNECT refused with reason code {0:#04x}")]
    Refused(u8),
    /// Nothing from the device within 1.5 × its Keep Alive.
    #[error("keep alive expired")]
    KeepAlive,
    /// The upstream link failed before the broker acked a publish of this device.
    #[error("the upstream link to the broker failed")]
    Upstream,
}

/// Serves one device connection until it closes.
pub async fn serve<S>(
    stream: S,
    cert_cn: Option<String>,
    shared: Arc<Shared>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let stats = &shared.stats;
    let (mut device_rx, mut device_tx) = tokio::io::split(stream);
    let mut reader = PacketReader::new(shared.max_packet);
    let read = tokio::time::timeout(
        shared.connect_timeout,
        read_connect(&mut device_rx, &mut reader),
    )
    .await;
    let (connect, frame) = match read {
        Err(_) => {
            FrontDoorStats::bump(&stats.connect_timeouts);
            return Err(SessionError::ConnectTimeout);
        }
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(SessionError::Violation(violation))) => {
            FrontDoorStats::bump(&stats.violations);
            if let Violation::UnsupportedProtocol(_) = violation {
                // MQTT 3.1 and 3.1.1 share this CONNACK: rc 1, unacceptable protocol version.
                device_tx.write_all(&[0x20, 2, 0, 1]).await.ok();
            }
            device_tx.shutdown().await.ok();
            linger(&mut device_rx).await;
            return Err(violation.into());
        }
        Ok(Err(error)) => return Err(error),
    };
    let version = connect.version;
    let principal = match shared
        .identity
        .authenticate(&connect, cert_cn.as_deref())
        .await
    {
        Ok(principal) => principal,
        Err(code) => {
            FrontDoorStats::bump(&stats.refused);
            return refuse(&mut device_rx, &mut device_tx, version, code).await;
        }
    };
    if let Some(topic) = &connect.will_topic {
        if !principal.may_will(topic) {
            FrontDoorStats::bump(&stats.denied_will);
            return refuse(
                &mut device_rx,
                &mut device_tx,
                version,
                reason::NOT_AUTHORIZED,
            )
            .await;
        }
    }

    // Devices are terminated here and share the hub's links; operators and viewers (few, and
    // they need rumqttd's retained messages) keep a broker connection each.
    if principal.device().is_some() && !connect.client_id.is_empty() {
        return super::terminated::serve(device_rx, device_tx, reader, connect, principal, shared)
            .await;
    }
    // Every relayed client goes to the MQTT 5 listener; 3.1.1 is translated (see `translate`).
    let addr = shared.broker.v5;
    // An empty client id gets a fresh one from the broker: no takeover, no gate needed.
    let gate = match connect.client_id.as_str() {
        "" => None,
        id => Some(shared.gates.lock(id).await),
    };
    let Ok(upstream) = relay::connect_upstream(addr).await else {
        return refuse(
            &mut device_rx,
            &mut device_tx,
            version,
            reason::SERVER_UNAVAILABLE,
        )
        .await;
    };
    let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
    upstream_tx
        .write_all(&upstream_connect(&connect, frame)?)
        .await?;
    let mut down_buf = BytesMut::with_capacity(4096);
    let connack_len = match tokio::time::timeout(
        BROKER_TIMEOUT,
        relay::read_frame(&mut upstream_rx, &mut down_buf),
    )
    .await
    {
        Ok(Ok(len)) => len,
        _ => {
            tracing::warn!(client_id = %connect.client_id, "broker did not answer a CONNECT");
            return refuse(
                &mut device_rx,
                &mut device_tx,
                version,
                reason::SERVER_UNAVAILABLE,
            )
            .await;
        }
    };
    drop(gate);
    let connack = down_buf.split_to(connack_len).freeze();
    match version {
        Version::V5 => device_tx.write_all(&connack).await?,
        Version::V4 => {
            let plain = translate::packet_down(&connack).unwrap_or_default();
            device_tx.write_all(&plain).await?;
        }
    }
    if connack_code(&connack) != Some(0) {
        return Err(SessionError::Refused(
            connack_code(&connack).unwrap_or(0xFF),
        ));
    }
    FrontDoorStats::bump(&stats.connected);

    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let presence = principal.device().map(|device| Presence {
        device: device.clone(),
        connection,
        events_tx: shared.events_tx.clone(),
    });
    if let Some(presence) = &presence {
        presence
            .send(FrontDoorEvent::Connected {
                device: presence.device.clone(),
                connection,
                version,
            })
            .await;
    }
    let (control_tx, control_rx) = mpsc::channel(64);
    let down = Downstream::new(device_tx, down_buf, control_rx, version, presence.clone());
    let mut down_task = tokio::spawn(down.run(upstream_rx));
    let ping = (connect.keep_alive == 0).then(|| {
        let period = Duration::from_secs(u64::from(UPSTREAM_KEEP_ALIVE_S) / 2);
        tokio::time::interval_at(tokio::time::Instant::now() + period, period)
    });
    let up = Upstream {
        reader,
        principal,
        version,
        control_tx,
        upstream_tx,
        stats: shared.stats.clone(),
        ping,
    };
    let (outcome, down_done) = tokio::select! {
        outcome = up.run(&mut device_rx) => (outcome, false),
        _ = &mut down_task => (Ok(()), true),
    };
    // Let the broker→device side flush a final DISCONNECT, boundedly.
    if !down_done
        && tokio::time::timeout(Duration::from_secs(2), &mut down_task)
            .await
            .is_err()
    {
        down_task.abort();
    }
    if let Err(SessionError::Violation(_)) = &outcome {
        linger(&mut device_rx).await;
    }
    if let Some(presence) = &presence {
        presence
            .send(FrontDoorEvent::Disconnected {
                device: presence.device.clone(),
                connection,
            })
            .await;
    }
    outcome
}

/// Answers a CONNECT with a refusing CONNACK (when the version has a code for it) and closes.
async fn refuse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    device_rx: &mut R,
    device_tx: &mut W,
    version: Version,
    code: u8,
) -> Result<(), SessionError> {
    if let Some(connack) = outgoing::connack_refusal(version, code) {
        device_tx.write_all(&connack).await.ok();
    }
    device_tx.shutdown().await.ok();
    linger(device_rx).await;
    Err(SessionError::Refused(code))
}

/// Reads and drops what the device still sends, until it closes (bounded), so closing our side
/// does not reset the connection before the device read our last packet.
pub(super) async fn linger<R: AsyncRead + Unpin>(device_rx: &mut R) {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(device_rx.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn read_connect<R: AsyncRead + Unpin>(
    device_rx: &mut R,
    reader: &mut PacketReader,
) -> Result<Option<(ConnectInfo, Bytes)>, SessionError> {
    loop {
        if let Some(found) = reader.next_connect()? {
            return Ok(Some(found));
        }
        if read_more(device_rx, reader).await? == 0 {
            return Ok(None);
        }
    }
}

pub(super) async fn read_more<R: AsyncRead + Unpin>(
    device_rx: &mut R,
    reader: &mut PacketReader,
) -> io::Result<usize> {
    let buf = reader.buffer_mut();
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(8192);
    }
    device_rx.read_buf(buf).await
}

/// The CONNECT as forwarded: MQTT 5 (3.1.1 translated), Keep Alive 0 replaced.
fn upstream_connect(connect: &ConnectInfo, frame: Bytes) -> Result<Bytes, Violation> {
    let keep_alive = match connect.keep_alive {
        0 => UPSTREAM_KEEP_ALIVE_S,
        seconds => seconds,
    };
    if connect.version == Version::V4 {
        return translate::connect_up(&frame, keep_alive);
    }
    if connect.keep_alive != 0 {
        return Ok(frame);
    }
    let mut patched = BytesMut::from(&frame[..]);
    let at = connect.keep_alive_offset;
    patched[at..at + 2].copy_from_slice(&keep_alive.to_be_bytes());
    Ok(patched.freeze())
}

/// The return / reason code of a CONNACK frame.
fn connack_code(frame: &[u8]) -> Option<u8> {
    if frame.first() != Some(&0x20) {
        return None;
    }
    let header_len = 1 + frame.iter().skip(1).position(|b| b & 0x80 == 0)? + 1;
    frame.get(header_len + 1).copied()
}

/// The device → broker side of a session.
struct Upstream {
    reader: PacketReader,
    principal: Principal,
    version: Version,
    control_tx: mpsc::Sender<Control>,
    upstream_tx: OwnedWriteHalf,
    stats: Arc<FrontDoorStats>,
    ping: Option<Interval>,
}

impl Upstream {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        device_rx: &mut ReadHalf<R>,
    ) -> Result<(), SessionError> {
        let result = self.relay(device_rx).await;
        if let Err(SessionError::Violation(violation)) = &result {
            if !matches!(violation, Violation::NotAuthorized(_)) {
                FrontDoorStats::bump(&self.stats.violations);
            }
            if self.version == Version::V5 {
                let disconnect = outgoing::disconnect(violation.reason_code());
                let _ = self.control_tx.send(Control::Final(disconnect)).await;
            }
        }
        result
    }

    async fn relay<R: AsyncRead + Unpin>(
        &mut self,
        device_rx: &mut ReadHalf<R>,
    ) -> Result<(), SessionError> {
        let mut out = BytesMut::with_capacity(4096);
        loop {
            while let Some((packet, frame)) = self.reader.next(self.version)? {
                let disconnect = matches!(packet, Inbound::Disconnect);
                self.handle(packet, frame, &mut out).await?;
                if disconnect {
                    self.upstream_tx.write_all(&out).await?;
                    return Ok(());
                }
            }
            if !out.is_empty() {
                self.upstream_tx.write_all(&out).await?;
                out.clear();
            }
            tokio::select! {
                read = read_more(device_rx, &mut self.reader) => {
                    if read? == 0 {
                        return Ok(());
                    }
                }
                () = tick(&mut self.ping) => {
                    let _ = self.control_tx.send(Control::ExpectPingResp).await;
                    self.upstream_tx.write_all(&outgoing::PINGREQ).await?;
                }
            }
        }
    }

    /// Appends what may go upstream to `out`; answers denials through the control channel.
    async fn handle(
        &mut self,
        packet: Inbound,
        frame: Bytes,
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        match packet {
            Inbound::Publish { topic, qos, pkid } => {
                if self.principal.may_publish(&topic) {
                    self.forward(&frame, out);
                    return Ok(());
                }
                FrontDoorStats::bump(&self.stats.denied_publish);
                tracing::info!(?self.principal, %topic, "publish denied");
                match self.version {
                    Version::V4 => return Err(Violation::NotAuthorized("publish").into()),
                    Version::V5 if qos > 0 => {
                        let refusal = outgoing::publish_refusal(qos, pkid, reason::NOT_AUTHORIZED);
                        self.control(Control::Write(refusal)).await;
                    }
                    Version::V5 => {}
                }
            }
            Inbound::Subscribe(subscription) => self.subscribe(subscription, frame, out).await?,
            _ => self.forward(&frame, out),
        }
        Ok(())
    }

    /// Appends a checked packet as the broker's MQTT 5 listener takes it.
    fn forward(&self, frame: &[u8], out: &mut BytesMut) {
        match self.version {
            Version::V5 => out.extend_from_slice(frame),
            Version::V4 => translate::packet_up(frame, out),
        }
    }

    async fn subscribe(
        &mut self,
        subscription: Subscription,
        frame: Bytes,
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let denied_code = outgoing::denied_subscription(self.version);
        let plan: Vec<Slot> = subscription
            .filters
            .iter()
            .map(|filter| {
                if self.principal.may_subscribe(filter) {
                    let reply = self
                        .principal
                        .device()
                        .is_some_and(|device| topics::is_reply_filter(device, filter));
                    Slot::Forwarded { reply }
                } else {
                    Slot::Denied(denied_code)
                }
            })
            .collect();
        let keep: Vec<bool> = plan
            .iter()
            .map(|slot| matches!(slot, Slot::Forwarded { .. }))
            .collect();
        let denied = keep.iter().filter(|kept| !**kept).count();
        for _ in 0..denied {
            FrontDoorStats::bump(&self.stats.denied_subscribe);
        }
        let watch_reply = plan
            .iter()
            .any(|slot| matches!(slot, Slot::Forwarded { reply: true }));
        let pkid = subscription.pkid;
        if denied == plan.len() {
            let codes = vec![denied_code; plan.len()];
            let suback = outgoing::suback(self.version, pkid, &codes);
            self.control(Control::Write(suback)).await;
        } else if denied == 0 && self.version == Version::V5 {
            if watch_reply {
                self.control(Control::Watch { pkid, plan }).await;
            }
            out.extend_from_slice(&frame);
        } else {
            // Registered before the SUBSCRIBE goes upstream, so it is queued before the SUBACK.
            let allowed = subscription.encode_v5(&keep)?;
            self.control(Control::Watch { pkid, plan }).await;
            out.extend_from_slice(&allowed);
        }
        Ok(())
    }

    async fn control(&self, control: Control) {
        // A closed channel means the other side already ended; the session ends with it.
        let _ = self.control_tx.send(control).await;
    }
}

async fn tick(ping: &mut Option<Interval>) {
    match ping {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
