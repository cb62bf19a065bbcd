//! The `requests` table: admission with dedupe, completion, delivery state of final replies.
//!
//! **Invariant:** `complete` only moves a `queued` row, so a request's op result is recorded at
//! most once (`executions` ≤ 1) whatever the races between workers, cancels and restarts.

pub use super::delivery::{
    ack, expire_held, held_any, held_counts, held_for, mark_published, undeliverable, unpublished,
};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::store::requests::{
    lifecycle, Admission, CancelOutcome, Completion, Existing, FinalReply, NewRequest,
    RequestSummary, StoredRequest,
};
use crate::wire::{Correlation, DeviceId, RequestId, State};

pub(super) fn request_id(row: &Row<'_>, idx: usize) -> rusqlite::Result<RequestId> {
    let bytes: Vec<u8> = row.get(idx)?;
    RequestId::from_slice(&bytes).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Blob,
            "bad request id".into(),
        )
    })
}

pub(super) fn device_id(row: &Row<'_>, idx: usize) -> rusqlite::Result<DeviceId> {
    let text: String = row.get(idx)?;
    DeviceId::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            "bad device id".into(),
        )
    })
}

pub(super) fn state(row: &Row<'_>, idx: usize) -> rusqlite::Result<State> {
    let text: String = row.get(idx)?;
    State::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            "bad state".into(),
        )
    })
}

pub(super) fn correlation(row: &Row<'_>, idx: usize) -> rusqlite::Result<Correlation> {
    let bytes: Vec<u8> = row.get(idx)?;
    Ok(Correlation(Bytes::from(bytes)))
}

/// Stores a request unless its (device, correlation) was seen within the dedupe window (received
/// after `dedupe_after_ms`); reports which. An older request whose reply was acked or
/// dead-lettered is forgotten first, so the window is exact whenever pruning last ran.
pub fn admit(
    conn: &Connection,
    request: &NewRequest,
    dedupe_after_ms: i64,
) -> rusqlite::Result<Admission> {
    let insert = |conn: &Connection| {
        conn.prepare_cached(
            "INSERT INTO requests (id, device, corr, op, args, reply_topic, envelope, received_ms,
                 deadline_ms, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued')
             ON CONFLICT (device, corr) DO NOTHING",
        )?
        .execute(params![
            request.id.as_bytes(),
            request.device.as_str(),
            request.corr.as_bytes(),
            request.op,
            request.args,
            request.reply_topic,
            request.envelope,
            request.received_ms,
            request.deadline_ms,
        ])
    };
    if insert(conn)? == 1 {
        return Ok(Admission::New);
    }
    let forgotten = conn
        .prepare_cached(
            "DELETE FROM requests WHERE device = ?1 AND corr = ?2 AND received_ms < ?3
                 AND delivery IN ('acked', 'dead')",
        )?
        .execute(params![
            request.device.as_str(),
            request.corr.as_bytes(),
            dedupe_after_ms
        ])?;
    if forgotten == 1 && insert(conn)? == 1 {
        return Ok(Admission::New);
    }
    find(conn, &request.device, &request.corr)?
        .map(Admission::Existing)
        .ok_or(rusqlite::Error::QueryReturnedNoRows)
}

/// Looks a request up by its dedupe key.
pub fn find(
    conn: &Connection,
    device: &DeviceId,
    corr: &Correlation,
) -> rusqlite::Result<Option<Existing>> {
    conn.prepare_cached(
        "SELECT id, op, state, reply, status, expires_ms, reply_topic
         FROM requests WHERE device = ?1 AND corr = ?2",
    )?
    .query_row(params![device.as_str(), corr.as_bytes()], |row| {
        Ok(Existing {
            id: request_id(row, 0)?,
            op: row.get(1)?,
            state: state(row, 2)?,
            reply: row.get(3)?,
            status: row.get(4)?,
            expires_ms: row.get(5)?,
            reply_topic: row.get(6)?,
        })
    })
    .optional()
}

/// Records a queued request's final reply and starts holding it. Returns false (and changes
/// nothing) when the request is no longer queued: cancelled, or already finished.
pub fn complete(conn: &Connection, done: &Completion) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE requests SET state = ?2, status = ?3, reply = ?4, finished_ms = ?5,
                 expires_ms = ?6, delivery = 'held', executions = executions + ?7
             WHERE id = ?1 AND state = 'queued'",
        )?
        .execute(params![
            done.id.as_bytes(),
            done.state.as_str(),
            done.status,
            done.payload,
            done.finished_ms,
            done.expires_ms,
            i64::from(done.executed),
        ])?;
    Ok(changed == 1)
}

