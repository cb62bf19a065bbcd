//! Opening the store at start. A database that cannot be reached yet (PostgreSQL started
//! after the gateway, or restarting) is waited for, with backoff, instead of exiting: the
//! gateway's own listeners are bound, and it serves as soon as the store opens. Any other
//! failure (a bad URL, a schema newer than this gateway, a corrupt file) ends the start.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::StoreConfig;
use crate::store::{Store, StoreError};

/// The first retry's delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the wait is said again while it lasts.
const SAY_EVERY: Duration = Duration::from_secs(30);

/// The opened store, or `None` when a shutdown was asked for while waiting for it.
pub async fn open(
    config: &StoreConfig,
    data_dir: &Path,
    shutdown: &CancellationToken,
) -> Result<Option<Store>, StoreError> {
    let mut backoff = FIRST_BACKOFF;
    let mut said: Option<tokio::time::Instant> = None;
    loop {
        match Store::open(config, data_dir).await {
            Ok(store) => {
                if said.is_some() {
                    tracing::info!("store reachable: starting");
                }
                return Ok(Some(store));
            }
            Err(StoreError::Unavailable(error)) => {
                if said.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
                    tracing::warn!(
                        %error,
                        "waiting for the store (config key store.url) before serving"
                    );
                    said = Some(tokio::time::Instant::now());
                }
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
