//! What both engines' migrations say (each engine keeps its own steps): a database newer than
//! this gateway is refused, and a migration is logged when it starts and once it is done, since
//! one over a large store can hold the start for a while.

use std::time::Instant;

use super::StoreError;

/// Checks a database at schema `version` against this gateway's `newest`: an error if the
/// database is newer, `None` if it is current, else the start of its migration (logged), for
/// [`migrated`].
pub(crate) fn migrating(version: usize, newest: usize) -> Result<Option<Instant>, StoreError> {
    if version > newest {
        return Err(StoreError::Sql(format!(
            "the database has schema version {version}, newer than this gateway knows \
             ({newest}); run a newer gateway"
        )));
    }
    if version == newest {
        return Ok(None);
    }
    tracing::info!(
        from = version,
        to = newest,
        "migrating the store's schema (a large store can take a while)"
    );
    Ok(Some(Instant::now()))
}

/// Logs a migration done: the schema it reached and how long it took.
pub(crate) fn migrated(started: Instant, newest: usize) {
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(schema = newest, elapsed_ms, "store schema migrated");
}
