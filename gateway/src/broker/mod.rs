//! The embedded MQTT broker: rumqttd, listening on loopback only, behind the front door.
//!
//! Fed by [`crate::config::Limits`]; feeds the front door and the service the loopback addresses
//! of its v4 (MQTT 3.1.1) and v5 listeners. rumqttd's `Broker::start` blocks forever and has no
//! readiness signal, so it runs on its own thread, readiness is probed by connecting, and if that
//! thread ever returns the broker is gone: [`EmbeddedBroker::stopped`] fires and the gateway exits
//! non-zero (crash-only; the store makes a restart lose nothing).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::net::TcpListener as TokioListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod health;
pub mod socket;

use socket as relay;

use crate::config::Limits;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free loopback port could be reserved.
    #[error("cannot reserve a loopback port for the embedded broker: {0}")]
    Port(std::io::Error),
    /// The broker thread could not be spawned.
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
    /// The listeners did not accept connections in time.
    #[error("the embedded broker did not start listening on {0} within 10 s")]
    NotReady(SocketAddr),
}

/// A running embedded rumqttd.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// Loopback address of its MQTT 5 listener: the only one. MQTT 3.1.1 devices reach it too,
    /// translated by the front door, because rumqttd's own v4 listener panics when a 3.1.1
    /// client is sent a publish carrying MQTT 5 properties.
    pub v5: SocketAddr,
    stopped_rx: watch::Receiver<bool>,
}

impl EmbeddedBroker {
    /// Starts rumqttd on a free loopback port and waits until it accepts connections.
    pub fn start(limits: &Limits) -> Result<EmbeddedBroker, BrokerError> {
        let v5 = free_loopback_port()?;
        let config = rumqttd_config(limits, v5);
        let (stopped_tx, stopped_rx) = watch::channel(false);
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                let outcome = broker.start();
                tracing::error!(?outcome, "embedded broker stopped");
                let _ = stopped_tx.send(true);
            })
            .map_err(BrokerError::Thread)?;
        wait_listening(v5)?;
        tracing::info!(%v5, "broker started");
        Ok(EmbeddedBroker { v5, stopped_rx })
    }

    /// A loopback listener for the gateway service's own connection, relayed to rumqttd with
    /// the front door's socket care (no Nagle stalls, see `socket`) and no checks: only this
    /// process connects to it. Returns its address.
    pub async fn service_relay(&self, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
        let listener = TokioListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let upstream = self.v5;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Ok(upstream) = relay::connect_upstream(upstream).await {
                        let _ = relay::relay(stream, upstream, &[]).await;
                    }
                });
            }
        });
        Ok(addr)
    }

    /// Resolves if the broker's thread ever returns.
    pub async fn stopped(&self) {
        let mut rx = self.stopped_rx.clone();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Reserves a free loopback port. rumqttd binds its own listeners and cannot report the port it
/// got, so we ask the OS for one and hand it over; the window between is tiny and local.
fn free_loopback_port() -> Result<SocketAddr, BrokerError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(BrokerError::Port)?;
    listener.local_addr().map_err(BrokerError::Port)
}

fn wait_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(BrokerError::NotReady(addr))
}

fn rumqttd_config(limits: &Limits, v5: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: u16::try_from(limits.connect_timeout.as_millis())
            .unwrap_or(u16::MAX),
        // Room for the MQTT header and properties around the largest payload we accept.
        max_payload_size: limits.max_payload_bytes + 64 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: connections.clone(),
    };
    // Small segments per filter (each filter gets its own log): device requests and replies
    // no longer flow through rumqttd in embedded mode, only status, dead letters and operators.
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: limits.max_connections + 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 2,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v5: Some(HashMap::from([("v5".to_owned(), server("v5", v5))])),
        ..Config::default()
    }
}
