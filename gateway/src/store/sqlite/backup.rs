//! `gateway backup FILE`: a consistent copy of the SQLite store while the gateway serves, with
//! SQLite's online backup API (not a file copy, which can tear a page or miss the WAL).
//!
//! The copy is made in one backup step, inside one read transaction of the source: in WAL mode
//! that reads a single snapshot and never blocks the gateway's writer (a copy in many steps
//! would restart each time the gateway commits, which under load is always). It is written to
//! `FILE.partial`, checked with `PRAGMA integrity_check`, synced and only then renamed to
//! `FILE`, so `FILE` is either a whole, checked copy or absent.

use std::path::{Path, PathBuf};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// What a backup wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupReport {
    /// The backup file.
    pub path: PathBuf,
    /// Database pages copied.
    pub pages: u64,
    /// Bytes of the backup file.
    pub bytes: u64,
}

/// Copies the database `source` into `dest` (see the module doc).
pub fn backup(source: &Connection, dest: &Path) -> Result<BackupReport, StoreError> {
    let partial = partial_path(dest);
    let _ = std::fs::remove_file(&partial);
    let result = copy(source, &partial).and_then(|pages| {
        std::fs::rename(&partial, dest)
            .map_err(|e| StoreError::Sql(format!("cannot rename the backup into place: {e}")))?;
        let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        Ok(BackupReport {
            path: dest.to_path_buf(),
            pages,
            bytes,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn copy(source: &Connection, partial: &Path) -> Result<u64, StoreError> {
    let mut target = Connection::open_with_flags(
        partial,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )?;
    let pages = {
        let backup = Backup::new(source, &mut target)?;
        // -1: every page in one step, one snapshot.
        match backup.step(-1)? {
            StepResult::Done => {}
            other => {
                return Err(StoreError::Sql(format!(
                    "the backup did not finish in one step: {other:?}"
                )))
            }
        }
        backup.progress().pagecount
    };
    // A standalone file: no WAL beside it.
    target.pragma_update(None, "journal_mode", "DELETE")?;
    let check: String = target.pragma_query_value(None, "integrity_check", |row| row.get(0))?;
    if check != "ok" {
        return Err(StoreError::Sql(format!(
            "the backup failed its integrity check: {check}"
        )));
    }
    drop(target);
    std::fs::File::open(partial)
        .and_then(|file| file.sync_all())
        .map_err(|e| StoreError::Sql(format!("cannot sync the backup: {e}")))?;
    Ok(u64::try_from(pages).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_a_checked_standalone_copy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source_path = dir.path().join("source.db");
        let source = Connection::open(&source_path).expect("source");
        source
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE t (x INTEGER);
                 INSERT INTO t VALUES (1), (2), (3);",
            )
            .expect("fill");
        let dest = dir.path().join("copy.db");
        let report = backup(&source, &dest).expect("backup");
        assert!(report.pages > 0 && report.bytes > 0, "{report:?}");
        assert!(!partial_path(&dest).exists());
        let copy = Connection::open(&dest).expect("copy opens");
        let count: i64 = copy
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count");
        assert_eq!(count, 3);
        let mode: String = copy
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .expect("mode");
        assert_eq!(mode, "delete");
    }
}
