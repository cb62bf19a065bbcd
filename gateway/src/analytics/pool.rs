//! The worker pool: OS threads (not the async runtime's) that take jobs from the scheduler, run
//! the op, and record the final reply in the store. Only after that commit is the reply handed
//! to the outbox, so a crash at any point either re-runs a pure op or re-sends a stored reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::ops::{OpError, Series, Source};
use super::scheduler::Scheduler;
use super::Job;
use crate::store::requests::{self, Completion, FinalReply};
use crate::store::{now_ms, telemetry, Store};
use crate::wire::{Reply, State, Status};

/// What the pool needs.
#[derive(Clone)]
pub struct Pool {
    /// Where jobs come from.
    pub scheduler: Arc<Scheduler>,
    /// Where final replies are recorded.
    pub store: Store,
    /// How long a final reply is held.
    pub reply_ttl: Duration,
    /// Committed final replies, for the outbox.
    pub done_tx: mpsc::UnboundedSender<FinalReply>,
    /// Fatal faults (the store failed).
    pub fatal_tx: mpsc::UnboundedSender<String>,
}

impl Pool {
    /// Starts `workers` threads; they exit when the scheduler is closed and drained.
    pub fn start(self, workers: usize) -> Vec<std::thread::JoinHandle<()>> {
        (0..workers)
            .map(|i| {
                let pool = self.clone();
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || pool.work())
                    .expect("spawning a worker thread at start")
            })
            .collect()
    }

    fn work(self) {
        let mut reader = None;
        while let Some(job) = self.scheduler.pop() {
            let started = Instant::now();
            let (state, reply, executed) = self.execute(&job, &mut reader);
            let elapsed = executed.then(|| started.elapsed());
            self.scheduler.finished(&job.device, job.call.op, elapsed);
            self.record(job, state, reply, executed);
        }
    }

    /// Runs the job unless its deadline has passed; returns the final state and reply.
    fn execute(
        &self,
        job: &Job,
        reader: &mut Option<rusqlite::Connection>,
    ) -> (State, Reply, bool) {
        let expired = || {
            Reply::new(Status::Timeout, State::Expired).with_error(
                "deadline_exceeded",
                "the request's deadline passed before it finished",
            )
        };
        if now_ms() > job.deadline_ms {
            return (State::Expired, expired(), false);
        }
        let outcome = self
            .series(job, reader)
            .and_then(|series| job.call.prepared.run(&series));
        if now_ms() > job.deadline_ms {
            return (State::Expired, expired(), true);
        }
        match outcome {
            Ok(result) => {
                let mut reply = Reply::new(Status::Ok, State::Done);
                reply.result = Some(result);
                (State::Done, reply, true)
            }
            Err(error) => {
                tracing::info!(request_id = %job.id, device_id = %job.device, %error, "op failed");
                let reply = Reply::new(Status::Failed, State::Failed)
                    .with_error("op_failed", error.to_string());
                (State::Failed, reply, true)
            }
        }
    }

    fn series(
        &self,
        job: &Job,
        reader: &mut Option<rusqlite::Connection>,
    ) -> Result<Series, OpError> {
        match &job.call.source {
            Source::Inline(series) => Ok(series.clone()),
            Source::Telemetry { metric, window_s } => {
                if reader.is_none() {
                    *reader = Some(
                        crate::store::connect_read_only(self.store.path())
                            .map_err(|e| OpError::Failed(e.to_string()))?,
                    );
                }
                let conn = reader.as_ref().expect("opened above");
                let from_ms = job.received_ms - (*window_s as i64).saturating_mul(1000);
                let series = telemetry::window(conn, &job.device, metric, from_ms, job.received_ms)
                    .map_err(|e| OpError::Failed(format!("reading telemetry: {e}")))?;
                if series.values.is_empty() {
                    return Err(OpError::Failed(format!(
                        "no {metric:?} telemetry in the last {window_s} s"
                    )));
                }
                Ok(series)
            }
        }
    }

    fn record(&self, job: Job, state: State, mut reply: Reply, executed: bool) {
        reply.request_id = Some(job.id);
        if job.envelope {
            reply.corr = Some(job.corr.clone());
        }
        let now = now_ms();
        let final_reply = FinalReply {
            id: job.id,
            device: job.device,
            corr: job.corr,
            reply_topic: job.reply_topic,
            status: reply.status.code(),
            payload: reply.encode(),
            expires_ms: now + self.reply_ttl.as_millis() as i64,
        };
        let completion = Completion {
            id: job.id,
            state,
            status: final_reply.status,
            payload: final_reply.payload.clone(),
            finished_ms: now,
            expires_ms: final_reply.expires_ms,
            executed,
        };
        let done_tx = self.done_tx.clone();
        let fatal_tx = self.fatal_tx.clone();
        self.store.submit(
            move |txn| requests::complete(txn, &completion),
            move |result| match result {
                Ok(true) => {
                    let _ = done_tx.send(final_reply);
                }
                // Cancelled while running: the cancel already recorded the final reply.
                Ok(false) => {}
                Err(error) => {
                    let _ = fatal_tx.send(error.to_string());
                }
            },
        );
    }
}
