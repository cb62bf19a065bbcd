//! The `requests` table on PostgreSQL: admission with dedupe, completion, cancel, delivery
//! state. The same statements as the SQLite engine's, in PostgreSQL's dialect; each function
//! runs on one connection, inside whatever transaction the caller opened.
//!
//! **Invariant:** `complete` only moves a `queued` row, so a request's op result is recorded at
//! most once (`executions` ≤ 1), whatever gateway, worker or cancel races it.

use bytes::Bytes;
use tokio_postgres::Row;

use super::grouped;
use super::pool::Conn;
use crate::store::requests::{
    Admission, CancelOutcome, CancelReply, Completion, Existing, FinalReply, NewRequest,
    StoredRequest,
};
use crate::store::StoreError;
use crate::wire::{Correlation, DeviceId, RequestId, State};

pub(super) fn request_id(row: &Row, idx: usize) -> Result<RequestId, StoreError> {
    let bytes: &[u8] = row.try_get(idx)?;
    RequestId::from_slice(bytes).ok_or_else(|| StoreError::Sql("bad request id".into()))
}

pub(super) fn device_id(row: &Row, idx: usize) -> Result<DeviceId, StoreError> {
    let text: &str = row.try_get(idx)?;
    DeviceId::parse(text).ok_or_else(|| StoreError::Sql("bad device id".into()))
}

fn state(row: &Row, idx: usize) -> Result<State, StoreError> {
    let text: &str = row.try_get(idx)?;
    State::parse(text).ok_or_else(|| StoreError::Sql("bad state".into()))
}

pub(super) fn correlation(row: &Row, idx: usize) -> Result<Correlation, StoreError> {
    let bytes: Vec<u8> = row.try_get(idx)?;
    Ok(Correlation(Bytes::from(bytes)))
}

/// A queued request from a row of `id, device, corr, op, args, reply_topic, envelope,
/// received_ms, deadline_ms`.
pub(super) fn stored_request(row: &Row) -> Result<StoredRequest, StoreError> {
    Ok(StoredRequest {
        id: request_id(row, 0)?,
        device: device_id(row, 1)?,
        corr: correlation(row, 2)?,
        op: row.try_get(3)?,
        args: row.try_get(4)?,
        reply_topic: row.try_get(5)?,
        envelope: row.try_get(6)?,
        received_ms: row.try_get(7)?,
        deadline_ms: row.try_get(8)?,
    })
}

fn status(row: &Row, idx: usize) -> Result<Option<u16>, StoreError> {
    let code: Option<i32> = row.try_get(idx)?;
    Ok(code.map(|c| c as u16))
}

/// How often [`admit`] tries again when another gateway took the quota slot it picked.
const SLOT_TRIES: usize = 8;

/// Whether the request was stored: the grouped insert with this one row.
async fn insert(
    conn: &Conn,
    request: &NewRequest,
    owner: &str,
    max_pending: usize,
) -> Result<bool, StoreError> {
    let row = grouped::Admit {
        request,
        max_pending,
        rank: 0,
        batched: 1,
    };
    Ok(grouped::admit(conn, owner, &[row]).await?[0])
}

/// Stores a request unless its (device, correlation) was seen within the dedupe window, or the
/// device already has `max_pending` requests queued or running (0: unchecked); a duplicate is
/// answered as the original even past the quota. Two gateways admitting the same key at once:
/// the second insert waits for the first's commit, then finds its row (read committed), so both
/// answer with one request id. The quota is kept by slots ([`grouped`]'s insert): an insert
/// that found neither its key nor a full quota lost its slot to another gateway's commit, and
/// tries again, seeing that commit.
pub async fn admit(
    conn: &Conn,
    owner: &str,
    request: &NewRequest,
    dedupe_after_ms: i64,
    max_pending: usize,
) -> Result<Admission, StoreError> {
    let mut forgot = false;
    for _ in 0..SLOT_TRIES {
        if insert(conn, request, owner, max_pending).await? {
            return Ok(Admission::New);
        }
        if !forgot {
            forgot = true;
            if forget(conn, request, dedupe_after_ms).await? {
                continue;
            }
        }
        // Not stored: a duplicate, the device over its quota, or a slot taken meanwhile.
        if let Some(existing) = find(conn, &request.device, &request.corr).await? {
            return Ok(Admission::Existing(existing));
        }
        if max_pending == 0 {
            return Err(StoreError::Sql("admitted request vanished".into()));
        }
        if pending(conn, &request.device).await? >= max_pending {
            return Ok(Admission::OverQuota);
        }
    }
    Ok(Admission::OverQuota)
}

