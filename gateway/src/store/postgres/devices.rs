//! The `devices` table on PostgreSQL (awake, last seen, last error: written by each gateway's
//! outbox as it publishes a device's status, with the writer in `seen_by`) joined with each
//! device's requests, for operators' listings.

use std::collections::HashSet;

use super::pool::Conn;
use crate::store::devices::{select, Candidate, DeviceRow, Filter, Seen, RECENT_MS};
use crate::store::StoreError;
use crate::wire::RequestId;

/// Writes (or updates) these devices' rows in one statement: last seen only grows, a stored
/// error stays until a newer one comes. Rows go in id order, so two gateways writing
/// overlapping sets lock them in the same order.
pub async fn upsert(conn: &Conn, me: &str, seen: &[Seen]) -> Result<(), StoreError> {
    let mut seen: Vec<&Seen> = seen.iter().collect();
    seen.sort_unstable_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    seen.dedup_by(|a, b| a.id == b.id);
    let ids: Vec<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    let awake: Vec<bool> = seen.iter().map(|s| s.awake).collect();
    let last_seen: Vec<Option<i64>> = seen
        .iter()
        .map(|s| (s.last_seen_ms > 0).then_some(s.last_seen_ms))
        .collect();
    let errors: Vec<Option<&str>> = seen
        .iter()
        .map(|s| s.last_error.as_ref().map(|(e, _)| e.as_str()))
        .collect();
    let error_ms: Vec<Option<i64>> = seen
        .iter()
        .map(|s| s.last_error.as_ref().map(|(_, at)| *at))
        .collect();
    let statement = conn
        .statement(
            "INSERT INTO devices (id, awake, last_seen_ms, last_error, last_error_ms, seen_by)
             SELECT id, awake, seen, err, err_ms, $6
             FROM UNNEST($1::text[], $2::bool[], $3::bigint[], $4::text[], $5::bigint[])
                  AS u(id, awake, seen, err, err_ms)
             ON CONFLICT (id) DO UPDATE SET
                awake = excluded.awake,
                last_seen_ms = NULLIF(GREATEST(COALESCE(excluded.last_seen_ms, 0),
                                               COALESCE(devices.last_seen_ms, 0)), 0),
                last_error = COALESCE(excluded.last_error, devices.last_error),
                last_error_ms = COALESCE(excluded.last_error_ms, devices.last_error_ms),
                seen_by = excluded.seen_by",
        )
        .await?;
    conn.client
        .execute(
            &statement,
            &[&ids, &awake, &last_seen, &errors, &error_ms, &me],
        )
        .await?;
    Ok(())
}

/// On start nobody this gateway saw is awake yet: its previous run's flags mean nothing
/// (devices other gateways serve keep theirs).
pub async fn reset_awake(conn: &Conn, me: &str) -> Result<(), StoreError> {
    conn.client
        .execute(
            "UPDATE devices SET awake = false WHERE awake AND seen_by = $1",
            &[&me],
        )
        .await?;
    Ok(())
}

/// A page of devices matching `filter`, in natural id order, and how many match in all.
pub async fn page(
    conn: &Conn,
    filter: &Filter,
    offset: usize,
    limit: usize,
) -> Result<(u64, Vec<DeviceRow>), StoreError> {
    // As on SQLite: rows, plus the last minute's requests for devices whose row is not written
    // yet.
    let statement = conn
        .statement(
            "WITH ids AS (SELECT id FROM devices
                          UNION SELECT device FROM requests WHERE id > $1)
             SELECT ids.id, COALESCE(d.awake, false), d.last_error IS NOT NULL
             FROM ids LEFT JOIN devices d ON d.id = ids.id",
        )
        .await?;
    let recent_ms = crate::store::now_ms() - RECENT_MS;
    let candidates = conn
        .client
        .query(
            &statement,
            &[&RequestId::first_at(recent_ms).as_bytes().as_slice()],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(Candidate {
                id: row.try_get(0)?,
                awake: row.try_get(1)?,
                has_error: row.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let with_held: HashSet<String> = if filter.held {
        conn.client
            .query(
                "SELECT DISTINCT device FROM requests WHERE delivery = 'held'",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?
    } else {
        HashSet::new()
    };
    let (total, ids) = select(candidates, &with_held, filter, offset, limit);
    let rows = rows(conn, &ids).await?.into_iter();
    let rows = ids
        .into_iter()
        .zip(rows)
        .map(|(id, row)| {
            row.unwrap_or(DeviceRow {
                id,
                ..DeviceRow::default()
            })
        })
        .collect();
    Ok((total, rows))
}

/// One device, if the store knows it (a row, a request or a reading).
pub async fn get(conn: &Conn, id: &str) -> Result<Option<DeviceRow>, StoreError> {
    Ok(rows(conn, &[id.to_owned()]).await?.pop().flatten())
}

/// The rows of these devices, in their order, in one query; `None` for an unknown one.
async fn rows(conn: &Conn, ids: &[String]) -> Result<Vec<Option<DeviceRow>>, StoreError> {
    let statement = conn
        .statement(
            "SELECT u.id, COALESCE(d.awake, false), d.last_seen_ms, d.last_error,
                    d.last_error_ms, r.queued, r.held, r.oldest_held, r.total, r.newest,
                    d.id IS NOT NULL OR r.total > 0
                        OR EXISTS (SELECT 1 FROM telemetry t WHERE t.device = u.id)
             FROM UNNEST($1::text[]) WITH ORDINALITY AS u(id, n)
             LEFT JOIN devices d ON d.id = u.id
             CROSS JOIN LATERAL (
                SELECT COUNT(*) FILTER (WHERE q.state = 'queued') AS queued,
                       COUNT(*) FILTER (WHERE q.delivery = 'held') AS held,
                       MIN(q.finished_ms) FILTER (WHERE q.delivery = 'held') AS oldest_held,
                       COUNT(*) AS total, MAX(q.received_ms) AS newest
                FROM requests q WHERE q.device = u.id) r
             ORDER BY u.n",
        )
        .await?;
    let found = conn.client.query(&statement, &[&ids]).await?;
    found
        .iter()
        .map(|row| {
            let known: bool = row.try_get(10)?;
            if !known {
                return Ok(None);
            }
            let count = |idx: usize| -> Result<u64, StoreError> {
                Ok(row.try_get::<_, i64>(idx)?.max(0) as u64)
            };
            Ok(Some(DeviceRow {
                id: row.try_get(0)?,
                awake: row.try_get(1)?,
                last_seen_ms: row.try_get(2)?,
                last_error: row.try_get(3)?,
                last_error_ms: row.try_get(4)?,
                queued: count(5)?,
                held: count(6)?,
                oldest_held_ms: row.try_get(7)?,
                requests: count(8)?,
                last_request_ms: row.try_get(9)?,
            }))
        })
        .collect()
}
