//! The `dead_letters` table: one row per request or reply the gateway gave up on, with why.

use rusqlite::{params, Connection};

use crate::store::deadletters::{
    request_id_bytes, request_id_text, DeadLetter, DeadLetterRow, Requeue,
};

/// Records a dead letter.
pub fn insert(conn: &Connection, letter: &DeadLetter) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO dead_letters (at_ms, device, request_id, corr, op, status, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        letter.at_ms,
        letter.device,
        request_id_bytes(letter),
        letter.corr,
        letter.op,
        letter.status,
        letter.reason,
    ])?;
    Ok(())
}

/// Dead letters, newest first.
pub fn list(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<DeadLetterRow>> {
    page(conn, None, 0, limit).map(|(_, rows)| rows)
}

/// A page of dead letters (of one device, or all), newest first, and how many there are.
pub fn page(
    conn: &Connection,
    device: Option<&str>,
    offset: usize,
    limit: usize,
) -> rusqlite::Result<(u64, Vec<DeadLetterRow>)> {
    let total = conn
        .prepare_cached("SELECT COUNT(*) FROM dead_letters WHERE ?1 IS NULL OR device = ?1")?
        .query_row(params![device], |row| row.get(0))?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, at_ms, device, request_id, corr, op, status, reason, requeued
         FROM dead_letters WHERE ?1 IS NULL OR device = ?1
         ORDER BY id DESC LIMIT ?2 OFFSET ?3",
    )?;
    let rows = stmt.query_map(params![device, limit as i64, offset as i64], |row| {
        let request_id: Option<Vec<u8>> = row.get(3)?;
        Ok(DeadLetterRow {
            id: row.get(0)?,
            letter: DeadLetter {
                at_ms: row.get(1)?,
                device: row.get(2)?,
                request_id: request_id.as_deref().and_then(request_id_text),
                corr: row.get(4)?,
                op: row.get(5)?,
                status: row.get(6)?,
                reason: row.get(7)?,
            },
            requeued: row.get(8)?,
        })
    })?;
    Ok((total, rows.collect::<rusqlite::Result<_>>()?))
}

/// Puts a dead-lettered reply back into the outbox: `held` again, expiring `expires_ms`, so it
/// is published the next time its device wakes.
pub fn requeue(conn: &Connection, id: i64, expires_ms: i64) -> rusqlite::Result<Requeue> {
    let row: Option<(Option<Vec<u8>>, bool)> = conn
        .query_row(
            "SELECT request_id, requeued FROM dead_letters WHERE id = ?1",
            params![id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let Some((request_id, requeued)) = row else {
        return Ok(Requeue::NotFound);
    };
    let Some(request_id) = request_id else {
        return Ok(Requeue::NotStored);
    };
    if requeued {
        return Ok(Requeue::AlreadyRequeued);
    }
    let changed = conn.execute(
        "UPDATE requests SET delivery = 'held', expires_ms = ?2
         WHERE id = ?1 AND delivery = 'dead'",
        params![request_id, expires_ms],
    )?;
    if changed == 0 {
        return Ok(Requeue::NotDead);
    }
    conn.execute(
        "UPDATE dead_letters SET requeued = 1 WHERE id = ?1",
        params![id],
    )?;
    let text = request_id_text(&request_id).unwrap_or_default();
    Ok(Requeue::Requeued(text))
}
