//! One statement for many pieces of work of a kind: the commit's admissions, completions,
//! publish counts, acks and readings each go to the server as one array-valued statement per batch
//! instead of one statement per request. PostgreSQL's cost per statement (bind, plan, executor
//! start, its answer) is what these save, on the server and in the gateway alike; the rows
//! written are the same as [`super::requests`]' and [`super::delivery`]'s one-at-a-time
//! statements, which stay for whatever a grouped statement leaves undecided (a duplicate, a
//! device without a free quota slot, one request completed twice in a batch).

use std::collections::{HashMap, HashSet};

use super::marks::Count;
use super::pool::Conn;
use super::requests::request_id;
use crate::store::requests::{Completion, NewRequest};
use crate::store::telemetry::Reading;
use crate::store::StoreError;
use crate::wire::{DeviceId, RequestId};

/// Inserts new requests, each unless its key exists or its device has no free quota slot.
///
/// `max_pending_per_device` is kept by slots: each queued request of a device holds one of its
/// slots `0..max_pending` until it finishes, and a unique index on (device, slot) lets no two
/// take one, so the quota holds cluster-wide with no lock (it was a per-device advisory lock
/// held to the commit, which made the intake of two gateways take turns whenever their batches
/// shared a device: nearly always). A row takes a free slot as the statement's snapshot sees them; each
/// gateway looks from its own place among the live gateways (`pos * max / alive`), so gateways
/// admitting for one device at once seldom pick the same slot. When they do, the later insert
/// waits for the earlier's commit and is then skipped (`ON CONFLICT DO NOTHING`), to be decided
/// again by [`super::requests::admit`], as are duplicates and a full quota. Rows come sorted by
/// device and `rank` (the admissions of the same device before it in the batch); a device's
/// `batched` rows take the first free slots in the gateway's order, smallest slot to the first,
/// so that two gateways inserting in device and slot order cannot wait on each other's slots in
/// a cycle. (Duplicates of one key sent through two gateways at once still can: PostgreSQL then
/// aborts one of the batches, which runs again.)
const INSERT_MANY: &str = "INSERT INTO requests (id, device, corr, op, args, reply_topic,
        envelope, received_ms, deadline_ms, state, owner, slot)
    SELECT n.id, n.device, n.corr, n.op, n.args, n.reply_topic, n.envelope, n.received_ms,
        n.deadline_ms, 'queued', $12, s.slot
    FROM UNNEST($1::bytea[], $2::text[], $3::bytea[], $4::text[], $5::bytea[], $6::text[],
        $7::bool[], $8::bigint[], $9::bigint[], $10::int[], $11::int[], $13::int[])
        AS n(id, device, corr, op, args, reply_topic, envelope, received_ms, deadline_ms,
             max_pending, rank, batched)
    CROSS JOIN (SELECT COUNT(*) FILTER (WHERE g.id < $12) AS pos, GREATEST(COUNT(*), 1) AS alive
                FROM gateways g WHERE g.lease_until_ms > $14) me
    LEFT JOIN LATERAL (
        SELECT COALESCE(ARRAY_AGG(q.slot), '{}') AS taken FROM requests q
        WHERE q.device = n.device AND q.slot IS NOT NULL) u
        ON n.max_pending > 0
    LEFT JOIN LATERAL (
        SELECT f.slot FROM (
            SELECT c.slot FROM (
                SELECT (GENERATE_SERIES(0, n.max_pending - 1) + me.pos * n.max_pending / me.alive)
                    % n.max_pending AS slot) c
            WHERE c.slot <> ALL (u.taken) LIMIT n.batched) f
        ORDER BY f.slot OFFSET n.rank LIMIT 1) s
        ON n.max_pending > 0
    WHERE n.max_pending = 0 OR s.slot IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING id";

/// Records final replies: see [`complete`].
const COMPLETE_MANY: &str =
    "UPDATE requests r SET state = c.state, status = c.status, reply = c.reply,
                 finished_ms = c.finished_ms, expires_ms = c.expires_ms, delivery = 'held',
                 executions = r.executions + c.executed, slot = NULL
             FROM UNNEST($1::bytea[], $2::text[], $3::int[], $4::bytea[], $5::bigint[],
                 $6::bigint[], $7::int[])
                 AS c(id, state, status, reply, finished_ms, expires_ms, executed)
             WHERE r.id = c.id AND COALESCE(r.state, '') = 'queued'
             RETURNING r.id";

