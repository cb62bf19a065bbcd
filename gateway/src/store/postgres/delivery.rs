//! A final reply's delivery on PostgreSQL: published (and counted), held until the device acks
//! it (through any gateway), redelivered on wake, dead-lettered when its TTL passes.

use tokio_postgres::Row;

use super::marks::Count;
use super::pool::Conn;
use super::requests::{correlation, device_id, request_id};
use super::tables;
use crate::store::deadletters::{DeadLetter, Undeliverable};
use crate::store::requests::FinalReply;
use crate::store::StoreError;
use crate::wire::{Correlation, DeviceId, RequestId};

pub(super) fn final_reply(row: &Row) -> Result<FinalReply, StoreError> {
    let status: i32 = row.try_get(4)?;
    Ok(FinalReply {
        id: request_id(row, 0)?,
        device: device_id(row, 1)?,
        corr: correlation(row, 2)?,
        reply_topic: row.try_get(3)?,
        status: status as u16,
        payload: row.try_get(5)?,
        expires_ms: row.try_get(6)?,
        envelope: row.try_get(7)?,
    })
}

/// Held final replies that were never handed to the broker.
pub async fn unpublished(conn: &Conn, owner: &str) -> Result<Vec<FinalReply>, StoreError> {
    let statement = conn
        .statement(
            "SELECT id, device, corr, reply_topic, status, reply, expires_ms, envelope
             FROM requests WHERE delivery = 'held' AND published = 0 AND owner = $1 ORDER BY id",
        )
        .await?;
    let rows = conn.client.query(&statement, &[&owner]).await?;
    rows.iter().map(final_reply).collect()
}

/// Claims the held final replies of these devices that were published at least once and not
/// handed to the broker since `sent_before_ms`, oldest first, at most `limit` per device, and
/// marks them sent now: what a wake redelivers. Several gateways may see one wake (its
/// presence, its request and its ack each reach one of them): the claim re-checks `sent_ms`
/// under the row lock, so between them each reply goes out once per quiet period. The quiet
/// period holds only while another gateway's lease runs, as the database says at the claim (a
/// gateway's cached view of the cluster lags by up to a heartbeat: one that had not yet seen a
/// gateway join redelivered at once, and sent replies twice); `me` alone, every held reply of
/// the devices is sent. A reply whose row another transaction holds is left for a later wake:
/// it is being acked, counted (its publisher sent it a moment ago) or claimed elsewhere. So a
/// claim never waits for a lock: it runs after its batch's publish counts, which hold their
/// rows, and two gateways' batches each waiting for the other's counted rows would deadlock.
pub async fn held_for(
    conn: &Conn,
    me: &str,
    devices: &[DeviceId],
    limit: usize,
    sent_before_ms: i64,
) -> Result<Vec<FinalReply>, StoreError> {
    let statement = conn
        .statement(
            "WITH quiet AS (
                 SELECT CASE WHEN EXISTS (SELECT 1 FROM gateways g
                                          WHERE g.id <> $5 AND g.lease_until_ms > $3)
                        THEN $4::bigint ELSE 9223372036854775807 END AS before)
             UPDATE requests r SET sent_ms = $3
             FROM quiet w, (SELECT q.id FROM quiet w, UNNEST($1::text[]) AS d(device)
                   CROSS JOIN LATERAL (
                      SELECT id FROM requests q
                      WHERE q.device = d.device AND q.delivery = 'held' AND q.published > 0
                        AND q.sent_ms <= w.before
                      ORDER BY q.id LIMIT $2 FOR UPDATE SKIP LOCKED) q) c
             WHERE r.id = c.id AND COALESCE(r.delivery, '') = 'held' AND r.sent_ms <= w.before
             RETURNING r.id, r.device, r.corr, r.reply_topic, r.status, r.reply, r.expires_ms,
                       r.envelope",
        )
        .await?;
    let names: Vec<&str> = devices.iter().map(DeviceId::as_str).collect();
    let now = crate::store::now_ms();
    let rows = conn
        .client
        .query(
            &statement,
            &[&names, &(limit as i64), &now, &sent_before_ms, &me],
        )
        .await?;
    let mut held = rows
        .iter()
        .map(final_reply)
        .collect::<Result<Vec<_>, _>>()?;
    held.sort_unstable_by(|a, b| (a.device.as_str(), a.id).cmp(&(b.device.as_str(), b.id)));
    Ok(held)
}

