//! One transaction on a pooled connection: every wait for the server bounded by
//! [`ANSWER_TIMEOUT`](super::pool::ANSWER_TIMEOUT), and a `COMMIT` whose answer was lost
//! settled by asking the database, never guessed. The committers ([`super::commit`]) run their batches through [`run`]; the store's
//! other writes (the takeover, the expiry of held replies, undeliverable replies) through
//! [`on_pool`].
//!
//! Before the `COMMIT` is sent, a server that does not answer leaves nothing committed: the
//! connection is closed, so the server rolls back, and the work fails as unavailable. Once the
//! `COMMIT` is sent, a lost answer (no answer in time, a broken connection) says nothing about
//! whether it committed: [`settle`] asks the database before the work's outcome is returned.

use std::sync::Arc;
use std::time::Duration;

use super::pool::{answered, Conn, Pool, Pooled};
use crate::store::StoreError;

/// Runs `work` as one transaction on `conn` and commits it. `work` opens it with [`begin`] (so
/// that it may pipeline its first statements behind the `BEGIN`) and returns what `begin` said
/// with its result. A failure of `work` rolls back; a connection left in an unknown state is
/// discarded.
pub async fn run<T>(
    conn: &mut Pooled,
    pool: &Pool,
    work: impl AsyncFnOnce(&Conn) -> Result<(Begun, T), StoreError>,
) -> Result<T, StoreError> {
    match run_or_lose(conn, work).await? {
        Ok(result) => Ok(result),
        Err(lost) => lost.settle(pool).await,
    }
}

/// A transaction whose `COMMIT` was sent and whose answer was lost: what its work returned,
/// should it have committed, and what to ask the database about.
pub struct Lost<T> {
    begun: Begun,
    result: T,
    error: StoreError,
}

impl<T> Lost<T> {
    /// Waits until the database says whether it committed ([`settle`]): the work's result if it
    /// did, [`StoreError::Unavailable`] if it did not.
    pub async fn settle(self, pool: &Pool) -> Result<T, StoreError> {
        settle(pool, self.begun, &self.error).await?;
        Ok(self.result)
    }
}

/// As [`run`], but a lost `COMMIT` answer is handed back unsettled ([`Lost`]), for a caller that
/// must not wait for the database to say (intake's lane: [`super::commit`]).
pub async fn run_or_lose<T>(
    conn: &mut Pooled,
    work: impl AsyncFnOnce(&Conn) -> Result<(Begun, T), StoreError>,
) -> Result<Result<T, Lost<T>>, StoreError> {
    let ran = answered(work(conn)).await;
    let (begun, result) = match ran {
        Ok(ran) => ran,
        // No answer, or a broken connection: closing it rolls back.
        Err(error @ StoreError::Unavailable(_)) => {
            conn.discard();
            return Err(error);
        }
        Err(error) => {
            if answered(async { Ok(conn.client.batch_execute("ROLLBACK").await?) })
                .await
                .is_err()
            {
                conn.discard();
            }
            return Err(error);
        }
    };
    let committed = answered(async { Ok(conn.client.batch_execute("COMMIT").await?) }).await;
    match committed {
        Ok(()) => Ok(Ok(result)),
        // The server answered the `COMMIT` with an error of the transaction's own: rolled back.
        Err(error) if !matches!(error, StoreError::Unavailable(_)) => Err(error),
        Err(error) => {
            conn.discard();
            Ok(Err(Lost {
                begun,
                result,
                error,
            }))
        }
    }
}

