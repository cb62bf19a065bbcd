//! Operator views on SQLite, over any connection (the HTTP API's read-only one, the CLI's):
//! one request in full, a device in full, the backlog (counts and the two stall ages), and the
//! operator's one write to requests, cancelling a queued request by id.

use rusqlite::{params, Connection, OptionalExtension};

use super::requests::{cancel, correlation, device_id, summary, SUMMARY_COLUMNS};
use super::{deadletters, delivery, devices, requests};
use crate::store::devices::DeviceDetail;
use crate::store::requests::{
    Backlog, CancelOutcome, CancelReply, OperatorCancel, RequestDetail, RequestSummary,
};
use crate::wire::json::payload_to_json;

/// The request with this id (UUID text), if stored.
pub fn request(conn: &Connection, id: &str) -> rusqlite::Result<Option<RequestDetail>> {
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Ok(None);
    };
    conn.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS}, args, reply, reply_topic, deadline_ms, expires_ms
         FROM requests WHERE id = ?1"
    ))?
    .query_row(params![uuid.as_bytes().to_vec()], |row| {
        let args: Vec<u8> = row.get(11)?;
        let reply: Option<Vec<u8>> = row.get(12)?;
        Ok(RequestDetail {
            summary: summary(row)?,
            args: payload_to_json(&args),
            reply: reply.as_deref().and_then(payload_to_json),
            reply_topic: row.get(13)?,
            deadline_ms: row.get(14)?,
            expires_ms: row.get(15)?,
        })
    })
    .optional()
}

/// A device's held replies, oldest first, at most `limit`.
fn held_list(
    conn: &Connection,
    device: &str,
    limit: usize,
) -> rusqlite::Result<Vec<RequestSummary>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM requests
         WHERE device = ?1 AND delivery = 'held' ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![device, limit as i64], summary)?;
    rows.collect()
}

/// One device in full, if known: at most `recent` of its requests, held replies and dead
/// letters.
pub fn device(
    conn: &Connection,
    id: &str,
    recent: usize,
) -> rusqlite::Result<Option<DeviceDetail>> {
    let Some(device) = devices::get(conn, id)? else {
        return Ok(None);
    };
    let (dead_letters_total, dead_letters) = deadletters::page(conn, Some(id), 0, recent)?;
    Ok(Some(DeviceDetail {
        device,
        recent_requests: requests::list(conn, Some(id), None, recent)?,
        held_replies: held_list(conn, id, recent)?,
        dead_letters,
        dead_letters_total,
    }))
}

/// Queued and held counts, and when the oldest queued request was received and the oldest
/// held reply finished. Both ages walk an index from its start (request ids are time-ordered
/// UUIDs; held replies by expiry, which is finish time + the reply TTL).
pub fn backlog(conn: &Connection) -> rusqlite::Result<Backlog> {
    let queued: u64 = conn
        .prepare_cached("SELECT COUNT(*) FROM requests WHERE state = 'queued'")?
        .query_row([], |row| row.get(0))?;
    let oldest_queued_ms = conn
        .prepare_cached(
            "SELECT received_ms FROM requests
             WHERE id = (SELECT MIN(id) FROM requests WHERE state = 'queued')",
        )?
        .query_row([], |row| row.get(0))
        .optional()?;
    let oldest_held_ms = conn
        .prepare_cached(
            "SELECT finished_ms FROM requests WHERE delivery = 'held'
             ORDER BY expires_ms LIMIT 1",
        )?
        .query_row([], |row| row.get(0))
        .optional()?
        .flatten();
    Ok(Backlog {
        queued,
        held: delivery::held_counts(conn, None)? as u64,
        oldest_queued_ms,
        oldest_held_ms,
    })
}

/// Cancels the queued request with id `id` (UUID text) for an operator, recording the final
/// reply `make_reply` builds. The reply is counted as published once, so the running gateway's
/// outbox redelivers it on the device's next wake (a reply never published is otherwise only
/// sent by the worker that finished it, and this one has none); if the gateway is running the
/// job, its completion finds the row no longer queued and records nothing. Call inside a
/// transaction that took the write lock first.
pub fn cancel_by_id(
    conn: &Connection,
    id: &str,
    now_ms: i64,
    expires_ms: i64,
    make_reply: CancelReply,
) -> rusqlite::Result<OperatorCancel> {
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Ok(OperatorCancel::NotFound);
    };
    let found = conn
        .prepare_cached("SELECT device, corr FROM requests WHERE id = ?1")?
        .query_row(params![uuid.as_bytes().to_vec()], |row| {
            Ok((device_id(row, 0)?, correlation(row, 1)?))
        })
        .optional()?;
    let Some((device, corr)) = found else {
        return Ok(OperatorCancel::NotFound);
    };
    Ok(
        match cancel(conn, &device, &corr, now_ms, expires_ms, make_reply)? {
            CancelOutcome::Cancelled(reply) => {
                delivery::mark_published(conn, reply.id)?;
                OperatorCancel::Cancelled
            }
            CancelOutcome::AlreadyFinished(state) => OperatorCancel::AlreadyFinished(state),
            CancelOutcome::NotFound => OperatorCancel::NotFound,
        },
    )
}
