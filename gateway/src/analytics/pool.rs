//! The worker pool: OS threads (not the async runtime's) that take jobs from the scheduler, run
//! the op, and record the final reply in the store. Only after that commit is the reply handed
//! to the outbox, so a crash at any point either re-runs a pure op or re-sends a stored reply.
//!
//! A job past its deadline is not run (`504`). A job that overruns its deadline while running
//! cannot be stopped (ops are plain functions), so the reaper abandons it: it answers `504` at
//! once, frees the device's slot and starts a replacement worker; the abandoned worker's late
//! result is discarded (its completion finds the request no longer queued) and its thread ends.

use crate::wire::ErrorCode;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::finish::{Finished, Parked};
use super::ops::{OpError, Series, Source};
use super::scheduler::Scheduler;
use super::Job;
use crate::store::requests::{Completion, FinalReply};
use crate::store::{now_ms, Reader, Store};
use crate::wire::{Correlation, DeviceId, Reply, RequestId, State, Status};

/// How often the reaper looks for overrunning jobs.
const REAP_EVERY: Duration = Duration::from_millis(20);

/// What is needed to answer a job, without its op (which a worker may be running).
#[derive(Debug, Clone)]
pub(super) struct Ticket {
    pub(super) id: RequestId,
    pub(super) device: DeviceId,
    corr: Correlation,
    reply_topic: String,
    envelope: bool,
    pub(super) op: &'static str,
    /// What its run time is learned under (the op, or `infer:MODEL`).
    pub(super) cost_key: &'static str,
    pub(super) received_ms: i64,
    deadline_ms: i64,
}

impl From<&Job> for Ticket {
    fn from(job: &Job) -> Ticket {
        Ticket {
            id: job.id,
            device: job.device.clone(),
            corr: job.corr.clone(),
            reply_topic: job.reply_topic.clone(),
            envelope: job.envelope,
            op: job.call.op,
            cost_key: job.call.cost_key(),
            received_ms: job.received_ms,
            // An op with its own time limit (a model's timeout) is abandoned past it too.
            deadline_ms: match job.call.prepared.time_limit() {
                Some(limit) => job
                    .deadline_ms
                    .min(now_ms().saturating_add(limit.as_millis() as i64)),
                None => job.deadline_ms,
            },
        }
    }
}

/// Jobs on workers now, by worker slot; `true` once the reaper abandoned it.
#[derive(Debug, Default)]
struct Running {
    slots: Mutex<HashMap<u64, (Ticket, bool)>>,
    next_slot: AtomicU64,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Ticket, bool)>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn expired_reply() -> Reply {
    Reply::new(Status::Timeout, State::Expired).with_error(
        ErrorCode::DeadlineExceeded,
        "the request's deadline passed before it finished",
    )
}

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
    /// Fatal faults (the store is closed: its thread is gone).
    pub fatal_tx: mpsc::UnboundedSender<String>,
    /// Completions the store could not commit (degraded), committed again once it writes.
    pub parked: Arc<Parked>,
    /// Counters.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Longest telemetry window an op may read (`limits.max_series_len`).
    max_series_len: usize,
    /// Jobs on workers now.
    running: Arc<Running>,
}

impl Pool {
    /// A pool over these parts.
    pub fn new(
        scheduler: Arc<Scheduler>,
        store: Store,
        reply_ttl: Duration,
        done_tx: mpsc::UnboundedSender<FinalReply>,
        fatal_tx: mpsc::UnboundedSender<String>,
        metrics: Arc<crate::metrics::Metrics>,
        max_series_len: usize,
    ) -> Pool {
        Pool {
            scheduler,
            store,
            reply_ttl,
            done_tx,
            fatal_tx,
            metrics,
            max_series_len,
            running: Arc::default(),
            parked: Arc::default(),
        }
    }

