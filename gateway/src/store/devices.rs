//! Devices as the store knows them: the `devices` table (last seen, awake, last error, kept by
//! the outbox as it publishes `devices/{id}/status`) joined with each device's requests, for the
//! operator HTTP API, the dashboard and the CLI (the retained `devices/+/status` view cannot list
//! a whole fleet). A device that sent a request but has no row yet (the outbox writes once a
//! second) is listed from its recent requests.

use std::cmp::Ordering;
use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};

/// Requests this recent list their device even before it has a row.
const RECENT_MS: i64 = 60_000;

/// One device's stored state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceRow {
    /// Device id.
    pub id: String,
    /// Awake when the outbox last wrote its row (false after a restart until seen again).
    pub awake: bool,
    /// Its last publish of its own (ms since epoch), if seen since its row was made.
    pub last_seen_ms: Option<i64>,
    /// The last error it was answered with, `"code: message"`.
    pub last_error: Option<String>,
    /// When that error was (ms since epoch).
    pub last_error_ms: Option<i64>,
    /// Requests queued or running.
    pub queued: u64,
    /// Final replies held for it.
    pub held: u64,
    /// When its oldest held reply was finished (ms since epoch).
    pub oldest_held_ms: Option<i64>,
    /// Requests stored (within the dedupe window).
    pub requests: u64,
    /// Its newest request (ms since epoch), if any.
    pub last_request_ms: Option<i64>,
}

/// Which devices a listing keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only ids containing this text (case-insensitive).
    pub search: Option<String>,
    /// Only devices awake now.
    pub awake: bool,
    /// Only devices with held replies.
    pub held: bool,
    /// Only devices with a last error.
    pub errors: bool,
}

/// What the outbox writes for a device when it publishes its status.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Device id.
    pub id: String,
    /// Awake now.
    pub awake: bool,
    /// Last publish of its own (ms since epoch), 0 when not seen since start.
    pub last_seen_ms: i64,
    /// Its last error since start, if any (a stored older one is kept otherwise).
    pub last_error: Option<(String, i64)>,
}

/// Writes (or updates) a device's row.
pub fn upsert(conn: &Connection, seen: &Seen) -> rusqlite::Result<()> {
    let last_seen = (seen.last_seen_ms > 0).then_some(seen.last_seen_ms);
    let (error, error_ms) = seen.last_error.clone().unzip();
    conn.prepare_cached(
        "INSERT INTO devices (id, awake, last_seen_ms, last_error, last_error_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET
            awake = excluded.awake,
            last_seen_ms = NULLIF(MAX(COALESCE(excluded.last_seen_ms, 0), COALESCE(last_seen_ms, 0)), 0),
            last_error = COALESCE(excluded.last_error, last_error),
            last_error_ms = COALESCE(excluded.last_error_ms, last_error_ms)",
    )?
    .execute(params![seen.id, seen.awake, last_seen, error, error_ms])?;
    Ok(())
}

/// On start nobody is awake yet: a previous run's flags mean nothing.
pub fn reset_awake(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("UPDATE devices SET awake = 0 WHERE awake = 1", [])?;
    Ok(())
}

/// A page of devices matching `filter`, in natural id order (`sim-2` before `sim-10`), and how
/// many match in all.
pub fn page(
    conn: &Connection,
    filter: &Filter,
    offset: usize,
    limit: usize,
) -> rusqlite::Result<(usize, Vec<DeviceRow>)> {
    // Every device that sends anything gets its row within a second or so (the outbox writes it
    // with the device's status); the last minute's requests cover that gap without scanning
    // every request.
    let mut stmt = conn.prepare_cached(
        "WITH ids AS (SELECT id FROM devices
                      UNION SELECT device FROM requests WHERE received_ms > ?1)
         SELECT ids.id, COALESCE(d.awake, 0), d.last_error IS NOT NULL
         FROM ids LEFT JOIN devices d ON d.id = ids.id",
    )?;
    let recent_ms = crate::store::now_ms() - RECENT_MS;
    let all = stmt.query_map(params![recent_ms], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, bool>(1)?,
            row.get::<_, bool>(2)?,
        ))
    })?;
    let with_held: HashSet<String> = if filter.held {
        conn.prepare_cached("SELECT DISTINCT device FROM requests WHERE delivery = 'held'")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?
    } else {
        HashSet::new()
    };
    let search = filter.search.as_ref().map(|s| s.to_lowercase());
    let mut ids = Vec::new();
    for device in all {
        let (id, awake, has_error) = device?;
        let keep = (!filter.awake || awake)
            && (!filter.errors || has_error)
            && (!filter.held || with_held.contains(&id))
            && search
                .as_ref()
                .is_none_or(|s| id.to_lowercase().contains(s.as_str()));
        if keep {
            ids.push(id);
        }
    }
    ids.sort_unstable_by(|a, b| natural_cmp(a, b));
    let total = ids.len();
    let rows = ids
        .iter()
        .skip(offset)
        .take(limit)
        .map(|id| get(conn, id).map(|row| row.unwrap_or_else(|| empty(id))))
        .collect::<rusqlite::Result<_>>()?;
    Ok((total, rows))
}