/// `work` in one transaction on a connection of the pool (waited for at most
/// [`ANSWER_TIMEOUT`](super::pool::ANSWER_TIMEOUT)), as [`run`] commits it.
pub async fn on_pool<T>(
    pool: &Arc<Pool>,
    work: impl AsyncFnOnce(&Conn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut conn = answered(pool.get()).await?;
    run(&mut conn, pool, async |conn| {
        let begun = begin(conn).await?;
        Ok((begun, work(conn).await?))
    })
    .await
}

/// Which transaction work runs in: its id and its server process, to end it when the answer
/// to its `COMMIT` is lost, and the mark it left, to ask whether it committed.
#[derive(Clone, Copy, Debug)]
pub struct Begun {
    /// `txid_current()`: the transaction's id, with its epoch.
    xid: i64,
    /// `pg_backend_pid()`.
    pid: i32,
    /// Its row in `commit_marks`: there once it committed, on whichever server holds the data.
    mark: uuid::Uuid,
}

/// How long a transaction's mark is kept ([`prune_marks`] deletes older ones): a commit whose
/// answer was lost is asked about as soon as the database answers again.
pub const MARK_KEEP_MS: i64 = 10 * 60 * 1000;

/// Forgets the transactions' marks older than [`MARK_KEEP_MS`], which no lost commit answer
/// can still ask about: the few seconds' worth since the last prune, in one statement (marks
/// are UUID v7, only ever added at the other end of their index).
pub async fn prune_marks(conn: &Conn) -> Result<(), StoreError> {
    let statement = conn
        .statement("DELETE FROM commit_marks WHERE token < $1")
        .await?;
    let kept_from = crate::wire::RequestId::first_at(crate::store::now_ms() - MARK_KEEP_MS);
    conn.client
        .execute(&statement, &[&kept_from.as_bytes().as_slice()])
        .await?;
    Ok(())
}

/// `BEGIN`, the transaction's id and server process, and its mark, in one message.
pub async fn begin(conn: &Conn) -> Result<Begun, StoreError> {
    let mark = uuid::Uuid::now_v7();
    // A literal of hex digits (the simple query protocol takes no parameters).
    let sql = format!(
        "BEGIN; SELECT txid_current(), pg_backend_pid(); \
         INSERT INTO commit_marks (token) VALUES ('\\x{}')",
        mark.simple()
    );
    let messages = conn.client.simple_query(&sql).await?;
    messages
        .iter()
        .find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(Begun {
                xid: row.get(0)?.parse().ok()?,
                pid: row.get(1)?.parse().ok()?,
                mark,
            }),
            _ => None,
        })
        .ok_or_else(|| StoreError::Sql("BEGIN did not say its transaction's id".into()))
}

/// First wait before asking again whether a commit landed; doubled up to [`SETTLE_MAX`].
const SETTLE_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two such questions: short, since the batch's writers wait for the
/// answer (intake's publishes their `202` or `503`). A question costs one connection attempt: refused
/// at once while the server is down. At 5 s, a lane went on 5 s after its sibling in a
/// restart under load.
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// Waits until the database says whether the transaction `begun` committed: `Ok` if it did,
/// [`StoreError::Unavailable`] if it did not. Asked on a new connection, again with backoff for
/// as long as the database cannot be reached. The batch's writers wait meanwhile: intake neither
/// acknowledges nor answers `503` a request whose row may or may not exist (a `503` says it was
/// not stored), though its lane goes on ([`super::commit::Job::unsettled`]); a takeover does not
/// forget work it may have claimed.
///
/// A transaction still open on its old server process (the `COMMIT` not read yet: a frozen
/// server, a network that lost it) is ended first (`pg_terminate_backend`, only that process
/// and only while it is in that very transaction), so the answer is final.
async fn settle(pool: &Pool, begun: Begun, lost: &StoreError) -> Result<(), StoreError> {
    let mut wait = SETTLE_FIRST;
    let mut said = false;
    loop {
        match answered(ask(pool, begun)).await {
            Ok(Some(committed)) => {
                tracing::warn!(
                    xid = begun.xid,
                    committed,
                    "the commit whose answer was lost is settled"
                );
                return match committed {
                    true => Ok(()),
                    false => Err(StoreError::Unavailable(format!(
                        "{lost} (the transaction did not commit)"
                    ))),
                };
            }
            asked if !said => {
                let error = asked.err().map(|error| error.to_string());
                tracing::error!(
                    xid = begun.xid,
                    %lost,
                    error = error.as_deref().unwrap_or("its server process is still ending"),
                    "a commit's answer was lost: its writers wait until the database says \
                     whether it committed"
                );
                said = true;
            }
            _ => {}
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(SETTLE_MAX);
    }
}

/// Whether `begun` committed (`None`: not known yet, its process is still ending). Its mark
/// says, once no process runs it any more: on the server it ran on, and as well on a standby
/// promoted since (which has the mark if it had the commit).
async fn ask(pool: &Pool, begun: Begun) -> Result<Option<bool>, StoreError> {
    let conn = pool.connect().await?;
    let xid32 = (begun.xid & 0xffff_ffff).to_string();
    let running: bool = conn
        .client
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) > 0 FROM pg_stat_activity \
             WHERE pid = $1 AND backend_xid::text = $2",
            &[&begun.pid, &xid32],
        )
        .await?
        .get(0);
    if running {
        return Ok(None);
    }
    let committed: bool = conn
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM commit_marks WHERE token = $1)",
            &[&begun.mark.as_bytes().as_slice()],
        )
        .await?
        .get(0);
    Ok(Some(committed))
}
