//! The fair scheduler: per-device queues served round robin, so one chatty device cannot starve
//! the others (guarantee 6), with the admission limits that produce `429` and `503`.
//!
//! Fed by intake (reservations at admission, then jobs after commit) and by recovery on start;
//! feeds the worker pool. Counts are in memory: after a restart they are rebuilt from the
//! queued rows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::wire::{DeviceId, RequestId};

use super::cost::{CostModel, TELEMETRY_POINTS};
use super::Job;

/// The points a job's op will see, as far as intake knows.
fn points(job: &Job) -> usize {
    match job.call.inline_len() {
        0 => TELEMETRY_POINTS,
        n => n,
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The device has `limits.max_pending_per_device` pending: `429`.
    DeviceQuota {
        /// When to retry.
        retry_after_ms: u64,
    },
    /// `limits.queue_capacity` is reached: `503`.
    QueueFull {
        /// When to retry.
        retry_after_ms: u64,
    },
}

#[derive(Default)]
struct Inner {
    queues: HashMap<DeviceId, VecDeque<Job>>,
    /// Devices with queued jobs, in serving order.
    ring: VecDeque<DeviceId>,
    /// Reserved + queued + running, per device.
    pending: HashMap<DeviceId, usize>,
    total_pending: usize,
    /// Requests pending at the other gateways of a shared store, as of the last heartbeat:
    /// `limits.queue_capacity` holds for the cluster.
    elsewhere: usize,
    queued: usize,
    running: usize,
    /// Ids of the jobs on workers now.
    running_ids: std::collections::HashSet<RequestId>,
    closed: bool,
    /// Learned run-time costs.
    costs: CostModel,
    /// Estimated cost and size of every queued or running job.
    outstanding: HashMap<RequestId, (f64, usize)>,
    /// Sum of the estimates in `outstanding`, in microseconds.
    outstanding_us: f64,
}

/// Queue counts for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Waiting for a worker.
    pub queued: usize,
    /// On a worker now.
    pub running: usize,
}

/// The scheduler, shared by intake and the workers.
pub struct Scheduler {
    inner: Mutex<Inner>,
    ready: Condvar,
    capacity: usize,
    per_device: usize,
    workers: usize,
}

