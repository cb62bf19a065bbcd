//! `limits.max_store_bytes`: the SQLite store's disk budget. Past it, the oldest *finished*
//! records (final reply acknowledged or dead-lettered: nothing left to deliver) are deleted,
//! oldest first, down to 90 % of the budget. That shortens the effective dedupe window (a
//! duplicate of an evicted request is taken as new), so each eviction is counted and logged with
//! the age of the newest record it took. When nothing finished is left to evict and the store is
//! still over budget, the store is degraded (see [`crate::store::health`]) until acks let
//! eviction bring it back under.
//!
//! Used bytes are the database's pages in use (`page_count - freelist_count`, times
//! `page_size`): freed pages are reused before the file grows, so this is what the next writes
//! add to.

use rusqlite::Connection;

/// Most records evicted in one pass (one transaction of the store thread).
const MAX_PER_PASS: usize = 50_000;
/// Records deleted per statement: small, so a pass stops close to its target (a request with a
/// large reply can be tens of KiB).
const CHUNK: i64 = 32;

/// What one pass found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgeted {
    /// Records evicted.
    pub evicted: usize,
    /// Bytes in use after the pass.
    pub used: u64,
    /// Still over the budget (nothing finished left to evict).
    pub over: bool,
    /// When the newest evicted record was received (ms since the epoch).
    pub newest_evicted_ms: Option<i64>,
}

/// Bytes of the database's pages in use.
pub fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |row| row.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |row| row.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |row| row.get(0))?;
    Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
}

/// One pass: evicts the oldest finished records while the store is over `budget`.
pub fn enforce(conn: &Connection, budget: u64) -> rusqlite::Result<Budgeted> {
    let mut used = used_bytes(conn)?;
    let mut done = Budgeted {
        evicted: 0,
        used,
        over: false,
        newest_evicted_ms: None,
    };
    if used <= budget {
        return Ok(done);
    }
    let target = budget - budget / 10;
    let mut delete = conn.prepare_cached(
        "DELETE FROM requests WHERE id IN (
             SELECT id FROM requests WHERE delivery IN ('acked', 'dead') ORDER BY id LIMIT ?1)
         RETURNING received_ms",
    )?;
    while used > target && done.evicted < MAX_PER_PASS {
        let received: Vec<i64> = delete
            .query_map([CHUNK], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        if received.is_empty() {
            break;
        }
        done.evicted += received.len();
        done.newest_evicted_ms = received.into_iter().chain(done.newest_evicted_ms).max();
        used = used_bytes(conn)?;
    }
    done.used = used;
    done.over = used > budget;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(rows: usize) -> (tempfile::TempDir, rusqlite::Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conn = rusqlite::Connection::open(dir.path().join("b.db")).expect("open");
        super::super::schema::migrate(&mut conn).expect("schema");
        for i in 0..rows {
            let delivery = if i % 10 == 9 { "held" } else { "acked" };
            conn.execute(
                "INSERT INTO requests (id, device, corr, op, args, reply_topic, envelope,
                     received_ms, deadline_ms, state, reply, delivery)
                 VALUES (?1, 'd', ?1, 'stats', X'', 't', 0, ?2, 0, 'done', zeroblob(8000), ?3)",
                rusqlite::params![(i as u64).to_be_bytes().to_vec(), i as i64, delivery],
            )
            .expect("row");
        }
        (dir, conn)
    }

    #[test]
    fn the_oldest_finished_go_first_and_held_ones_stay() {
        let (_dir, conn) = store_with(200);
        let before = used_bytes(&conn).expect("used");
        let budget = before / 2;
        let done = enforce(&conn, budget).expect("enforce");
        assert!(done.evicted > 0 && !done.over, "{done:?}");
        assert!(done.used <= budget, "{done:?}");
        assert!(
            done.used >= budget / 2,
            "stopped near the target, not emptied: {done:?}"
        );
        let newest: i64 = conn
            .query_row("SELECT max(received_ms) FROM requests", [], |r| r.get(0))
            .expect("max");
        assert_eq!(newest, 199, "the newest stays");
        let oldest_acked: i64 = conn
            .query_row(
                "SELECT min(received_ms) FROM requests WHERE delivery = 'acked'",
                [],
                |r| r.get(0),
            )
            .expect("min");
        assert!(oldest_acked > 0, "the oldest went first");
        let held: i64 = conn
            .query_row(
                "SELECT count(*) FROM requests WHERE delivery = 'held'",
                [],
                |r| r.get(0),
            )
            .expect("held");
        assert_eq!(held, 20, "held replies are never evicted");
    }

    #[test]
    fn over_with_nothing_finished_is_reported() {
        let (_dir, conn) = store_with(20);
        conn.execute("UPDATE requests SET delivery = 'held'", [])
            .expect("hold all");
        let done = enforce(&conn, 1).expect("enforce");
        assert_eq!(done.evicted, 0);
        assert!(done.over);
    }
}
