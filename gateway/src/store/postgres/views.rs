//! Operator views on PostgreSQL, the same as the SQLite engine's in PostgreSQL's dialect:
//! request listings and one request in full, a device in full, dead letters by page, the
//! backlog (counts and the two stall ages, cluster-wide), and the operator's cancel by id.

use tokio_postgres::Row;

use super::devices;
use super::pool::Conn;
use super::requests::{cancel, correlation, device_id, request_id};
use crate::store::deadletters::{request_id_text, DeadLetter, DeadLetterRow};
use crate::store::devices::DeviceDetail;
use crate::store::requests::{
    lifecycle, Backlog, CancelOutcome, CancelReply, OperatorCancel, RequestDetail, RequestSummary,
};
use crate::store::StoreError;
use crate::wire::json::payload_to_json;

/// The columns [`summary`] reads, in its order (a macro, so statements stay `&'static str`).
macro_rules! summary_columns {
    () => {
        "id, device, corr, op, state, status, delivery, executions, published, received_ms, \
         finished_ms"
    };
}

fn summary(row: &Row) -> Result<RequestSummary, StoreError> {
    let state: String = row.try_get(4)?;
    let status: Option<i32> = row.try_get(5)?;
    let delivery: Option<String> = row.try_get(6)?;
    let executions: i32 = row.try_get(7)?;
    let published = row.try_get::<_, i32>(8)?.max(0) as u32;
    Ok(RequestSummary {
        id: request_id(row, 0)?.to_string(),
        device: row.try_get(1)?,
        corr: correlation(row, 2)?.to_string(),
        op: row.try_get(3)?,
        lifecycle: lifecycle(&state, delivery.as_deref(), published),
        state,
        status: status.map(|s| s as u16),
        delivery,
        executions: executions.max(0) as u32,
        published,
        received_ms: row.try_get(9)?,
        finished_ms: row.try_get(10)?,
    })
}

/// Requests for the operator, newest first.
pub async fn list_requests(
    conn: &Conn,
    device: Option<&str>,
    state: Option<&str>,
    limit: usize,
) -> Result<Vec<RequestSummary>, StoreError> {
    let statement = conn
        .statement(concat!(
            "SELECT ",
            summary_columns!(),
            " FROM requests
             WHERE ($1::text IS NULL OR device = $1) AND ($2::text IS NULL OR state = $2)
             ORDER BY id DESC LIMIT $3"
        ))
        .await?;
    let rows = conn
        .client
        .query(&statement, &[&device, &state, &(limit as i64)])
        .await?;
    rows.iter().map(summary).collect()
}

/// The request with this id (UUID text), if stored.
pub async fn request(conn: &Conn, id: &str) -> Result<Option<RequestDetail>, StoreError> {
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Ok(None);
    };
    let statement = conn
        .statement(concat!(
            "SELECT ",
            summary_columns!(),
            ", args, reply, reply_topic, deadline_ms, expires_ms FROM requests WHERE id = $1"
        ))
        .await?;
    let row = conn
        .client
        .query_opt(&statement, &[&uuid.as_bytes().as_slice()])
        .await?;
    row.map(|row| {
        let args: Vec<u8> = row.try_get(11)?;
        let reply: Option<Vec<u8>> = row.try_get(12)?;
        Ok(RequestDetail {
            summary: summary(&row)?,
            args: payload_to_json(&args),
            reply: reply.as_deref().and_then(payload_to_json),
            reply_topic: row.try_get(13)?,
            deadline_ms: row.try_get(14)?,
            expires_ms: row.try_get(15)?,
        })
    })
    .transpose()
}

/// One device in full, if known: at most `recent` of its requests, held replies and dead
/// letters.
pub async fn device(
    conn: &Conn,
    id: &str,
    recent: usize,
) -> Result<Option<DeviceDetail>, StoreError> {
    let Some(device) = devices::get(conn, id).await? else {
        return Ok(None);
    };
    let held = conn
        .statement(concat!(
            "SELECT ",
            summary_columns!(),
            " FROM requests WHERE device = $1 AND delivery = 'held' ORDER BY id LIMIT $2"
        ))
        .await?;
    let held_replies = conn
        .client
        .query(&held, &[&id, &(recent as i64)])
        .await?
        .iter()
        .map(summary)
        .collect::<Result<_, _>>()?;
    let (dead_letters_total, dead_letters) = dead_letters_page(conn, Some(id), 0, recent).await?;
    Ok(Some(DeviceDetail {
        device,
        recent_requests: list_requests(conn, Some(id), None, recent).await?,
        held_replies,
        dead_letters,
        dead_letters_total,
    }))
}

