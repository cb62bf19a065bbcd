//! The cluster as the store sees it (PostgreSQL only: with SQLite a gateway is alone). Every
//! gateway renews a heartbeat lease in the database; a request belongs to the gateway that
//! admitted it (or took it over) for as long as that lease is fresh. When it is not, any other
//! gateway takes the request over: queued and running work runs again there (ops are pure, and
//! a result is recorded at most once), committed-but-unpublished replies are published there.

use std::time::Duration;

use super::requests::{Backlog, FinalReply, StoredRequest};

/// How often a gateway renews its lease of `lease`: four times within it, at least twice a
/// second.
pub fn beat_every(lease: Duration) -> Duration {
    (lease / 4).min(Duration::from_millis(500))
}

/// One gateway in the database's `gateways` table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    /// `[gateway] id`.
    pub id: String,
    /// When its current run started (ms since epoch).
    pub started_ms: i64,
    /// Its last heartbeat (ms since epoch).
    pub seen_ms: i64,
    /// Whether its lease is fresh.
    pub alive: bool,
}

/// The cluster's state, read with each heartbeat.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterView {
    /// Every gateway that ever joined, by id.
    pub gateways: Vec<Member>,
    /// Queued and held counts and ages, cluster-wide (the shared database's backlog).
    #[serde(flatten)]
    pub totals: Backlog,
    /// When `totals` were counted (ms since epoch): not at every beat, see
    /// `PgStore::heartbeat`.
    #[serde(skip)]
    pub totals_ms: i64,
}

impl ClusterView {
    /// Gateways whose lease is fresh.
    pub fn alive(&self) -> usize {
        self.gateways.iter().filter(|g| g.alive).count()
    }

    /// The gateway that prunes the shared store for all: the first alive by id.
    pub fn pruner(&self) -> Option<&str> {
        self.gateways
            .iter()
            .filter(|g| g.alive)
            .map(|g| g.id.as_str())
            .min()
    }
}

/// Work a gateway just took over from gateways whose lease ran out.
#[derive(Debug, Default)]
pub struct Takeover {
    /// Requests still queued (or running when their gateway died): run them here.
    pub queued: Vec<StoredRequest>,
    /// Final replies committed but never published: publish them here.
    pub unpublished: Vec<FinalReply>,
    /// Held replies that moved here, published or not.
    pub held_moved: usize,
}
