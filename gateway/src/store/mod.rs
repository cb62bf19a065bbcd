//! The store: the gateway's durable state behind one typed interface, and the only place SQL
//! exists. Two engines, one contract: [`sqlite`] (embedded, `data_dir/roost.db`, the default) and
//! [`postgres`] (several gateways share one database).
//!
//! Callers hand the store plain values ([`requests::NewRequest`], [`commands::Command`],
//! [`requests::Completion`]...) and get plain values back once the work has **committed**: so
//! a caller that sees a result knows it is durable, and **a request row is committed before any
//! reply about it is published.** Writes are group-committed (many callers' work in one
//! transaction). The async runtime never waits on a database call: it awaits a oneshot.
//!
//! Fed by intake (a batch of commands per inbox batch), the workers (completions), the outbox
//! (delivery state, each device's row), recovery, the status publisher and the HTTP API
//! (operators' views: [`operators`]); feeds them rows. No rusqlite or tokio-postgres type
//! leaves this module.

mod access;
pub mod cluster;
pub mod commands;
pub mod credentials;
pub mod deadletters;
pub mod devices;
pub mod health;
mod postgres;
pub mod requests;
pub mod retention;
mod schema;
pub mod sessions;
mod sqlite;
pub mod telemetry;

pub use access::{BackupReport, Console, Reader};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{StoreConfig, StoreEngine};
use crate::metrics::Histogram;
use crate::wire::{Correlation, DeviceId, RequestId};
use cluster::{ClusterView, Takeover};
use commands::{Command, Outcome, Written};
use deadletters::DeadLetter;
use health::StoreHealth;
use requests::{Admission, Completion, Existing, FinalReply, NewRequest, StoredRequest};
pub use sqlite::budget::Budgeted;

/// The SQLite database file name inside `data_dir` (also where credentials live, whatever the
/// engine: see [`credentials`]).
pub const DB_FILE: &str = "roost.db";

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused (disk full, file unwritable, I/O error, corrupt, a constraint):
    /// nothing of the failed work was committed; the store is degraded until a probe write
    /// commits again (see [`health`]).
    #[error("store: {0}")]
    Sql(String),
    /// The disk (or the database's own size limit) is full: like [`StoreError::Sql`], and the
    /// disk reserve is released for accepted work to finish (see [`health`]).
    #[error("store: disk full: {0}")]
    Full(String),
    /// The database cannot be reached now (PostgreSQL stopped, restarting, the network, or
    /// taking no writes: a read-only standby): a transient fault; nothing of the failed work
    /// was committed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The transaction met another one (deadlock, serialization failure) and was rolled back;
    /// running it again may succeed.
    #[error("store conflict: {0}")]
    Conflict(String),
    /// The database refused this gateway itself: its login (user, password), its database
    /// name, or the rights a statement needs. A deployment mistake (config key `store.url`),
    /// not a fault of the database: a start ends with exit code 2; while serving, the store
    /// degrades until the rights are back.
    #[error("the database refused this gateway (config key store.url): {0}")]
    Refused(String),
    /// The store thread is gone.
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// A start's housekeeping write that a full disk or a read-only file may refuse: such a
    /// failure is logged with what stays `undone` and the start goes on (its probe then starts
    /// the gateway degraded); any other failure is returned.
    pub(crate) fn unless_degrading<T, E: Into<StoreError>>(
        result: Result<T, E>,
        undone: &str,
    ) -> Result<(), StoreError> {
        match result.map_err(Into::into) {
            Err(error) if error.degrades() => {
                tracing::warn!(%error, "{undone}");
                Ok(())
            }
            Err(error) => Err(error),
            Ok(_) => Ok(()),
        }
    }

    /// Whether this failure means the store cannot write now (the gateway degrades): every
    /// failure of the database itself. A conflict is retried by its caller; a closed store
    /// (its thread is gone) cannot come back, so that one stays fatal.
    pub fn degrades(&self) -> bool {
        matches!(
            self,
            StoreError::Sql(_)
                | StoreError::Full(_)
                | StoreError::Unavailable(_)
                | StoreError::Refused(_)
        )
    }

    /// The exit code of a start or an operator command that ends on this failure:
    /// [`crate::config::EXIT_CONFIG`] for a refusal (`store.url`'s mistake), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StoreError::Refused(_) => crate::config::EXIT_CONFIG,
            _ => 1,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(error.to_string()),
            _ => StoreError::Sql(error.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
enum Engine {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Rows of a kind one prune chunk deletes at most (see [`Store::prune`]).
pub const PRUNE_CHUNK: usize = 500;

/// What one chunk of [`Store::prune`] deletes, at most [`PRUNE_CHUNK`] rows of, the oldest
/// first.
#[derive(Debug, Clone, Copy)]
pub enum Prune {
    /// Finished requests received before this (ms since the epoch) whose replies were acked or
    /// dead-lettered.
    Requests(i64),
    /// Readings older than this (ms since the epoch).
    Readings(i64),
    /// Readings of the devices that have more than this many.
    Cap(usize),
}

/// Calls the same method on whichever engine this store runs.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* ) .await) => {
        match &$self.engine {
            Engine::Sqlite(engine) => engine.$method($($arg),*).await,
            Engine::Postgres(engine) => engine.$method($($arg),*).await,
        }
    };
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.engine {
            Engine::Sqlite(engine) => engine.$method($($arg),*),
            Engine::Postgres(engine) => engine.$method($($arg),*),
        }
    };
}

