//! The front door: the device-facing MQTT listener on `[broker] listen`, in two parts.
//!
//! Fed by device TCP (or TLS) connections. Each connection is one [`session`]: the packet layer
//! (`wire::packet`) checks every packet, [`identity`] says who it is, [`acl`] what it may do.
//! A device is then terminated by the front door itself ([`devices`]): its publishes go
//! straight to the service's inbox as `flow::Inbound`, replies come back by device id through
//! the router, and presence leaves as `flow::DeviceEvent`s. An operator or viewer is relayed to a
//! rumqttd connection of its own ([`operators`]). Logins cannot take the gateway down
//! ([`login`]): slow password checks run on a bounded pool, failures are throttled per source
//! and name, and new connections are rate-limited at accept.
//!
//! **Invariant:** nothing a device sends reaches the service or rumqttd unless it parsed and
//! passed the checks; one device's bad input or stalled socket affects only that device's
//! connection.

pub mod acl;
pub mod devices;
pub mod identity;
pub mod limits;
pub mod login;
pub mod operators;
pub mod secrets;
pub mod session;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::EmbeddedBroker;
use crate::config::{AuthConfig, Limits, TlsConfig};
use crate::flow::DeviceEvent;
pub use crate::wire::packet::Version;
pub use devices::presence::FrontDoorEvent;
pub use limits::FrontDoorStats;

/// Room for the topic and properties around the largest payload: a packet up to
/// `limits.max_payload_bytes` + this passes, so intake can answer a slightly large payload with
/// `413`; anything larger closes the connection (v5: DISCONNECT 0x95).
pub const PACKET_OVERHEAD_BYTES: usize = 64 * 1024;

/// How often expired device sessions are forgotten.
const SESSION_SWEEP: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest a connection is given to end by itself once the front door stops (a session writes
/// what is queued for its device, at most a second per write, then closes).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
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
    Credentials(#[from] crate::store::StoreError),
    /// The device sessions could not be loaded.
    #[error("cannot load the device sessions: {0}")]
    Sessions(crate::store::StoreError),
    /// A TLS file is unreadable or invalid.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The password pool's threads could not be started.
    #[error("cannot start the password check threads: {0}")]
    Threads(#[from] std::io::Error),
}

/// The device-facing listener, bound but not yet serving.
#[derive(Debug)]
pub struct FrontDoor {
    listener: TcpListener,
    settings: Settings,
    identity: identity::Identity,
    tls: Option<tls::Tls>,
    stats: Arc<FrontDoorStats>,
    router: Arc<devices::router::Router>,
    guard: Arc<login::LoginGuard>,
    sessions: Arc<devices::sessions::Sessions>,
}

impl FrontDoor {
    /// Binds the device-facing address, loads TLS material and opens the credentials reader.
    pub async fn bind(settings: Settings) -> Result<FrontDoor, FrontDoorError> {
        let tls = settings.tls.as_ref().map(tls::Tls::load).transpose()?;
        let loopback = settings.listen.ip().is_loopback();
        let stats = Arc::<FrontDoorStats>::default();
        let guard = Arc::new(login_guard(&settings.limits, stats.login.clone())?);
        let identity = identity::Identity::open(
            &settings.db_path,
            settings.auth.clone(),
            loopback,
            guard.clone(),
        )?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| FrontDoorError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let cap_s = u32::try_from(settings.limits.max_session_expiry.as_secs()).unwrap_or(u32::MAX);
        let sessions = Arc::new(
            devices::sessions::Sessions::open(
                &settings
                    .db_path
                    .with_file_name(crate::store::sessions::DB_FILE),
                cap_s,
            )
            .map_err(FrontDoorError::Sessions)?,
        );
        Ok(FrontDoor {
            sessions: sessions.clone(),
            listener,
            settings,
            identity,
            tls,
            router: Arc::new(devices::router::Router::with_sessions(
                stats.clone(),
                sessions,
            )),
            stats,
            guard,
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

    /// The password pool and failure throttle, for other operator logins (the HTTP API off
    /// loopback) to share: one bound on password work for the whole gateway.
    pub fn login_guard(&self) -> Arc<login::LoginGuard> {
        self.guard.clone()
    }

    /// The device sessions by client id: the service hands replies for devices to it.
    pub fn router(&self) -> Arc<devices::router::Router> {
        self.router.clone()
    }

    /// Accepts devices until `shutdown`, handing their publishes to the service on `service_tx`
    /// and reporting presence on `events_tx`.
    pub async fn run(
        self,
        broker: EmbeddedBroker,
        service_tx: mpsc::Sender<crate::flow::Inbound>,
        events_tx: mpsc::UnboundedSender<DeviceEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), FrontDoorError> {
        let (presence_tx, presence_rx) = mpsc::channel(1024);
        tokio::spawn(devices::presence::bridge(presence_rx, events_tx));
        let events_tx = presence_tx;
        let limits = &self.settings.limits;
        let max_packet = limits.max_payload_bytes + PACKET_OVERHEAD_BYTES;
        let hub = devices::hub::Hub {
            router: self.router.clone(),
            service_tx,
            budget: devices::hub::Hub::inbox_budget(),
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
            stopping: shutdown.clone(),
        });
        tokio::spawn(sweep_sessions(shared.clone(), shutdown.clone()));
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut rate = login::rate::ConnectRate::new(limits.max_connect_rate);
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
            if !rate.admit(std::time::Instant::now()) {
                login::LoginStats::bump(&self.stats.login.rate_limited);
                tracing::debug!(%peer, "refused: limits.max_connect_rate reached");
                drop(stream);
                continue;
            }
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
                let serving = serve(stream, tls, peer.ip(), shared.clone());
                tokio::pin!(serving);
                let outcome = tokio::select! {
                    outcome = &mut serving => outcome,
                    // A session ends itself once it wrote what was queued for its device; one
                    // still logging in gets no longer than this either.
                    _ = shutdown.cancelled() => tokio::time::timeout(STOP_GRACE, &mut serving)
                        .await
                        .unwrap_or(Ok(())),
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

/// The password pool and failure tables for `limits` (the front door's own; `app` starts one
/// for the HTTP API's logins when there is no front door).
pub fn login_guard(
    limits: &Limits,
    stats: Arc<login::LoginStats>,
) -> std::io::Result<login::LoginGuard> {
    let threads = login::pool::threads_for(limits.password_threads);
    let pool = login::pool::PasswordPool::start(threads, limits.password_queue)?;
    let throttle = login::throttle::ThrottleConfig {
        max_failures: limits.max_auth_failures,
        delay: limits.auth_delay,
        max_delay: limits.auth_max_delay,
        lockout: limits.auth_lockout,
        capacity: limits.auth_tracked_max,
    };
    Ok(login::LoginGuard::start(pool, throttle, stats))
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
    source: IpAddr,
    shared: Arc<session::Shared>,
) -> Result<(), session::SessionError> {
    match tls {
        None => session::serve(stream, None, source, shared).await,
        Some(tls) => {
            let (stream, cert_cn) =
                match tokio::time::timeout(shared.connect_timeout, tls.accept(stream)).await {
                    Ok(Ok(accepted)) => accepted,
                    Ok(Err(error)) => return Err(error.into()),
                    Err(_) => return Err(session::SessionError::ConnectTimeout),
                };
            session::serve(stream, cert_cn, source, shared).await
        }
    }
}
