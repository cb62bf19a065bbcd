//! The `sessions` table: device MQTT sessions that outlive their connection (Clean Start 0 with
//! a Session Expiry Interval), so a gateway restart keeps them.
//!
//! Written and read only by the front door's session keeper (`frontdoor::devices::sessions`)
//! through a [`SessionTable`] of its own, on a SQLite file of its own ([`DB_FILE`] in
//! `data_dir`, whatever the store engine: sessions belong to this gateway's front door): a
//! second writer on `roost.db` would contend for its write lock with the store thread's group
//! commits (measured: with 200 sleepy devices the fleet test lost requests and connects). The
//! state is an opaque blob here: what a session holds is the front door's business. A row whose
//! `expires_ms` is NULL belonged to a live connection when it was written; whoever loads it
//! counts the expiry from the load.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::StoreError;

/// The database file name inside `data_dir`.
pub const DB_FILE: &str = "sessions.db";

/// The table, created on first use.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sessions (
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

/// One change to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionWrite {
    /// Writes (or replaces) one session.
    Put(StoredSession),
    /// Forgets one session.
    Delete(String),
    /// Forgets the sessions expired by this time (ms since epoch).
    Sweep(i64),
}

/// The front door's own connection to its sessions file. Blocking: used from a thread of its
/// own, never from the async runtime.
pub struct SessionTable {
    conn: Connection,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionTable")
    }
}

impl SessionTable {
    /// Opens the sessions file at `path` (creating the file and table if missing).
    pub fn open(path: &Path) -> Result<SessionTable, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SessionTable { conn })
    }

    /// Every session not expired by `now_ms` (expired ones are deleted first; on a full disk
    /// they are left for the front door's sweep, and the start goes on).
    pub fn load(&self, now_ms: i64) -> Result<Vec<StoredSession>, StoreError> {
        StoreError::unless_degrading(
            delete_expired(&self.conn, now_ms),
            "expired device sessions are deleted later",
        )?;
        let mut statement = self.conn.prepare_cached(
            "SELECT client_id, state, expires_ms FROM sessions
             WHERE expires_ms IS NULL OR expires_ms > ?1",
        )?;
        let rows = statement.query_map([now_ms], |row| {
            Ok(StoredSession {
                client_id: row.get(0)?,
                state: row.get(1)?,
                expires_ms: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Applies `writes` in order, in one transaction.
    pub fn apply(&mut self, writes: Vec<SessionWrite>) -> Result<(), StoreError> {
        let txn = self.conn.transaction()?;
        for write in writes {
            match write {
                SessionWrite::Put(session) => {
                    txn.prepare_cached(
                        "INSERT INTO sessions (client_id, state, expires_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT (client_id) DO UPDATE SET state = ?2, expires_ms = ?3",
                    )?
                    .execute(params![
                        session.client_id,
                        session.state,
                        session.expires_ms
                    ])?;
                }
                SessionWrite::Delete(client_id) => {
                    txn.prepare_cached("DELETE FROM sessions WHERE client_id = ?1")?
                        .execute(params![client_id])?;
                }
                SessionWrite::Sweep(now_ms) => {
                    delete_expired(&txn, now_ms)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// Deletes the sessions expired by `now_ms`; returns how many.
fn delete_expired(conn: &Connection, now_ms: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM sessions WHERE expires_ms <= ?1")?
        .execute(params![now_ms])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_load_expire_delete_on_a_real_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut table = SessionTable::open(&dir.path().join(DB_FILE)).expect("open");
        let session = |id: &str, expires_ms| StoredSession {
            client_id: id.into(),
            state: vec![1, 2, 3],
            expires_ms,
        };
        table
            .apply(vec![
                SessionWrite::Put(session("a", Some(100))),
                SessionWrite::Put(session("b", None)),
                SessionWrite::Put(session("c", Some(50))),
                SessionWrite::Put(session("c", Some(500))),
            ])
            .expect("put and replace");
        let mut loaded = table.load(100).expect("load");
        loaded.sort_by(|x, y| x.client_id.cmp(&y.client_id));
        assert_eq!(loaded, vec![session("b", None), session("c", Some(500))]);
        table
            .apply(vec![SessionWrite::Delete("b".into())])
            .expect("delete");
        assert_eq!(table.load(100).expect("load").len(), 1);
        table.apply(vec![SessionWrite::Sweep(500)]).expect("sweep");
        assert!(table.load(0).expect("load").is_empty());
    }
}
