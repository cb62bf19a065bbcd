//! The typed operations of the SQLite engine: each one a closure for the store thread's next
//! group commit (writes) or a read-only connection on a blocking thread (operator reads), so
//! no SQLite type leaves the store.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction};

use super::{connect, connect_read_only, deadletters, requests, telemetry, SqliteStore};
use crate::store::commands::{Command, Outcome};
use crate::store::deadletters::{DeadLetter, DeadLetterRow, Requeue, Undeliverable};
use crate::store::requests::{
    Admission, Completion, Existing, FinalReply, NewRequest, RequestSummary, StoredRequest,
};
use crate::store::telemetry::Series;
use crate::store::{Prune, StoreError};
use crate::wire::{Correlation, DeviceId, RequestId};

fn run_command(txn: &Transaction<'_>, command: Command) -> rusqlite::Result<Outcome> {
    Ok(match command {
        // One gateway: its scheduler holds max_pending_per_device exactly.
        Command::Admit {
            request,
            dedupe_after_ms,
            max_pending: _,
        } => Outcome::Admitted(requests::admit(txn, &request, dedupe_after_ms)?),
        Command::Find(device, corr) => Outcome::Found(requests::find(txn, &device, &corr)?),
        Command::Cancel {
            device,
            of,
            now_ms,
            expires_ms,
            reply,
        } => Outcome::Cancel(requests::cancel(
            txn, &device, &of, now_ms, expires_ms, reply,
        )?),
        Command::Dead(letter) => {
            deadletters::insert(txn, &letter)?;
            Outcome::Done
        }
        Command::Ack(device, corr) => Outcome::Acked(requests::ack(txn, &device, &corr)?),
        Command::Telemetry(device, readings) => {
            let stored = telemetry::insert(txn, &device, &readings)?;
            Outcome::readings(stored, readings.len())
        }
    })
}

impl SqliteStore {
    /// Runs intake's commands in one transaction.
    pub async fn batch(
        &self,
        commands: Vec<Option<Command>>,
    ) -> Result<Vec<Option<Outcome>>, StoreError> {
        // A savepoint, so a command that fails takes the batch's earlier commands with it: the
        // batch commits whole or not at all, whatever else shares the transaction.
        self.call(move |txn| {
            txn.execute_batch("SAVEPOINT intake")?;
            let outcomes = commands
                .into_iter()
                .map(|command| command.map(|c| run_command(txn, c)).transpose())
                .collect();
            match outcomes {
                Ok(outcomes) => {
                    txn.execute_batch("RELEASE intake")?;
                    Ok(outcomes)
                }
                Err(error) => {
                    let _ = txn.execute_batch("ROLLBACK TO intake; RELEASE intake");
                    Err(error)
                }
            }
        })
        .await
    }

    /// See [`crate::store::Store::admit`].
    pub async fn admit(
        &self,
        request: NewRequest,
        dedupe_after_ms: i64,
    ) -> Result<Admission, StoreError> {
        self.call(move |txn| requests::admit(txn, &request, dedupe_after_ms))
            .await
    }

    /// See [`crate::store::Store::find`].
    pub async fn find(
        &self,
        device: DeviceId,
        corr: Correlation,
    ) -> Result<Option<Existing>, StoreError> {
        self.call(move |txn| requests::find(txn, &device, &corr))
            .await
    }

    /// See [`crate::store::Store::complete_then`].
    pub fn complete_then(
        &self,
        completion: Completion,
        then: impl FnOnce(Result<bool, StoreError>) + Send + 'static,
    ) {
        self.submit(move |txn| requests::complete(txn, &completion), then);
    }

    /// See [`crate::store::Store::complete`].
    pub async fn complete(&self, completion: Completion) -> Result<bool, StoreError> {
        self.call(move |txn| requests::complete(txn, &completion))
            .await
    }

    /// See [`crate::store::Store::unpublished`].
    pub async fn unpublished(&self) -> Result<Vec<FinalReply>, StoreError> {
        self.call(|txn| requests::unpublished(txn)).await
    }

