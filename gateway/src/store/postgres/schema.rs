//! The PostgreSQL schema, applied in order on open; the `roost_schema` table records how far a
//! database got. Append new steps; never edit a shipped one.
//!
//! Several gateways may start at once on one database: the whole migration runs in one
//! transaction under a transaction-scoped advisory lock, so exactly one of them migrates and the
//! others then find the schema current.

use tokio_postgres::{Client, GenericClient};

use crate::store::StoreError;

/// The advisory lock key migrations take ("roost" in ASCII).
const MIGRATION_LOCK: i64 = 0x0072_6f6f_7374;

/// Migration steps; step i brings the database to version i + 1.
const MIGRATIONS: &[&str] = &[
    // 1: requests (with their final reply and delivery state), dead letters, telemetry.
    "CREATE TABLE requests (
        id          BYTEA PRIMARY KEY,      -- RequestId, UUID v7 (time-ordered)
        device      TEXT NOT NULL,
        corr        BYTEA NOT NULL,         -- Correlation Data: (device, corr) is the dedupe key
        op          TEXT NOT NULL,
        args        BYTEA NOT NULL,         -- the op's arguments, CBOR
        reply_topic TEXT NOT NULL,
        envelope    BOOLEAN NOT NULL,       -- MQTT 3.1.1 envelope form
        received_ms BIGINT NOT NULL,
        deadline_ms BIGINT NOT NULL,
        state       TEXT NOT NULL,          -- queued | done | failed | expired | cancelled
        status      INTEGER,                -- the final reply's status code
        reply       BYTEA,                  -- the final reply's payload, byte for byte
        finished_ms BIGINT,
        expires_ms  BIGINT,                 -- end of the reply TTL
        delivery    TEXT,                   -- NULL until final; held | acked | dead
        published   INTEGER NOT NULL DEFAULT 0,  -- times the final reply was handed to the broker
        executions  INTEGER NOT NULL DEFAULT 0,  -- completed runs of the op: at most 1
        UNIQUE (device, corr)
    );
    CREATE INDEX requests_queued ON requests (id) WHERE state = 'queued';
    CREATE INDEX requests_held ON requests (device, id) WHERE delivery = 'held';
    CREATE INDEX requests_held_expiry ON requests (expires_ms) WHERE delivery = 'held';
    CREATE INDEX requests_received ON requests (received_ms);
    CREATE TABLE dead_letters (
        id          BIGSERIAL PRIMARY KEY,
        at_ms       BIGINT NOT NULL,
        device      TEXT,
        request_id  BYTEA,
        corr        TEXT,
        op          TEXT,
        status      INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        requeued    BOOLEAN NOT NULL DEFAULT false
    );
    CREATE TABLE telemetry (
        id      BIGSERIAL PRIMARY KEY,
        device  TEXT NOT NULL,
        metric  TEXT NOT NULL,
        ts      BIGINT NOT NULL,        -- ms since epoch
        value   DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX telemetry_series ON telemetry (device, metric, ts);",
    // 2: the cluster. Each request is claimed by the gateway that admitted (or took over) it;
    // the claim holds while that gateway's heartbeat lease is fresh.
    "ALTER TABLE requests ADD COLUMN owner TEXT;
    CREATE INDEX requests_owner_queued ON requests (owner, id) WHERE state = 'queued';
    CREATE INDEX requests_unpublished ON requests (owner, id)
        WHERE delivery = 'held' AND published = 0;
    CREATE TABLE gateways (
        id              TEXT PRIMARY KEY,   -- [gateway] id
        started_ms      BIGINT NOT NULL,
        seen_ms         BIGINT NOT NULL,    -- its last heartbeat
        lease_until_ms  BIGINT NOT NULL     -- its claims hold until then
    );",
    // 3: when a held reply was last handed to the broker, so that the gateways seeing one wake
    // of its device redeliver it once between them (see `delivery::held_for`); each device's
    // pending requests, counted cluster-wide against `max_pending_per_device`.
    "ALTER TABLE requests ADD COLUMN sent_ms BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX requests_device_queued ON requests (device) WHERE state = 'queued';",
    // 4: what operators see of each device (written by the outbox with its status).
    "CREATE TABLE devices (
        id            TEXT PRIMARY KEY,
        awake         BOOLEAN NOT NULL DEFAULT false,
        last_seen_ms  BIGINT,
        last_error    TEXT,             -- the last error reply, 'code: message'
        last_error_ms BIGINT,
        seen_by       TEXT              -- the gateway that wrote it last: its restart clears awake
    );
    INSERT INTO devices (id)
        SELECT device FROM requests UNION SELECT device FROM telemetry
        ON CONFLICT (id) DO NOTHING;
    CREATE INDEX dead_letters_device ON dead_letters (device, id);",
    // 5: fewer index entries per request. Requests received before a time are found through
    // the primary key (ids are UUID v7, time-ordered), so `requests_received`, which every row
    // version wrote, goes. The held replies are indexed by owner without their publish count,
    // so that counting a publish changes no indexed column and is a heap-only (HOT) update,
    // with room left on each page for it.
    "DROP INDEX requests_received;
    DROP INDEX requests_unpublished;
    CREATE INDEX requests_held_owner ON requests (owner, id) WHERE delivery = 'held';
    ALTER TABLE requests SET (fillfactor = 80);",
    // 6: the device quota kept by slots instead of a lock (see `grouped::INSERT_MANY`): each
    // queued request of a device holds one of its slots, no two the same, until it finishes
    // (its slot is then NULL). Requests already queued take the first slots in the order they
    // came. And the held replies' expiry index gets a predicate that a lookup by device does
    // not imply, so that the planner cannot take it for one: with the statistics of a moment
    // when little was held (an `ANALYZE` between bursts), the partial indexes of held replies
    // looked equally empty, and a wake's claim by device was planned on the expiry index,
    // reading every held reply of the fleet. (The owner index keeps its predicate: the
    // takeover, which also takes replies with no owner, reads it.)
    "ALTER TABLE requests ADD COLUMN slot INTEGER;
    UPDATE requests r SET slot = n.slot
        FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY device ORDER BY id) - 1 AS slot
              FROM requests WHERE state = 'queued') n
        WHERE r.id = n.id;
    DROP INDEX requests_device_queued;
    CREATE UNIQUE INDEX requests_device_slot ON requests (device, slot) WHERE slot IS NOT NULL;
    DROP INDEX requests_held_expiry;
    CREATE INDEX requests_held_expiry ON requests (expires_ms)
        WHERE delivery = 'held' AND expires_ms IS NOT NULL;",
    // 7: the owner index of held replies gets a predicate that a lookup by device does not
    // imply. With statistics of a moment when little was held, a wake's redelivery claim by
    // device was planned as a whole scan of this index, filtering on the device (seen in the
    // store test `postgres_rows_found_by_key_do_not_scan_the_partial_indexes`: 20,000 entries
    // read for one reply). Lookups by owner imply it; the takeover, which also takes replies
    // with no owner, reads the held index instead.
    "DROP INDEX requests_held_owner;
    CREATE INDEX requests_held_owner ON requests (owner, id)
        WHERE delivery = 'held' AND owner IS NOT NULL;",
    // 8: a device's wake as the cluster saw it. Each gateway sees part of a device's traffic
    // (its presence, requests and acks each go to one of them), so each had its own idea of
    // whether it was awake, and the last to write its status won. The row now keeps the latest
    // window any gateway opened and when the device last said it was going to sleep
    // (`devices::upsert` merges them), and when a gateway last published the device's status
    // (so that the cluster publishes it about once a second, not once per gateway).
    "ALTER TABLE devices ADD COLUMN awake_until_ms BIGINT, ADD COLUMN asleep_ms BIGINT,
        ADD COLUMN status_ms BIGINT;",
    // 9: the telemetry retention finds old readings by time, not by reading the whole table
    // every 10 s.
    "CREATE INDEX telemetry_age ON telemetry (ts);",
    // 10: a reading is stored once. A device's QoS 1 publish sent again, or one the share group
    // hands to another gateway after an unacked delivery, carries the same readings: the
    // series index becomes the key, and copies already stored go (the first stays).
    "DELETE FROM telemetry a USING telemetry b
        WHERE a.device = b.device AND a.metric = b.metric AND a.ts = b.ts AND a.id > b.id;
    DROP INDEX telemetry_series;
    CREATE UNIQUE INDEX telemetry_series ON telemetry (device, metric, ts);",
    // 11: each device's number of readings, kept with them, so that the cap reads only what it
    // deletes: it used to read every reading of every device that stored one since the last
    // prune, every 10 s (a device at the default cap has 100,000). A device's count is the sum
    // of its rows: each gateway adds what its intake stored in a row of its own, and takes off
    // what its prune deleted in another, so that no two transactions wait on one count (an
    // intake batch locks its rows in arrival order, a prune in device order). The oldest of a
    // device are found through (device, ts).
    "CREATE TABLE telemetry_counts (
        device  TEXT NOT NULL,
        gateway TEXT NOT NULL,
        pruned  BOOLEAN NOT NULL,
        n       BIGINT NOT NULL,
        PRIMARY KEY (device, gateway, pruned)
    );
    INSERT INTO telemetry_counts SELECT device, '', false, COUNT(*) FROM telemetry GROUP BY device;
    CREATE INDEX telemetry_device_age ON telemetry (device, ts);",
    // 12: the mark each transaction leaves as it begins (`transaction::begin`), so that a
    // commit whose answer was lost is settled by looking for its mark: a transaction id, which
    // `txid_status` goes by, may belong to another transaction on a standby promoted since.
    // Tokens are UUID v7: the oldest go first (`transaction::prune_marks`).
    "CREATE TABLE commit_marks (token BYTEA PRIMARY KEY);",
];