/// Counts publishes: see [`published`]. Each row is found by its key once (`seen`); the lock
/// and the update find it again by its address (`ctid`), which costs a page, not an index
/// descent. A row changed by another transaction between the statement's snapshot and its lock
/// is locked in its newer version, whose address the update (on the snapshot) cannot see: its
/// count is not returned, and the caller holds it for a later commit as it does a skipped one.
const PUBLISHED_MANY: &str = "WITH seen AS MATERIALIZED (
                 SELECT q.ctid AS tid, q.id, COALESCE(q.delivery, '') = 'held' AS held
                 FROM requests q WHERE q.id = ANY($1::bytea[])),
             free AS (
                 SELECT q.ctid AS tid, q.id FROM seen s JOIN requests q ON q.ctid = s.tid
                 WHERE s.held AND COALESCE(q.delivery, '') = 'held'
                 FOR UPDATE OF q SKIP LOCKED),
             counted AS (
                 UPDATE requests r SET published = r.published + p.n, sent_ms = $3
                 FROM (SELECT id, SUM(n)::int AS n FROM UNNEST($1::bytea[], $2::int[]) AS u(id, n)
                       GROUP BY id) p, free f
                 WHERE r.ctid = f.tid AND p.id = f.id
                 RETURNING r.id)
             SELECT id FROM counted UNION ALL SELECT id FROM seen WHERE NOT held";

/// Ends held replies: see [`ack`].
const ACK_MANY: &str = "UPDATE requests r SET delivery = 'acked', args = ''::bytea,
                 published = r.published + a.n,
                 sent_ms = CASE WHEN a.n > 0 THEN $4 ELSE r.sent_ms END
             FROM UNNEST($1::text[], $2::bytea[], $3::int[]) AS a(device, corr, n)
             WHERE r.device = a.device AND r.corr = a.corr AND COALESCE(r.delivery, '') = 'held'
             RETURNING r.device, r.corr, r.id";

/// Ends held replies with other gateways on the database: see [`ack`].
const ACK_LOCKED_MANY: &str = "WITH l AS MATERIALIZED (
                 SELECT q.id, a.n FROM UNNEST($1::text[], $2::bytea[], $3::int[]) AS a(device, corr, n)
                 JOIN requests q ON q.device = a.device AND q.corr = a.corr
                 WHERE COALESCE(q.delivery, '') = 'held' ORDER BY q.id FOR UPDATE OF q)
             UPDATE requests r SET delivery = 'acked', args = ''::bytea,
                 published = r.published + l.n,
                 sent_ms = CASE WHEN l.n > 0 THEN $4 ELSE r.sent_ms END
             FROM l WHERE r.id = l.id AND COALESCE(r.delivery, '') = 'held'
             RETURNING r.device, r.corr, r.id";

/// Stores the readings of many telemetry publishes, each unless stored already (same device,
/// metric and `ts`: the first of the batch's copies wins, as one at a time; in key order, so
/// that two gateways storing copies of the same readings at once wait for each other's
/// readings in one order, never in a cycle), and counts them
/// in their devices' `telemetry_counts` (this gateway's row of what it stored); answers how
/// many each publish (`cmd`, its index in the arrays' source) stored, for those that stored
/// any. Every reading goes through it, one publish's alone too.
const TELEMETRY_MANY: &str = "WITH input AS MATERIALIZED (
                 SELECT * FROM UNNEST($1::int[], $2::text[], $3::text[], $4::bigint[],
                     $5::float8[]) AS u(cmd, device, metric, ts, value)),
             stored AS (
                 INSERT INTO telemetry (device, metric, ts, value)
                 SELECT device, metric, ts, value FROM input ORDER BY device, metric, ts, cmd
                 ON CONFLICT (device, metric, ts) DO NOTHING
                 RETURNING device, metric, ts),
             firsts AS (
                 SELECT DISTINCT ON (device, metric, ts) cmd, device, metric, ts FROM input
                 ORDER BY device, metric, ts, cmd),
             per_device AS (SELECT device, COUNT(*) AS k FROM stored GROUP BY device),
             counted AS (
                 INSERT INTO telemetry_counts (device, gateway, pruned, n)
                 SELECT device, $6, false, k FROM per_device ORDER BY device
                 ON CONFLICT (device, gateway, pruned) DO UPDATE
                 SET n = telemetry_counts.n + excluded.n)
             SELECT f.cmd, COUNT(*)::int FROM firsts f JOIN stored s USING (device, metric, ts)
             GROUP BY f.cmd";

/// Prepares this module's statements on `conn` (once per connection; later calls find them
/// cached and cost no round trip), so that a batch's statements go to the server in the order
/// they are issued: a statement prepared first would be sent after the others.
pub async fn prepare(conn: &Conn) -> Result<(), StoreError> {
    for sql in [
        INSERT_MANY,
        COMPLETE_MANY,
        PUBLISHED_MANY,
        ACK_MANY,
        ACK_LOCKED_MANY,
        TELEMETRY_MANY,
    ] {
        conn.statement(sql).await?;
    }
    Ok(())
}