/// Forgets the finished request with this key received before `dedupe_after_ms` (its key may
/// be used again); whether there was one.
async fn forget(
    conn: &Conn,
    request: &NewRequest,
    dedupe_after_ms: i64,
) -> Result<bool, StoreError> {
    let forget = conn
        .statement(
            "DELETE FROM requests WHERE device = $1 AND corr = $2 AND received_ms < $3
                 AND delivery IN ('acked', 'dead')",
        )
        .await?;
    let forgotten = conn
        .client
        .execute(
            &forget,
            &[
                &request.device.as_str(),
                &request.corr.as_bytes(),
                &dedupe_after_ms,
            ],
        )
        .await?;
    Ok(forgotten == 1)
}

/// How many quota slots the device's queued and running requests hold.
async fn pending(conn: &Conn, device: &DeviceId) -> Result<usize, StoreError> {
    let statement = conn
        .statement("SELECT COUNT(*) FROM requests WHERE device = $1 AND slot IS NOT NULL")
        .await?;
    let count: i64 = conn
        .client
        .query_one(&statement, &[&device.as_str()])
        .await?
        .try_get(0)?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Looks a request up by its dedupe key.
pub async fn find(
    conn: &Conn,
    device: &DeviceId,
    corr: &Correlation,
) -> Result<Option<Existing>, StoreError> {
    let statement = conn
        .statement(
            "SELECT id, op, state, reply, status, expires_ms, reply_topic
             FROM requests WHERE device = $1 AND corr = $2",
        )
        .await?;
    let row = conn
        .client
        .query_opt(&statement, &[&device.as_str(), &corr.as_bytes()])
        .await?;
    row.map(|row| {
        Ok(Existing {
            id: request_id(&row, 0)?,
            op: row.try_get(1)?,
            state: state(&row, 2)?,
            reply: row.try_get(3)?,
            status: status(&row, 4)?,
            expires_ms: row.try_get(5)?,
            reply_topic: row.try_get(6)?,
        })
    })
    .transpose()
}

/// Records a queued request's final reply and starts holding it; false when no longer queued.
pub async fn complete(conn: &Conn, done: &Completion) -> Result<bool, StoreError> {
    let statement = conn
        .statement(
            "UPDATE requests SET state = $2, status = $3, reply = $4, finished_ms = $5,
                 expires_ms = $6, delivery = 'held', executions = executions + $7, slot = NULL
             WHERE id = $1 AND COALESCE(state, '') = 'queued'",
        )
        .await?;
    let changed = conn
        .client
        .execute(
            &statement,
            &[
                &done.id.as_bytes().as_slice(),
                &done.state.as_str(),
                &i32::from(done.status),
                &done.payload,
                &done.finished_ms,
                &done.expires_ms,
                &i32::from(done.executed),
            ],
        )
        .await?;
    Ok(changed == 1)
}

/// Cancels a queued request (the row is locked while deciding), recording its `410`.
pub async fn cancel(
    conn: &Conn,
    owner: &str,
    device: &DeviceId,
    corr: &Correlation,
    now_ms: i64,
    expires_ms: i64,
    make_reply: CancelReply,
) -> Result<CancelOutcome, StoreError> {
    let statement = conn
        .statement(
            "SELECT id, state, envelope, reply_topic FROM requests
             WHERE device = $1 AND corr = $2 FOR UPDATE",
        )
        .await?;
    let Some(row) = conn
        .client
        .query_opt(&statement, &[&device.as_str(), &corr.as_bytes()])
        .await?
    else {
        return Ok(CancelOutcome::NotFound);
    };
    let (id, current) = (request_id(&row, 0)?, state(&row, 1)?);
    let (envelope, reply_topic): (bool, String) = (row.try_get(2)?, row.try_get(3)?);
    if current != State::Queued {
        return Ok(CancelOutcome::AlreadyFinished(current));
    }
    let payload = make_reply(id, envelope, corr);
    let done = Completion {
        id,
        state: State::Cancelled,
        status: 410,
        payload: payload.clone(),
        finished_ms: now_ms,
        expires_ms,
        executed: false,
    };
    complete(conn, &done).await?;
    // The gateway that cancels publishes the 410: it holds the claim on it.
    conn.client
        .execute(
            "UPDATE requests SET owner = $2 WHERE id = $1",
            &[&id.as_bytes().as_slice(), &owner],
        )
        .await?;
    Ok(CancelOutcome::Cancelled(FinalReply {
        id,
        device: device.clone(),
        corr: corr.clone(),
        reply_topic,
        status: 410,
        payload,
        expires_ms,
        envelope,
    }))
}

/// Up to `limit` requests still queued with ids after `after` and up to `until`, oldest first.
pub async fn queued_after(
    conn: &Conn,
    owner: &str,
    after: Option<RequestId>,
    until: RequestId,
    limit: usize,
) -> Result<Vec<StoredRequest>, StoreError> {
    let after = after.map_or_else(Vec::new, |id| id.as_bytes().to_vec());
    let statement = conn
        .statement(
            "SELECT id, device, corr, op, args, reply_topic, envelope, received_ms, deadline_ms
             FROM requests WHERE state = 'queued' AND owner = $4 AND id > $1 AND id <= $2
             ORDER BY id LIMIT $3",
        )
        .await?;
    let rows = conn
        .client
        .query(
            &statement,
            &[
                &after,
                &until.as_bytes().as_slice(),
                &(limit as i64),
                &owner,
            ],
        )
        .await?;
    rows.iter().map(stored_request).collect()
}

/// How many requests are queued, and the newest queued id.
pub async fn queued_extent(
    conn: &Conn,
    owner: &str,
) -> Result<(usize, Option<RequestId>), StoreError> {
    let statement = conn
        .statement(
            "SELECT COUNT(*), (SELECT id FROM requests WHERE state = 'queued' AND owner = $1
                               ORDER BY id DESC LIMIT 1)
             FROM requests WHERE state = 'queued' AND owner = $1",
        )
        .await?;
    let row = conn.client.query_one(&statement, &[&owner]).await?;
    let count: i64 = row.try_get(0)?;
    let newest: Option<Vec<u8>> = row.try_get(1)?;
    Ok((
        count.max(0) as usize,
        newest.and_then(|bytes| RequestId::from_slice(&bytes)),
    ))
}

/// Forgets up to `limit` finished requests received before `before_ms` whose replies were
/// acked or dead, the oldest first. Rows another gateway's prune has locked are skipped (it
/// deletes them), so gateways pruning at once share the work instead of waiting on each other.
pub async fn prune(conn: &Conn, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
    let statement = conn
        .statement(
            "DELETE FROM requests WHERE id IN (
                SELECT id FROM requests WHERE id < $1 AND delivery IN ('acked', 'dead')
                ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .await?;
    // Ids are time-ordered (UUID v7, minted as the request is received): the primary key
    // finds what was received before `before_ms`.
    let before = RequestId::first_at(before_ms);
    Ok(conn
        .client
        .execute(
            &statement,
            &[&before.as_bytes().as_slice(), &(limit as i64)],
        )
        .await? as usize)
}
