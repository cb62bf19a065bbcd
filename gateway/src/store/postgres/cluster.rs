//! Heartbeats, the cluster view and takeover on PostgreSQL (see [`crate::store::cluster`]).
//! Takeover claims rows with `FOR UPDATE SKIP LOCKED`, so two gateways never take the same row.

use super::delivery::final_reply;
use super::pool::Conn;
use super::requests::stored_request;
use super::views;
use crate::store::cluster::{ClusterView, Member, Takeover};
use crate::store::requests::Backlog;
use crate::store::StoreError;

/// Renews this gateway's lease until `now_ms + lease_ms`.
pub async fn heartbeat(
    conn: &Conn,
    id: &str,
    started_ms: i64,
    now_ms: i64,
    lease_ms: i64,
) -> Result<(), StoreError> {
    let statement = conn
        .statement(
            "INSERT INTO gateways (id, started_ms, seen_ms, lease_until_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET started_ms = EXCLUDED.started_ms,
                 seen_ms = EXCLUDED.seen_ms, lease_until_ms = EXCLUDED.lease_until_ms",
        )
        .await?;
    conn.client
        .execute(
            &statement,
            &[&id, &started_ms, &now_ms, &(now_ms + lease_ms)],
        )
        .await?;
    Ok(())
}

/// Ends this gateway's lease at once (a graceful stop): its queued work moves to the others
/// on their next beat instead of after `lease_ms`.
pub async fn leave(conn: &Conn, id: &str) -> Result<(), StoreError> {
    let statement = conn
        .statement("UPDATE gateways SET lease_until_ms = 0 WHERE id = $1")
        .await?;
    conn.client.execute(&statement, &[&id]).await?;
    Ok(())
}

/// The gateways, and the cluster-wide totals unless `counted` gives them (with when they were
/// counted).
pub async fn view(
    conn: &Conn,
    now_ms: i64,
    counted: Option<(Backlog, i64)>,
) -> Result<ClusterView, StoreError> {
    let members = conn
        .statement("SELECT id, started_ms, seen_ms, lease_until_ms FROM gateways ORDER BY id")
        .await?;
    let (members, totals) = tokio::join!(conn.client.query(&members, &[]), async {
        match counted {
            Some(counted) => Ok::<_, StoreError>(counted),
            None => Ok((views::backlog(conn).await?, now_ms)),
        }
    });
    let (members, (totals, totals_ms)) = (members?, totals?);
    let gateways = members
        .iter()
        .map(|row| {
            let lease_until: i64 = row.try_get(3)?;
            Ok(Member {
                id: row.try_get(0)?,
                started_ms: row.try_get(1)?,
                seen_ms: row.try_get(2)?,
                alive: lease_until >= now_ms,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(ClusterView {
        gateways,
        totals,
        totals_ms,
    })
}

/// Claims up to `limit` queued requests and up to `limit` held replies of gateways whose lease
/// ran out before `now_ms` (call inside a transaction); returns the queued ones and the held
/// ones never published.
pub async fn take_over(
    conn: &Conn,
    me: &str,
    now_ms: i64,
    limit: usize,
) -> Result<Takeover, StoreError> {
    let queued = conn
        .statement(
            "UPDATE requests SET owner = $1 WHERE id IN (
                SELECT r.id FROM requests r WHERE r.state = 'queued' AND (r.owner IS NULL
                    OR r.owner IN (SELECT id FROM gateways WHERE lease_until_ms < $2 AND id <> $1))
                ORDER BY r.id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id, device, corr, op, args, reply_topic, envelope, received_ms, deadline_ms",
        )
        .await?;
    let unpublished = conn
        .statement(
            "UPDATE requests SET owner = $1 WHERE id IN (
                SELECT r.id FROM requests r WHERE r.delivery = 'held'
                    AND (r.owner IS NULL OR r.owner IN (
                        SELECT id FROM gateways WHERE lease_until_ms < $2 AND id <> $1))
                ORDER BY r.published, r.id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id, device, corr, reply_topic, status, reply, expires_ms, envelope,
                       published",
        )
        .await?;
    let limit = limit as i64;
    let queued = conn.client.query(&queued, &[&me, &now_ms, &limit]).await?;
    let unpublished = conn
        .client
        .query(&unpublished, &[&me, &now_ms, &limit])
        .await?;
    let mut queued = queued
        .iter()
        .map(stored_request)
        .collect::<Result<Vec<_>, StoreError>>()?;
    queued.sort_by_key(|request| request.id);
    let held_moved = unpublished.len();
    // Every held reply of a dead gateway moves (so that later beats need not look at it
    // again), never-published ones first; only those are published now.
    let mut unpublished = unpublished
        .iter()
        .filter(|row| {
            row.try_get::<_, i32>(8)
                .is_ok_and(|published| published == 0)
        })
        .map(final_reply)
        .collect::<Result<Vec<_>, _>>()?;
    unpublished.sort_by_key(|reply| reply.id);
    Ok(Takeover {
        queued,
        unpublished,
        held_moved,
    })
}