/// A request to admit, with its device's quota, its rank among the batch's admissions of that
/// device and their number.
#[derive(Clone)]
pub struct Admit<'a> {
    /// The request.
    pub request: &'a NewRequest,
    /// `max_pending_per_device` (0: unchecked).
    pub max_pending: usize,
    /// Admissions of the same device before it in the batch.
    pub rank: usize,
    /// Admissions of the same device in the batch.
    pub batched: usize,
}

/// Which of `admits` (sorted by device, then rank: see [`INSERT_MANY`]) were stored.
pub async fn admit(
    conn: &Conn,
    owner: &str,
    admits: &[Admit<'_>],
) -> Result<Vec<bool>, StoreError> {
    if admits.is_empty() {
        return Ok(Vec::new());
    }
    debug_assert!(admits.windows(2).all(|w| {
        (w[0].request.device.as_str(), w[0].rank) < (w[1].request.device.as_str(), w[1].rank)
    }));
    let statement = conn.statement(INSERT_MANY).await?;
    let ids: Vec<&[u8]> = admits
        .iter()
        .map(|a| a.request.id.as_bytes().as_slice())
        .collect();
    let devices: Vec<&str> = admits.iter().map(|a| a.request.device.as_str()).collect();
    let corrs: Vec<&[u8]> = admits.iter().map(|a| a.request.corr.as_bytes()).collect();
    let ops: Vec<&str> = admits.iter().map(|a| a.request.op.as_str()).collect();
    let args: Vec<&[u8]> = admits.iter().map(|a| a.request.args.as_slice()).collect();
    let topics: Vec<&str> = admits
        .iter()
        .map(|a| a.request.reply_topic.as_str())
        .collect();
    let envelopes: Vec<bool> = admits.iter().map(|a| a.request.envelope).collect();
    let received: Vec<i64> = admits.iter().map(|a| a.request.received_ms).collect();
    let deadlines: Vec<i64> = admits.iter().map(|a| a.request.deadline_ms).collect();
    let quotas: Vec<i32> = admits.iter().map(|a| to_i32(a.max_pending)).collect();
    let ranks: Vec<i32> = admits.iter().map(|a| to_i32(a.rank)).collect();
    let batched: Vec<i32> = admits.iter().map(|a| to_i32(a.batched)).collect();
    let rows = conn
        .client
        .query(
            &statement,
            &[
                &ids,
                &devices,
                &corrs,
                &ops,
                &args,
                &topics,
                &envelopes,
                &received,
                &deadlines,
                &quotas,
                &ranks,
                &owner,
                &batched,
                &crate::store::now_ms(),
            ],
        )
        .await?;
    let stored = returned_ids(&rows)?;
    Ok(admits
        .iter()
        .map(|a| stored.contains(&a.request.id))
        .collect())
}

/// Records final replies of queued requests (ids distinct); which ones were still queued.
pub async fn complete(conn: &Conn, done: &[&Completion]) -> Result<Vec<bool>, StoreError> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let statement = conn.statement(COMPLETE_MANY).await?;
    let ids: Vec<&[u8]> = done.iter().map(|d| d.id.as_bytes().as_slice()).collect();
    let states: Vec<&str> = done.iter().map(|d| d.state.as_str()).collect();
    let statuses: Vec<i32> = done.iter().map(|d| i32::from(d.status)).collect();
    let replies: Vec<&[u8]> = done.iter().map(|d| d.payload.as_slice()).collect();
    let finished: Vec<i64> = done.iter().map(|d| d.finished_ms).collect();
    let expires: Vec<i64> = done.iter().map(|d| d.expires_ms).collect();
    let executed: Vec<i32> = done.iter().map(|d| i32::from(d.executed)).collect();
    let rows = conn
        .client
        .query(
            &statement,
            &[
                &ids, &states, &statuses, &replies, &finished, &expires, &executed,
            ],
        )
        .await?;
    let changed = returned_ids(&rows)?;
    Ok(done.iter().map(|d| changed.contains(&d.id)).collect())
}

/// Stores the readings of `publishes` (each a device and its readings) as [`TELEMETRY_MANY`]
/// says; how many of each publish's readings were stored.
pub async fn telemetry(
    conn: &Conn,
    me: &str,
    publishes: &[(&DeviceId, &[Reading])],
) -> Result<Vec<usize>, StoreError> {
    if publishes.is_empty() {
        return Ok(Vec::new());
    }
    let statement = conn.statement(TELEMETRY_MANY).await?;
    let (mut cmds, mut devices, mut metrics, mut ts, mut values) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (cmd, (device, readings)) in publishes.iter().enumerate() {
        for reading in *readings {
            cmds.push(cmd as i32);
            devices.push(device.as_str());
            metrics.push(reading.metric.as_str());
            ts.push(reading.ts);
            values.push(reading.value);
        }
    }
    let rows = conn
        .client
        .query(&statement, &[&cmds, &devices, &metrics, &ts, &values, &me])
        .await?;
    let mut stored = vec![0; publishes.len()];
    for row in rows {
        let (cmd, n): (i32, i32) = (row.try_get(0)?, row.try_get(1)?);
        if let Some(stored) = stored.get_mut(cmd as usize) {
            *stored = n as usize;
        }
    }
    Ok(stored)
}