impl Scheduler {
    /// A scheduler admitting at most `capacity` pending requests, `per_device` per device,
    /// served by `workers` workers.
    pub fn new(capacity: usize, per_device: usize, workers: usize) -> Scheduler {
        Scheduler {
            inner: Mutex::new(Inner::default()),
            ready: Condvar::new(),
            capacity,
            per_device,
            workers: workers.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock is a bug elsewhere; the counts are still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a pending slot for `device`, or says why not.
    pub fn reserve(&self, device: &DeviceId) -> Result<(), Refusal> {
        let mut inner = self.lock();
        let mine = inner.pending.get(device).copied().unwrap_or(0);
        if mine >= self.per_device {
            let retry_after_ms = self.estimate_locked(&inner, 0.0);
            return Err(Refusal::DeviceQuota { retry_after_ms });
        }
        if inner.total_pending + inner.elsewhere >= self.capacity {
            let retry_after_ms = self.estimate_locked(&inner, 0.0);
            return Err(Refusal::QueueFull { retry_after_ms });
        }
        *inner.pending.entry(device.clone()).or_insert(0) += 1;
        inner.total_pending += 1;
        Ok(())
    }

    /// Sets how many requests the other gateways of a shared store have pending (`cluster`
    /// total minus this gateway's own), counted against `limits.queue_capacity`.
    pub fn set_elsewhere(&self, cluster_pending: usize) {
        let mut inner = self.lock();
        inner.elsewhere = cluster_pending.saturating_sub(inner.queued + inner.running);
    }

    /// Gives back a reservation that was not used, or the slot of a finished job.
    pub fn release(&self, device: &DeviceId) {
        let mut inner = self.lock();
        release_locked(&mut inner, device);
    }

    /// Queues a job whose slot was reserved.
    pub fn push(&self, job: Job) {
        let mut inner = self.lock();
        let size = points(&job);
        let estimate = inner.costs.estimate_us(job.call.cost_key(), size);
        inner.outstanding.insert(job.id, (estimate, size));
        inner.outstanding_us += estimate;
        let device = job.device.clone();
        let queue = inner.queues.entry(device.clone()).or_default();
        queue.push_back(job);
        if queue.len() == 1 {
            inner.ring.push_back(device);
        }
        inner.queued += 1;
        drop(inner);
        self.ready.notify_one();
    }

    /// Queues a recovered job, taking a slot without applying the limits: it was accepted before.
    pub fn push_recovered(&self, job: Job) {
        {
            let mut inner = self.lock();
            *inner.pending.entry(job.device.clone()).or_insert(0) += 1;
            inner.total_pending += 1;
        }
        self.push(job);
    }

    /// Takes the next job, round robin across devices; blocks while none is queued. `None`
    /// once closed: what is still queued stays queued in the store for the next start.
    pub fn pop(&self) -> Option<Job> {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return None;
            }
            if let Some(device) = inner.ring.pop_front() {
                let queue = inner
                    .queues
                    .get_mut(&device)
                    .expect("a device in the ring has a queue");
                let job = queue.pop_front().expect("a device in the ring has a job");
                if queue.is_empty() {
                    inner.queues.remove(&device);
                } else {
                    inner.ring.push_back(device);
                }
                inner.queued -= 1;
                inner.running += 1;
                inner.running_ids.insert(job.id);
                return Some(job);
            }
            inner = self.ready.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A worker finished (or the reaper abandoned) job `id`: frees its slot and learns the cost
    /// of `op` (the call's cost key) from `elapsed` when it ran to the end.
    pub fn finished(
        &self,
        id: RequestId,
        device: &DeviceId,
        op: &'static str,
        elapsed: Option<Duration>,
    ) {
        let mut inner = self.lock();
        inner.running -= 1;
        inner.running_ids.remove(&id);
        release_locked(&mut inner, device);
        let size = forget_locked(&mut inner, id);
        if let (Some(elapsed), Some(size)) = (elapsed, size) {
            inner.costs.observe(op, size, elapsed);
        }
    }

    /// Starts the cost of `key` (a model) from a measured warm-up instead of the defaults.
    pub fn seed_cost(&self, key: &'static str, base_us: f64, per_point_us: f64) {
        self.lock().costs.seed(key, base_us, per_point_us);
    }

    /// Removes a queued job (cancelled) if it has not started; true if it was removed.
    pub fn remove(&self, device: &DeviceId, id: RequestId) -> bool {
        let mut inner = self.lock();
        let Some(queue) = inner.queues.get_mut(device) else {
            return false;
        };
        let Some(pos) = queue.iter().position(|job| job.id == id) else {
            return false;
        };
        queue.remove(pos);
        let emptied = queue.is_empty();
        forget_locked(&mut inner, id);
        if emptied {
            inner.queues.remove(device);
            inner.ring.retain(|d| d != device);
        }
        inner.queued -= 1;
        release_locked(&mut inner, device);
        true
    }

    /// Estimated milliseconds until a new request of `op` over `points` points would be
    /// answered: the work queued and running, shared by the workers, plus its own run; with a
    /// fifth of headroom for the reply's trip.
    pub fn estimate_ms(&self, op: &str, points: usize) -> u64 {
        let inner = self.lock();
        let own = inner.costs.estimate_us(op, points);
        self.estimate_locked(&inner, own)
    }

    fn estimate_locked(&self, inner: &Inner, own_us: f64) -> u64 {
        let us = inner.outstanding_us.max(0.0) / self.workers as f64 + own_us;
        ((us * 1.2) / 1000.0).ceil().max(1.0) as u64
    }

    /// Whether request `id` is on a worker now.
    pub fn is_running(&self, id: RequestId) -> bool {
        self.lock().running_ids.contains(&id)
    }

    /// Requests of `device` reserved, queued or running.
    pub fn pending_of(&self, device: &DeviceId) -> usize {
        self.lock().pending.get(device).copied().unwrap_or(0)
    }

    /// Current counts.
    pub fn counts(&self) -> Counts {
        let inner = self.lock();
        Counts {
            queued: inner.queued,
            running: inner.running,
        }
    }

    /// Whether [`Scheduler::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stops handing out work; workers finish what they hold and exit.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Drops a job's estimate from the outstanding work; returns its size.
fn forget_locked(inner: &mut Inner, id: RequestId) -> Option<usize> {
    let (estimate, size) = inner.outstanding.remove(&id)?;
    inner.outstanding_us -= estimate;
    if inner.outstanding.is_empty() {
        inner.outstanding_us = 0.0; // no float drift once idle
    }
    Some(size)
}

fn release_locked(inner: &mut Inner, device: &DeviceId) {
    if let Some(count) = inner.pending.get_mut(device) {
        *count -= 1;
        if *count == 0 {
            inner.pending.remove(device);
        }
        inner.total_pending -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::ops;
    use crate::wire::Correlation;
    use ciborium::Value;

    fn job(device: &str, points: usize) -> Job {
        let args = Value::Map(vec![(
            Value::Text("values".into()),
            Value::Array(vec![Value::Float(1.0); points]),
        )]);
        Job {
            id: RequestId::new(),
            device: DeviceId::parse(device).expect("valid"),
            corr: Correlation(bytes::Bytes::new()),
            call: ops::prepare("stats", &args, 1_000_000).expect("valid"),
            reply_topic: String::new(),
            envelope: false,
            received_ms: 0,
            deadline_ms: i64::MAX,
        }
    }

    fn admit(scheduler: &Scheduler, job: Job) {
        scheduler.reserve(&job.device).expect("admitted");
        scheduler.push(job);
    }

    /// `queue_capacity` holds for a cluster: what the other gateways have pending (the cluster's
    /// count minus this gateway's own) fills the same capacity.
    #[test]
    fn the_other_gateways_pending_work_counts_against_the_capacity() {
        let scheduler = Scheduler::new(3, 10, 1);
        admit(&scheduler, job("a", 1));
        // Cluster-wide 3 pending, 1 of them here: 2 elsewhere, so the queue is full.
        scheduler.set_elsewhere(3);
        assert!(matches!(
            scheduler.reserve(&DeviceId::parse("b").expect("valid")),
            Err(Refusal::QueueFull { .. })
        ));
        // The others drained: room again.
        scheduler.set_elsewhere(1);
        assert!(scheduler
            .reserve(&DeviceId::parse("b").expect("valid"))
            .is_ok());
    }

    #[test]
    fn devices_are_served_round_robin() {
        let scheduler = Scheduler::new(100, 100, 1);
        for _ in 0..5 {
            admit(&scheduler, job("chatty", 10));
        }
        admit(&scheduler, job("quiet", 10));
        let first = scheduler.pop().expect("job");
        let second = scheduler.pop().expect("job");
        assert_eq!(first.device.as_str(), "chatty");
        assert_eq!(
            second.device.as_str(),
            "quiet",
            "the quiet device does not wait behind the chatty one"
        );
        let rest: Vec<_> = (0..4)
            .map(|_| scheduler.pop().expect("job").device)
            .collect();
        assert!(rest.iter().all(|d| d.as_str() == "chatty"));
    }

    #[test]
    fn limits_give_429_then_503() {
        let scheduler = Scheduler::new(3, 2, 1);
        let a = DeviceId::parse("a").expect("valid");
        let b = DeviceId::parse("b").expect("valid");
        scheduler.reserve(&a).expect("1st");
        scheduler.reserve(&a).expect("2nd");
        assert!(matches!(
            scheduler.reserve(&a),
            Err(Refusal::DeviceQuota { .. })
        ));
        scheduler.reserve(&b).expect("3rd overall");
        assert!(matches!(
            scheduler.reserve(&b),
            Err(Refusal::QueueFull { .. })
        ));
        scheduler.release(&a);
        scheduler.reserve(&b).expect("a slot was freed");
    }

    #[test]
    fn estimates_grow_with_the_work_ahead_and_the_size() {
        let scheduler = Scheduler::new(100, 100, 2);
        let idle = scheduler.estimate_ms("stats", 1_000_000);
        for _ in 0..10 {
            admit(&scheduler, job("d", 100_000));
        }
        let busy_small = scheduler.estimate_ms("stats", 10);
        let busy_large = scheduler.estimate_ms("stats", 1_000_000);
        assert!(busy_large > busy_small);
        assert!(busy_large > idle);
        // Running a job to completion teaches the model its real cost.
        let running = scheduler.pop().expect("job");
        scheduler.finished(
            running.id,
            &running.device,
            running.call.op,
            Some(Duration::from_millis(100)),
        );
        assert!(
            scheduler.estimate_ms("stats", 100_000) >= 100,
            "learned ~100 ms per 100k points"
        );
    }

    #[test]
    fn cancelling_a_queued_job_frees_its_slot() {
        let scheduler = Scheduler::new(100, 1, 1);
        let queued = job("c", 1);
        let (id, device) = (queued.id, queued.device.clone());
        admit(&scheduler, queued);
        assert!(scheduler.remove(&device, id));
        assert_eq!(scheduler.pending_of(&device), 0);
        assert_eq!(scheduler.counts(), Counts::default());
        scheduler.reserve(&device).expect("slot free again");
    }
}
