//! Retention: every [`EVERY`], forget what the dedupe window (`limits.dedupe_window_s`) and the
//! telemetry limits (`limits.telemetry_retention_s`, `limits.max_telemetry_rows_per_device`)
//! no longer keep. A task of its own, so a long prune holds up neither the outbox's replies
//! nor, being deleted in chunks ([`Store::prune`]), anyone's commits. On a shared store one
//! gateway prunes for all ([`Store::prunes`]).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{now_ms, Store};
use crate::config::Limits;

/// How often the store is pruned.
pub const EVERY: Duration = Duration::from_secs(10);

/// Prunes `store` every [`EVERY`] until `stop`.
pub async fn run(store: Store, limits: Limits, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !store.prunes() {
            continue;
        }
        let now = now_ms();
        let started = Instant::now();
        let pruned = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            pruned = store.prune(
                now - limits.dedupe_window.as_millis() as i64,
                now - limits.telemetry_retention.as_millis() as i64,
                limits.max_telemetry_rows_per_device,
            ) => pruned,
        };
        match pruned {
            Ok((requests, readings)) if requests + readings > 0 => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                tracing::info!(requests, readings, elapsed_ms, "pruned");
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "prune failed"),
        }
    }
}
