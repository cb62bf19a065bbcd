//! The `sessions` table: device MQTT sessions that outlive their connection (Clean Start 0 with
//! a Session Expiry Interval), so a gateway restart keeps them.
//!
//! Written and read only by the front door's session keeper ([`crate::frontdoor::sessions`])
//! through a connection of its own, on a database file of its own ([`DB_FILE`] in `data_dir`):
//! a second writer on `roost.db` would contend for its write lock with the store thread's group
//! commits (measured: with 200 sleepy devices the fleet test lost requests and connects). The state is an opaque blob here: what a session holds is the front
//! door's business. A row whose `expires_ms` is NULL belonged to a live connection when it was
//! written; whoever loads it counts the expiry from the load.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

/// The database file name inside `data_dir`.
pub const DB_FILE: &str = "sessions.db";

/// The table, created on first use.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sessions (
    client_id   TEXT PRIMARY KEY,
    state       BLOB NOT NULL,          -- the front door's encoding of the session
    expires_ms  INTEGER                 -- NULL: its connection was live when written
) WITHOUT ROWID;";

/// One stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The device's client id.
    pub client_id: String,
    /// The encoded state.
    pub state: Vec<u8>,
    /// When it expires (ms since epoch), or `None` if its connection was live.
    pub expires_ms: Option<i64>,
}

/// Opens the front door's session connection on `path` (creating the file and table if missing).
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Writes (or replaces) one session.
pub fn put(conn: &Connection, session: &StoredSession) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions (client_id, state, expires_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (client_id) DO UPDATE SET state = ?2, expires_ms = ?3",
    )?
    .execute(params![
        session.client_id,
        session.state,
        session.expires_ms
    ])?;
    Ok(())
}

/// Forgets one session.
pub fn delete(conn: &Connection, client_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM sessions WHERE client_id = ?1")?
        .execute(params![client_id])?;
    Ok(())
}

/// Deletes the sessions expired by `now_ms`; returns how many.
pub fn delete_expired(conn: &Connection, now_ms: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM sessions WHERE expires_ms <= ?1")?
        .execute(params![now_ms])
}

/// Every session not expired by `now_ms` (expired ones are deleted first).
pub fn load(conn: &Connection, now_ms: i64) -> rusqlite::Result<Vec<StoredSession>> {
    delete_expired(conn, now_ms)?;
    let mut statement = conn.prepare_cached("SELECT client_id, state, expires_ms FROM sessions")?;
    let rows = statement.query_map([], |row| {
        Ok(StoredSession {
            client_id: row.get(0)?,
            state: row.get(1)?,
            expires_ms: row.get(2)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_load_expire_delete_on_a_real_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = open(&dir.path().join("roost.db")).expect("open");
        let session = |id: &str, expires_ms| StoredSession {
            client_id: id.into(),
            state: vec![1, 2, 3],
            expires_ms,
        };
        put(&conn, &session("a", Some(100))).expect("put");
        put(&conn, &session("b", None)).expect("put");
        put(&conn, &session("c", Some(50))).expect("put");
        put(&conn, &session("c", Some(500))).expect("replace");
        let mut loaded = load(&conn, 100).expect("load");
        loaded.sort_by(|x, y| x.client_id.cmp(&y.client_id));
        assert_eq!(loaded, vec![session("b", None), session("c", Some(500))]);
        delete(&conn, "b").expect("delete");
        assert_eq!(load(&conn, 100).expect("load").len(), 1);
        assert_eq!(delete_expired(&conn, 500).expect("sweep"), 1);
        assert!(load(&conn, 0).expect("load").is_empty());
    }
}
