//! Whether the store can write: the gateway's one degraded state, the same for every engine.
//!
//! Fed by every write the [`super::Store`] facade runs (a failure that is the store's, not the
//! caller's, marks it degraded with its reason) and by [`probe`], which, while degraded, tries a
//! real write with capped backoff and marks it healthy again once one commits. Read by intake
//! (new requests get `503` while degraded), the workers (completions that failed are kept and
//! committed again after recovery), the status publisher, `/healthz` and `/metrics`.
//!
//! With SQLite, the first "disk full" also releases the disk reserve
//! ([`super::sqlite::reserve`]): from then on the store *may finish* — accepted work (final
//! replies, acks, dead letters) still commits into the freed space while new requests are
//! refused. The probe re-creates the reserve before the store counts as writable again.
//!
//! **Invariant:** the state changes only on evidence: degraded after a failed write, healthy
//! after a committed probe write; nothing in between is guessed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError};

/// First wait between probes; doubled after each failed probe up to [`PROBE_MAX`].
const PROBE_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between probes.
const PROBE_MAX: Duration = Duration::from_secs(5);
/// What a `503` asks a device to wait while the store is degraded.
pub const RETRY_AFTER_MS: u64 = 5_000;

/// The store's write health. Shared by every clone of the [`Store`].
#[derive(Debug)]
pub struct StoreHealth {
    state: Mutex<Option<Degraded>>,
    /// Milliseconds spent degraded in periods that ended.
    ended_ms: AtomicU64,
    /// Degradations since start.
    periods: AtomicU64,
    changed_tx: watch::Sender<bool>,
    /// The data dir holding the disk reserve (SQLite), if any.
    reserve: Option<PathBuf>,
    /// The reserve was released in this degraded period: accepted work may still commit.
    finishing: AtomicBool,
}

#[derive(Debug, Clone)]
struct Degraded {
    reason: String,
    since: Instant,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth::new(None)
    }
}

impl StoreHealth {
    /// Healthy; `reserve` is the data dir whose disk reserve a full disk releases.
    pub fn new(reserve: Option<PathBuf>) -> StoreHealth {
        StoreHealth {
            state: Mutex::new(None),
            ended_ms: AtomicU64::new(0),
            periods: AtomicU64::new(0),
            changed_tx: watch::channel(false).0,
            reserve,
            finishing: AtomicBool::new(false),
        }
    }

    /// Whether writes of accepted work may be tried: healthy, or degraded with the reserve
    /// released for them.
    pub fn may_write(&self) -> bool {
        !self.is_degraded() || self.finishing.load(Ordering::Relaxed)
    }

    /// Whether accepted work is finishing in the released reserve (degraded, disk full).
    pub fn finishing(&self) -> bool {
        self.is_degraded() && self.finishing.load(Ordering::Relaxed)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Degraded>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the store degraded with `reason` (kept from the first failure of a period).
    pub fn degrade(&self, reason: &str) {
        let mut state = self.lock();
        if state.is_none() {
            tracing::error!(
                reason,
                "store degraded: new requests get 503 until it writes again"
            );
            *state = Some(Degraded {
                reason: reason.to_owned(),
                since: Instant::now(),
            });
            self.periods.fetch_add(1, Ordering::Relaxed);
            self.changed_tx.send_replace(true);
        }
    }

    /// Marks the store degraded where accepted work may still write: it is over its budget
    /// (`limits.max_store_bytes`), not out of disk, and acks are what make room.
    pub fn degrade_finishing(&self, reason: &str) {
        self.degrade(reason);
        self.finishing.store(true, Ordering::Relaxed);
    }

    /// Marks the store healthy again (a probe write committed).
    pub fn recover(&self) {
        let mut state = self.lock();
        if let Some(degraded) = state.take() {
            let lasted = degraded.since.elapsed();
            self.ended_ms
                .fetch_add(lasted.as_millis() as u64, Ordering::Relaxed);
            tracing::info!(
                degraded_ms = lasted.as_millis() as u64,
                "store recovered: serving again"
            );
            self.finishing.store(false, Ordering::Relaxed);
            self.changed_tx.send_replace(false);
        }
    }

    /// Why the store is degraded, or `None` while it writes.
    pub fn reason(&self) -> Option<String> {
        self.lock().as_ref().map(|d| d.reason.clone())
    }

    /// Whether the store is degraded now.
    pub fn is_degraded(&self) -> bool {
        self.lock().is_some()
    }

    /// Seconds spent degraded since start, the current period included.
    pub fn degraded_seconds(&self) -> f64 {
        let current = self
            .lock()
            .as_ref()
            .map_or(0, |d| d.since.elapsed().as_millis()) as u64;
        (self.ended_ms.load(Ordering::Relaxed) + current) as f64 / 1000.0
    }

    /// How many times the store became degraded since start.
    pub fn periods(&self) -> u64 {
        self.periods.load(Ordering::Relaxed)
    }

    /// Changes of the degraded flag (`true` = degraded).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changed_tx.subscribe()
    }

    /// Resolves once the store is healthy (at once if it is).
    pub async fn healthy(&self) {
        let mut changes = self.subscribe();
        let _ = changes.wait_for(|degraded| !degraded).await;
    }

    /// Notes a write's outcome: a failure that is the store's degrades it.
    pub(super) fn observe<T>(&self, result: &Result<T, StoreError>) {
        if let Err(error) = result {
            if error.degrades() {
                self.degrade(&error.to_string());
            }
            if matches!(error, StoreError::Full(_)) {
                self.release_reserve();
            }
        }
    }

    /// Gives the disk reserve to accepted work (once per degraded period).
    fn release_reserve(&self) {
        if let Some(dir) = &self.reserve {
            if super::sqlite::reserve::release(dir) {
                tracing::warn!(
                    bytes = super::sqlite::reserve::RESERVE_BYTES,
                    "disk full: released the disk reserve for accepted work to finish"
                );
                self.finishing.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// While the store is degraded, tries a real write with capped backoff; recovers it once one
/// commits. Runs until `stop`.
pub async fn probe(store: Store, stop: CancellationToken) {
    let mut changes = store.health().subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.wait_for(|degraded| *degraded) => if changed.is_err() { return },
        }
        let mut wait = PROBE_FIRST;
        while store.health().is_degraded() {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match store.probe().await {
                Ok(()) => store.health().recover(),
                Err(error) => {
                    tracing::debug!(%error, ?wait, "store probe failed");
                    wait = (wait * 2).min(PROBE_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_is_counted_once_and_timed() {
        let health = StoreHealth::default();
        assert!(!health.is_degraded());
        health.degrade("disk full");
        health.degrade("another failure of the same period");
        assert_eq!(health.reason().as_deref(), Some("disk full"));
        assert_eq!(health.periods(), 1);
        health.recover();
        assert!(!health.is_degraded());
        assert!(health.degraded_seconds() >= 0.0);
        health.degrade("again");
        assert_eq!(health.periods(), 2);
    }
}
