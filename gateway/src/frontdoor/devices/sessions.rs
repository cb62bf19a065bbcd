//! Device sessions that outlive their connection (MQTT-3.1.2-4/5/23, MQTT-4.1.0-2).
//!
//! Fed by device sessions ([`super::session`]): [`Sessions::take`] at CONNECT,
//! [`Sessions::save_live`] when a live session's subscriptions change, [`Sessions::park`] when
//! its connection ends; and by the front door's sweep ([`Sessions::sweep`]). Feeds the next
//! connection of the same client id, and the store's `sessions` table
//! ([`crate::store::sessions`]) through a writer thread of its own, so a gateway restart keeps
//! them.
//!
//! A session is its subscriptions (with their options and identifiers), its unacknowledged and
//! queued QoS 1 messages towards the device with their packet ids, and the QoS 2 packet ids the
//! device has not yet released. Replies are not lost with a session either way: the outbox
//! holds them until acked and redelivers them on every wake.
//!
//! **Invariants:** a session is kept after its connection ends only if its expiry (capped by
//! `limits.max_session_expiry_s`) is above 0, and never after it expired; Clean Start 1
//! discards it. The connection's task never waits on SQLite (writes go to the writer thread).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;

use super::window::Parked;
use crate::store::now_ms;
use crate::store::sessions::{SessionTable, SessionWrite, StoredSession};
use crate::store::StoreError;

/// Most writes in one transaction.
const MAX_BATCH: usize = 1024;
/// Most messages kept for a device that is away; later ones are dropped (the outbox still
/// holds every final reply and redelivers it on the next wake).
pub const MAX_PENDING: usize = 256;

/// One subscription as the device made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sub {
    /// The filter.
    pub filter: String,
    /// The QoS granted (0 or 1).
    pub qos: u8,
    /// Its Subscription Identifier, if it had one.
    pub id: Option<u32>,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling (0, 1 or 2).
    pub retain_handling: u8,
    /// Served by the session's side link to the broker (not a reply filter).
    pub side: bool,
    /// Whether retained messages from the latest subscribe are wanted (Retain Handling);
    /// not kept across connections.
    #[serde(skip)]
    pub retained_wanted: bool,
}

/// What a session keeps between connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    /// 4 (MQTT 3.1.1) or 5: packets kept are in this version.
    pub version: u8,
    /// How long it outlives its connection, seconds (already capped).
    pub expiry_s: u32,
    /// Its subscriptions.
    pub subscriptions: Vec<Sub>,
    /// Its QoS 1 flow towards the device.
    pub window: Parked,
    /// QoS 2 publishes from the device answered with PUBREC, not yet released by PUBREL.
    pub awaiting_release: Vec<u16>,
    /// Replies (MQTT 5 PUBLISH frames, as the service sent them) that matched a subscription
    /// while the device was away, oldest first.
    #[serde(default)]
    pub pending: Vec<Vec<u8>>,
}

impl SessionState {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serialising plain data into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    fn decode(bytes: &[u8]) -> Option<SessionState> {
        ciborium::from_reader(bytes).ok()
    }
}

enum Write {
    Store(SessionWrite),
    /// Answered once everything before it is committed.
    Flush(std_mpsc::Sender<()>),
}

#[derive(Default)]
struct Table {
    /// Sessions whose connection ended, with when they expire (ms since epoch).
    parked: HashMap<String, (SessionState, i64)>,
    /// Client ids with a row in the store.
    stored: HashSet<String>,
}

/// The front door's device sessions between connections.
pub struct Sessions {
    table: Mutex<Table>,
    cap_s: u32,
    writes_tx: Option<std_mpsc::Sender<Write>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sessions {
    /// Lets the writer thread finish what is queued, so a clean stop stores every session.
    fn drop(&mut self) {
        self.writes_tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("cap_s", &self.cap_s)
            .finish()
    }
}

impl Sessions {
    /// Sessions kept in memory only (tests).
    #[cfg(test)]
    pub fn in_memory(cap_s: u32) -> Sessions {
        Sessions {
            table: Mutex::default(),
            cap_s,
            writes_tx: None,
            writer: None,
        }
    }

