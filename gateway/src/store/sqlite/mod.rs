//! The SQLite engine (`[store] engine = "sqlite"`, the default): `data_dir/roost.db`.
//!
//! One thread owns the write connection. Callers hand it closures over a transaction; the thread
//! drains whatever is waiting, runs it all in one transaction, commits once (group commit, so
//! throughput does not hinge on one fsync per request), and only then delivers each result. So
//! a caller that sees a result knows it is durable: **a request row is committed before any
//! reply about it is published.** The async runtime never waits on SQLite: it awaits a oneshot.
//!
//! The typed operations [`super::Store`] offers are in [`api`] (operators' views in
//! [`operators`]); the schema is in [`schema`]; each table's queries live in their own file.

mod api;
pub(crate) mod backup;
pub(crate) mod budget;
pub(crate) mod credentials;
mod deadletters;
mod delivery;
mod devices;
mod operators;
mod requests;
pub(crate) mod reserve;
pub(crate) mod schema;
mod telemetry;
mod views;

pub use api::{SqliteConsole, SqliteReader};

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tracing::Level;

use rusqlite::{Connection, OpenFlags, Transaction};
use tokio::sync::oneshot;

use super::StoreError;
use crate::logging::log_repeated;
use crate::metrics::Histogram;

/// Most closures run in one transaction.
const MAX_BATCH: usize = 2048;

/// Runs after the batch's commit with its outcome.
type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs inside the batch's transaction.
type Job = Box<dyn FnOnce(&Transaction<'_>) -> Finish + Send>;

/// A handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    jobs_tx: std_mpsc::Sender<Job>,
    path: PathBuf,
    commit_latency: Arc<Histogram>,
    /// `limits.max_store_bytes`.
    budget: Option<u64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Opens a connection with the pragmas every connection uses.
pub(crate) fn connect(path: &Path, sync_full: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if sync_full { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens a read-only connection (for workers reading telemetry, the HTTP API, the CLI).
pub(crate) fn connect_read_only(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if missing) `data_dir/roost.db`, migrates it, and starts the store thread.
    pub fn open(
        data_dir: &Path,
        sync_full: bool,
        budget: Option<u64>,
    ) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Sql(format!(
                "cannot create data_dir {}: {e}",
                data_dir.display()
            ))
        })?;
        if let Err(error) = reserve::ensure(data_dir) {
            // The start probe fails the same way and starts the gateway degraded.
            tracing::warn!(%error, "cannot write the disk reserve");
        }
        let path = data_dir.join(super::DB_FILE);
        let mut conn = connect(&path, sync_full)?;
        schema::migrate(&mut conn)?;
        StoreError::unless_degrading(
            devices::reset_awake(&conn),
            "devices marked awake by the last run stay so in the store until each next \
             connects and leaves",
        )?;
        let (jobs_tx, jobs_rx) = std_mpsc::channel::<Job>();
        let commit_latency = Arc::new(Histogram::default());
        let latency = commit_latency.clone();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || run_thread(conn, jobs_rx, &latency))
            .map_err(|e| StoreError::Sql(format!("cannot start the store thread: {e}")))?;
        Ok(SqliteStore {
            jobs_tx,
            path,
            commit_latency,
            budget,
        })
    }

    /// How long group commits take.
    pub fn commit_latency(&self) -> &Histogram {
        &self.commit_latency
    }

    /// Runs `work` in the next batch; `then` gets its result once the batch has committed.
    /// For synchronous callers (worker threads) that must not block on the commit.
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, rusqlite::Error> + Send + 'static,
        then: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) {
        let job: Job = Box::new(move |txn| {
            let result = work(txn);
            Box::new(move |commit| {
                then(match (commit, result) {
                    (Ok(()), Ok(value)) => Ok(value),
                    (Err(e), _) => Err(e),
                    (Ok(()), Err(e)) => Err(e.into()),
                })
            })
        });
        if let Err(std_mpsc::SendError(job)) = self.jobs_tx.send(job) {
            // The thread is gone: tell the caller through the same path.
            drop(job);
        }
    }

    /// Runs `work` in the next batch and returns its result once committed.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.submit(work, move |result| {
            let _ = done_tx.send(result);
        });
        done_rx.await.unwrap_or(Err(StoreError::Closed))
    }
}

fn run_thread(mut conn: Connection, jobs_rx: std_mpsc::Receiver<Job>, latency: &Histogram) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs_rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs_rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let finishes: Vec<Finish>;
        let started = std::time::Instant::now();
        let commit = match conn.transaction() {
            Ok(txn) => {
                finishes = batch.drain(..).map(|job| job(&txn)).collect();
                txn.commit().map_err(StoreError::from)
            }
            Err(e) => {
                finishes = Vec::new();
                batch.clear();
                Err(StoreError::from(e))
            }
        };
        latency.observe(started.elapsed());
        if let Err(error) = &commit {
            log_repeated!(Level::ERROR, %error, "store commit failed");
        }
        for finish in finishes {
            finish(commit.clone());
        }
    }
}
