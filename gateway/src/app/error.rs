//! Why the gateway stopped other than by a clean drain, and the exit code for each reason.

use std::net::SocketAddr;

use crate::broker::BrokerError;
use crate::frontdoor::FrontDoorError;
use crate::link::LinkError;
use crate::store::StoreError;

/// Why the gateway stopped other than by a clean drain.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// An address in the config could not be bound.
    #[error("cannot listen on {addr} (config key {key}): {source}")]
    Bind {
        /// The config key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened or failed while serving.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded broker failed to start.
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
    BrokerUnhealthy(#[from] crate::broker::health::Unhealthy),
    /// The data directory could not be created.
    #[error("cannot create data_dir {path} (config key gateway.data_dir): {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The service could not connect to the broker.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A configured model does not load (file, declared shapes).
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// `[http] listen` is not on loopback and operator login cannot be required.
    #[error(transparent)]
    HttpLogin(#[from] crate::status::login::LoginError),
    /// A stage hit a fatal fault.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl AppError {
    /// The process exit code: 2 for what the operator must fix in the config, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Bind { .. }
            | AppError::DataDir { .. }
            | AppError::Model(_)
            | AppError::HttpLogin(_) => crate::config::EXIT_CONFIG,
            AppError::FrontDoor(FrontDoorError::Bind { .. } | FrontDoorError::Tls(_)) => {
                crate::config::EXIT_CONFIG
            }
            AppError::Store(error) => error.exit_code(),
            _ => 1,
        }
    }
}

pub(super) fn bind_error(
    key: &'static str,
    addr: SocketAddr,
) -> impl FnOnce(std::io::Error) -> AppError {
    move |source| AppError::Bind { key, addr, source }
}
