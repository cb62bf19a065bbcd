//! The schema, applied in order on open; `PRAGMA user_version` records how far a database got.
//! Append new steps; never edit a shipped one.

use rusqlite::Connection;

use super::StoreError;

/// Migration steps; step i brings the database to `user_version = i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: requests (with their final reply and delivery state) and dead letters.
    "CREATE TABLE requests (
        id          BLOB PRIMARY KEY,       -- RequestId, UUID v7 (time-ordered)
        device      TEXT NOT NULL,
        corr        BLOB NOT NULL,          -- Correlation Data: (device, corr) is the dedupe key
        op          TEXT NOT NULL,
        args        BLOB NOT NULL,          -- the op's arguments, CBOR
        reply_topic TEXT NOT NULL,
        envelope    INTEGER NOT NULL,       -- 1: MQTT 3.1.1 envelope form
        received_ms INTEGER NOT NULL,
        deadline_ms INTEGER NOT NULL,
        state       TEXT NOT NULL,          -- queued | done | failed | expired | cancelled
        status      INTEGER,                -- the final reply's status code
        reply       BLOB,                   -- the final reply's payload, byte for byte
        finished_ms INTEGER,
        expires_ms  INTEGER,                -- end of the reply TTL
        delivery    TEXT,                   -- NULL until final; held | acked | dead
        published   INTEGER NOT NULL DEFAULT 0,  -- times the final reply was handed to the broker
        executions  INTEGER NOT NULL DEFAULT 0,  -- completed runs of the op: at most 1
        UNIQUE (device, corr)
    ) WITHOUT ROWID;
    CREATE INDEX requests_queued ON requests (state) WHERE state = 'queued';
    CREATE INDEX requests_held ON requests (device, delivery) WHERE delivery = 'held';
    CREATE INDEX requests_held_expiry ON requests (expires_ms) WHERE delivery = 'held';
    CREATE INDEX requests_received ON requests (received_ms);
    CREATE TABLE dead_letters (
        id          INTEGER PRIMARY KEY,
        at_ms       INTEGER NOT NULL,
        device      TEXT,
        request_id  BLOB,
        corr        BLOB,
        op          TEXT,
        status      INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        requeued    INTEGER NOT NULL DEFAULT 0
    );",
    // 2: telemetry readings for windowed ops.
    "CREATE TABLE telemetry (
        device TEXT NOT NULL,
        metric TEXT NOT NULL,
        ts     INTEGER NOT NULL,        -- ms since epoch
        value  REAL NOT NULL
    );
    CREATE INDEX telemetry_series ON telemetry (device, metric, ts);",
    // 3: what operators see of each device (written by the outbox with its status).
    "CREATE TABLE devices (
        id            TEXT PRIMARY KEY,
        awake         INTEGER NOT NULL DEFAULT 0,
        last_seen_ms  INTEGER,
        last_error    TEXT,            -- the last error reply, \"code: message\"
        last_error_ms INTEGER
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO devices (id)
        SELECT device FROM requests UNION SELECT device FROM telemetry;
    CREATE INDEX dead_letters_device ON dead_letters (device, id);",
    // 4: the degraded state's probe writes a row here and deletes it in the same transaction.
    "CREATE TABLE probe (id INTEGER PRIMARY KEY, pad BLOB NOT NULL);",
    // 5: the telemetry retention finds old readings by time, not by reading the whole table
    // every 10 s on the store thread (85 ms per 2 million readings, with nothing to delete).
    "CREATE INDEX telemetry_age ON telemetry (ts);",
    // 6: a reading is stored once. A device's QoS 1 publish sent again, or one a share group
    // hands to another gateway after an unacked delivery, carries the same readings: the
    // series index becomes the key, and copies already stored go (the first stays).
    "DELETE FROM telemetry WHERE EXISTS (SELECT 1 FROM telemetry t
        WHERE t.device = telemetry.device AND t.metric = telemetry.metric
          AND t.ts = telemetry.ts AND t.rowid < telemetry.rowid);
    DROP INDEX telemetry_series;
    CREATE UNIQUE INDEX telemetry_series ON telemetry (device, metric, ts);",
    // 7: each device's number of readings, kept with them, so that the cap reads only what it
    // deletes: it used to read every reading of every device that stored one since the last
    // prune, every 10 s (a device at the default cap has 100,000). The oldest of a device are
    // found through (device, ts).
    "CREATE TABLE telemetry_counts (
        device TEXT PRIMARY KEY,
        n      INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO telemetry_counts SELECT device, COUNT(*) FROM telemetry GROUP BY device;
    CREATE INDEX telemetry_device_age ON telemetry (device, ts);",
];

/// Brings the database up to the newest schema.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let Some(started) = crate::store::schema::migrating(version, MIGRATIONS.len())? else {
        return Ok(());
    };
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        let txn = conn.transaction()?;
        txn.execute_batch(step)?;
        txn.pragma_update(None, "user_version", i + 1)?;
        txn.commit()?;
    }
    crate::store::schema::migrated(started, MIGRATIONS.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database of schema 5 that stored a reading twice (before readings had a key) keeps one
    /// copy, the first, and refuses none after the step that makes the series index the key.
    #[test]
    fn readings_stored_twice_before_the_key_keep_the_first_copy() {
        let mut conn = Connection::open_in_memory().expect("open");
        for step in &MIGRATIONS[..5] {
            conn.execute_batch(step).expect("old step");
        }
        conn.pragma_update(None, "user_version", 5)
            .expect("version");
        conn.execute_batch(
            "INSERT INTO telemetry (device, metric, ts, value) VALUES
                ('d', 't', 1, 1.0), ('d', 't', 1, 2.0), ('d', 't', 2, 3.0),
                ('d', 'h', 1, 4.0), ('e', 't', 1, 5.0), ('d', 't', 1, 6.0);",
        )
        .expect("readings");
        migrate(&mut conn).expect("migrate");
        let mut statement = conn
            .prepare("SELECT device, metric, ts, value FROM telemetry ORDER BY rowid")
            .expect("select");
        let rows: Vec<(String, String, i64, f64)> = statement
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        let row = |device: &str, metric: &str, ts, value| (device.into(), metric.into(), ts, value);
        assert_eq!(
            rows,
            vec![
                row("d", "t", 1, 1.0),
                row("d", "t", 2, 3.0),
                row("d", "h", 1, 4.0),
                row("e", "t", 1, 5.0)
            ]
        );
        let copy = conn.execute(
            "INSERT INTO telemetry (device, metric, ts, value) VALUES ('d', 't', 2, 7.0)",
            [],
        );
        assert!(copy.is_err(), "the series index is the key now");
        let counts: Vec<(String, i64)> = conn
            .prepare("SELECT device, n FROM telemetry_counts ORDER BY device")
            .expect("select")
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            counts,
            vec![("d".into(), 3), ("e".into(), 1)],
            "counted once"
        );
    }
}
