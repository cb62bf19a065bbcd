//! The `devices` table on SQLite (awake, last seen, last error: written by the outbox as it
//! publishes each device's status) joined with each device's requests, for operators' listings.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::devices::{select, Candidate, DeviceRow, Filter, Seen, RECENT_MS};

/// Writes (or updates) a device's row: last seen only grows, a stored error stays until a newer
/// one comes.
pub fn upsert(conn: &Connection, seen: &Seen, now_ms: i64) -> rusqlite::Result<()> {
    let last_seen = (seen.last_seen_ms > 0).then_some(seen.last_seen_ms);
    let (error, error_ms) = seen.last_error.clone().unzip();
    conn.prepare_cached(
        "INSERT INTO devices (id, awake, last_seen_ms, last_error, last_error_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET
            awake = excluded.awake,
            last_seen_ms = NULLIF(MAX(COALESCE(excluded.last_seen_ms, 0),
                                      COALESCE(last_seen_ms, 0)), 0),
            last_error = COALESCE(excluded.last_error, last_error),
            last_error_ms = COALESCE(excluded.last_error_ms, last_error_ms)",
    )?
    .execute(params![
        seen.id.as_str(),
        seen.awake_at(now_ms),
        last_seen,
        error,
        error_ms
    ])?;
    Ok(())
}

/// On start nobody is awake yet: a previous run's flags mean nothing.
pub fn reset_awake(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("UPDATE devices SET awake = 0 WHERE awake = 1", [])?;
    Ok(())
}

/// A page of devices matching `filter`, in natural id order (`sim-2` before `sim-10`), and how
/// many match in all.
pub fn page(
    conn: &Connection,
    filter: &Filter,
    offset: usize,
    limit: usize,
) -> rusqlite::Result<(u64, Vec<DeviceRow>)> {
    // Every device that sends anything gets its row within a second or so (the outbox writes it
    // with the device's status); the last minute's requests cover that gap without scanning
    // every request.
    let mut stmt = conn.prepare_cached(
        "WITH ids AS (SELECT id FROM devices
                      UNION SELECT device FROM requests WHERE received_ms > ?1)
         SELECT ids.id, COALESCE(d.awake, 0), d.last_error IS NOT NULL
         FROM ids LEFT JOIN devices d ON d.id = ids.id",
    )?;
    let recent_ms = crate::store::now_ms() - RECENT_MS;
    let candidates = stmt
        .query_map(params![recent_ms], |row| {
            Ok(Candidate {
                id: row.get(0)?,
                awake: row.get(1)?,
                has_error: row.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let with_held: HashSet<String> = if filter.held {
        conn.prepare_cached("SELECT DISTINCT device FROM requests WHERE delivery = 'held'")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?
    } else {
        HashSet::new()
    };
    let (total, ids) = select(candidates, &with_held, filter, offset, limit);
    let rows = ids
        .iter()
        .map(|id| {
            get(conn, id).map(|row| {
                row.unwrap_or_else(|| DeviceRow {
                    id: id.clone(),
                    ..DeviceRow::default()
                })
            })
        })
        .collect::<rusqlite::Result<_>>()?;
    Ok((total, rows))
}

/// One device, if the store knows it (a row, a request or a reading).
pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<DeviceRow>> {
    let stored = conn
        .prepare_cached(
            "SELECT awake, last_seen_ms, last_error, last_error_ms FROM devices WHERE id = ?1",
        )?
        .query_row(params![id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    let (queued, held, oldest_held_ms, requests, last_request_ms): (
        u64,
        u64,
        Option<i64>,
        u64,
        Option<i64>,
    ) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(state = 'queued'), 0), COALESCE(SUM(delivery = 'held'), 0),
                    MIN(CASE WHEN delivery = 'held' THEN finished_ms END),
                    COUNT(*), MAX(received_ms)
             FROM requests WHERE device = ?1",
        )?
        .query_row(params![id], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
    let known = stored.is_some()
        || requests > 0
        || conn
            .prepare_cached("SELECT 1 FROM telemetry WHERE device = ?1 LIMIT 1")?
            .query_row(params![id], |_| Ok(()))
            .optional()?
            .is_some();
    if !known {
        return Ok(None);
    }
    let (awake, last_seen_ms, last_error, last_error_ms) =
        stored.unwrap_or((false, None, None, None));
    Ok(Some(DeviceRow {
        id: id.to_owned(),
        awake,
        last_seen_ms,
        last_error,
        last_error_ms,
        queued,
        held,
        oldest_held_ms,
        requests,
        last_request_ms,
    }))
}
