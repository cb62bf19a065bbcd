//! The `devices` table on PostgreSQL (awake, last seen, last error: written by each gateway's
//! outbox as it publishes a device's status, with the writer in `seen_by`) joined with each
//! device's requests, for operators' listings.

use std::collections::HashSet;
use std::sync::LazyLock;

use super::pool::Conn;
use crate::store::devices::{select, Candidate, DeviceNow, DeviceRow, Filter, Seen, RECENT_MS};
use crate::store::StoreError;
use crate::wire::RequestId;

/// Writes (or updates) these devices' rows in one statement, merging what this gateway saw
/// with what the row holds from every gateway, and returns each device's status as merged, in
/// `seen`'s order:
/// - last seen only grows; a stored error stays until a newer one comes;
/// - the device is awake until the latest window any gateway opened (`awake_until_ms`), unless
///   this gateway saw it end its wake (`asleep`, a front-door disconnect) no earlier than the
///   last time any gateway had seen it, which closes the window then; a window opened before
///   the last recorded `asleep` does not open it again;
/// - held replies, and pending requests: the quota slots they hold (none are taken when
///   `max_pending_per_device` is 0: the count is then 0 and means nothing).
///
/// With other gateways alive (`shared`), a device whose status another gateway published less
/// than [`CLAIM_MS`] ago is written but not counted, and comes back `None`: that gateway's
/// publish stands, and this one publishes later (each gateway sees part of every busy device's
/// traffic, and each published every such device once a second).
///
/// Rows go in id order, so two gateways writing overlapping sets lock them in the same order.
pub async fn upsert(
    conn: &Conn,
    me: &str,
    seen: &[Seen],
    shared: bool,
) -> Result<Vec<Option<DeviceNow>>, StoreError> {
    let mut sorted: Vec<&Seen> = seen.iter().collect();
    sorted.sort_unstable_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    sorted.dedup_by(|a, b| a.id == b.id);
    let ids: Vec<&str> = sorted.iter().map(|s| s.id.as_str()).collect();
    let until: Vec<i64> = sorted.iter().map(|s| s.awake_until_ms).collect();
    let asleep: Vec<Option<i64>> = sorted.iter().map(|s| s.asleep_ms).collect();
    let last_seen: Vec<Option<i64>> = sorted
        .iter()
        .map(|s| (s.last_seen_ms > 0).then_some(s.last_seen_ms))
        .collect();
    let errors: Vec<Option<&str>> = sorted
        .iter()
        .map(|s| s.last_error.as_ref().map(|(e, _)| e.as_str()))
        .collect();
    let error_ms: Vec<Option<i64>> = sorted
        .iter()
        .map(|s| s.last_error.as_ref().map(|(_, at)| *at))
        .collect();
    let statement = conn.statement(UPSERT.as_str()).await?;
    let rows = conn
        .client
        .query(
            &statement,
            &[
                &ids,
                &until,
                &last_seen,
                &errors,
                &error_ms,
                &me,
                &asleep,
                &crate::store::now_ms(),
                &shared,
            ],
        )
        .await?;
    let mut merged = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get(0)?;
        let held: Option<i64> = row.try_get(4)?;
        let pending: Option<i64> = row.try_get(5)?;
        let now = match (held, pending) {
            (Some(held), Some(pending)) => Some(DeviceNow {
                awake: row.try_get(1)?,
                last_seen_ms: row.try_get(2)?,
                last_error: row.try_get(3)?,
                held: held as usize,
                pending: Some(pending as usize),
            }),
            _ => None,
        };
        merged.insert(id, now);
    }
    seen.iter()
        .map(|s| {
            merged
                .get(s.id.as_str())
                .cloned()
                .ok_or_else(|| StoreError::Sql(format!("device {} not written", s.id)))
        })
        .collect()
}

/// [`upsert`]'s statement.
static UPSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO devices (id, awake, awake_until_ms, asleep_ms, last_seen_ms, last_error,
                                  last_error_ms, seen_by, status_ms)
             SELECT id, until > $8, until, asleep, seen, err, err_ms, $6, $8
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                         $7::bigint[])
                  AS u(id, until, seen, err, err_ms, asleep)
             ON CONFLICT (id) DO UPDATE SET
                awake = {MERGED_UNTIL} > $8,
                awake_until_ms = {MERGED_UNTIL},
                asleep_ms = GREATEST(excluded.asleep_ms, devices.asleep_ms),
                last_seen_ms = NULLIF(GREATEST(COALESCE(excluded.last_seen_ms, 0),
                                               COALESCE(devices.last_seen_ms, 0)), 0),
                last_error = CASE WHEN {NEWER_ERROR} THEN excluded.last_error
                                  ELSE devices.last_error END,
                last_error_ms = CASE WHEN {NEWER_ERROR} THEN excluded.last_error_ms
                                     ELSE devices.last_error_ms END,
                seen_by = excluded.seen_by,
                status_ms = CASE WHEN NOT $9 OR devices.status_ms IS NULL
                                      OR devices.status_ms <= $8 - {CLAIM_MS}
                                 THEN $8 ELSE devices.status_ms END
             RETURNING id, awake, COALESCE(last_seen_ms, 0), last_error,
                 CASE WHEN status_ms = $8 THEN (SELECT COUNT(*) FROM requests q
                     WHERE q.device = devices.id AND q.delivery = 'held') END,
                 CASE WHEN status_ms = $8 THEN (SELECT COUNT(*) FROM requests q
                     WHERE q.device = devices.id AND q.slot IS NOT NULL) END"
    )
});

/// The merged end of a device's wake (see [`upsert`]): this gateway's `asleep` when nothing
/// newer was seen of the device anywhere; else the latest window, counting this gateway's only
/// if it saw the device since its last recorded `asleep` (a window opened before the device went
/// to sleep does not wake it again).
const MERGED_UNTIL: &str = "CASE WHEN excluded.asleep_ms IS NOT NULL
        AND excluded.asleep_ms >= COALESCE(devices.last_seen_ms, 0)
    THEN excluded.asleep_ms
    WHEN COALESCE(excluded.last_seen_ms, 0) >= COALESCE(devices.asleep_ms, 0)
    THEN GREATEST(COALESCE(devices.awake_until_ms, 0), excluded.awake_until_ms)
    ELSE devices.awake_until_ms END";

/// With other gateways alive, how long after one gateway published a device's status another
/// leaves it alone: a little under the outbox's second per device, so that one gateway's own
/// publishes a second apart never find their previous one too recent.
pub const CLAIM_MS: i64 = 900;

/// This gateway's error is newer than the stored one.
const NEWER_ERROR: &str = "excluded.last_error IS NOT NULL
    AND excluded.last_error_ms >= COALESCE(devices.last_error_ms, 0)";

/// On start nobody this gateway saw is awake yet: its previous run's flags and windows mean
/// nothing (devices other gateways serve keep theirs).
pub async fn reset_awake(conn: &Conn, me: &str) -> Result<(), StoreError> {
    conn.client
        .execute(
            "UPDATE devices SET awake = false, awake_until_ms = NULL
             WHERE (awake OR awake_until_ms IS NOT NULL) AND seen_by = $1",
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
