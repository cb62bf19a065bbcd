//! The front door: the device-facing MQTT listener on `[broker] listen`.
//!
//! Fed by device TCP (or TLS) connections; feeds the gateway service's inbox, the embedded
//! broker and the gateway's presence tracking through [`FrontDoorEvent`]s. Each connection is
//! one [`session`]: [`connect`] and [`identity`] say who it is, [`acl`] what it may do, [`codec`]
//! checks every packet. A device is then terminated by the front door itself ([`terminated`]):
//! its publishes go straight to the service ([`hub`]) and the service's replies come back by
//! device id ([`router`], [`downstream`]); only its other subscriptions use a side link to the
//! broker ([`link`]). An operator or viewer is relayed to a broker connection of its own
//! ([`relayed`], [`relay`]).
//!
//! **Invariant:** nothing a device sends reaches the service or rumqttd unless it parsed and
//! passed the checks; one device's bad input or stalled socket affects only that device's
//! connection.

pub mod acl;
pub mod admin;
pub mod codec;
pub mod connect;
pub mod downstream;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod link;
pub mod outgoing;
pub mod relay;
pub mod relayed;
pub mod router;
pub mod secrets;
pub mod session;
pub mod sessions;
pub mod terminated;
pub mod tls;
pub mod translate;
pub mod watchdog;
pub mod window;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::EmbeddedBroker;
use crate::config::{AuthConfig, Limits, TlsConfig};
use crate::wire::DeviceId;
pub use codec::Version;
pub use limits::FrontDoorStats;

/// Room for the topic and properties around the largest payload: a packet up to
/// `limits.max_payload_bytes` + this passes, so intake can answer a slightly large payload with
/// `413`; anything larger closes the connection (v5: DISCONNECT 0x95).
pub const PACKET_OVERHEAD_BYTES: usize = 64 * 1024;

/// How often expired device sessions are forgotten.
const SESSION_SWEEP: std::time::Duration = std::time::Duration::from_secs(10);

/// Presence as the front door sees it. A device is awake while it has a connection that sent
/// `Connected` and not yet `Disconnected`; `connection` tells apart overlapping connections of
/// one id (a reconnect can overtake the old connection's end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontDoorEvent {
    /// Device `device` connected (CONNACK accepted).
    Connected {
        /// The device.
        device: DeviceId,
        /// This connection's number.
        connection: u64,
        /// Its protocol version.
        version: Version,
    },
    /// The broker granted one of the device's reply subscriptions: held replies can go now.
    Subscribed {
        /// The device.
        device: DeviceId,
        /// The connection.
        connection: u64,
    },
    /// The connection ended (cleanly or not).
    Disconnected {
        /// The device.
        device: DeviceId,
        /// The connection.
        connection: u64,
    },
    /// A reply could not be sent to the device (over its Maximum Packet Size): the service
    /// dead-letters it and stops holding it.
    Undeliverable {
        /// The device.
        device: DeviceId,
        /// The reply's Correlation Data.
        corr: Option<bytes::Bytes>,
        /// The reply's status code (0 when unreadable).
        status: u16,
        /// Why, for the dead letter.
        reason: String,
    },
}

/// Where one connection's presence events go.
#[derive(Debug, Clone)]
pub struct Presence {
    device: DeviceId,
    connection: u64,
    events_tx: mpsc::Sender<FrontDoorEvent>,
}

impl Presence {
    async fn send(&self, event: FrontDoorEvent) {
        // No receiver (tests, shutdown): presence is advisory, the connection goes on.
        let _ = self.events_tx.send(event).await;
    }

    /// The device's connection got its CONNACK.
    async fn connected(&self, version: Version) {
        let (device, connection) = (self.device.clone(), self.connection);
        self.send(FrontDoorEvent::Connected {
            device,
            connection,
            version,
        })
        .await;
    }

    /// The broker granted one of the device's reply subscriptions.
    async fn subscribed(&self) {
        let (device, connection) = (self.device.clone(), self.connection);
        self.send(FrontDoorEvent::Subscribed { device, connection })
            .await;
    }

    /// A reply could not be sent to the device; never waits (the event is sent from a task).
    fn undeliverable(&self, corr: Option<bytes::Bytes>, status: u16, reason: String) {
        let event = FrontDoorEvent::Undeliverable {
            device: self.device.clone(),
            corr,
            status,
            reason,
        };
        let events_tx = self.events_tx.clone();
        tokio::spawn(async move {
            let _ = events_tx.send(event).await;
        });
    }

    /// The device's connection ended.
    async fn disconnected(&self) {
        let (device, connection) = (self.device.clone(), self.connection);
        self.send(FrontDoorEvent::Disconnected { device, connection })
            .await;
    }
}

