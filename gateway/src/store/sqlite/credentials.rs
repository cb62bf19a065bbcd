//! The `credentials` table: hashed device secrets and operator passwords.
//!
//! Written by the operator CLI (`gateway device add|remove`, `gateway operator add`), a separate
//! process on the same database file (WAL mode, so it never blocks the gateway); read by the front
//! door on every CONNECT with a user name, through its own read-only connection, so a removed
//! device is refused on its very next connect. Hashing is the front door's business
//! ([`crate::frontdoor::secrets`]): this file stores and returns opaque strings.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::store::credentials::{Kind, Listed};

/// The table, created on first use by whichever side opens the database for writing first.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS credentials (
    name        TEXT PRIMARY KEY,       -- device id or operator name
    kind        TEXT NOT NULL,          -- device | operator
    hash        TEXT NOT NULL,          -- sha256$salt$digest (device) or argon2 PHC (operator)
    created_ms  INTEGER NOT NULL
) WITHOUT ROWID;";

/// Creates the table if it is missing.
pub fn ensure(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

/// Opens the database at `path` for the CLI: creates the file and the table if missing, WAL mode.
pub fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    ensure(&conn)?;
    Ok(conn)
}

/// Opens the front door's read-only connection (creating the file and table first if needed,
/// so a fresh install can be read before anything was provisioned).
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    drop(open_writer(path)?);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Adds a credential; `false` when the name is already taken (nothing is changed then).
pub fn insert(
    conn: &Connection,
    name: &str,
    kind: Kind,
    hash: &str,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let added = conn
        .prepare_cached(
            "INSERT INTO credentials (name, kind, hash, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO NOTHING",
        )?
        .execute(params![name, kind.as_str(), hash, now_ms])?;
    Ok(added == 1)
}

/// Removes a credential of `kind`; `false` when there was none.
pub fn remove(conn: &Connection, name: &str, kind: Kind) -> rusqlite::Result<bool> {
    let removed = conn
        .prepare_cached("DELETE FROM credentials WHERE name = ?1 AND kind = ?2")?
        .execute(params![name, kind.as_str()])?;
    Ok(removed == 1)
}

/// Every credential of `kind`, by name.
pub fn list(conn: &Connection, kind: Kind) -> rusqlite::Result<Vec<Listed>> {
    let mut statement = conn
        .prepare_cached("SELECT name, created_ms FROM credentials WHERE kind = ?1 ORDER BY name")?;
    let rows = statement.query_map(params![kind.as_str()], |row| {
        Ok(Listed {
            name: row.get(0)?,
            kind,
            created_ms: row.get(1)?,
        })
    })?;
    rows.collect()
}

/// The kind and stored hash for `name`, if it exists. A database without the table (nothing
/// was ever provisioned) has no credentials.
pub fn lookup(conn: &Connection, name: &str) -> rusqlite::Result<Option<(Kind, String)>> {
    let found = conn
        .prepare_cached("SELECT kind, hash FROM credentials WHERE name = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![name], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .optional()
        });
    match found {
        Ok(row) => Ok(row.and_then(|(kind, hash)| Kind::parse(&kind).map(|kind| (kind, hash)))),
        Err(rusqlite::Error::SqliteFailure(_, Some(message)))
            if message.contains("no such table") =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_lookup_remove_on_a_real_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("roost.db")).expect("open");
        assert_eq!(lookup(&conn, "d1").expect("no table yet"), None);
        ensure(&conn).expect("schema");
        assert!(insert(&conn, "d1", Kind::Device, "sha256$aa$bb", 5).expect("insert"));
        assert!(!insert(&conn, "d1", Kind::Operator, "x", 6).expect("taken"));
        assert!(insert(&conn, "ops", Kind::Operator, "$argon2id$x", 7).expect("insert"));
        assert_eq!(
            lookup(&conn, "d1").expect("lookup"),
            Some((Kind::Device, "sha256$aa$bb".to_owned()))
        );
        let devices = list(&conn, Kind::Device).expect("list");
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].name, "d1");
        assert!(!remove(&conn, "d1", Kind::Operator).expect("kind must match"));
        assert!(remove(&conn, "d1", Kind::Device).expect("remove"));
        assert_eq!(lookup(&conn, "d1").expect("lookup"), None);
    }
}
