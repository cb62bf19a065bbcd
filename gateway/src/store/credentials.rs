//! Credentials: hashed device secrets and operator passwords, for the front door.
//!
//! They live in `data_dir/roost.db` (SQLite) whatever `[store] engine` says: only the front
//! door reads them, and the front door exists only in embedded mode, one gateway per box (in
//! external mode the broker authenticates devices). Written by the operator CLI (`gateway device
//! add|remove`, `gateway operator add`), a separate process on the same file (WAL mode, so it never
//! blocks the gateway); read by the front door on every CONNECT with a user name, so a removed
//! device is refused on its very next connect. Hashing is the front door's business: this module
//! stores and returns opaque strings.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::sqlite::credentials as sql;
use super::StoreError;

/// What a credential authenticates as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A device: its name is its device id.
    Device,
    /// An operator: read-only access to status topics.
    Operator,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Operator => "operator",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Kind> {
        match text {
            "device" => Some(Kind::Device),
            "operator" => Some(Kind::Operator),
            _ => None,
        }
    }
}

/// A credential as listed (without its hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// Device id or operator name.
    pub name: String,
    /// Device or operator.
    pub kind: Kind,
    /// When it was added (ms since epoch).
    pub created_ms: i64,
}

/// The front door's read-only view of the credentials.
#[derive(Debug, Clone)]
pub struct CredentialReader {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

impl CredentialReader {
    /// Opens the reader on `db_path` (creating the file and table if missing, so a fresh
    /// install can be read before anything was provisioned).
    pub fn open(db_path: &Path) -> Result<CredentialReader, StoreError> {
        Ok(CredentialReader {
            conn: Arc::new(Mutex::new(sql::open_reader(db_path)?)),
        })
    }

    /// The kind and stored hash for `name`, if it exists. Blocking: call it off the runtime.
    pub fn lookup(&self, name: &str) -> Result<Option<(Kind, String)>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(sql::lookup(&conn, name)?)
    }

    /// How many credentials of `kind` exist (the HTTP API's login needs an operator).
    pub fn count(&self, kind: Kind) -> Result<usize, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(sql::list(&conn, kind)?.len())
    }
}

/// The operator CLI's writable view of the credentials.
#[derive(Debug)]
pub struct CredentialWriter {
    conn: rusqlite::Connection,
}

impl CredentialWriter {
    /// Opens `db_path` for writing: creates the file and the table if missing, WAL mode.
    pub fn open(db_path: &Path) -> Result<CredentialWriter, StoreError> {
        Ok(CredentialWriter {
            conn: sql::open_writer(db_path)?,
        })
    }

    /// Adds a credential; `false` when the name is already taken (nothing is changed then).
    pub fn insert(
        &self,
        name: &str,
        kind: Kind,
        hash: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(sql::insert(&self.conn, name, kind, hash, now_ms)?)
    }

    /// Removes a credential of `kind`; `false` when there was none.
    pub fn remove(&self, name: &str, kind: Kind) -> Result<bool, StoreError> {
        Ok(sql::remove(&self.conn, name, kind)?)
    }

    /// Every credential of `kind`, by name.
    pub fn list(&self, kind: Kind) -> Result<Vec<Listed>, StoreError> {
        Ok(sql::list(&self.conn, kind)?)
    }
}
