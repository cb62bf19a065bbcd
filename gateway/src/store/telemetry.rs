//! The `telemetry` table: device readings, one row per (device, metric, ts), read back as the
//! series of windowed ops.

use rusqlite::{params, Connection};

use crate::analytics::ops::Series;
use crate::wire::DeviceId;

/// One reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Metric name.
    pub metric: String,
    /// Timestamp, ms since epoch.
    pub ts: i64,
    /// Value.
    pub value: f64,
}

/// Stores readings of one device.
pub fn insert(conn: &Connection, device: &DeviceId, readings: &[Reading]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO telemetry (device, metric, ts, value) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for reading in readings {
        stmt.execute(params![
            device.as_str(),
            reading.metric,
            reading.ts,
            reading.value
        ])?;
    }
    Ok(())
}

/// The device's readings of `metric` with `from_ms < ts <= to_ms`, in time order, at most
/// `limit` of them (the oldest).
pub fn window(
    conn: &Connection,
    device: &DeviceId,
    metric: &str,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> rusqlite::Result<Series> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts, value FROM telemetry
         WHERE device = ?1 AND metric = ?2 AND ts > ?3 AND ts <= ?4 ORDER BY ts LIMIT ?5",
    )?;
    let mut values = Vec::new();
    let mut ts = Vec::new();
    let mut rows = stmt.query(params![
        device.as_str(),
        metric,
        from_ms,
        to_ms,
        limit as i64
    ])?;
    while let Some(row) = rows.next()? {
        ts.push(row.get::<_, i64>(0)?.max(0) as u64);
        values.push(row.get(1)?);
    }
    Ok(Series {
        values,
        ts: Some(ts),
    })
}

/// Deletes readings older than `before_ms`, and beyond the newest `keep` per device.
pub fn prune(conn: &Connection, before_ms: i64, keep: usize) -> rusqlite::Result<usize> {
    let old = conn.execute("DELETE FROM telemetry WHERE ts < ?1", params![before_ms])?;
    let over = conn.execute(
        "DELETE FROM telemetry WHERE rowid IN (
            SELECT rowid FROM (
                SELECT rowid, ROW_NUMBER() OVER (PARTITION BY device ORDER BY ts DESC) AS n
                FROM telemetry) WHERE n > ?1)",
        params![keep as i64],
    )?;
    Ok(old + over)
}