    /// See [`crate::store::Store::queued_extent`].
    pub async fn queued_extent(&self) -> Result<(usize, Option<RequestId>), StoreError> {
        self.call(|txn| requests::queued_extent(txn)).await
    }

    /// See [`crate::store::Store::queued_after`].
    pub async fn queued_after(
        &self,
        after: Option<RequestId>,
        until: RequestId,
        limit: usize,
    ) -> Result<Vec<StoredRequest>, StoreError> {
        self.call(move |txn| requests::queued_after(txn, after, until, limit))
            .await
    }

    /// See [`crate::store::Store::held_for`].
    pub async fn held_for(
        &self,
        devices: Vec<DeviceId>,
        limit: usize,
        _quiet: std::time::Duration,
    ) -> Result<Vec<FinalReply>, StoreError> {
        // One gateway sees a device's events in order (its ack before its next wake): nothing
        // to claim, so the quiet period does not apply.
        self.call(move |txn| {
            let mut held = Vec::new();
            for device in &devices {
                held.extend(requests::held_for(txn, device, limit)?);
            }
            Ok(held)
        })
        .await
    }

    /// Every held reply ([`requests::held_any`]) on a read-only connection of its own: while the store is
    /// degraded, a read must not share the store thread's transaction with writes that fail.
    pub async fn held_for_read(
        &self,
        devices: Vec<DeviceId>,
        limit: usize,
        _quiet: std::time::Duration,
    ) -> Result<Vec<FinalReply>, StoreError> {
        self.read(move |conn| {
            let mut held = Vec::new();
            for device in &devices {
                held.extend(requests::held_any(conn, device, limit)?);
            }
            Ok(held)
        })
        .await
    }

    /// See [`crate::store::Store::probe`]: the disk reserve back in place with a margin free
    /// beside it (see [`super::reserve`]), then a 64 KiB row written and deleted in one
    /// committed transaction, on a connection of its own.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let budget = self.budget;
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                // The reserve comes back only with the margin free beside it: otherwise its
                // space stays with the accepted work finishing in it.
                let full = |e: std::io::Error| StoreError::Full(format!("disk reserve: {e}"));
                let had = super::reserve::present(dir);
                super::reserve::ensure(dir).map_err(full)?;
                if let Err(error) = super::reserve::margin(dir) {
                    if !had {
                        super::reserve::release(dir);
                    }
                    return Err(full(error));
                }
            }
            let mut conn = connect(&path, false)?;
            if let Some(budget) = budget {
                let used = super::budget::used_bytes(&conn)?;
                if used > budget {
                    return Err(StoreError::Sql(format!(
                        "{used} bytes in use, over limits.max_store_bytes = {budget}"
                    )));
                }
            }
            let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            txn.execute("INSERT INTO probe (pad) VALUES (zeroblob(65536))", [])?;
            txn.execute("DELETE FROM probe", [])?;
            txn.commit()?;
            Ok(())
        })
        .await
        .unwrap_or_else(|error| Err(StoreError::Sql(error.to_string())))
    }

    /// See [`crate::store::Store::enforce_budget`].
    pub async fn enforce_budget(&self) -> Result<Option<super::budget::Budgeted>, StoreError> {
        let Some(budget) = self.budget else {
            return Ok(None);
        };
        self.call(move |txn| super::budget::enforce(txn, budget).map(Some))
            .await
    }

    /// See [`crate::store::Store::mark_published`].
    pub fn mark_published(&self, id: RequestId, _device: &DeviceId, _corr: &Correlation) {
        self.submit(move |txn| requests::mark_published(txn, id), |_| {});
    }

    /// See [`crate::store::Store::held_counts`].
    pub async fn held_counts(&self, devices: Vec<DeviceId>) -> Result<Vec<usize>, StoreError> {
        self.call(move |txn| {
            devices
                .iter()
                .map(|device| requests::held_counts(txn, Some(device)))
                .collect()
        })
        .await
    }

    /// See [`crate::store::Store::held_total`].
    pub async fn held_total(&self) -> Result<usize, StoreError> {
        self.call(|txn| requests::held_counts(txn, None)).await
    }

    /// See [`crate::store::Store::expire_held`].
    pub async fn expire_held(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.call(move |txn| requests::expire_held(txn, now_ms, limit))
            .await
    }

    /// See [`crate::store::Store::undeliverable`].
    pub async fn undeliverable(
        &self,
        replies: Vec<Undeliverable>,
        now_ms: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.call(move |txn| {
            replies
                .iter()
                .map(|r| {
                    requests::undeliverable(
                        txn,
                        &r.device,
                        r.corr.as_ref(),
                        r.status,
                        &r.reason,
                        now_ms,
                    )
                })
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
    }

    /// One chunk of [`crate::store::Store::prune`], as one job of the store thread (committed
    /// with whatever else is queued; jobs queued later go between two chunks).
    pub async fn prune(&self, what: Prune, limit: usize) -> Result<usize, StoreError> {
        self.call(move |txn| match what {
            Prune::Requests(before_ms) => requests::prune(txn, before_ms, limit),
            Prune::Readings(before_ms) => telemetry::prune(txn, before_ms, limit),
            Prune::Cap(keep) => telemetry::cap(txn, keep, limit),
        })
        .await
    }

    /// See [`crate::store::Store::ping`].
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.call(|_| Ok(())).await
    }

    /// Runs a read on a fresh read-only connection, off the async runtime.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = connect_read_only(&path)?;
            Ok(query(&conn)?)
        })
        .await
        .unwrap_or_else(|error| Err(StoreError::Sql(error.to_string())))
    }

    /// A reader for one worker thread.
    pub fn reader(&self) -> SqliteReader {
        SqliteReader {
            path: self.path.clone(),
            conn: None,
        }
    }
}