    /// Starts `workers` threads and the reaper; they exit once the scheduler is closed.
    pub fn start(self, workers: usize) -> Vec<std::thread::JoinHandle<()>> {
        let mut threads: Vec<_> = (0..workers).map(|_| self.spawn_worker()).collect();
        let reaper = self.clone();
        threads.push(
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || reaper.reap())
                .expect("spawning the reaper thread at start"),
        );
        threads
    }

    fn spawn_worker(&self) -> std::thread::JoinHandle<()> {
        let slot = self.running.next_slot.fetch_add(1, Ordering::Relaxed);
        let pool = self.clone();
        std::thread::Builder::new()
            .name(format!("worker-{slot}"))
            .spawn(move || pool.work(slot))
            .expect("spawning a worker thread")
    }

    fn work(self, slot: u64) {
        let mut reader = self.store.reader();
        while let Some(job) = self.scheduler.pop() {
            let ticket = Ticket::from(&job);
            self.running.lock().insert(slot, (ticket.clone(), false));
            let started = Instant::now();
            let (state, reply, executed) = self.execute(&job, &mut reader);
            let abandoned = self.running.lock().remove(&slot).is_some_and(|(_, a)| a);
            if abandoned {
                // The reaper answered 504 and started a replacement: this thread is surplus.
                tracing::warn!(request_id = %ticket.id, device_id = %ticket.device, "abandoned op finished late");
                return;
            }
            let elapsed = executed.then(|| started.elapsed());
            self.record(&ticket, state, reply, elapsed);
        }
    }

    /// Answers `504` for jobs running past their deadline, and replaces their workers.
    fn reap(self) {
        while !self.scheduler.is_closed() {
            std::thread::sleep(REAP_EVERY);
            self.retry_parked();
            let now = now_ms();
            let overdue: Vec<Ticket> = self
                .running
                .lock()
                .values_mut()
                .filter(|(ticket, abandoned)| !*abandoned && now > ticket.deadline_ms)
                .map(|(ticket, abandoned)| {
                    *abandoned = true;
                    ticket.clone()
                })
                .collect();
            for ticket in overdue {
                tracing::warn!(request_id = %ticket.id, device_id = %ticket.device, "op overran its deadline; abandoned");
                self.record(&ticket, State::Expired, expired_reply(), None);
                drop(self.spawn_worker());
            }
        }
    }

    /// Runs the job unless its deadline has passed; returns the final state and reply.
    fn execute(&self, job: &Job, reader: &mut Reader) -> (State, Reply, bool) {
        let expired = expired_reply;
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
            Err(OpError::TimedOut(message)) => {
                tracing::info!(request_id = %job.id, device_id = %job.device, %message, "op timed out");
                let reply = Reply::new(Status::Timeout, State::Expired)
                    .with_error(ErrorCode::DeadlineExceeded, message);
                (State::Expired, reply, true)
            }
            Err(error) => {
                tracing::info!(request_id = %job.id, device_id = %job.device, %error, "op failed");
                let reply = Reply::new(Status::Failed, State::Failed)
                    .with_error(ErrorCode::OpFailed, error.to_string());
                (State::Failed, reply, true)
            }
        }
    }

    /// The job's series: borrowed when inline, read from the store for a telemetry window.
    fn series<'a>(&self, job: &'a Job, reader: &mut Reader) -> Result<Cow<'a, Series>, OpError> {
        let (metric, window_s) = match &job.call.source {
            Source::Inline(series) => return Ok(Cow::Borrowed(series)),
            Source::Telemetry { metric, window_s } => (metric, *window_s),
            Source::Own => return Ok(Cow::Owned(Series::default())),
        };
        let from_ms = job.received_ms - (window_s as i64).saturating_mul(1000);
        let limit = self.max_series_len + 1;
        let series = reader
            .telemetry_window(&job.device, metric, from_ms, job.received_ms, limit)
            .map_err(|e| OpError::Failed(format!("reading telemetry: {e}")))?;
        if series.values.len() > self.max_series_len {
            return Err(OpError::TooLarge(format!(
                "the {metric:?} window holds more than limits.max_series_len = {} readings",
                self.max_series_len
            )));
        }
        if series.values.is_empty() {
            return Err(OpError::Failed(format!(
                "no {metric:?} telemetry in the last {window_s} s"
            )));
        }
        Ok(Cow::Owned(series))
    }

    /// Records the final reply; once committed, frees the job's slot (so a device's status never
    /// shows it neither pending nor held) and hands the reply to the outbox. `elapsed` is the
    /// op's run time when it ran to the end.
    fn record(&self, job: &Ticket, state: State, mut reply: Reply, elapsed: Option<Duration>) {
        let executed = elapsed.is_some();
        reply.request_id = Some(job.id);
        let envelope = job.envelope;
        if envelope {
            reply.corr = Some(job.corr.clone());
        }
        let now = now_ms();
        let final_reply = FinalReply {
            id: job.id,
            device: job.device.clone(),
            corr: job.corr.clone(),
            reply_topic: job.reply_topic.clone(),
            status: reply.status.code(),
            payload: reply.encode(),
            expires_ms: now + self.reply_ttl.as_millis() as i64,
            envelope,
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
        self.commit(Finished {
            ticket: job.clone(),
            state,
            final_reply,
            completion,
            elapsed,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::ops;
    use crate::store::requests::{Admission, NewRequest};
    use ciborium::Value;

    struct Rig {
        _dir: tempfile::TempDir,
        runtime: tokio::runtime::Runtime,
        store: Store,
        scheduler: Arc<Scheduler>,
        done_rx: mpsc::UnboundedReceiver<FinalReply>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    fn rig(workers: usize) -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let store = runtime
            .block_on(Store::open(&Default::default(), dir.path()))
            .expect("store opens");
        let scheduler = Arc::new(Scheduler::new(100, 100, workers));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (fatal_tx, _fatal_rx) = mpsc::unbounded_channel();
        let pool = Pool::new(
            scheduler.clone(),
            store.clone(),
            Duration::from_secs(60),
            done_tx,
            fatal_tx,
            Arc::default(),
            10_000_000,
        );
        let threads = pool.start(workers);
        Rig {
            _dir: dir,
            runtime,
            store,
            scheduler,
            done_rx,
            threads,
        }
    }

    /// Stores a `stats` request over `n` points and queues it with `deadline_ms`.
    fn submit(rig: &Rig, corr: &str, n: usize, deadline_ms: i64) -> RequestId {
        let args = Value::Map(vec![(
            Value::Text("values".into()),
            Value::Array((0..n).map(|i| Value::Float((i % 1000) as f64)).collect()),
        )]);
        let call = ops::prepare("stats", &args, 10_000_000).expect("valid call");
        let device = DeviceId::parse("pool-dev").expect("valid id");
        let new = NewRequest {
            id: RequestId::new(),
            device: device.clone(),
            corr: Correlation(bytes::Bytes::copy_from_slice(corr.as_bytes())),
            op: "stats".into(),
            args: crate::wire::envelope::encode_value(&args),
            reply_topic: "devices/pool-dev/reply".into(),
            envelope: false,
            received_ms: now_ms(),
            deadline_ms,
        };
        let admission = rig
            .runtime
            .block_on(rig.store.admit(new.clone(), 0))
            .expect("stored");
        assert!(matches!(admission, Admission::New));
        rig.scheduler.reserve(&device).expect("slot");
        rig.scheduler.push(Job {
            id: new.id,
            device,
            corr: new.corr,
            call,
            reply_topic: new.reply_topic,
            envelope: false,
            received_ms: new.received_ms,
            deadline_ms,
        });
        new.id
    }

    fn next_final(rig: &mut Rig) -> FinalReply {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rig.done_rx.try_recv() {
                Ok(reply) => return reply,
                Err(_) if Instant::now() < deadline => std::thread::yield_now(),
                Err(error) => panic!("no final reply: {error}"),
            }
        }
    }

    fn close(rig: Rig) {
        rig.scheduler.close();
        for thread in rig.threads {
            thread.join().expect("worker exits");
        }
    }

    #[test]
    fn a_job_past_its_deadline_is_answered_504_without_running() {
        let mut rig = rig(1);
        let id = submit(&rig, "late", 4, now_ms() - 1);
        let reply = next_final(&mut rig);
        assert_eq!(reply.id, id);
        assert_eq!(reply.status, 504);
        let decoded = Reply::decode(&reply.payload).expect("reply");
        assert_eq!(decoded.state, State::Expired);
        assert_eq!(decoded.error.expect("error").code, "deadline_exceeded");
        let device = reply.device.clone();
        let corr = reply.corr.clone();
        let row = rig
            .runtime
            .block_on(rig.store.find(device, corr))
            .expect("read")
            .expect("row");
        assert_eq!(row.state, State::Expired);
        close(rig);
    }

    #[test]
    fn an_overrunning_job_is_answered_504_and_its_worker_replaced() {
        let mut rig = rig(1);
        // Long enough to overrun a 1 ms deadline in any build.
        let slow = submit(&rig, "slow", 2_000_000, now_ms() + 1);
        let reply = next_final(&mut rig);
        assert_eq!((reply.id, reply.status), (slow, 504));
        assert_eq!(
            rig.scheduler.pending_of(&reply.device),
            0,
            "the device's slot is free"
        );
        // The pool still serves: a quick job with a generous deadline completes with 200.
        let quick = submit(&rig, "quick", 4, now_ms() + 60_000);
        let reply = next_final(&mut rig);
        assert_eq!((reply.id, reply.status), (quick, 200));
        close(rig);
    }
}
