//! The `telemetry` table: device readings, one row per (device, metric, ts), read back as the
//! series of windowed ops.

use std::collections::HashMap;

use rusqlite::{params, Connection};

use crate::store::telemetry::Reading;
use crate::store::telemetry::Series;
use crate::wire::DeviceId;

/// Stores readings of one device; a reading already stored (same metric and `ts`) is kept as
/// it was. Returns how many were stored, and counts them in the device's `telemetry_counts`.
pub fn insert(
    conn: &Connection,
    device: &DeviceId,
    readings: &[Reading],
) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO telemetry (device, metric, ts, value) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device, metric, ts) DO NOTHING",
    )?;
    let mut stored = 0;
    for reading in readings {
        stored += stmt.execute(params![
            device.as_str(),
            reading.metric,
            reading.ts,
            reading.value
        ])?;
    }
    if stored > 0 {
        conn.prepare_cached(
            "INSERT INTO telemetry_counts (device, n) VALUES (?1, ?2)
             ON CONFLICT (device) DO UPDATE SET n = n + excluded.n",
        )?
        .execute(params![device.as_str(), stored as i64])?;
    }
    Ok(stored)
}

/// Takes `deleted` readings off each device's count.
fn uncount(conn: &Connection, deleted: &HashMap<String, i64>) -> rusqlite::Result<()> {
    let mut statement =
        conn.prepare_cached("UPDATE telemetry_counts SET n = n - ?2 WHERE device = ?1")?;
    for (device, n) in deleted {
        statement.execute(params![device, n])?;
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

/// Deletes up to `limit` readings older than `before_ms`, the oldest first (through the `ts`
/// index: only what is deleted is read).
pub fn prune(conn: &Connection, before_ms: i64, limit: usize) -> rusqlite::Result<usize> {
    let mut statement = conn.prepare_cached(
        "DELETE FROM telemetry WHERE rowid IN (
            SELECT rowid FROM telemetry WHERE ts < ?1 ORDER BY ts LIMIT ?2)
         RETURNING device",
    )?;
    let mut deleted: HashMap<String, i64> = HashMap::new();
    let mut rows = statement.query(params![before_ms, limit as i64])?;
    let mut total = 0;
    while let Some(row) = rows.next()? {
        *deleted.entry(row.get(0)?).or_default() += 1;
        total += 1;
    }
    uncount(conn, &deleted)?;
    Ok(total)
}

/// Deletes up to `limit` readings of the devices with more than `keep`, the oldest of each
/// first, until each is down to `keep` (through `telemetry_counts` and the `(device, ts)`
/// index: only what is deleted is read).
pub fn cap(conn: &Connection, keep: usize, limit: usize) -> rusqlite::Result<usize> {
    let over: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT device, n - ?1 FROM telemetry_counts WHERE n > ?1 ORDER BY device LIMIT ?2",
        )?
        .query_map(params![keep as i64, limit as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete = conn.prepare_cached(
        "DELETE FROM telemetry WHERE rowid IN (
            SELECT rowid FROM telemetry WHERE device = ?1 ORDER BY ts LIMIT ?2)",
    )?;
    let mut deleted = HashMap::new();
    let mut left = limit as i64;
    for (device, over) in over {
        if left == 0 {
            break;
        }
        let n = delete.execute(params![device, over.min(left)])? as i64;
        left -= n;
        deleted.insert(device, n);
    }
    uncount(conn, &deleted)?;
    Ok(limit - left as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(metric: &str, ts: i64, value: f64) -> Reading {
        Reading {
            metric: metric.into(),
            ts,
            value,
        }
    }

    fn open() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conn = super::super::connect(&dir.path().join("t.db"), false).expect("open");
        super::super::schema::migrate(&mut conn).expect("migrate");
        (dir, conn)
    }

    #[test]
    fn window_is_this_devices_metric_in_time_order_and_bounded() {
        let (_dir, conn) = open();
        let a = DeviceId::parse("a").expect("id");
        let b = DeviceId::parse("b").expect("id");
        insert(
            &conn,
            &a,
            &[
                reading("t", 30, 3.0),
                reading("t", 10, 1.0),
                reading("h", 20, 9.0),
                reading("t", 20, 2.0),
            ],
        )
        .expect("insert");
        insert(&conn, &b, &[reading("t", 15, 7.0)]).expect("insert");
        let series = window(&conn, &a, "t", 10, 30, 100).expect("read");
        assert_eq!(
            series.values,
            vec![2.0, 3.0],
            "from_ms is exclusive, to_ms inclusive"
        );
        assert_eq!(series.ts, Some(vec![20, 30]));
        let all = window(&conn, &a, "t", 0, 100, 100).expect("read");
        assert_eq!(
            all.values,
            vec![1.0, 2.0, 3.0],
            "time order, whatever the arrival order"
        );
        assert_eq!(
            window(&conn, &a, "t", 0, 100, 2)
                .expect("read")
                .values
                .len(),
            2,
            "limit"
        );
    }

    #[test]
    fn prune_drops_old_readings_and_keeps_the_newest_per_device() {
        let (_dir, conn) = open();
        let a = DeviceId::parse("a").expect("id");
        let b = DeviceId::parse("b").expect("id");
        let many: Vec<Reading> = (0..10).map(|i| reading("t", 100 + i, i as f64)).collect();
        insert(&conn, &a, &many).expect("insert");
        insert(&conn, &b, &[reading("t", 5, 0.0), reading("t", 150, 1.0)]).expect("insert");
        assert_eq!(prune(&conn, 50, 10).expect("prune"), 1, "b's old reading");
        assert_eq!(cap(&conn, 3, 4).expect("cap"), 4, "a chunk of 4");
        assert_eq!(
            cap(&conn, 3, 10).expect("cap"),
            3,
            "the rest of a's beyond 3"
        );
        assert_eq!(cap(&conn, 3, 10).expect("cap"), 0, "a is down to 3");
        let kept = window(&conn, &a, "t", 0, 1000, 100).expect("read");
        assert_eq!(kept.ts, Some(vec![107, 108, 109]));
        assert_eq!(
            window(&conn, &b, "t", 0, 1000, 100).expect("read").values,
            vec![1.0]
        );
        assert_eq!(
            cap(&conn, 0, 10).expect("cap"),
            4,
            "the counts follow the deletes"
        );
        let kept = window(&conn, &a, "t", 0, 1000, 100).expect("read");
        assert_eq!(kept.ts, Some(vec![]));
    }
}