    /// Loads the stored sessions from the database at `db_path` and starts the writer thread.
    /// A session whose connection was live when the gateway stopped expires counting from now.
    pub fn open(db_path: &Path, cap_s: u32) -> Result<Sessions, StoreError> {
        let table = SessionTable::open(db_path)?;
        let now = now_ms();
        let mut loaded = Table::default();
        for row in table.load(now)? {
            let Some(state) = SessionState::decode(&row.state) else {
                continue;
            };
            let expires = row
                .expires_ms
                .unwrap_or_else(|| now.saturating_add(i64::from(state.expiry_s) * 1000));
            loaded.stored.insert(row.client_id.clone());
            loaded.parked.insert(row.client_id, (state, expires));
        }
        let (writes_tx, writes_rx) = std_mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("roost-sessions".into())
            .spawn(move || write_loop(table, writes_rx))
            .map_err(|e| StoreError::Sql(format!("cannot start the sessions writer: {e}")))?;
        Ok(Sessions {
            table: Mutex::new(loaded),
            cap_s,
            writes_tx: Some(writes_tx),
            writer: Some(writer),
        })
    }

    /// The expiry a session gets when its device asked for `asked` seconds.
    pub fn granted_expiry(&self, asked: u32) -> u32 {
        asked.min(self.cap_s)
    }

    /// The session of `client_id` for a new connection: `None` (and any old one discarded)
    /// with Clean Start 1 or when there is none or it expired.
    pub fn take(&self, client_id: &str, clean_start: bool) -> Option<SessionState> {
        let mut table = self.lock();
        let found = table.parked.remove(client_id);
        let live = found.filter(|(_, expires)| *expires > now_ms() && !clean_start);
        if live.is_none() && table.stored.remove(client_id) {
            self.write(Write::Store(SessionWrite::Delete(client_id.to_owned())));
        }
        live.map(|(state, _)| state)
    }

    /// A live session changed what it would keep (its subscriptions): store it, so a gateway
    /// that dies meanwhile still has it.
    pub fn save_live(&self, client_id: &str, state: &SessionState) {
        if state.expiry_s == 0 || self.writes_tx.is_none() {
            return;
        }
        self.lock().stored.insert(client_id.to_owned());
        self.write(Write::Store(SessionWrite::Put(StoredSession {
            client_id: client_id.to_owned(),
            state: state.encode(),
            expires_ms: None,
        })));
    }

    /// The connection of `client_id` ended: keep its session until it expires (or forget it
    /// at once when its expiry is 0).
    pub fn park(&self, client_id: &str, state: SessionState) {
        let mut table = self.lock();
        if state.expiry_s == 0 {
            table.parked.remove(client_id);
            if table.stored.remove(client_id) {
                self.write(Write::Store(SessionWrite::Delete(client_id.to_owned())));
            }
            return;
        }
        let expires = now_ms().saturating_add(i64::from(state.expiry_s) * 1000);
        if self.writes_tx.is_some() {
            table.stored.insert(client_id.to_owned());
            self.write(Write::Store(SessionWrite::Put(StoredSession {
                client_id: client_id.to_owned(),
                state: state.encode(),
                expires_ms: Some(expires),
            })));
        }
        table.parked.insert(client_id.to_owned(), (state, expires));
    }

    /// A reply for `client_id`, who is not connected: kept in its session if it has one that
    /// matches (MQTT 5 session state: messages pending transmission), to be sent on resume.
    /// Kept in memory only: a restart loses them, not the final replies the outbox holds.
    pub fn offer(&self, client_id: &str, topic: &str, frame: &[u8]) -> bool {
        let mut table = self.lock();
        let Some((state, expires)) = table.parked.get_mut(client_id) else {
            return false;
        };
        let wanted = *expires > now_ms()
            && state.pending.len() < MAX_PENDING
            && state
                .subscriptions
                .iter()
                .any(|sub| crate::wire::topics::filter_matches(&sub.filter, topic));
        if wanted {
            state.pending.push(frame.to_vec());
        }
        wanted
    }

