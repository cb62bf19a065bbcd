//! The other tables on PostgreSQL: dead letters (written, requeued) and telemetry. Operators'
//! listings are in [`super::views`] and [`super::devices`].

use super::pool::Conn;
use crate::store::deadletters::{request_id_bytes, request_id_text, DeadLetter, Requeue};
use crate::store::telemetry::Reading;
use crate::store::telemetry::Series;
use crate::store::StoreError;
use crate::wire::DeviceId;

/// Records a dead letter.
pub async fn insert_dead_letter(conn: &Conn, letter: &DeadLetter) -> Result<(), StoreError> {
    let statement = conn
        .statement(
            "INSERT INTO dead_letters (at_ms, device, request_id, corr, op, status, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    conn.client
        .execute(
            &statement,
            &[
                &letter.at_ms,
                &letter.device,
                &request_id_bytes(letter),
                &letter.corr,
                &letter.op,
                &i32::from(letter.status),
                &letter.reason,
            ],
        )
        .await?;
    Ok(())
}

/// Puts a dead-lettered reply back into the outbox (call inside a transaction).
pub async fn requeue(conn: &Conn, id: i64, expires_ms: i64) -> Result<Requeue, StoreError> {
    let row = conn
        .client
        .query_opt(
            "SELECT request_id, requeued FROM dead_letters WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Requeue::NotFound);
    };
    let request_id: Option<Vec<u8>> = row.try_get(0)?;
    let requeued: bool = row.try_get(1)?;
    let Some(request_id) = request_id else {
        return Ok(Requeue::NotStored);
    };
    if requeued {
        return Ok(Requeue::AlreadyRequeued);
    }
    let changed = conn
        .client
        .execute(
            "UPDATE requests SET delivery = 'held', expires_ms = $2
             WHERE id = $1 AND delivery = 'dead'",
            &[&request_id, &expires_ms],
        )
        .await?;
    if changed == 0 {
        return Ok(Requeue::NotDead);
    }
    conn.client
        .execute(
            "UPDATE dead_letters SET requeued = true WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(Requeue::Requeued(
        request_id_text(&request_id).unwrap_or_default(),
    ))
}

/// Stores readings of one device (one statement, whatever their number); a reading already
/// stored (same metric and `ts`) is kept as it was. Returns how many were stored.
pub async fn insert_readings(
    conn: &Conn,
    device: &DeviceId,
    readings: &[Reading],
) -> Result<usize, StoreError> {
    let statement = conn
        .statement(
            "INSERT INTO telemetry (device, metric, ts, value)
             SELECT $1, m, t, v FROM UNNEST($2::text[], $3::bigint[], $4::float8[]) AS u(m, t, v)
             ON CONFLICT (device, metric, ts) DO NOTHING",
        )
        .await?;
    let metrics: Vec<&str> = readings.iter().map(|r| r.metric.as_str()).collect();
    let ts: Vec<i64> = readings.iter().map(|r| r.ts).collect();
    let values: Vec<f64> = readings.iter().map(|r| r.value).collect();
    let stored = conn
        .client
        .execute(&statement, &[&device.as_str(), &metrics, &ts, &values])
        .await?;
    Ok(stored as usize)
}

/// The device's readings of `metric` with `from_ms < ts <= to_ms`, in time order, at most
/// `limit` (the oldest).
pub async fn window(
    conn: &Conn,
    device: &DeviceId,
    metric: &str,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Result<Series, StoreError> {
    let statement = conn
        .statement(
            "SELECT ts, value FROM telemetry
             WHERE device = $1 AND metric = $2 AND ts > $3 AND ts <= $4 ORDER BY ts LIMIT $5",
        )
        .await?;
    let rows = conn
        .client
        .query(
            &statement,
            &[&device.as_str(), &metric, &from_ms, &to_ms, &(limit as i64)],
        )
        .await?;
    let mut values = Vec::with_capacity(rows.len());
    let mut ts = Vec::with_capacity(rows.len());
    for row in &rows {
        ts.push(row.try_get::<_, i64>(0)?.max(0) as u64);
        values.push(row.try_get(1)?);
    }
    Ok(Series {
        values,
        ts: Some(ts),
    })
}

/// Deletes up to `limit` readings older than `before_ms`, the oldest first (through the `ts`
/// index: only what is deleted is read), skipping those another gateway's prune has locked.
pub async fn prune_readings(
    conn: &Conn,
    before_ms: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let statement = conn
        .statement(
            "DELETE FROM telemetry WHERE id IN (
                SELECT id FROM telemetry WHERE ts < $1 ORDER BY ts LIMIT $2
                FOR UPDATE SKIP LOCKED)",
        )
        .await?;
    Ok(conn
        .client
        .execute(&statement, &[&before_ms, &(limit as i64)])
        .await? as usize)
}

/// The devices that have readings (through the `(device, …)` index).
pub async fn devices(conn: &Conn) -> Result<Vec<DeviceId>, StoreError> {
    let statement = conn
        .statement("SELECT DISTINCT device FROM telemetry")
        .await?;
    let rows = conn.client.query(&statement, &[]).await?;
    // A name that is not a device id cannot have come in through intake: nothing to cap.
    Ok(rows
        .iter()
        .filter_map(|row| DeviceId::parse(row.try_get::<_, &str>(0).ok()?))
        .collect())
}

/// Deletes the readings of `devices` beyond the newest `keep` of each (through the
/// `(device, …)` index: only those devices' readings are read).
pub async fn cap_readings(
    conn: &Conn,
    keep: usize,
    devices: &[DeviceId],
) -> Result<usize, StoreError> {
    if devices.is_empty() {
        return Ok(0);
    }
    // Numbered newest first, per device: those past `keep` go.
    let statement = conn
        .statement(
            "DELETE FROM telemetry WHERE id IN (
                SELECT id FROM (
                    SELECT id, ROW_NUMBER() OVER (PARTITION BY device ORDER BY ts DESC) AS n
                    FROM telemetry WHERE device = ANY($2)) t WHERE n > $1)",
        )
        .await?;
    let names: Vec<&str> = devices.iter().map(DeviceId::as_str).collect();
    let over = conn
        .client
        .execute(&statement, &[&(keep as i64), &names])
        .await?;
    Ok(over as usize)
}
