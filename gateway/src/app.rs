//! Wiring only: builds each stage from its config section, connects them with channels, and
//! stops them in flow order on SIGINT/SIGTERM.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, EmbeddedBroker};
use crate::config::{BrokerConfig, Config};
use crate::frontdoor::{self, FrontDoor, FrontDoorError};

/// How often the watchdog probes the embedded broker, and how long one probe may take.
const HEALTH_PROBE_PERIOD: Duration = Duration::from_secs(3);

/// Why the gateway stopped other than by a clean drain.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// An address in the config could not be bound.
    #[error("cannot listen on {addr} (config key {key}): {source}")]
    Bind {
        /// The config key.
        key: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The embedded broker stopped while serving.
    #[error("the embedded broker stopped; exiting so the supervisor restarts the gateway")]
    BrokerStopped,
    /// The front door could not start (listen address, TLS files, credentials store).
    #[error(transparent)]
    FrontDoor(#[from] FrontDoorError),
    /// The embedded broker stopped answering health probes.
    #[error("{0}; exiting so the supervisor restarts the gateway")]
    BrokerUnhealthy(#[from] frontdoor::watchdog::Unhealthy),
    /// The data directory could not be created.
    #[error("cannot create data_dir {path} (config key gateway.data_dir): {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl AppError {
    /// The process exit code: 2 for what the operator must fix in the config, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Bind { .. } | AppError::DataDir { .. } => crate::cli::EXIT_CONFIG,
            AppError::FrontDoor(FrontDoorError::Bind { .. } | FrontDoorError::Tls(_)) => {
                crate::cli::EXIT_CONFIG
            }
            _ => 1,
        }
    }
}

/// Runs the gateway until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), AppError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    match config.broker {
        BrokerConfig::Embedded { listen } => {
            let data_dir = &config.gateway.data_dir;
            std::fs::create_dir_all(data_dir).map_err(|source| AppError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
            let front = FrontDoor::bind(frontdoor::Settings {
                listen,
                limits: config.limits.clone(),
                auth: config.auth.clone(),
                tls: config.tls.clone(),
                db_path: data_dir.join(crate::store::credentials::DB_FILE),
            })
            .await?;
            let broker = EmbeddedBroker::start(&config.limits)?;
            let local = front.local_addr().map_err(|source| AppError::Bind {
                key: "broker.listen",
                addr: listen,
                source,
            })?;
            // Presence events: the outbox consumes them once it is wired; until then, logged.
            let (presence_tx, mut presence_rx) = mpsc::channel(1024);
            tokio::spawn(async move {
                while let Some(event) = presence_rx.recv().await {
                    tracing::debug!(?event, "presence");
                }
            });
            println!("roost gateway listening mqtt={local}");
            let front_task =
                tokio::spawn(front.run(broker.clone(), presence_tx, shutdown.child_token()));
            let watchdog =
                frontdoor::watchdog::watch(broker.v4, HEALTH_PROBE_PERIOD, HEALTH_PROBE_PERIOD);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = broker.stopped() => return Err(AppError::BrokerStopped),
                unhealthy = watchdog => {
                    tracing::error!(%unhealthy, "broker unhealthy");
                    return Err(unhealthy.into());
                }
            }
            let _ = front_task.await;
            Ok(())
        }
        BrokerConfig::External { .. } => Ok(()),
    }
}

async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail in a fresh process");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