    /// Forgets the sessions that expired (MQTT-4.1.0-2).
    pub fn sweep(&self) {
        let now = now_ms();
        let mut table = self.lock();
        let Table { parked, stored } = &mut *table;
        parked.retain(|client_id, (_, expires)| {
            let keep = *expires > now;
            if !keep {
                stored.remove(client_id);
            }
            keep
        });
        drop(table);
        self.write(Write::Store(SessionWrite::Sweep(now)));
    }

    /// Waits (blocking, bounded) until every write so far is committed: at shutdown.
    pub fn flush(&self) {
        let (done_tx, done_rx) = std_mpsc::channel();
        self.write(Write::Flush(done_tx));
        let _ = done_rx.recv_timeout(std::time::Duration::from_secs(5));
    }

    /// Sessions kept for devices not connected now.
    #[cfg(test)]
    pub fn parked_count(&self) -> usize {
        self.lock().parked.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, write: Write) {
        if let Some(writes_tx) = &self.writes_tx {
            let _ = writes_tx.send(write);
        }
    }
}

/// Applies writes in batches, one transaction each, until the sender is gone.
fn write_loop(mut table: SessionTable, writes_rx: std_mpsc::Receiver<Write>) {
    while let Ok(first) = writes_rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match writes_rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut flushed = Vec::new();
        let mut writes = Vec::with_capacity(batch.len());
        for write in batch {
            match write {
                Write::Store(write) => writes.push(write),
                Write::Flush(done_tx) => flushed.push(done_tx),
            }
        }
        if let Err(error) = table.apply(writes) {
            tracing::warn!(%error, "device sessions not stored");
        }
        for done_tx in flushed {
            let _ = done_tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(expiry_s: u32) -> SessionState {
        SessionState {
            version: 5,
            expiry_s,
            subscriptions: vec![Sub {
                filter: "devices/d/reply/#".into(),
                qos: 1,
                id: Some(7),
                retain_as_published: false,
                retain_handling: 0,
                side: false,
                retained_wanted: false,
            }],
            window: Parked {
                inflight: vec![(3, vec![0x32, 1, 2])],
                queued: vec![],
                next_pkid: 3,
            },
            awaiting_release: vec![9],
            pending: vec![],
        }
    }

    #[test]
    fn kept_taken_discarded_by_clean_start_and_expiry_zero() {
        let sessions = Sessions::in_memory(100);
        assert_eq!(sessions.granted_expiry(u32::MAX), 100);
        assert_eq!(sessions.take("d", false), None);
        sessions.park("d", state(60));
        assert_eq!(sessions.take("d", false), Some(state(60)));
        assert_eq!(sessions.take("d", false), None, "taken once");
        sessions.park("d", state(60));
        assert_eq!(sessions.take("d", true), None, "Clean Start 1 discards it");
        assert_eq!(sessions.take("d", false), None);
        sessions.park("d", state(0));
        assert_eq!(
            sessions.parked_count(),
            0,
            "expiry 0: gone with the connection"
        );
    }

    #[test]
    fn survives_a_reopen_of_the_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(crate::store::sessions::DB_FILE);
        {
            let sessions = Sessions::open(&path, 600).expect("open");
            sessions.park("parked", state(60));
            let mut live = state(30);
            live.window = Parked::default();
            sessions.save_live("live", &live);
            sessions.park("gone", state(0));
        }
        // Dropped: the writer thread finished its queue.
        let sessions = Sessions::open(&path, 600).expect("reopen");
        assert_eq!(sessions.parked_count(), 2);
        assert_eq!(sessions.take("parked", false), Some(state(60)));
        assert!(sessions.take("live", false).is_some());
        assert_eq!(sessions.take("gone", false), None);
    }
}