/// A page of dead letters (of one device, or all), newest first, and how many there are.
pub async fn dead_letters_page(
    conn: &Conn,
    device: Option<&str>,
    offset: usize,
    limit: usize,
) -> Result<(u64, Vec<DeadLetterRow>), StoreError> {
    let count = conn
        .statement("SELECT COUNT(*) FROM dead_letters WHERE $1::text IS NULL OR device = $1")
        .await?;
    let total: i64 = conn
        .client
        .query_one(&count, &[&device])
        .await?
        .try_get(0)?;
    let statement = conn
        .statement(
            "SELECT id, at_ms, device, request_id, corr, op, status, reason, requeued
             FROM dead_letters WHERE $1::text IS NULL OR device = $1
             ORDER BY id DESC LIMIT $2 OFFSET $3",
        )
        .await?;
    let rows = conn
        .client
        .query(&statement, &[&device, &(limit as i64), &(offset as i64)])
        .await?;
    let rows = rows
        .iter()
        .map(|row| {
            let request_id: Option<Vec<u8>> = row.try_get(3)?;
            let status: i32 = row.try_get(6)?;
            Ok(DeadLetterRow {
                id: row.try_get(0)?,
                letter: DeadLetter {
                    at_ms: row.try_get(1)?,
                    device: row.try_get(2)?,
                    request_id: request_id.as_deref().and_then(request_id_text),
                    corr: row.try_get(4)?,
                    op: row.try_get(5)?,
                    status: status as u16,
                    reason: row.try_get(7)?,
                },
                requeued: row.try_get(8)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((total.max(0) as u64, rows))
}

/// Queued and held counts and the two stall ages, over the whole (shared) database.
pub async fn backlog(conn: &Conn) -> Result<Backlog, StoreError> {
    let statement = conn
        .statement(
            "SELECT (SELECT COUNT(*) FROM requests WHERE state = 'queued'),
                    (SELECT COUNT(*) FROM requests WHERE delivery = 'held'),
                    (SELECT received_ms FROM requests WHERE state = 'queued' ORDER BY id LIMIT 1),
                    (SELECT finished_ms FROM requests
                        WHERE delivery = 'held' AND expires_ms IS NOT NULL
                        ORDER BY expires_ms LIMIT 1)",
        )
        .await?;
    let row = conn.client.query_one(&statement, &[]).await?;
    let count =
        |idx: usize| -> Result<u64, StoreError> { Ok(row.try_get::<_, i64>(idx)?.max(0) as u64) };
    Ok(Backlog {
        queued: count(0)?,
        held: count(1)?,
        oldest_queued_ms: row.try_get(2)?,
        oldest_held_ms: row.try_get(3)?,
    })
}

/// Cancels the queued request with id `id` for an operator (call inside a transaction): its
/// `410` is recorded, counted published once (so a wake of its device redelivers it through
/// any gateway), and stays with the gateway that owns the request.
pub async fn cancel_by_id(
    conn: &Conn,
    id: &str,
    now_ms: i64,
    expires_ms: i64,
    make_reply: CancelReply,
) -> Result<OperatorCancel, StoreError> {
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Ok(OperatorCancel::NotFound);
    };
    let Some(row) = conn
        .client
        .query_opt(
            "SELECT device, corr, owner FROM requests WHERE id = $1",
            &[&uuid.as_bytes().as_slice()],
        )
        .await?
    else {
        return Ok(OperatorCancel::NotFound);
    };
    let (device, corr) = (device_id(&row, 0)?, correlation(&row, 1)?);
    let owner: Option<String> = row.try_get(2)?;
    let owner = owner.unwrap_or_default();
    Ok(
        match cancel(conn, &owner, &device, &corr, now_ms, expires_ms, make_reply).await? {
            CancelOutcome::Cancelled(reply) => {
                // Counted as published, but not as sent (`sent_ms` stays): nobody sent it, so
                // the next wake's redelivery must not take it for one just handed out.
                conn.client
                    .execute(
                        "UPDATE requests SET published = published + 1 WHERE id = $1",
                        &[&reply.id.as_bytes().as_slice()],
                    )
                    .await?;
                OperatorCancel::Cancelled
            }
            CancelOutcome::AlreadyFinished(state) => OperatorCancel::AlreadyFinished(state),
            CancelOutcome::NotFound => OperatorCancel::NotFound,
        },
    )
}
