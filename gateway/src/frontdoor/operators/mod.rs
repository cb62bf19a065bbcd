//! An operator's or viewer's connection, relayed 1:1 to rumqttd: operators are few, and they
//! need rumqttd's retained messages (`gateway/#`, `devices/+/status`) straight from the broker.
//!
//! Fed by [`crate::frontdoor::session`] once the CONNECT passed identity; feeds the broker's loopback
//! listener and the client. Phases:
//!
//! 1. upstream: CONNECT forwarded (Keep Alive 0 rewritten, since rumqttd refuses it), CONNACK
//!    awaited and relayed, all under the client id's gate ([`crate::frontdoor::limits::IdGates`]);
//! 2. relay: client → broker here, every packet checked before a byte of it is forwarded;
//!    broker → client in [`downstream::Downstream`].
//!
//! **Invariant:** nothing the client sends reaches rumqttd unless it parsed and passed the ACL.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::Interval;

use crate::frontdoor::acl::Principal;
use crate::frontdoor::limits::FrontDoorStats;
use crate::wire::packet::outgoing::{self, reason};
use crate::wire::packet::{
    header_len, ConnectInfo, Inbound, PacketReader, Subscription, Version, Violation,
};
pub mod downstream;

use crate::broker::socket as relay;
use crate::frontdoor::session::{linger, read_more, refuse, SessionError, Shared};
use crate::wire::packet::translate;
use downstream::{Control, Downstream, Slot};

/// Keep Alive forwarded for a client that asked for none (rumqttd refuses 0); we ping upstream
/// at half of it on the client's behalf.
const UPSTREAM_KEEP_ALIVE_S: u16 = 600;
/// How long the broker may take to answer a CONNECT.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Relays one checked connection until it closes.
pub async fn serve<S>(
    mut device_rx: ReadHalf<S>,
    mut device_tx: WriteHalf<S>,
    reader: PacketReader,
    connect: ConnectInfo,
    frame: Bytes,
    principal: Principal,
    shared: Arc<Shared>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let stats = &shared.stats;
    let version = connect.version;
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

    let (control_tx, control_rx) = mpsc::channel(64);
    let down = Downstream::new(device_tx, down_buf, control_rx, version);
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
        stopping: shared.stopping.clone(),
    };
    let (outcome, down_done, ended) = tokio::select! {
        outcome = up.run(&mut device_rx) => (outcome, false, "by the client or the stop"),
        _ = &mut down_task => (Ok(()), true, "by the broker"),
    };
    // Let the broker→device side flush a final DISCONNECT, boundedly.
    let flushed = match down_done {
        true => "already",
        false => match tokio::time::timeout(Duration::from_secs(2), &mut down_task).await {
            Ok(Ok(Ok(()))) => "yes",
            Ok(_) => "failed",
            Err(_) => {
                down_task.abort();
                "timed out"
            }
        },
    };
    tracing::debug!(client_id = %connect.client_id, ended, flushed, "operator relay ended");
    if let Err(SessionError::Violation(_)) = &outcome {
        linger(&mut device_rx).await;
    }
    outcome
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
    frame.get(header_len(frame) + 1).copied()
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
    /// The front door stops.
    stopping: tokio_util::sync::CancellationToken,
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
                // The front door stops: what the broker already sent goes out, then a DISCONNECT
                // saying so (MQTT 5: 0x8B, Server shutting down). Queued while this side still
                // holds the broker connection: once it is dropped the broker closes its end, and
                // the other side could see that close before the DISCONNECT.
                () = self.stopping.cancelled() => {
                    let last = match self.version {
                        Version::V5 => outgoing::disconnect(reason::SERVER_SHUTTING_DOWN),
                        Version::V4 => Bytes::new(),
                    };
                    self.control(Control::Final(last)).await;
                    return Ok(());
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
                    Slot::Forwarded
                } else {
                    Slot::Denied(denied_code)
                }
            })
            .collect();
        let keep: Vec<bool> = plan
            .iter()
            .map(|slot| matches!(slot, Slot::Forwarded))
            .collect();
        let denied = keep.iter().filter(|kept| !**kept).count();
        for _ in 0..denied {
            FrontDoorStats::bump(&self.stats.denied_subscribe);
        }
        let pkid = subscription.pkid;
        if denied == plan.len() {
            let codes = vec![denied_code; plan.len()];
            let suback = outgoing::suback(self.version, pkid, &codes);
            self.control(Control::Write(suback)).await;
        } else if denied == 0 && self.version == Version::V5 {
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