/// Counts publishes of final replies; which counts were settled: written, or dropped because
/// the reply is no longer held (acked or expired: with other gateways on the database, its ack
/// often came through another gateway before the count, and writing the row again for a count
/// nobody reads any more cost a row version and its index entries). A count whose row another
/// transaction holds is skipped, not waited for: it is usually that reply's ack, through
/// another gateway, and the two waiting for each other's rows deadlocked (measured: 13 in a
/// 10 s run of three gateways without the ordered locks). The caller holds skipped counts for
/// a later commit ([`super::marks::Marks::settle`]).
pub async fn published(conn: &Conn, counts: &[Count]) -> Result<Vec<bool>, StoreError> {
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    let statement = conn.statement(PUBLISHED_MANY).await?;
    let ids: Vec<&[u8]> = counts.iter().map(|c| c.id.as_bytes().as_slice()).collect();
    let ns: Vec<i32> = counts.iter().map(|c| c.n as i32).collect();
    let rows = conn
        .client
        .query(&statement, &[&ids, &ns, &crate::store::now_ms()])
        .await?;
    let counted = returned_ids(&rows)?;
    Ok(counts.iter().map(|c| counted.contains(&c.id)).collect())
}

/// A device's ack, with the publishes of its reply not yet counted.
#[derive(Clone)]
pub struct Ack<'a> {
    /// The device.
    pub device: &'a DeviceId,
    /// The reply's correlation.
    pub corr: &'a [u8],
    /// Publishes to count with the ack.
    pub count: Option<Count>,
}

/// Acknowledgements, in order: the request whose held reply each ended (a second ack of the
/// same reply ends nothing, as it would one at a time), its reply's publishes counted.
///
/// With other gateways on the database (`shared`), the rows are locked in id order first, in
/// the same statement. A reply published by one gateway may be acked through several (a
/// redelivery, a device that acks twice), and a wake's redelivery claim takes its device's
/// held rows in id order: each statement taking its own rows in its own order, two batches
/// could deadlock, and each deadlock stalls a commit for PostgreSQL's `deadlock_timeout`
/// (1 s). (Publish counts, which met acks most, skip rows locked elsewhere instead:
/// [`published`].) The lock was a statement of its own before: finding the rows twice cost
/// a tenth of the server's statement time with three gateways.
pub async fn ack(
    conn: &Conn,
    acks: &[Ack<'_>],
    shared: bool,
) -> Result<Vec<Option<RequestId>>, StoreError> {
    if acks.is_empty() {
        return Ok(Vec::new());
    }
    let statement = conn
        .statement(if shared { ACK_LOCKED_MANY } else { ACK_MANY })
        .await?;
    let devices: Vec<&str> = acks.iter().map(|a| a.device.as_str()).collect();
    let corrs: Vec<&[u8]> = acks.iter().map(|a| a.corr).collect();
    // An ack twice in the batch updates its row once, joined with either: both carry the count.
    let mut counts: HashMap<(&str, &[u8]), i32> = HashMap::new();
    for a in acks {
        if let Some(count) = a.count {
            *counts.entry((a.device.as_str(), a.corr)).or_default() += count.n as i32;
        }
    }
    let ns: Vec<i32> = acks
        .iter()
        .map(|a| {
            counts
                .get(&(a.device.as_str(), a.corr))
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let rows = conn
        .client
        .query(
            &statement,
            &[&devices, &corrs, &ns, &crate::store::now_ms()],
        )
        .await?;
    let mut ended: HashMap<(String, Vec<u8>), RequestId> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let device: String = row.try_get(0)?;
        let corr: Vec<u8> = row.try_get(1)?;
        ended.insert((device, corr), request_id(row, 2)?);
    }
    Ok(acks
        .iter()
        .map(|a| ended.remove(&(a.device.as_str().to_owned(), a.corr.to_vec())))
        .collect())
}

/// A count as a statement's `int` (quotas and batches are far below its bound).
fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The request ids a statement's `RETURNING id` gave.
fn returned_ids(rows: &[tokio_postgres::Row]) -> Result<HashSet<RequestId>, StoreError> {
    rows.iter().map(|row| request_id(row, 0)).collect()
}
