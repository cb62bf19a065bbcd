//! Several gateways on one PostgreSQL store: this gateway's heartbeat and the takeover of work
//! whose gateway died (see [`crate::store::cluster`]). Fed by the store; feeds the scheduler
//! (taken-over queued requests) and the outbox (taken-over replies that were committed but
//! never published). With SQLite there is no cluster and [`run`] returns at once.
//!
//! Every beat renews this gateway's lease (so its queued and running work stays its own) and
//! then claims what leases of other gateways no longer cover. A dead gateway's work thus
//! resumes here within `lease_ms` plus one beat.
//!
//! Looking costs statements that read the held replies' index, so a beat looks only when a
//! gateway has died whose work nobody has yet been seen to finish taking ([`Vacancies`]), and
//! otherwise every [`SWEEP_EVERY`] beats.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::analytics::scheduler::Scheduler;
use crate::config::Limits;
use crate::recovery::{requeue, LOW_WATER};
use crate::store::cluster::ClusterView;
use crate::store::requests::FinalReply;
use crate::store::Store;

/// Most rows of each kind claimed per beat.
const TAKE_PER_BEAT: usize = 1000;
/// Failed beats in a row between two warnings.
const FAILURES_SAID: u32 = 60;
/// Beats between two looks for abandoned work when no gateway died since the last look that
/// found none: work another transaction held when it was looked for (`SKIP LOCKED`), or of
/// rows with no owner (written before the cluster's schema), is found by then.
const SWEEP_EVERY: u32 = 20;

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
    let mut vacancies = Vacancies::default();
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
                beat(&store, &scheduler, &limits, &done_tx, &mut vacancies).await;
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
    vacancies: &mut Vacancies,
) {
    let view = store.cluster_view();
    if let Some(view) = &view {
        scheduler.set_elsewhere(view.totals.queued as usize);
    }
    if scheduler.counts().queued >= LOW_WATER || scheduler.is_closed() {
        return;
    }
    let dead = view.map(|view| dead(&view)).unwrap_or_default();
    if !vacancies.due(&dead) {
        return;
    }
    let taken = match store.take_over(TAKE_PER_BEAT).await {
        Ok(taken) => taken,
        Err(error) => {
            tracing::warn!(%error, "takeover failed");
            return;
        }
    };
    if taken.queued.is_empty() && taken.held_moved == 0 {
        vacancies.settle(dead);
    }
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

/// A gateway run: its id and when it started (a restarted gateway is a new run).
type Run = (String, i64);

/// The gateways' runs whose lease ran out (this gateway's own is fresh: the view comes with
/// the heartbeat that renewed it).
fn dead(view: &ClusterView) -> HashSet<Run> {
    view.gateways
        .iter()
        .filter(|g| !g.alive)
        .map(|g| (g.id.clone(), g.started_ms))
        .collect()
}

/// Which dead gateways' work is known to be taken, and so when a beat need not look.
#[derive(Debug, Default)]
struct Vacancies {
    /// Dead runs at the last look that found nothing to take.
    settled: HashSet<Run>,
    /// Beats that asked [`Vacancies::due`].
    beats: u32,
}

impl Vacancies {
    /// Whether this beat looks for abandoned work: at the first beat, when a run died that was
    /// not dead at the last look that found nothing, and every [`SWEEP_EVERY`] beats.
    fn due(&mut self, dead: &HashSet<Run>) -> bool {
        let sweep = self.beats.is_multiple_of(SWEEP_EVERY);
        self.beats = self.beats.wrapping_add(1);
        sweep || !dead.is_subset(&self.settled)
    }

    /// A look found nothing to take while `dead` were dead.
    fn settle(&mut self, dead: HashSet<Run>) {
        self.settled = dead;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(ids: &[(&str, i64)]) -> HashSet<Run> {
        ids.iter().map(|(id, at)| (id.to_string(), *at)).collect()
    }

    #[test]
    fn looks_at_the_first_beat_then_only_when_a_gateway_dies_or_every_sweep() {
        let mut vacancies = Vacancies::default();
        assert!(vacancies.due(&runs(&[])), "the first beat looks");
        vacancies.settle(runs(&[]));
        for beat in 1..SWEEP_EVERY {
            assert!(!vacancies.due(&runs(&[])), "beat {beat}: nobody died");
        }
        assert!(vacancies.due(&runs(&[])), "the sweep");
        // A gateway dies: every beat looks until a look finds nothing left.
        let b = runs(&[("b", 1)]);
        assert!(vacancies.due(&b));
        assert!(vacancies.due(&b), "the last look took work: look again");
        vacancies.settle(b.clone());
        assert!(!vacancies.due(&b));
        // It comes back and dies again: a new run, so a new look.
        assert!(vacancies.due(&runs(&[("b", 2)])));
        // Another dies beside the settled one.
        vacancies.settle(runs(&[("b", 2)]));
        assert!(vacancies.due(&runs(&[("b", 2), ("c", 1)])));
        // A gateway that came back drops out of the settled set at the next settle.
        vacancies.settle(runs(&[("c", 1)]));
        assert!(!vacancies.due(&runs(&[("c", 1)])));
    }

    #[test]
    fn the_dead_are_the_runs_whose_lease_ran_out() {
        use crate::store::cluster::Member;
        let member = |id: &str, started_ms, alive| Member {
            id: id.into(),
            started_ms,
            seen_ms: 0,
            alive,
        };
        let view = ClusterView {
            gateways: vec![
                member("a", 1, true),
                member("b", 2, false),
                member("c", 3, true),
            ],
            totals: Default::default(),
            totals_ms: 0,
        };
        assert_eq!(dead(&view), runs(&[("b", 2)]));
        // So a beat after a quiet one looks again as soon as b's lease runs out.
        let mut vacancies = Vacancies::default();
        vacancies.due(&HashSet::new());
        vacancies.settle(HashSet::new());
        assert!(vacancies.due(&dead(&view)));
    }
}