/// Up to `limit` requests still queued with ids after `after` and up to `until`, oldest first:
/// what a restart must run, a page at a time.
pub fn queued_after(
    conn: &Connection,
    after: Option<RequestId>,
    until: RequestId,
    limit: usize,
) -> rusqlite::Result<Vec<StoredRequest>> {
    let after = after.map_or_else(Vec::new, |id| id.as_bytes().to_vec());
    let mut stmt = conn.prepare_cached(
        "SELECT id, device, corr, op, args, reply_topic, envelope, received_ms, deadline_ms
         FROM requests WHERE state = 'queued' AND id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, until.as_bytes(), limit as i64], |row| {
        Ok(StoredRequest {
            id: request_id(row, 0)?,
            device: device_id(row, 1)?,
            corr: correlation(row, 2)?,
            op: row.get(3)?,
            args: row.get(4)?,
            reply_topic: row.get(5)?,
            envelope: row.get(6)?,
            received_ms: row.get(7)?,
            deadline_ms: row.get(8)?,
        })
    })?;
    rows.collect()
}

/// How many requests are queued, and the newest queued id.
pub fn queued_extent(conn: &Connection) -> rusqlite::Result<(usize, Option<RequestId>)> {
    let (count, newest): (usize, Option<Vec<u8>>) = conn
        .prepare_cached("SELECT COUNT(*), MAX(id) FROM requests WHERE state = 'queued'")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok((
        count,
        newest.and_then(|bytes| RequestId::from_slice(&bytes)),
    ))
}

/// The columns [`summary`] reads, in its order.
pub(super) const SUMMARY_COLUMNS: &str = "id, device, corr, op, state, status, delivery, \
     executions, published, received_ms, finished_ms";

/// Requests for the operator CLI, newest first.
pub fn list(
    conn: &Connection,
    device: Option<&str>,
    state: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<RequestSummary>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM requests
         WHERE (?1 IS NULL OR device = ?1) AND (?2 IS NULL OR state = ?2)
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![device, state, limit as i64], summary)?;
    rows.collect()
}

/// A [`RequestSummary`] from the [`SUMMARY_COLUMNS`].
pub(super) fn summary(row: &Row<'_>) -> rusqlite::Result<RequestSummary> {
    let state: String = row.get(4)?;
    let delivery: Option<String> = row.get(6)?;
    let published: u32 = row.get(8)?;
    Ok(RequestSummary {
        id: request_id(row, 0)?.to_string(),
        device: row.get(1)?,
        corr: correlation(row, 2)?.to_string(),
        op: row.get(3)?,
        lifecycle: lifecycle(&state, delivery.as_deref(), published),
        state,
        status: row.get(5)?,
        delivery,
        executions: row.get(7)?,
        published,
        received_ms: row.get(9)?,
        finished_ms: row.get(10)?,
    })
}

/// Cancels a queued request, recording the final reply `make_reply(id, envelope)` builds.
pub fn cancel(
    conn: &Connection,
    device: &DeviceId,
    corr: &Correlation,
    now_ms: i64,
    expires_ms: i64,
    make_reply: crate::store::requests::CancelReply,
) -> rusqlite::Result<CancelOutcome> {
    let row = conn
        .prepare_cached(
            "SELECT id, state, envelope, reply_topic FROM requests WHERE device = ?1 AND corr = ?2",
        )?
        .query_row(params![device.as_str(), corr.as_bytes()], |row| {
            Ok((
                request_id(row, 0)?,
                state(row, 1)?,
                row.get::<_, bool>(2)?,
                row.get::<_, String>(3)?,
            ))
        })
        .optional()?;
    let Some((id, current, envelope, reply_topic)) = row else {
        return Ok(CancelOutcome::NotFound);
    };
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
    complete(conn, &done)?;
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

/// Forgets up to `limit` finished requests received before `before_ms` whose replies were
/// acknowledged or dead-lettered (the dedupe window has passed), the oldest first. Held and
/// queued requests are kept.
pub fn prune(conn: &Connection, before_ms: i64, limit: usize) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM requests WHERE id IN (
            SELECT id FROM requests WHERE received_ms < ?1 AND delivery IN ('acked', 'dead')
            ORDER BY received_ms LIMIT ?2)",
    )?
    .execute(params![before_ms, limit as i64])
}
