//! One device-facing connection, from its CONNECT to the hand-over.
//!
//! Fed by the accept loop (a TCP or TLS stream, and the client certificate's CN); feeds one of
//! the two ways a connection is served. Phases:
//!
//! 1. CONNECT within `limits.connect_timeout_ms`, checked ([`crate::wire::packet::connect`]);
//! 2. identity ([`super::identity`], slow password checks bounded by [`super::login`]) and the
//!    Will ACL; a refusal is a CONNACK with its code;
//! 3. a device is terminated here, its publishes handed to the service ([`super::devices::session`]);
//!    an operator or viewer is relayed to a broker connection of its own ([`super::operators`]).
//!
//! **Invariant:** nothing the device sends reaches the service or rumqttd unless it parsed and
//! passed the ACL.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::identity::Identity;
use super::limits::{FrontDoorStats, IdGates};
use super::login::Attempt;
use super::FrontDoorEvent;
use crate::broker::EmbeddedBroker;
use crate::wire::packet::outgoing::{self, reason};
use crate::wire::packet::{ConnectInfo, PacketReader, Version, Violation};

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
    /// The service's inbox and reply router device sessions use.
    pub hub: super::devices::hub::Hub,
    /// Device sessions between connections.
    pub sessions: Arc<super::devices::sessions::Sessions>,
    /// Cancelled when the front door stops: each device session writes what is queued for its
    /// device (replies, acknowledgements), says so (DISCONNECT 0x8B on MQTT 5) and ends.
    pub stopping: tokio_util::sync::CancellationToken,
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
    /// The device took no bytes for too long.
    #[error("the device stopped reading")]
    WriteTimeout,
    /// Nothing from the device within 1.5 × its Keep Alive.
    #[error("keep alive expired")]
    KeepAlive,
    /// The service stopped taking device publishes (the gateway is stopping).
    #[error("the gateway service is not taking publishes")]
    Upstream,
}

/// Serves one device connection from `source` until it closes.
pub async fn serve<S>(
    stream: S,
    cert_cn: Option<String>,
    source: IpAddr,
    shared: Arc<Shared>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let stats = &shared.stats;
    let attempt = Attempt {
        source,
        deadline: tokio::time::Instant::now() + shared.connect_timeout,
    };
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
        .authenticate(&connect, cert_cn.as_deref(), attempt)
        .await
    {
        Ok(principal) => principal,
        Err(refusal) => {
            FrontDoorStats::bump(&stats.refused);
            stats.login.failed(refusal);
            return refuse(&mut device_rx, &mut device_tx, version, refusal.code()).await;
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

    // Devices are terminated here and talk to the service; operators and viewers (few, and
    // they need rumqttd's retained messages) keep a broker connection each.
    if principal.device().is_some() && !connect.client_id.is_empty() {
        return super::devices::session::serve(
            device_rx, device_tx, reader, connect, principal, shared,
        )
        .await;
    }
    super::operators::serve(
        device_rx, device_tx, reader, connect, frame, principal, shared,
    )
    .await
}

/// Answers a CONNECT with a refusing CONNACK (when the version has a code for it) and closes.
pub(super) async fn refuse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
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