/// What the front door is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[broker] listen`.
    pub listen: SocketAddr,
    /// `[limits]`.
    pub limits: Limits,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[broker.tls]`, when set.
    pub tls: Option<TlsConfig>,
    /// The SQLite file holding credentials (`data_dir/roost.db`).
    pub db_path: PathBuf,
}

/// Why the front door could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (config key broker.listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The credentials table could not be opened.
    #[error("cannot open the credentials store: {0}")]
    Credentials(#[from] rusqlite::Error),
    /// The device sessions could not be loaded.
    #[error("cannot load the device sessions: {0}")]
    Sessions(rusqlite::Error),
    /// A TLS file is unreadable or invalid.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// The device-facing listener, bound but not yet serving.
#[derive(Debug)]
pub struct FrontDoor {
    listener: TcpListener,
    settings: Settings,
    identity: identity::Identity,
    tls: Option<tls::Tls>,
    stats: Arc<FrontDoorStats>,
    router: Arc<router::Router>,
    sessions: Arc<sessions::Sessions>,
}

impl FrontDoor {
    /// Binds the device-facing address, loads TLS material and opens the credentials reader.
    pub async fn bind(settings: Settings) -> Result<FrontDoor, FrontDoorError> {
        let tls = settings.tls.as_ref().map(tls::Tls::load).transpose()?;
        let loopback = settings.listen.ip().is_loopback();
        let identity =
            identity::Identity::open(&settings.db_path, settings.auth.clone(), loopback)?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| FrontDoorError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let cap_s = u32::try_from(settings.limits.max_session_expiry.as_secs()).unwrap_or(u32::MAX);
        let sessions = Arc::new(
            sessions::Sessions::open(
                &settings
                    .db_path
                    .with_file_name(crate::store::sessions::DB_FILE),
                cap_s,
            )
            .map_err(FrontDoorError::Sessions)?,
        );
        let stats = Arc::<FrontDoorStats>::default();
        Ok(FrontDoor {
            sessions: sessions.clone(),
            listener,
            settings,
            identity,
            tls,
            router: Arc::new(router::Router::with_sessions(stats.clone(), sessions)),
            stats,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The counters, for status and metrics.
    pub fn stats(&self) -> Arc<FrontDoorStats> {
        self.stats.clone()
    }

    /// The device sessions by client id: the service hands replies for devices to it.
    pub fn router(&self) -> Arc<router::Router> {
        self.router.clone()
    }

    /// Accepts devices until `shutdown`, handing their publishes to the service on `service_tx`
    /// and reporting presence on `events_tx`.
    pub async fn run(
        self,
        broker: EmbeddedBroker,
        service_tx: mpsc::Sender<crate::mqtt::Incoming>,
        events_tx: mpsc::Sender<FrontDoorEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), FrontDoorError> {
        let limits = &self.settings.limits;
        let max_packet = limits.max_payload_bytes + PACKET_OVERHEAD_BYTES;
        let hub = hub::Hub {
            router: self.router.clone(),
            service_tx,
            budget: hub::Hub::inbox_budget(),
            addr: broker.v5,
            max_packet,
        };
        let shared = Arc::new(session::Shared {
            hub,
            broker,
            max_packet,
            connect_timeout: limits.connect_timeout,
            identity: self.identity,
            stats: self.stats.clone(),
            events_tx,
            gates: limits::IdGates::default(),
            next_connection: AtomicU64::new(1),
            sessions: self.sessions,
        });
        tokio::spawn(sweep_sessions(shared.clone(), shutdown.clone()));
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(ok) => ok,
                Err(error) => {
                    // Out of file descriptors and the like: transient, keep serving others.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                FrontDoorStats::bump(&self.stats.over_limit);
                tracing::debug!(%peer, "refused: limits.max_connections reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            FrontDoorStats::bump(&self.stats.accepted);
            let shared = shared.clone();
            let tls = self.tls.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                shared.stats.open.fetch_add(1, Ordering::Relaxed);
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => Ok(()),
                    outcome = serve(stream, tls, shared.clone()) => outcome,
                };
                shared.stats.open.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
                if let Err(error) = outcome {
                    tracing::debug!(%peer, %error, "device connection closed");
                }
            });
        }
        tracker.close();
        tracker.wait().await;
        let flushed = shared.clone();
        let _ = tokio::task::spawn_blocking(move || flushed.sessions.flush()).await;
        Ok(())
    }
}

/// Forgets expired device sessions now and then, until shutdown.
async fn sweep_sessions(shared: Arc<session::Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SESSION_SWEEP);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => shared.sessions.sweep(),
        }
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    tls: Option<tls::Tls>,
    shared: Arc<session::Shared>,
) -> Result<(), session::SessionError> {
    match tls {
        None => session::serve(stream, None, shared).await,
        Some(tls) => {
            let (stream, cert_cn) =
                match tokio::time::timeout(shared.connect_timeout, tls.accept(stream)).await {
                    Ok(Ok(accepted)) => accepted,
                    Ok(Err(error)) => return Err(error.into()),
                    Err(_) => return Err(session::SessionError::ConnectTimeout),
                };
            session::serve(stream, cert_cn, shared).await
        }
    }
}