mod operators;

/// A handle to the store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    engine: Engine,
    health: Arc<StoreHealth>,
}

impl Store {
    /// Opens the configured engine (creating and migrating its schema) and starts its commit
    /// loop.
    pub async fn open(config: &StoreConfig, data_dir: &Path) -> Result<Store, StoreError> {
        let engine = match &config.engine {
            StoreEngine::Sqlite => Engine::Sqlite(sqlite::SqliteStore::open(
                data_dir,
                config.sync_full,
                config.max_store_bytes,
            )?),
            StoreEngine::Postgres { url, pool_size } => {
                let me = &config.gateway_id;
                Engine::Postgres(postgres::PgStore::open(url, *pool_size, me, config.lease).await?)
            }
        };
        let reserve = match &config.engine {
            StoreEngine::Sqlite => Some(data_dir.to_path_buf()),
            StoreEngine::Postgres { .. } => None,
        };
        Ok(Store {
            engine,
            health: Arc::new(StoreHealth::new(reserve)),
        })
    }

    /// Whether the store can write now (shared by every clone).
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// Tries one real write (SQLite: a 64 KiB row, written and deleted in one committed
    /// transaction, on a connection of its own; PostgreSQL: a transaction on a fresh or pooled
    /// connection). Used by [`health::probe`] while degraded.
    pub async fn probe(&self) -> Result<(), StoreError> {
        dispatch!(self.probe().await)
    }

