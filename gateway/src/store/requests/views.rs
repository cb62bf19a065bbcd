//! Operator views of the `requests` table: one request in full, held replies, where each
//! request is on its way, the two stall ages (oldest queued, oldest held), and the operator's
//! one write, cancelling a queued request by id (`gateway requests cancel`).

use rusqlite::{params, Connection, OptionalExtension};

use super::{summary, RequestSummary};
use crate::wire::json::payload_to_json;

/// Where a request is: `queued` → (`running`, known only in the gateway process) → `done` (final
/// reply committed, not yet handed to the broker) → `held` (published, waiting for the ack) →
/// `acked` or `dead` (TTL passed).
pub fn lifecycle(state: &str, delivery: Option<&str>, published: u32) -> &'static str {
    match (state, delivery) {
        ("queued", _) => "queued",
        (_, Some("held")) if published == 0 => "done",
        (_, Some("held")) => "held",
        (_, Some("acked")) => "acked",
        (_, Some("dead")) => "dead",
        _ => "done",
    }
}

/// One request in full, for `gateway requests show` and the device page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestDetail {
    /// What a listing shows.
    #[serde(flatten)]
    pub summary: RequestSummary,
    /// The op's arguments as JSON.
    pub args: Option<serde_json::Value>,
    /// The final reply as JSON, once there is one.
    pub reply: Option<serde_json::Value>,
    /// Where replies go.
    pub reply_topic: String,
    /// When it must be finished by (ms since epoch).
    pub deadline_ms: i64,
    /// When its reply TTL ends (ms since epoch), once final.
    pub expires_ms: Option<i64>,
}

const SUMMARY_COLUMNS: &str = "id, device, corr, op, state, status, delivery, executions, \
     published, received_ms, finished_ms";

/// The request with this id (UUID text), if stored.
pub fn by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<RequestDetail>> {
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
pub fn held_list(
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

/// When the oldest queued request was received and the oldest held reply finished (ms since
/// epoch), if any: the stall gauges. Both walk an index from its start (request ids are
/// time-ordered UUIDs; held replies by expiry, which is finish time + the reply TTL).
pub fn oldest_ages(conn: &Connection) -> rusqlite::Result<(Option<i64>, Option<i64>)> {
    let queued = conn
        .prepare_cached(
            "SELECT received_ms FROM requests
             WHERE id = (SELECT MIN(id) FROM requests WHERE state = 'queued')",
        )?
        .query_row([], |row| row.get(0))
        .optional()?;
    let held = conn
        .prepare_cached(
            "SELECT finished_ms FROM requests WHERE delivery = 'held'
             ORDER BY expires_ms LIMIT 1",
        )?
        .query_row([], |row| row.get(0))
        .optional()?
        .flatten();
    Ok((queued, held))
}

/// What an operator's cancel did.
#[derive(Debug, Clone)]
pub enum OperatorCancel {
    /// Cancelled: its `410` is held and goes out when its device next wakes.
    Cancelled,
    /// Already finished, in this state.
    AlreadyFinished(crate::wire::State),
    /// No request with that id.
    NotFound,
}

/// Cancels the queued request with id `id` (UUID text) for an operator, recording the final
/// reply `make_reply(id, envelope, corr)` builds. The reply is counted as published once, so the
/// running gateway's outbox redelivers it on the device's next wake (a reply never published is
/// otherwise only sent by the worker that finished it, and this one has none); if the gateway
/// is running the job, its completion finds the row no longer queued and records nothing.
pub fn cancel_by_id(
    conn: &Connection,
    id: &str,
    now_ms: i64,
    expires_ms: i64,
    make_reply: impl FnOnce(crate::wire::RequestId, bool, &crate::wire::Correlation) -> Vec<u8>,
) -> rusqlite::Result<OperatorCancel> {
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Ok(OperatorCancel::NotFound);
    };
    let found = conn
        .prepare_cached("SELECT device, corr FROM requests WHERE id = ?1")?
        .query_row(params![uuid.as_bytes().to_vec()], |row| {
            Ok((super::device_id(row, 0)?, super::correlation(row, 1)?))
        })
        .optional()?;
    let Some((device, corr)) = found else {
        return Ok(OperatorCancel::NotFound);
    };
    let outcome = super::cancel(conn, &device, &corr, now_ms, expires_ms, |id, envelope| {
        make_reply(id, envelope, &corr)
    })?;
    Ok(match outcome {
        super::CancelOutcome::Cancelled(reply) => {
            super::mark_published(conn, reply.id)?;
            OperatorCancel::Cancelled
        }
        super::CancelOutcome::AlreadyFinished(state) => OperatorCancel::AlreadyFinished(state),
        super::CancelOutcome::NotFound => OperatorCancel::NotFound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_follows_state_and_delivery() {
        assert_eq!(lifecycle("queued", None, 0), "queued");
        assert_eq!(lifecycle("done", Some("held"), 0), "done");
        assert_eq!(lifecycle("done", Some("held"), 2), "held");
        assert_eq!(lifecycle("failed", Some("acked"), 1), "acked");
        assert_eq!(lifecycle("expired", Some("dead"), 1), "dead");
    }
}
