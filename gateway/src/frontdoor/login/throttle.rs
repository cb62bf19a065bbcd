//! Login failure tracking: per source address and per operator name, with no I/O and no clock of
//! its own (every call takes `now`), so it is unit-tested without sockets.
//!
//! Fed by the login guard ([`super::LoginGuard`]) before and after each password check; feeds
//! it a [`Verdict`]: go now, go after a delay (the connection waits, holding nothing but a
//! timer), or refuse outright. Rules:
//!
//! - a source with no recent failure is never delayed or refused, whatever happens to the name
//!   it logs in as: successes from elsewhere are unaffected;
//! - a source's level is its own failure count, or the name's when that is higher (a source
//!   that failed once against a name under attack inherits the name's level);
//! - level n ≥ 1 waits `delay · 2^(n-1)`, capped at `max_delay`, and attempts of one source
//!   are spaced by that much, so parallel connections do not multiply its rate; at
//!   `max_failures` (or more waiting than `max_delay`) the attempt is refused, held `max_delay`;
//! - failures are forgotten `lockout` after the last one; a success forgets the source's;
//! - each table holds at most `capacity` records: expired ones go first, then the one whose
//!   last failure is oldest. IPv6 sources count by /64 (one host's usual allocation).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// `limits.max_auth_failures`: failures before attempts are refused outright.
    pub max_failures: u32,
    /// `limits.auth_delay_ms`: the delay after the first failure.
    pub delay: Duration,
    /// `limits.auth_max_delay_ms`: the longest delay, and how long a refusal is held.
    pub max_delay: Duration,
    /// `limits.auth_lockout_s`: how long failures are remembered.
    pub lockout: Duration,
    /// `limits.auth_tracked_max`: records per table.
    pub capacity: usize,
}

/// What to do with one login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check the password after waiting this long (zero: at once).
    Go(Duration),
    /// Refuse without checking, after holding the connection this long.
    Refuse(Duration),
}

/// A verdict, and whether it is the first throttling of this source (log it once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// The verdict.
    pub verdict: Verdict,
    /// True the first time this source is delayed or refused since it was last forgiven.
    pub first_throttle: bool,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    next_slot: Instant,
    warned: bool,
}

/// The failure tables.
#[derive(Debug)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    sources: Table<IpAddr>,
    names: Table<String>,
}

impl LoginThrottle {
    /// Empty tables.
    pub fn new(config: ThrottleConfig) -> LoginThrottle {
        LoginThrottle {
            config,
            sources: Table::default(),
            names: Table::default(),
        }
    }

    /// Decides an attempt from `source` as `name` (`None`: a name that is no operator's).
    pub fn check(&mut self, source: IpAddr, name: Option<&str>, now: Instant) -> Check {
        let config = self.config;
        let name_failures = name
            .and_then(|name| self.names.live(name, now, config.lockout))
            .map_or(0, |record| record.failures);
        let Some(record) = self
            .sources
            .live_mut(&source_key(source), now, config.lockout)
        else {
            return Check {
                verdict: Verdict::Go(Duration::ZERO),
                first_throttle: false,
            };
        };
        let level = record.failures.max(name_failures);
        let step = delay_for(&config, level);
        let slot = record.next_slot.max(now);
        let wait = slot - now;
        let verdict = if level >= config.max_failures || wait > config.max_delay {
            Verdict::Refuse(config.max_delay)
        } else {
            record.next_slot = slot + step;
            Verdict::Go(wait)
        };
        let throttled = verdict != Verdict::Go(Duration::ZERO);
        let first_throttle = throttled && !record.warned;
        record.warned |= throttled;
        Check {
            verdict,
            first_throttle,
        }
    }

    /// Records a failed attempt from `source` as `name` (`None`: not an operator's name).
    pub fn failed(&mut self, source: IpAddr, name: Option<&str>, now: Instant) {
        let config = self.config;
        if let Some(name) = name {
            self.names.bump(name.to_owned(), now, &config);
        }
        let record = self.sources.bump(source_key(source), now, &config);
        let step = delay_for(&config, record.failures);
        record.next_slot = record.next_slot.max(now + step);
    }

    /// Records a successful login from `source`: its failures are forgiven (the name's are not:
    /// one good login does not reopen a name under attack to every other source).
    pub fn succeeded(&mut self, source: IpAddr) {
        self.sources.records.remove(&source_key(source));
    }

    /// Records held: (sources, names).
    pub fn len(&self) -> (usize, usize) {
        (self.sources.records.len(), self.names.records.len())
    }

    /// Whether both tables are empty.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

/// The delay of failure level `level`: 0, then `delay`, doubling, capped at `max_delay`.
fn delay_for(config: &ThrottleConfig, level: u32) -> Duration {
    match level {
        0 => Duration::ZERO,
        n => config
            .delay
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(config.max_delay),
    }
}

/// The key a source counts under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// One bounded table of failure records.
#[derive(Debug)]
struct Table<K> {
    records: HashMap<K, Record>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            records: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn live<Q>(&self, key: &Q, now: Instant, lockout: Duration) -> Option<&Record>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.records
            .get(key)
            .filter(|record| now < record.last_failure + lockout)
    }

    fn live_mut(&mut self, key: &K, now: Instant, lockout: Duration) -> Option<&mut Record> {
        if self.live(key, now, lockout).is_none() {
            self.records.remove(key);
            return None;
        }
        self.records.get_mut(key)
    }

    /// One more failure for `key`, making room first when the table is full.
    fn bump(&mut self, key: K, now: Instant, config: &ThrottleConfig) -> &mut Record {
        let live = self.live(&key, now, config.lockout).is_some();
        if !live {
            self.records.remove(&key);
            if self.records.len() >= config.capacity.max(1) {
                self.make_room(now, config);
            }
        }
        let record = self.records.entry(key).or_insert(Record {
            failures: 0,
            last_failure: now,
            next_slot: now,
            warned: false,
        });
        record.failures = record.failures.saturating_add(1);
        record.last_failure = now;
        record
    }

    /// Drops the expired records, or if none expired, the one whose last failure is oldest.
    fn make_room(&mut self, now: Instant, config: &ThrottleConfig) {
        let before = self.records.len();
        self.records
            .retain(|_, record| now < record.last_failure + config.lockout);
        if self.records.len() < before {
            return;
        }
        let oldest = self
            .records
            .iter()
            .min_by_key(|(_, record)| record.last_failure)
            .map(|(key, _)| key.clone());
        if let Some(oldest) = oldest {
            self.records.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests;
