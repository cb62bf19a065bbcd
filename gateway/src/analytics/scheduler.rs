//! The fair scheduler: per-device queues served round robin, so one chatty device cannot starve
//! the others (guarantee 6), with the admission limits that produce `429` and `503`.
//!
//! Fed by intake (reservations at admission, then jobs after commit) and by recovery on start;
//! feeds the worker pool. Counts are in memory: after a restart they are rebuilt from the
//! queued rows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::wire::DeviceId;

use super::Job;

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
    queued: usize,
    running: usize,
    closed: bool,
    /// Recent run time per op (exponentially weighted), in microseconds.
    cost_us: HashMap<&'static str, f64>,
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
            let retry_after_ms = self.estimate_locked(&inner, "", 1);
            return Err(Refusal::DeviceQuota { retry_after_ms });
        }
        if inner.total_pending >= self.capacity {
            let retry_after_ms = self.estimate_locked(&inner, "", self.workers);
            return Err(Refusal::QueueFull { retry_after_ms });
        }
        *inner.pending.entry(device.clone()).or_insert(0) += 1;
        inner.total_pending += 1;
        Ok(())
    }

    /// Gives back a reservation that was not used, or the slot of a finished job.
    pub fn release(&self, device: &DeviceId) {
        let mut inner = self.lock();
        release_locked(&mut inner, device);
    }

    /// Queues a job whose slot was reserved.
    pub fn push(&self, job: Job) {
        let mut inner = self.lock();
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
                return Some(job);
            }
            inner = self.ready.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A worker finished a job: frees its slot and learns the op's cost.
    pub fn finished(&self, device: &DeviceId, op: &'static str, elapsed: Option<Duration>) {
        let mut inner = self.lock();
        inner.running -= 1;
        release_locked(&mut inner, device);
        if let Some(elapsed) = elapsed {
            let sample = elapsed.as_secs_f64() * 1e6;
            let cost = inner.cost_us.entry(op).or_insert(sample);
            *cost = 0.8 * *cost + 0.2 * sample;
        }
    }

    /// Removes a queued job (cancelled) if it has not started; true if it was removed.
    pub fn remove(&self, device: &DeviceId, id: crate::wire::RequestId) -> bool {
        let mut inner = self.lock();
        let Some(queue) = inner.queues.get_mut(device) else {
            return false;
        };
        let Some(pos) = queue.iter().position(|job| job.id == id) else {
            return false;
        };
        queue.remove(pos);
        if queue.is_empty() {
            inner.queues.remove(device);
            inner.ring.retain(|d| d != device);
        }
        inner.queued -= 1;
        release_locked(&mut inner, device);
        true
    }

    /// Estimated milliseconds until a new `op` request would be answered: the work queued ahead
    /// of it, shared by the workers, plus its own run.
    pub fn estimate_ms(&self, op: &str) -> u64 {
        let inner = self.lock();
        self.estimate_locked(&inner, op, 1)
    }

    fn estimate_locked(&self, inner: &Inner, op: &str, extra: usize) -> u64 {
        let mean_cost = if inner.cost_us.is_empty() {
            100.0
        } else {
            inner.cost_us.values().sum::<f64>() / inner.cost_us.len() as f64
        };
        let own = inner.cost_us.get(op).copied().unwrap_or(mean_cost);
        let ahead = (inner.queued + inner.running + extra) as f64 / self.workers as f64;
        let us = ahead * mean_cost + own;
        // A little headroom for the reply's trip; at least 1 ms.
        ((us * 1.2) / 1000.0).ceil().max(1.0) as u64
    }

    /// Current counts.
    pub fn counts(&self) -> Counts {
        let inner = self.lock();
        Counts {
            queued: inner.queued,
            running: inner.running,
        }
    }

    /// Stops handing out work; workers finish what they hold and exit.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
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
