//! Devices as the store knows them: each device's row (awake, last seen, last error, written by
//! the outbox as it publishes `devices/{id}/status`) joined with its requests, for the operator
//! HTTP API, the dashboard and the CLI (the retained `devices/+/status` view cannot list a whole
//! fleet). A device that sent a request but has no row yet (the outbox writes once a second) is
//! listed from its recent requests. Plain values and the engine-independent parts of a listing
//! (filters, natural order, paging); the engines read the rows.

use std::cmp::Ordering;
use std::collections::HashSet;

use super::deadletters::DeadLetterRow;
use super::requests::RequestSummary;
use crate::wire::DeviceId;

/// Requests this recent list their device even before it has a row.
pub(crate) const RECENT_MS: i64 = 60_000;

/// One device's stored state.
#[derive(Debug, Clone, Default, serde::Serialize)]
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

/// One device in full: what its page and `gateway devices show` list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceDetail {
    /// Its row.
    pub device: DeviceRow,
    /// Its newest requests, newest first.
    pub recent_requests: Vec<RequestSummary>,
    /// Its held replies, oldest first.
    pub held_replies: Vec<RequestSummary>,
    /// Its newest dead letters.
    pub dead_letters: Vec<DeadLetterRow>,
    /// All its dead letters.
    pub dead_letters_total: u64,
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

/// What the outbox writes for a device when it publishes its status: what this gateway saw of
/// it. On a shared store each gateway sees part of a device's traffic, and the row merges their
/// views: last seen and last error are the newest any gateway saw; the device is awake until the
/// latest window any gateway opened, unless the device itself ended its wake (`asleep`) after
/// everything any gateway had seen of it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Device id.
    pub id: DeviceId,
    /// Awake until then (ms since epoch): `i64::MAX` while connected through the front door, in
    /// the past (or 0) when asleep.
    pub awake_until_ms: i64,
    /// When the device itself ended its last wake, if that is the last this gateway saw of it.
    pub asleep_ms: Option<i64>,
    /// Last publish of its own (ms since epoch), 0 when not seen since start.
    pub last_seen_ms: i64,
    /// Its last error since start, and when, if any (a stored older one is kept otherwise).
    pub last_error: Option<(String, i64)>,
}

impl Seen {
    /// Awake at `now_ms`, by this gateway's view alone.
    pub fn awake_at(&self, now_ms: i64) -> bool {
        self.awake_until_ms > now_ms
    }

    /// The status this gateway's view alone gives at `now_ms`, with `held` replies (what a
    /// store with one gateway returns, and what the outbox publishes when the store fails).
    pub fn alone(&self, now_ms: i64, held: usize) -> DeviceNow {
        DeviceNow {
            awake: self.awake_at(now_ms),
            last_seen_ms: self.last_seen_ms,
            last_error: self.last_error.as_ref().map(|(e, _)| e.clone()),
            held,
            pending: None,
        }
    }
}

/// A device's status as the store has it once [`Seen`] is written: the cluster's view on a
/// shared store, this gateway's otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceNow {
    /// Awake now.
    pub awake: bool,
    /// Last publish of its own (ms since epoch), 0 when never seen.
    pub last_seen_ms: i64,
    /// Its last error, `"code: message"`.
    pub last_error: Option<String>,
    /// Final replies held for it.
    pub held: usize,
    /// Requests queued or running on any gateway, counted by the quota slots they hold, where
    /// the store can count them (PostgreSQL): meaningful only with `max_pending_per_device`
    /// set (no slot is taken without it). `None` on SQLite, whose one gateway counts its own.
    pub pending: Option<usize>,
}

/// A device an engine found for a listing, before filtering.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Device id.
    pub id: String,
    /// Awake per its row.
    pub awake: bool,
    /// It has a last error.
    pub has_error: bool,
}

/// The ids of one page of `candidates` that pass `filter` (`with_held`: devices with held
/// replies, read only when the filter asks), in natural order, and how many pass in all.
pub(crate) fn select(
    candidates: Vec<Candidate>,
    with_held: &HashSet<String>,
    filter: &Filter,
    offset: usize,
    limit: usize,
) -> (u64, Vec<String>) {
    let search = filter.search.as_ref().map(|s| s.to_lowercase());
    let mut ids: Vec<String> = candidates
        .into_iter()
        .filter(|c| {
            (!filter.awake || c.awake)
                && (!filter.errors || c.has_error)
                && (!filter.held || with_held.contains(&c.id))
                && search
                    .as_ref()
                    .is_none_or(|s| c.id.to_lowercase().contains(s.as_str()))
        })
        .map(|c| c.id)
        .collect();
    ids.sort_unstable_by(|a, b| natural_cmp(a, b));
    let total = ids.len() as u64;
    (total, ids.into_iter().skip(offset).take(limit).collect())
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
        let candidates: Vec<Candidate> = [1, 2, 10, 11, 20]
            .into_iter()
            .map(|n| Candidate {
                id: format!("sim-{n}"),
                awake: n % 2 == 0,
                has_error: n == 11,
            })
            .collect();
        let none = HashSet::new();
        let page = |filter: &Filter, offset, limit| {
            select(candidates.clone(), &none, filter, offset, limit)
        };
        assert_eq!(
            page(&Filter::default(), 1, 2),
            (5, vec!["sim-2".to_owned(), "sim-10".to_owned()])
        );
        let search = Filter {
            search: Some("IM-1".into()),
            ..Filter::default()
        };
        assert_eq!(page(&search, 0, 10).0, 3, "sim-1, sim-10, sim-11");
        let awake = Filter {
            awake: true,
            ..Filter::default()
        };
        assert_eq!(page(&awake, 0, 10).0, 3);
        let errors = Filter {
            errors: true,
            ..Filter::default()
        };
        assert_eq!(page(&errors, 0, 10).1, ["sim-11"]);
        let held = Filter {
            held: true,
            ..Filter::default()
        };
        let with_held = HashSet::from(["sim-20".to_owned()]);
        assert_eq!(
            select(candidates.clone(), &with_held, &held, 0, 10).1,
            ["sim-20"]
        );
    }
}
