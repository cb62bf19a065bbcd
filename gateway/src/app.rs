//! Wiring only: builds each stage from its config section, connects them with channels, and
//! stops them in flow order on SIGINT/SIGTERM.

use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, EmbeddedBroker};
use crate::config::{BrokerConfig, Config};
use crate::frontdoor::FrontDoor;

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
}

impl AppError {
    /// The process exit code: 2 for what the operator must fix in the config, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Bind { .. } => crate::cli::EXIT_CONFIG,
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
            let front = FrontDoor::bind(listen)
                .await
                .map_err(|source| AppError::Bind {
                    key: "broker.listen",
                    addr: listen,
                    source,
                })?;
            let broker = EmbeddedBroker::start(&config.limits)?;
            let local = front.local_addr().map_err(|source| AppError::Bind {
                key: "broker.listen",
                addr: listen,
                source,
            })?;
            println!("roost gateway listening mqtt={local}");
            let front_task = tokio::spawn(front.run(broker.clone(), shutdown.child_token()));
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = broker.stopped() => return Err(AppError::BrokerStopped),
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