    /// Notes a write's outcome in [`Store::health`] and passes it on.
    fn observed<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.health.observe(&result);
        result
    }

    /// How long group commits take.
    pub fn commit_latency(&self) -> &Histogram {
        dispatch!(self.commit_latency())
    }

    /// Runs intake's commands (one per publish, `None` for a publish without store work) in
    /// one transaction; the outcomes come back in the same order once it has committed (or
    /// once the database said, if the answer to its `COMMIT` was lost: see [`Store::write`]).
    pub async fn batch(
        &self,
        commands: Vec<Option<Command>>,
    ) -> Result<Vec<Option<Outcome>>, StoreError> {
        match self.write(commands).await {
            Written::Done(result) => result,
            Written::Unsettled(settling) => settling.await,
        }
    }

    /// As [`Store::batch`], for intake, which must not wait while the database is asked about a
    /// `COMMIT` whose answer was lost: such a batch comes back [`Written::Unsettled`] at once.
    pub async fn write(&self, commands: Vec<Option<Command>>) -> Written {
        let written = match &self.engine {
            Engine::Sqlite(engine) => Written::Done(engine.batch(commands).await),
            Engine::Postgres(engine) => engine.write(commands).await,
        };
        match written {
            Written::Done(result) => Written::Done(self.observed(result)),
            Written::Unsettled(settling) => {
                let health = self.health.clone();
                Written::Unsettled(Box::pin(async move {
                    let result = settling.await;
                    health.observe(&result);
                    result
                }))
            }
        }
    }

    /// Stores a request unless its (device, correlation) was seen within the dedupe window
    /// (received after `dedupe_after_ms`).
    pub async fn admit(
        &self,
        request: NewRequest,
        dedupe_after_ms: i64,
    ) -> Result<Admission, StoreError> {
        let result = dispatch!(self.admit(request, dedupe_after_ms).await);
        self.observed(result)
    }

    /// Looks a request up by its dedupe key.
    pub async fn find(
        &self,
        device: DeviceId,
        corr: Correlation,
    ) -> Result<Option<Existing>, StoreError> {
        dispatch!(self.find(device, corr).await)
    }

    /// Records a queued request's final reply and starts holding it: `true` once committed,
    /// `false` (nothing changed) when it was no longer queued. **At most once per request.**
    pub async fn complete(&self, completion: Completion) -> Result<bool, StoreError> {
        let result = dispatch!(self.complete(completion).await);
        self.observed(result)
    }

    /// [`Store::complete`] for threads outside the runtime that must not block on the commit:
    /// `then` runs with the outcome once committed.
    pub fn complete_then(
        &self,
        completion: Completion,
        then: impl FnOnce(Result<bool, StoreError>) + Send + 'static,
    ) {
        let health = self.health.clone();
        let then = move |result: Result<bool, StoreError>| {
            health.observe(&result);
            then(result)
        };
        dispatch!(self.complete_then(completion, then))
    }

    /// Held final replies never handed to the broker (a crash came between).
    pub async fn unpublished(&self) -> Result<Vec<FinalReply>, StoreError> {
        dispatch!(self.unpublished().await)
    }

    /// How many requests are queued, and the newest queued id.
    pub async fn queued_extent(&self) -> Result<(usize, Option<RequestId>), StoreError> {
        dispatch!(self.queued_extent().await)
    }

    /// Up to `limit` queued requests with ids after `after` and up to `until`, oldest first.
    pub async fn queued_after(
        &self,
        after: Option<RequestId>,
        until: RequestId,
        limit: usize,
    ) -> Result<Vec<StoredRequest>, StoreError> {
        dispatch!(self.queued_after(after, until, limit).await)
    }

    /// Held final replies of these devices that were published at least once, oldest first per
    /// device, at most `limit` per device: what their wakes redeliver. On a shared store
    /// (PostgreSQL) only those not handed to the broker within `quiet` while another gateway is
    /// alive (checked in the database when claiming), claimed: of several gateways seeing one
    /// wake, one redelivers each reply. SQLite has one gateway, which sees a device's events in
    /// order, and ignores `quiet`.
    pub async fn held_for(
        &self,
        devices: Vec<DeviceId>,
        limit: usize,
        quiet: Duration,
    ) -> Result<Vec<FinalReply>, StoreError> {
        // While degraded, a read must not share a transaction with writes that fail.
        if self.health.is_degraded() {
            return dispatch!(self.held_for_read(devices, limit, quiet).await);
        }
        dispatch!(self.held_for(devices, limit, quiet).await)
    }

    /// Counts that a final reply was handed to the broker (in the next commit; nobody waits).
    /// Skipped while degraded: a write that cannot commit would only take the reads it
    /// shares a transaction with down too; an uncounted reply is published again after a
    /// restart (delivery is at least once).
    pub fn mark_published(&self, id: RequestId, device: &DeviceId, corr: &Correlation) {
        if !self.health.may_write() {
            return;
        }
        dispatch!(self.mark_published(id, device, corr))
    }

    /// Held replies of each of these devices.
    pub async fn held_counts(&self, devices: Vec<DeviceId>) -> Result<Vec<usize>, StoreError> {
        dispatch!(self.held_counts(devices).await)
    }

    /// Held replies of all devices (on PostgreSQL, of the whole database, as the heartbeat last
    /// counted them: see `PgStore::held_total`).
    pub async fn held_total(&self) -> Result<usize, StoreError> {
        dispatch!(self.held_total().await)
    }

    /// Held replies whose TTL has passed become dead letters (at most `limit`); returns them.
    pub async fn expire_held(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        // Periodic: while degraded (and no reserve to finish with) it waits for the recovery.
        if !self.health.may_write() {
            return Ok(Vec::new());
        }
        let result = dispatch!(self.expire_held(now_ms, limit).await);
        self.observed(result)
    }

    /// Replies their devices could not take: each becomes a dead letter, and a held final reply
    /// among them stops being held. Returns the letters written.
    pub async fn undeliverable(
        &self,
        replies: Vec<deadletters::Undeliverable>,
        now_ms: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        dispatch!(self.undeliverable(replies, now_ms).await)
    }

    /// Forgets finished requests received before `dedupe_before_ms` whose replies were acked or
    /// dead-lettered, and telemetry older than `telemetry_before_ms` or beyond the newest
    /// `keep` per device; returns (requests, readings) deleted.
    ///
    /// Rows go in chunks of at most [`PRUNE_CHUNK`] per kind ([`Prune`]), the oldest first,
    /// each committed before the next is asked for (on SQLite in the store thread's next group
    /// commit), so commits queued meanwhile go between two chunks: the 10 s of a busy
    /// gateway's requests that passed the window since the last prune, deleted at once, held
    /// every commit (SQLite's store thread) for 100 ms and more. Each chunk reads only what it
    /// deletes: the cap finds the devices over it by their count of readings.
    pub async fn prune(
        &self,
        dedupe_before_ms: i64,
        telemetry_before_ms: i64,
        keep: usize,
    ) -> Result<(usize, usize), StoreError> {
        if !self.health.may_write() {
            return Ok((0, 0));
        }
        let mut pruned = [0; 3];
        let kinds = [
            Prune::Requests(dedupe_before_ms),
            Prune::Readings(telemetry_before_ms),
            Prune::Cap(keep),
        ];
        for (kind, pruned) in kinds.into_iter().zip(&mut pruned) {
            // Until a chunk comes back short.
            loop {
                let deleted = self.observed(dispatch!(self.prune(kind, PRUNE_CHUNK).await))?;
                *pruned += deleted;
                if deleted < PRUNE_CHUNK {
                    break;
                }
            }
        }
        Ok((pruned[0], pruned[1] + pruned[2]))
    }

    /// Keeps the store within `limits.max_store_bytes` (SQLite; `None` without a budget):
    /// evicts the oldest finished records; still over with nothing left to evict, the store is
    /// degraded, with room for accepted work to finish (acks make more evictable).
    pub async fn enforce_budget(&self) -> Result<Option<Budgeted>, StoreError> {
        let Engine::Sqlite(engine) = &self.engine else {
            return Ok(None);
        };
        if !self.health.may_write() {
            return Ok(None);
        }
        let result = engine.enforce_budget().await;
        let result = self.observed(result);
        if let Ok(Some(done)) = &result {
            if done.over {
                self.health.degrade_finishing(&format!(
                    "limits.max_store_bytes reached ({} bytes in use) with nothing finished to evict",
                    done.used
                ));
            }
        }
        result
    }

    /// Succeeds once an empty commit went through (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self.ping().await)
    }

    /// The lease of a shared store (PostgreSQL); `None` when this gateway is alone (SQLite).
    pub fn lease(&self) -> Option<Duration> {
        match &self.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres(engine) => engine.lease(),
        }
    }

    /// Renews this gateway's lease on its work and reads the cluster view (shared store only).
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite(_) => Ok(()),
            Engine::Postgres(engine) => {
                let result = engine.heartbeat().await;
                self.observed(result)
            }
        }
    }

    /// Gives up this gateway's lease (shared store only), once it has stopped working: the
    /// others take its queued work on their next beat.
    pub async fn leave(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite(_) => Ok(()),
            Engine::Postgres(engine) => engine.leave().await,
        }
    }

    /// Whether this gateway prunes the store ([`retention`]): alone (SQLite) always; on a
    /// shared store only the first gateway alive by id as of the last heartbeat, or any before
    /// its first. A prune's deletes are everyone's, and each gateway pruning read the same rows
    /// again (the telemetry cap lists every device's count). Once the pruner's lease runs out,
    /// the next takes over.
    pub fn prunes(&self) -> bool {
        match &self.engine {
            Engine::Sqlite(_) => true,
            Engine::Postgres(engine) => engine.prunes(),
        }
    }

    /// The cluster as of the last heartbeat (shared store only).
    pub fn cluster_view(&self) -> Option<ClusterView> {
        match &self.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres(engine) => engine.cluster_view(),
        }
    }

    /// Claims work of gateways whose lease ran out (shared store only; at most `limit` of each
    /// kind).
    pub async fn take_over(&self, limit: usize) -> Result<Takeover, StoreError> {
        match &self.engine {
            Engine::Sqlite(_) => Ok(Takeover::default()),
            Engine::Postgres(engine) => engine.take_over(limit).await,
        }
    }

    /// A reader for one worker thread (blocking reads of telemetry windows).
    pub fn reader(&self) -> Reader {
        match &self.engine {
            Engine::Sqlite(engine) => Reader::Sqlite(engine.reader()),
            Engine::Postgres(engine) => Reader::Postgres(engine.reader()),
        }
    }
}

/// Milliseconds since the Unix epoch, the store's time unit.
pub use crate::wire::now_ms;