/// One worker thread's read-only connection, opened on first use.
#[derive(Debug)]
pub struct SqliteReader {
    path: PathBuf,
    conn: Option<Connection>,
}

impl SqliteReader {
    /// See [`crate::store::Reader::telemetry_window`].
    pub fn telemetry_window(
        &mut self,
        device: &DeviceId,
        metric: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Series, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(connect_read_only(&self.path)?);
        }
        let conn = self.conn.as_ref().expect("opened above");
        Ok(telemetry::window(
            conn, device, metric, from_ms, to_ms, limit,
        )?)
    }
}

/// The operator CLI's connection (a separate process; WAL lets it read while a gateway serves).
#[derive(Debug)]
pub struct SqliteConsole {
    pub(super) conn: Connection,
}

impl SqliteConsole {
    /// Opens `data_dir/roost.db`: read-only, or for writing with the configured durability.
    pub fn open(data_dir: &Path, write: Option<bool>) -> Result<SqliteConsole, StoreError> {
        let path = data_dir.join(crate::store::DB_FILE);
        if !path.exists() {
            return Err(StoreError::Sql(format!(
                "no database at {} (has the gateway run with this config?)",
                path.display()
            )));
        }
        let conn = match write {
            Some(sync_full) => connect(&path, sync_full)?,
            None => connect_read_only(&path)?,
        };
        Ok(SqliteConsole { conn })
    }

    /// See [`crate::store::Console::backup`].
    pub fn backup(&self, dest: &Path) -> Result<super::backup::BackupReport, StoreError> {
        super::backup::backup(&self.conn, dest)
    }

    /// See [`crate::store::Console::requests`].
    pub fn requests(
        &self,
        device: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RequestSummary>, StoreError> {
        Ok(requests::list(&self.conn, device, state, limit)?)
    }

    /// See [`crate::store::Console::dead_letters`].
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterRow>, StoreError> {
        Ok(deadletters::list(&self.conn, limit)?)
    }

    /// See [`crate::store::Console::requeue`].
    pub fn requeue(&self, id: i64, expires_ms: i64) -> Result<Requeue, StoreError> {
        Ok(deadletters::requeue(&self.conn, id, expires_ms)?)
    }
}
