//! A worker's final reply on its way into the store: committed, then counted and handed to the
//! outbox; or, when the store cannot write (degraded), **parked** in memory and committed again
//! once the store writes, so an accepted request that ran still gets its one final reply
//! without running again.
//!
//! Fed by the pool ([`super::pool`]: a worker's result, the reaper's `504`); feeds the outbox
//! (committed final replies) and the scheduler (the job's slot, freed only once committed).
//! A parked result that a crash loses is no loss: its request is still queued in the store, and
//! the next start runs it again (ops are pure; at most one result is ever recorded).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pool::{Pool, Ticket};
use crate::store::requests::{Completion, FinalReply};
use crate::store::{now_ms, StoreError};
use crate::wire::State;

/// A final reply for the store, and what to do once it is committed.
#[derive(Debug)]
pub(super) struct Finished {
    pub(super) ticket: Ticket,
    pub(super) state: State,
    pub(super) final_reply: FinalReply,
    pub(super) completion: Completion,
    /// The op's run time when it ran to the end.
    pub(super) elapsed: Option<Duration>,
}

/// How often parked completions are tried while the store is degraded but finishing (the disk
/// reserve was released for them).
const FINISHING_RETRY: Duration = Duration::from_millis(500);

/// Completions waiting for the store to write again.
#[derive(Debug, Default)]
pub struct Parked {
    waiting: Mutex<Vec<Finished>>,
    last_try: Mutex<Option<Instant>>,
}

impl Parked {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Finished>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many completions wait.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Pool {
    /// Commits a final reply; parks it when the store cannot write.
    pub(super) fn commit(&self, finished: Finished) {
        let pool = self.clone();
        let completion = finished.completion.clone();
        self.store
            .complete_then(completion, move |result| match result {
                Ok(recorded) => pool.committed(finished, recorded),
                Err(StoreError::Closed) => {
                    let _ = pool.fatal_tx.send(StoreError::Closed.to_string());
                }
                Err(error) => {
                    let mut parked = pool.parked.lock();
                    if parked.is_empty() {
                        tracing::warn!(%error, "final replies parked until the store writes");
                    }
                    tracing::debug!(request_id = %finished.ticket.id, "final reply parked");
                    parked.push(finished);
                }
            });
    }

    /// Commits the parked final replies again once the store writes, or every
    /// [`FINISHING_RETRY`] while the released disk reserve gives them room (called by the
    /// reaper).
    pub(super) fn retry_parked(&self) {
        let health = self.store.health();
        if !health.may_write() || self.parked.lock().is_empty() {
            return;
        }
        if health.is_degraded() {
            let mut last_try = self
                .parked
                .last_try
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last_try.is_some_and(|at| at.elapsed() < FINISHING_RETRY) {
                return;
            }
            *last_try = Some(Instant::now());
        }
        let parked = std::mem::take(&mut *self.parked.lock());
        if !parked.is_empty() {
            tracing::info!(count = parked.len(), "committing parked final replies");
        }
        for finished in parked {
            self.commit(finished);
        }
    }

    /// Once committed: frees the job's slot (so a device's status never shows it neither
    /// pending nor held), counts it and hands the reply to the outbox. `recorded` is false
    /// when the request was no longer queued (cancelled while running: the cancel recorded
    /// its final reply).
    fn committed(&self, finished: Finished, recorded: bool) {
        let Finished {
            ticket,
            state,
            final_reply,
            elapsed,
            ..
        } = finished;
        self.scheduler
            .finished(ticket.id, &ticket.device, ticket.cost_key, elapsed);
        if !recorded {
            return;
        }
        let counter = if state == State::Done {
            &self.metrics.done_total
        } else {
            &self.metrics.failed_total
        };
        counter.fetch_add(1, Relaxed);
        self.metrics.finished(ticket.op, final_reply.status);
        let latency_ms = (now_ms() - ticket.received_ms).max(0) as u64;
        self.metrics
            .observe_latency(ticket.op, Duration::from_millis(latency_ms));
        let _ = self.done_tx.send(final_reply);
    }
}