/// Brings the database up to the newest schema; safe when several gateways call it at once.
/// A current schema is only read: a role that may read and write the tables but not create
/// any (the least a gateway needs) starts on a database its owner migrated.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let newest = MIGRATIONS.len();
    let found = version(client).await?;
    if found >= newest {
        // Current, or newer than this gateway knows (which `migrating` refuses).
        crate::store::schema::migrating(found, newest)?;
        return Ok(());
    }
    let txn = client.transaction().await?;
    let locked: bool = txn
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?
        .get(0);
    if !locked {
        tracing::info!("waiting for another gateway to migrate the store's schema");
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
    }
    // Again, under the lock: another gateway may have migrated meanwhile.
    let version = version(&txn).await?;
    let Some(started) = crate::store::schema::migrating(version, newest)? else {
        txn.rollback().await?; // current: nothing to write
        return Ok(());
    };
    let rights = |error| needs_rights(error, version, newest);
    txn.batch_execute("CREATE TABLE IF NOT EXISTS roost_schema (version INTEGER NOT NULL)")
        .await
        .map_err(rights)?;
    for step in &MIGRATIONS[version..] {
        txn.batch_execute(step).await.map_err(rights)?;
    }
    txn.execute("DELETE FROM roost_schema", &[]).await?;
    txn.execute(
        "INSERT INTO roost_schema (version) VALUES ($1)",
        &[&(newest as i32)],
    )
    .await?;
    txn.commit().await?;
    crate::store::schema::migrated(started, newest);
    Ok(())
}

/// The schema version the database is at (0: none yet), read without writing anything. The
/// table is looked for in `pg_class` as of the statement's snapshot: `to_regclass` reads the
/// session's catalog cache, which may not have seen another gateway's migration commit yet.
async fn version(client: &impl GenericClient) -> Result<usize, StoreError> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relname = 'roost_schema' AND n.nspname = ANY (current_schemas(false)))",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: i32 = client
        .query_opt("SELECT version FROM roost_schema", &[])
        .await?
        .map_or(0, |row| row.get(0));
    Ok(version.max(0) as usize)
}

/// A migration step's failure; one for want of rights says what the migration needs.
fn needs_rights(error: tokio_postgres::Error, from: usize, to: usize) -> StoreError {
    match StoreError::from(error) {
        StoreError::Refused(text) => StoreError::Refused(format!(
            "{text} (the schema is at version {from} and this gateway needs {to}: migrating \
             needs a role that may create tables, such as the database's owner, once)"
        )),
        error => error,
    }
}
