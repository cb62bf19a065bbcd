//! A final reply's delivery: published (and counted), held until the device acks it, redelivered
//! on wake, dead-lettered when its TTL passes. Rows are those of [`super`]'s `requests` table.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::deadletters;
use super::requests::{correlation, device_id, request_id};
use crate::store::deadletters::DeadLetter;
use crate::store::requests::FinalReply;
use crate::wire::{Correlation, DeviceId, RequestId};

const FINAL_REPLY_COLUMNS: &str =
    "id, device, corr, reply_topic, status, reply, expires_ms, envelope";

fn final_reply(row: &Row<'_>) -> rusqlite::Result<FinalReply> {
    Ok(FinalReply {
        id: request_id(row, 0)?,
        device: device_id(row, 1)?,
        corr: correlation(row, 2)?,
        reply_topic: row.get(3)?,
        status: row.get(4)?,
        payload: row.get(5)?,
        expires_ms: row.get(6)?,
        envelope: row.get(7)?,
    })
}

/// Held final replies that were never handed to the broker (a crash came between).
pub fn unpublished(conn: &Connection) -> rusqlite::Result<Vec<FinalReply>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {FINAL_REPLY_COLUMNS} FROM requests
         WHERE delivery = 'held' AND published = 0 ORDER BY id"
    ))?;
    let rows = stmt.query_map([], final_reply)?;
    rows.collect()
}

/// Held final replies of one device that were published at least once, oldest first, at most
/// `limit`: what a wake redelivers. (A reply not yet published is on its way through the
/// completion path; sending it here too would duplicate it.)
pub fn held_for(
    conn: &Connection,
    device: &DeviceId,
    limit: usize,
) -> rusqlite::Result<Vec<FinalReply>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {FINAL_REPLY_COLUMNS} FROM requests
         WHERE device = ?1 AND delivery = 'held' AND published > 0 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![device.as_str(), limit as i64], final_reply)?;
    rows.collect()
}

/// Every held final reply of one device, published or not, oldest first, at most `limit`:
/// what a wake redelivers while the store is degraded, when publish counts may not have
/// committed (a reply also on its way through the completion path arrives twice; devices drop
/// duplicates by correlation).
pub fn held_any(
    conn: &Connection,
    device: &DeviceId,
    limit: usize,
) -> rusqlite::Result<Vec<FinalReply>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {FINAL_REPLY_COLUMNS} FROM requests
         WHERE device = ?1 AND delivery = 'held' ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![device.as_str(), limit as i64], final_reply)?;
    rows.collect()
}

/// Counts that a final reply was handed to the broker, while it is held (a count after the
/// ack is dropped, as on PostgreSQL).
pub fn mark_published(conn: &Connection, id: RequestId) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE requests SET published = published + 1 WHERE id = ?1 AND delivery = 'held'",
    )?
    .execute(params![id.as_bytes()])?;
    Ok(())
}

/// The device acknowledged its final reply: stop holding it. Returns the request's id if a held
/// reply was acknowledged.
pub fn ack(
    conn: &Connection,
    device: &DeviceId,
    corr: &Correlation,
) -> rusqlite::Result<Option<RequestId>> {
    conn.prepare_cached(
        "UPDATE requests SET delivery = 'acked', args = X''
         WHERE device = ?1 AND corr = ?2 AND delivery = 'held' RETURNING id",
    )?
    .query_row(params![device.as_str(), corr.as_bytes()], |row| {
        request_id(row, 0)
    })
    .optional()
}

/// Held replies whose TTL has passed: each is marked `dead` and recorded as a dead letter
/// (never silently dropped). At most `limit` per call; returns the letters written.
pub fn expire_held(
    conn: &Connection,
    now_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let expired: Vec<(RequestId, String, Correlation, String, u16)> = conn
        .prepare_cached(
            "SELECT id, device, corr, op, status FROM requests
             WHERE delivery = 'held' AND expires_ms <= ?1 ORDER BY expires_ms LIMIT ?2",
        )?
        .query_map(params![now_ms, limit as i64], |row| {
            Ok((
                request_id(row, 0)?,
                row.get(1)?,
                correlation(row, 2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut mark = conn.prepare_cached("UPDATE requests SET delivery = 'dead' WHERE id = ?1")?;
    let mut letters = Vec::with_capacity(expired.len());
    for (id, device, corr, op, status) in expired {
        mark.execute(params![id.as_bytes()])?;
        let letter = DeadLetter {
            at_ms: now_ms,
            device: Some(device),
            request_id: Some(id.to_string()),
            corr: Some(corr.to_string()),
            op: Some(op),
            status,
            reason: "reply_ttl: the final reply was not acknowledged within limits.reply_ttl_s"
                .into(),
        };
        deadletters::insert(conn, &letter)?;
        letters.push(letter);
    }
    Ok(letters)
}

/// A reply its device could not take (over its MQTT Maximum Packet Size): the held final reply
/// of (`device`, `corr`), if that is what it was, stops being held (`dead`), and a dead letter
/// records why. Returns the letter written.
pub fn undeliverable(
    conn: &Connection,
    device: &DeviceId,
    corr: Option<&Correlation>,
    status: u16,
    reason: &str,
    now_ms: i64,
) -> rusqlite::Result<DeadLetter> {
    let held: Option<(RequestId, String)> = match corr {
        Some(corr) if status != 202 => conn
            .prepare_cached(
                "UPDATE requests SET delivery = 'dead'
                 WHERE device = ?1 AND corr = ?2 AND delivery = 'held' RETURNING id, op",
            )?
            .query_row(params![device.as_str(), corr.as_bytes()], |row| {
                Ok((request_id(row, 0)?, row.get(1)?))
            })
            .optional()?,
        _ => None,
    };
    let letter = DeadLetter {
        at_ms: now_ms,
        device: Some(device.as_str().to_owned()),
        request_id: held.as_ref().map(|(id, _)| id.to_string()),
        corr: corr.map(|c| c.to_string()),
        op: held.map(|(_, op)| op),
        status,
        reason: reason.to_owned(),
    };
    deadletters::insert(conn, &letter)?;
    Ok(letter)
}

/// Held replies of one device, and of all devices.
pub fn held_counts(conn: &Connection, device: Option<&DeviceId>) -> rusqlite::Result<usize> {
    let count: i64 = match device {
        Some(device) => conn
            .prepare_cached(
                "SELECT COUNT(*) FROM requests WHERE device = ?1 AND delivery = 'held'",
            )?
            .query_row(params![device.as_str()], |row| row.get(0))?,
        None => conn
            .prepare_cached("SELECT COUNT(*) FROM requests WHERE delivery = 'held'")?
            .query_row([], |row| row.get(0))?,
    };
    Ok(count as usize)
}
