//! The other tables on PostgreSQL: dead letters (written, requeued) and telemetry. Operators'
//! listings are in [`super::views`] and [`super::devices`].

use futures_util::future::join_all;

use super::pool::Conn;
use crate::store::deadletters::{request_id_bytes, request_id_text, DeadLetter, Requeue};
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

/// `$deleted` (a statement that deletes readings, returning their devices) made to take what
/// it deleted off the devices' counts, in the row of what gateway `$me` (a parameter: `"$3"`)
/// pruned, in device order; the statement answers how many it deleted.
macro_rules! uncounted {
    ($deleted:literal, $me:literal) => {
        concat!(
            "WITH deleted AS (",
            $deleted,
            "),
             k AS (SELECT device, COUNT(*) AS k FROM deleted GROUP BY device),
             counted AS (
                 INSERT INTO telemetry_counts (device, gateway, pruned, n)
                 SELECT device, ",
            $me,
            ", true, -k FROM k ORDER BY device
                 ON CONFLICT (device, gateway, pruned) DO UPDATE
                 SET n = telemetry_counts.n + excluded.n)
             SELECT COALESCE(SUM(k), 0)::bigint FROM k"
        )
    };
}

/// Deletes up to `limit` readings older than `before_ms`, the oldest first (through the `ts`
/// index: only what is deleted is read), skipping those another gateway's prune has locked.
pub async fn prune_readings(
    conn: &Conn,
    me: &str,
    before_ms: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let statement = conn
        .statement(uncounted!(
            "DELETE FROM telemetry WHERE id IN (
                 SELECT id FROM telemetry WHERE ts < $1 ORDER BY ts LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             RETURNING device",
            "$3"
        ))
        .await?;
    let row = conn
        .client
        .query_one(&statement, &[&before_ms, &(limit as i64), &me])
        .await?;
    Ok(row.try_get::<_, i64>(0)? as usize)
}

/// Readings [`CAP_ONE`] deletes at most: the `LIMIT` written in it. A limit the planner cannot
/// see (a parameter, a count) is planned as a tenth of the device's readings, which it reads
/// whole and sorts when the device has most of the table's.
const CAP_STEP: i64 = 100;

/// Deletes the oldest readings of device `$1` over `$2` of them, at most `$3` (at most
/// [`CAP_STEP`]), taken off its count in gateway `$4`'s row of what it pruned.
const CAP_ONE: &str = uncounted!(
    "DELETE FROM telemetry WHERE id IN (
         SELECT id FROM (
             SELECT id FROM telemetry WHERE device = $1 ORDER BY ts LIMIT 100) oldest
         LIMIT (SELECT LEAST(GREATEST(SUM(n)::bigint - $2, 0), $3)
                FROM telemetry_counts WHERE device = $1))
     RETURNING device",
    "$4"
);

/// Deletes up to `limit` readings of the devices with more than `keep`, the oldest of each
/// first, until each is down to `keep` (through `telemetry_counts` and the `(device, ts)`
/// index: only what is deleted is read). Gateways that cap one device at once pick the same
/// oldest readings: the later one's delete finds them gone and deletes no more than the count
/// it read said.
pub async fn cap_readings(
    conn: &Conn,
    me: &str,
    keep: usize,
    limit: usize,
) -> Result<usize, StoreError> {
    let over = conn
        .statement(
            "SELECT device, SUM(n)::bigint - $1 FROM telemetry_counts GROUP BY device
             HAVING SUM(n)::bigint > $1 ORDER BY device LIMIT $2",
        )
        .await?;
    let cap = conn.statement(CAP_ONE).await?;
    let mut steps = Vec::new();
    let mut left = limit as i64;
    for row in conn
        .client
        .query(&over, &[&(keep as i64), &(limit as i64)])
        .await?
    {
        let (device, mut over): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        while over > 0 && left > 0 {
            let step = over.min(CAP_STEP).min(left);
            steps.push((device.clone(), step));
            (over, left) = (over - step, left - step);
        }
    }
    // Pipelined: one round trip for the chunk. Each statement commits on its own, in order, so
    // a device's next step sees the count its last one left.
    let keep = keep as i64;
    let cap = &cap;
    let deleted = join_all(steps.iter().map(|(device, step)| async move {
        conn.client
            .query_one(cap, &[device, &keep, step, &me])
            .await
    }))
    .await;
    let mut total = 0;
    for row in deleted {
        total += row?.try_get::<_, i64>(0)?;
    }
    Ok(total as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_step_is_the_limit_written_in_the_statement() {
        assert!(CAP_ONE.contains(&format!("LIMIT {CAP_STEP})")), "{CAP_ONE}");
    }
}
