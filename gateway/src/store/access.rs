//! The store's other ways in: [`Reader`], blocking reads for worker threads (telemetry
//! windows), and [`Console`], the operator CLI's view from a separate process. Both wrap the
//! configured engine; no engine type shows through.

use std::path::Path;

use super::deadletters::{DeadLetterRow, Requeue};
use super::devices::{DeviceDetail, DeviceRow, Filter};
use super::requests::{Backlog, CancelReply, OperatorCancel, RequestDetail, RequestSummary};
use super::telemetry::Series;
use super::{postgres, sqlite, StoreError};
use crate::config::{StoreConfig, StoreEngine};
use crate::wire::DeviceId;
pub use sqlite::backup::BackupReport;

/// One worker thread's reads. Blocking: for threads outside the async runtime.
#[derive(Debug)]
pub enum Reader {
    /// Over SQLite.
    #[doc(hidden)]
    Sqlite(sqlite::SqliteReader),
    /// Over PostgreSQL.
    #[doc(hidden)]
    Postgres(postgres::PgReader),
}

impl Reader {
    /// The device's readings of `metric` with `from_ms < ts <= to_ms`, in time order, at most
    /// `limit` of them (the oldest).
    pub fn telemetry_window(
        &mut self,
        device: &DeviceId,
        metric: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Series, StoreError> {
        match self {
            Reader::Sqlite(reader) => {
                reader.telemetry_window(device, metric, from_ms, to_ms, limit)
            }
            Reader::Postgres(reader) => {
                reader.telemetry_window(device, metric, from_ms, to_ms, limit)
            }
        }
    }
}

/// The operator CLI's view of the store: a separate process over the same config.
#[derive(Debug)]
pub enum Console {
    /// Over SQLite.
    #[doc(hidden)]
    Sqlite(sqlite::SqliteConsole),
    /// Over PostgreSQL.
    #[doc(hidden)]
    Postgres(postgres::PgConsole),
}

impl Console {
    /// Opens the configured store read-only, or for writing (`write`), without creating it.
    pub fn open(config: &StoreConfig, data_dir: &Path, write: bool) -> Result<Console, StoreError> {
        Ok(match &config.engine {
            StoreEngine::Sqlite => {
                let sync = write.then_some(config.sync_full);
                Console::Sqlite(sqlite::SqliteConsole::open(data_dir, sync)?)
            }
            StoreEngine::Postgres { url, .. } => Console::Postgres(postgres::PgConsole::open(url)?),
        })
    }

    /// Requests, newest first, optionally of one device and in one state.
    pub fn requests(
        &self,
        device: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RequestSummary>, StoreError> {
        match self {
            Console::Sqlite(console) => console.requests(device, state, limit),
            Console::Postgres(console) => console.requests(device, state, limit),
        }
    }

    /// A consistent copy of the SQLite store in `dest`, taken while the gateway serves (see
    /// `store/sqlite/backup.rs`). PostgreSQL has its own tools (`pg_dump`, `pg_basebackup`).
    pub fn backup(&self, dest: &Path) -> Result<BackupReport, StoreError> {
        match self {
            Console::Sqlite(console) => console.backup(dest),
            Console::Postgres(_) => Err(StoreError::Sql(
                "store.engine is \"postgres\": back it up with PostgreSQL's own tools \
                 (pg_dump for a logical copy, pg_basebackup for a physical one)"
                    .into(),
            )),
        }
    }

    /// Dead letters, newest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterRow>, StoreError> {
        match self {
            Console::Sqlite(console) => console.dead_letters(limit),
            Console::Postgres(console) => console.dead_letters(limit),
        }
    }

    /// Puts a dead-lettered reply back into the outbox: held again, expiring `expires_ms`.
    pub fn requeue(&self, id: i64, expires_ms: i64) -> Result<Requeue, StoreError> {
        match self {
            Console::Sqlite(console) => console.requeue(id, expires_ms),
            Console::Postgres(console) => console.requeue(id, expires_ms),
        }
    }

    /// A page of the devices that pass `filter`, in natural id order, and how many pass.
    pub fn devices_page(
        &self,
        filter: &Filter,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeviceRow>), StoreError> {
        match self {
            Console::Sqlite(console) => console.devices_page(filter, offset, limit),
            Console::Postgres(console) => console.devices_page(filter, offset, limit),
        }
    }

    /// One device, if known, with at most `recent` requests, held replies and dead letters.
    pub fn device(&self, id: &str, recent: usize) -> Result<Option<DeviceDetail>, StoreError> {
        match self {
            Console::Sqlite(console) => console.device(id, recent),
            Console::Postgres(console) => console.device(id, recent),
        }
    }

    /// One request in full (id as UUID text), if stored.
    pub fn request(&self, id: &str) -> Result<Option<RequestDetail>, StoreError> {
        match self {
            Console::Sqlite(console) => console.request(id),
            Console::Postgres(console) => console.request(id),
        }
    }

    /// A page of dead letters (of one device, or all), newest first, and how many there are.
    pub fn dead_letters_page(
        &self,
        device: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<DeadLetterRow>), StoreError> {
        match self {
            Console::Sqlite(console) => console.dead_letters_page(device, offset, limit),
            Console::Postgres(console) => console.dead_letters_page(device, offset, limit),
        }
    }

    /// Queued and held counts and the two stall ages.
    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        match self {
            Console::Sqlite(console) => console.backlog(),
            Console::Postgres(console) => console.backlog(),
        }
    }

    /// Cancels a queued request by id (UUID text) for an operator (open the console for
    /// writing): its final reply `make_reply` builds is recorded and held, counted published
    /// once so the running gateway redelivers it on the device's next wake.
    pub fn cancel_request(
        &mut self,
        id: &str,
        now_ms: i64,
        expires_ms: i64,
        make_reply: CancelReply,
    ) -> Result<OperatorCancel, StoreError> {
        match self {
            Console::Sqlite(console) => console.cancel_request(id, now_ms, expires_ms, make_reply),
            Console::Postgres(console) => {
                console.cancel_request(id, now_ms, expires_ms, make_reply)
            }
        }
    }
}
