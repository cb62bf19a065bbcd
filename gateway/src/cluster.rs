//! Several gateways on one PostgreSQL store: this gateway's heartbeat and the takeover of work
//! whose gateway died (see [`crate::store::cluster`]). Fed by the store; feeds the scheduler
//! (taken-over queued requests) and the outbox (taken-over replies that were committed but
//! never published). With SQLite there is no cluster and [`run`] returns at once.
//!
//! Every beat renews this gateway's lease (so its queued and running work stays its own) and
//! then claims what leases of other gateways no longer cover. A dead gateway's work thus
//! resumes here within `lease_ms` plus one beat.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::analytics::scheduler::Scheduler;
use crate::config::Limits;
use crate::recovery::{requeue, LOW_WATER};
use crate::store::requests::FinalReply;
use crate::store::Store;

/// Most rows of each kind claimed per beat.
const TAKE_PER_BEAT: usize = 1000;
/// Failed beats in a row between two warnings.
const FAILURES_SAID: u32 = 60;

/// Beats until `stop`: renew the lease, take over abandoned work.
pub async fn run(
    store: Store,
    scheduler: Arc<Scheduler>,
    limits: Limits,
    done_tx: mpsc::UnboundedSender<FinalReply>,
    stop: CancellationToken,
) {
    let Some(lease) = store.lease() else {
        return;
    };
    let every = crate::store::cluster::beat_every(lease);
    let mut failing = 0u32;
    loop {
        match store.heartbeat().await {
            // Said once when beats start failing and then every `FAILURES_SAID` beats, not at
            // every beat of an outage (the store's degraded state says the rest).
            Err(error) => {
                if failing.is_multiple_of(FAILURES_SAID) {
                    tracing::warn!(%error, failed_beats = failing + 1, "heartbeat failed");
                }
                failing = failing.saturating_add(1);
            }
            Ok(()) => {
                if failing > 0 {
                    tracing::info!(failed_beats = failing, "heartbeat renewed");
                    failing = 0;
                }
                beat(&store, &scheduler, &limits, &done_tx).await;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// After a heartbeat: the cluster's pending count for `queue_capacity`, then takeover.
async fn beat(
    store: &Store,
    scheduler: &Scheduler,
    limits: &Limits,
    done_tx: &mpsc::UnboundedSender<FinalReply>,
) {
    if let Some(view) = store.cluster_view() {
        scheduler.set_elsewhere(view.totals.queued as usize);
    }
    if scheduler.counts().queued >= LOW_WATER || scheduler.is_closed() {
        return;
    }
    let taken = match store.take_over(TAKE_PER_BEAT).await {
        Ok(taken) => taken,
        Err(error) => {
            tracing::warn!(%error, "takeover failed");
            return;
        }
    };
    let (queued, unpublished) = (taken.queued.len(), taken.unpublished.len());
    if queued + unpublished > 0 {
        tracing::info!(queued, unpublished, "took over work of a dead gateway");
    }
    for reply in taken.unpublished {
        let _ = done_tx.send(reply);
    }
    for stored in taken.queued {
        if let Err(error) = requeue(store, scheduler, limits, done_tx, stored).await {
            tracing::warn!(%error, "cannot requeue taken-over work");
        }
    }
}