/// The device acknowledged its final reply: stop holding it, and count the publishes of it
/// not yet counted (see [`super::marks`]).
pub async fn ack(
    conn: &Conn,
    device: &DeviceId,
    corr: &Correlation,
    count: Option<Count>,
) -> Result<Option<RequestId>, StoreError> {
    let statement = conn
        .statement(
            "UPDATE requests SET delivery = 'acked', args = ''::bytea,
                 published = published + $3,
                 sent_ms = CASE WHEN $3 > 0 THEN $4 ELSE sent_ms END
             WHERE device = $1 AND corr = $2 AND COALESCE(delivery, '') = 'held' RETURNING id",
        )
        .await?;
    let n = count.map_or(0, |count| count.n as i32);
    let row = conn
        .client
        .query_opt(
            &statement,
            &[
                &device.as_str(),
                &corr.as_bytes(),
                &n,
                &crate::store::now_ms(),
            ],
        )
        .await?;
    row.map(|row| request_id(&row, 0)).transpose()
}

/// Held replies whose TTL has passed become `dead` and dead letters (at most `limit`). Rows
/// another gateway is expiring at the same moment are skipped, so each is lettered once.
pub async fn expire_held(
    conn: &Conn,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let statement = conn
        .statement(
            "UPDATE requests SET delivery = 'dead' WHERE id IN (
                SELECT id FROM requests WHERE delivery = 'held' AND expires_ms <= $1
                ORDER BY expires_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, device, corr, op, status",
        )
        .await?;
    let rows = conn
        .client
        .query(&statement, &[&now_ms, &(limit as i64)])
        .await?;
    let mut letters = Vec::with_capacity(rows.len());
    for row in &rows {
        let status: Option<i32> = row.try_get(4)?;
        let letter = DeadLetter {
            at_ms: now_ms,
            device: Some(row.try_get(1)?),
            request_id: Some(request_id(row, 0)?.to_string()),
            corr: Some(correlation(row, 2)?.to_string()),
            op: Some(row.try_get(3)?),
            status: status.unwrap_or(0) as u16,
            reason: "reply_ttl: the final reply was not acknowledged within limits.reply_ttl_s"
                .into(),
        };
        tables::insert_dead_letter(conn, &letter).await?;
        letters.push(letter);
    }
    Ok(letters)
}

/// A reply its device could not take: the held final reply of (`device`, `corr`), if that is
/// what it was, stops being held (`dead`), and a dead letter records why.
pub async fn undeliverable(
    conn: &Conn,
    reply: &Undeliverable,
    now_ms: i64,
) -> Result<DeadLetter, StoreError> {
    let held = match &reply.corr {
        Some(corr) if reply.status != 202 => {
            let statement = conn
                .statement(
                    "UPDATE requests SET delivery = 'dead'
                     WHERE device = $1 AND corr = $2 AND COALESCE(delivery, '') = 'held'
                     RETURNING id, op",
                )
                .await?;
            let row = conn
                .client
                .query_opt(&statement, &[&reply.device.as_str(), &corr.as_bytes()])
                .await?;
            match row {
                Some(row) => Some((request_id(&row, 0)?, row.try_get::<_, String>(1)?)),
                None => None,
            }
        }
        _ => None,
    };
    let letter = DeadLetter {
        at_ms: now_ms,
        device: Some(reply.device.as_str().to_owned()),
        request_id: held.as_ref().map(|(id, _)| id.to_string()),
        corr: reply.corr.as_ref().map(|c| c.to_string()),
        op: held.map(|(_, op)| op),
        status: reply.status,
        reason: reply.reason.clone(),
    };
    tables::insert_dead_letter(conn, &letter).await?;
    Ok(letter)
}

/// Held replies of each of these devices.
pub async fn held_counts(conn: &Conn, devices: &[DeviceId]) -> Result<Vec<usize>, StoreError> {
    let statement = conn
        .statement(
            "SELECT (SELECT COUNT(*) FROM requests q WHERE q.device = d.device
                        AND q.delivery = 'held')
             FROM UNNEST($1::text[]) WITH ORDINALITY AS d(device, n) ORDER BY d.n",
        )
        .await?;
    let names: Vec<&str> = devices.iter().map(DeviceId::as_str).collect();
    let rows = conn.client.query(&statement, &[&names]).await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<_, i64>(0)?.max(0) as usize))
        .collect()
}

/// Held replies of all devices.
pub async fn held_total(conn: &Conn) -> Result<usize, StoreError> {
    let statement = conn
        .statement("SELECT COUNT(*) FROM requests WHERE delivery = 'held'")
        .await?;
    let row = conn.client.query_one(&statement, &[]).await?;
    Ok(row.try_get::<_, i64>(0)?.max(0) as usize)
}
