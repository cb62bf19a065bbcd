//! The PostgreSQL engine's blocking ways in: [`PgReader`] for worker threads (telemetry
//! windows) and [`PgConsole`] for the operator CLI, a separate process with a runtime of its own.

use std::sync::Arc;

use tokio::runtime::Handle;

use super::pool::Pool;
use super::{tables, views};
use crate::store::deadletters::{DeadLetterRow, Requeue};
use crate::store::requests::RequestSummary;
use crate::store::telemetry::Series;
use crate::store::StoreError;
use crate::wire::DeviceId;

/// One worker thread's reads: blocking calls onto the runtime the store was opened on.
#[derive(Clone)]
pub struct PgReader {
    pub(super) pool: Arc<Pool>,
    pub(super) runtime: Handle,
}

impl std::fmt::Debug for PgReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReader").finish_non_exhaustive()
    }
}

impl PgReader {
    /// See [`crate::store::Reader::telemetry_window`].
    pub fn telemetry_window(
        &self,
        device: &DeviceId,
        metric: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Series, StoreError> {
        self.runtime.block_on(
            self.pool.run(async |conn| {
                tables::window(conn, device, metric, from_ms, to_ms, limit).await
            }),
        )
    }
}

/// The operator CLI's connection to PostgreSQL, with a runtime of its own.
pub struct PgConsole {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) pool: Arc<Pool>,
}

impl std::fmt::Debug for PgConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConsole").finish_non_exhaustive()
    }
}

impl PgConsole {
    /// Connects to `url`.
    pub fn open(url: &str) -> Result<PgConsole, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Sql(format!("cannot start a runtime: {e}")))?;
        let pool = Pool::new(url, 1)?;
        runtime.block_on(super::pool::answered(async { pool.get().await.map(drop) }))?;
        Ok(PgConsole { runtime, pool })
    }

    /// See [`crate::store::Console::requests`].
    pub fn requests(
        &self,
        device: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RequestSummary>, StoreError> {
        self.read(async |conn| views::list_requests(conn, device, state, limit).await)
    }

    /// See [`crate::store::Console::dead_letters`].
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.read(async |conn| Ok(views::dead_letters_page(conn, None, 0, limit).await?.1))
    }

    /// See [`crate::store::Console::requeue`]. A `COMMIT` whose answer is lost is said to be
    /// undecided, not failed: the dead letter may be requeued, and the same command run again
    /// says whether it was.
    pub fn requeue(&self, id: i64, expires_ms: i64) -> Result<Requeue, StoreError> {
        let committing = std::cell::Cell::new(false);
        let result = self.read(async |conn| {
            conn.client.batch_execute("BEGIN").await?;
            match tables::requeue(conn, id, expires_ms).await {
                Ok(outcome) => {
                    committing.set(true);
                    conn.client.batch_execute("COMMIT").await?;
                    Ok(outcome)
                }
                Err(error) => {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                    Err(error)
                }
            }
        });
        match result {
            Err(StoreError::Unavailable(lost)) if committing.get() => {
                Err(StoreError::Unavailable(format!(
                    "{lost}: the answer to the COMMIT was lost, so dead letter {id} may or may \
                     not have been requeued; run `gateway deadletters requeue {id}` again to see"
                )))
            }
            result => result,
        }
    }
}