fn empty(id: &str) -> DeviceRow {
    DeviceRow {
        id: id.to_owned(),
        awake: false,
        last_seen_ms: None,
        last_error: None,
        last_error_ms: None,
        queued: 0,
        held: 0,
        oldest_held_ms: None,
        requests: 0,
        last_request_ms: None,
    }
}

/// One device, if the store knows it.
pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<DeviceRow>> {
    let stored = conn
        .prepare_cached(
            "SELECT awake, last_seen_ms, last_error, last_error_ms FROM devices WHERE id = ?1",
        )?
        .query_row(params![id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    let (queued, held, oldest_held_ms, requests, last_request_ms): (
        u64,
        u64,
        Option<i64>,
        u64,
        Option<i64>,
    ) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(state = 'queued'), 0), COALESCE(SUM(delivery = 'held'), 0),
                    MIN(CASE WHEN delivery = 'held' THEN finished_ms END),
                    COUNT(*), MAX(received_ms)
             FROM requests WHERE device = ?1",
        )?
        .query_row(params![id], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
    let known = stored.is_some()
        || requests > 0
        || conn
            .prepare_cached("SELECT 1 FROM telemetry WHERE device = ?1 LIMIT 1")?
            .query_row(params![id], |_| Ok(()))
            .optional()?
            .is_some();
    if !known {
        return Ok(None);
    }
    let (awake, last_seen_ms, last_error, last_error_ms) =
        stored.unwrap_or((false, None, None, None));
    Ok(Some(DeviceRow {
        id: id.to_owned(),
        awake,
        last_seen_ms,
        last_error,
        last_error_ms,
        queued,
        held,
        oldest_held_ms,
        requests,
        last_request_ms,
    }))
}

/// Compares ids the way people count: runs of digits by value, the rest by text, so `sim-2`
/// comes before `sim-10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (da, ra) = split_digits(a);
                let (db, rb) = split_digits(b);
                let (ta, tb) = (trim_zeros(da), trim_zeros(db));
                let by_value = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb));
                // Equal values: fewer leading zeros first, so the order is total.
                match by_value.then_with(|| da.len().cmp(&db.len())) {
                    Ordering::Equal => (a, b) = (ra, rb),
                    other => return other,
                }
            }
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Equal => (a, b) = (&a[1..], &b[1..]),
                other => return other,
            },
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len());
    s.split_at(end)
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let start = digits
        .iter()
        .position(|c| *c != b'0')
        .unwrap_or(digits.len());
    &digits[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_counts_digits_by_value() {
        let mut ids = vec![
            "sim-10", "sim-2", "sim-1", "a", "sim-02", "sim-100", "sim-b", "b9",
        ];
        ids.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            ids,
            ["a", "b9", "sim-1", "sim-2", "sim-02", "sim-10", "sim-100", "sim-b"]
        );
    }

    #[test]
    fn pages_filter_and_search() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conn = crate::store::connect(&dir.path().join("t.db"), false).expect("open");
        crate::store::schema::migrate(&mut conn).expect("migrate");
        for n in [1, 2, 10, 11, 20] {
            let seen = Seen {
                id: format!("sim-{n}"),
                awake: n % 2 == 0,
                last_seen_ms: 1000 + n,
                last_error: (n == 11).then(|| ("bad_request: x".to_owned(), 5)),
            };
            upsert(&conn, &seen).expect("upsert");
        }
        let (total, rows) = page(&conn, &Filter::default(), 1, 2).expect("page");
        assert_eq!(total, 5);
        let ids: Vec<_> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["sim-2", "sim-10"]);
        let search = Filter {
            search: Some("IM-1".into()),
            ..Filter::default()
        };
        let (total, _) = page(&conn, &search, 0, 10).expect("search");
        assert_eq!(total, 3, "sim-1, sim-10, sim-11");
        let awake = Filter {
            awake: true,
            ..Filter::default()
        };
        assert_eq!(page(&conn, &awake, 0, 10).expect("awake").0, 3);
        let errors = Filter {
            errors: true,
            ..Filter::default()
        };
        let (_, rows) = page(&conn, &errors, 0, 10).expect("errors");
        assert_eq!(rows[0].id, "sim-11");
        assert_eq!(rows[0].last_error.as_deref(), Some("bad_request: x"));
        // A later status without a new error keeps the stored one; last seen only grows.
        let later = Seen {
            id: "sim-11".into(),
            awake: false,
            last_seen_ms: 0,
            last_error: None,
        };
        upsert(&conn, &later).expect("upsert");
        let row = get(&conn, "sim-11").expect("get").expect("known");
        assert_eq!(row.last_error.as_deref(), Some("bad_request: x"));
        assert_eq!(row.last_seen_ms, Some(1011));
        reset_awake(&conn).expect("reset");
        assert_eq!(page(&conn, &awake, 0, 10).expect("awake").0, 0);
        assert!(get(&conn, "nobody").expect("get").is_none());
    }
}
