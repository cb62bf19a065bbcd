//! The commit queue's two lanes: intake's writes (admissions, acks, `status`, `cancel`,
//! telemetry, dead letters) go to one committer ([`super::commit::run`]), the workers' and
//! the outbox's (completions, publish counts, redelivery claims) to another, each committing
//! its own batches on its own connection, so that one batch executes while the other waits for
//! its commit's WAL flush. One committer alone was the bound of a gateway on PostgreSQL: its
//! server backend busy two-thirds of the time, then waiting, and the next batch waiting for
//! both.
//!
//! Each job goes whole to one lane, so a batch still commits all or nothing (intake answers a
//! failed batch `503` and acknowledges none of it), and each lane keeps queue order: intake's
//! batches (which intake sends one at a time) see each other, and a wake's redelivery read sees
//! the publish counts queued before it. What the two lanes write of one row cannot deadlock: a
//! request's completion follows its admission's commit and precedes its reply; publish counts
//! skip rows held elsewhere (`grouped::published`), and so do redelivery claims
//! (`delivery::held_for`): the workers' and the outbox's lane never waits for a row lock.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::commit::{self, Job, Then};
use super::pool::Pool;
use super::work::Work;
use crate::metrics::Histogram;

/// Intake's lane.
pub const INTAKE: usize = 0;
/// The workers' and the outbox's lane.
const FINISH: usize = 1;

/// The committers, one queue each.
pub struct Lanes {
    queues: Vec<mpsc::UnboundedSender<Job>>,
}

impl Lanes {
    /// Starts the two committers. Whatever the pool's size: with one lane, a transaction held
    /// publish counts (which lock rows) and acks (which wait for rows) together, and two
    /// gateways' such transactions deadlocked each other (13 deadlocks, 1 s each, in 10 s of three gateways at
    /// `pool_size = 2`: a third of the throughput); a pool of one or two connections makes
    /// them take turns instead.
    pub fn start(
        pool: &Arc<Pool>,
        latency: &Arc<Histogram>,
        me: &str,
        shared: &Arc<AtomicBool>,
    ) -> Lanes {
        let queues = (0..2)
            .map(|_| {
                let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
                tokio::spawn(commit::run(
                    jobs_rx,
                    pool.clone(),
                    latency.clone(),
                    me.into(),
                    shared.clone(),
                ));
                jobs_tx
            })
            .collect();
        Lanes { queues }
    }

    /// Queues `work` on its lane; `then` gets its outcomes, in its order, once it committed.
    pub fn submit(&self, work: Vec<Option<Work>>, then: Then) {
        self.submit_telling(work, then, None);
    }

    /// As [`Lanes::submit`]; `unsettled` is told at once if the answer to the `COMMIT` is lost
    /// (see [`Job::unsettled`]).
    pub fn submit_telling(
        &self,
        work: Vec<Option<Work>>,
        then: Then,
        unsettled: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let lane = if work.iter().flatten().any(is_intakes) {
            INTAKE
        } else {
            FINISH
        };
        self.submit_to(
            lane,
            Job {
                work,
                then,
                unsettled,
            },
        );
    }

    /// Queues `job` on lane `lane`.
    pub fn submit_to(&self, lane: usize, job: Job) {
        let queue = &self.queues[lane];
        if let Err(mpsc::error::SendError(job)) = queue.send(job) {
            (job.then)(Err(crate::store::StoreError::Closed));
        }
    }
}

/// Whether `work` is intake's (a command, an ack).
fn is_intakes(work: &Work) -> bool {
    matches!(work, Work::Command(_) | Work::Ack(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::marks::Marks;
    use crate::store::requests::Completion;
    use crate::wire::{Correlation, DeviceId, RequestId, State};

    fn device() -> DeviceId {
        DeviceId::parse("dev-1").expect("device")
    }

    #[test]
    fn intakes_work_and_the_rest_take_different_lanes() {
        let ack = Work::Ack(device(), Correlation(bytes::Bytes::from_static(b"c")), None);
        let completion = Work::Complete(Completion {
            id: RequestId::new(),
            state: State::Done,
            status: 200,
            payload: Vec::new(),
            finished_ms: 0,
            expires_ms: 0,
            executed: true,
        });
        let marks = Marks::default();
        marks.push(
            RequestId::new(),
            &device(),
            &Correlation(bytes::Bytes::new()),
        );
        let counts = super::super::marks::work(&marks.take());
        assert!(is_intakes(&ack));
        assert!(!is_intakes(&completion));
        assert!(counts.iter().flatten().all(|work| !is_intakes(work)));
    }
}
