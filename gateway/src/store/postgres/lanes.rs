//! The commit queue's lanes: each device's writes go to one of a few committers
//! ([`super::commit::run`]), each committing its own batches on its own connection, so that one
//! batch executes while another waits for its commit's WAL flush. One committer alone was the
//! bound of a gateway on PostgreSQL: its server backend busy two-thirds of the time, then
//! waiting, and the next batch waiting for both.
//!
//! A device's work always takes the same lane, in queue order, so everything the single queue
//! promised holds per device: a wake's redelivery read sees the publish counts queued before it,
//! a `status` sees its device's earlier requests. Two lanes never write the same row (a
//! request's rows and quota lock are its device's), so their transactions never wait for each
//! other. Work for several devices (an intake batch, a wake of several devices) is split by
//! lane, and its writer is answered once every part committed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::commit::{self, Done, Job, Then, Work};
use super::pool::Pool;
use crate::metrics::Histogram;
use crate::store::commands::Command;
use crate::store::StoreError;
use crate::wire::DeviceId;

/// The committers, one queue each.
pub struct Lanes {
    queues: Vec<mpsc::UnboundedSender<Job>>,
}

impl Lanes {
    /// Starts `n` committers (at least one).
    pub fn start(
        n: usize,
        pool: &Arc<Pool>,
        latency: &Arc<Histogram>,
        me: &str,
        shared: &Arc<AtomicBool>,
    ) -> Lanes {
        let queues = (0..n.max(1))
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

    /// Queues `work`; `then` gets its outcomes, in its order, once all of it committed (or
    /// the first error of a part that failed: other parts may have committed).
    pub fn submit(&self, work: Vec<Option<Work>>, then: Then) {
        self.queue(work, then, false);
    }

    /// As [`Lanes::submit`], and answered only once every lane committed what was queued on it
    /// before (a barrier: `ping`, a graceful stop).
    pub fn submit_everywhere(&self, work: Vec<Option<Work>>, then: Then) {
        self.queue(work, then, true);
    }

    fn queue(&self, work: Vec<Option<Work>>, then: Then, everywhere: bool) {
        let n = self.queues.len();
        if n == 1 {
            return self.send(0, Job { work, then });
        }
        let len = work.len();
        let mut parts: Vec<(Vec<Option<Work>>, Vec<usize>)> =
            (0..n).map(|_| Default::default()).collect();
        for (slot, work) in work.into_iter().enumerate() {
            match work {
                None => {}
                Some(Work::HeldFor(devices, limit, before)) if n > 1 && !devices.is_empty() => {
                    let mut by_lane: Vec<Vec<DeviceId>> = vec![Vec::new(); n];
                    for device in devices {
                        by_lane[lane(device.as_str(), n)].push(device);
                    }
                    for (lane, devices) in by_lane.into_iter().enumerate() {
                        if !devices.is_empty() {
                            parts[lane]
                                .0
                                .push(Some(Work::HeldFor(devices, limit, before)));
                            parts[lane].1.push(slot);
                        }
                    }
                }
                Some(work) => {
                    let lane = key(&work).map_or(0, |device| lane(device, n));
                    parts[lane].0.push(Some(work));
                    parts[lane].1.push(slot);
                }
            }
        }
        // Nothing to write (every slot `None`): still answered after what was queued before
        // it, as the single queue did.
        let everywhere = everywhere || parts.iter().all(|(work, _)| work.is_empty());
        let merge = Arc::new(Mutex::new(Merge {
            waiting: parts
                .iter()
                .filter(|(work, _)| everywhere || !work.is_empty())
                .count(),
            done: (0..len).map(|_| None).collect(),
            failed: None,
            then: Some(then),
        }));
        for (lane, (work, places)) in parts.into_iter().enumerate() {
            if work.is_empty() && !everywhere {
                continue;
            }
            let merge = merge.clone();
            self.send(
                lane,
                Job {
                    work,
                    then: Box::new(move |outcome| Merge::part(&merge, places, outcome)),
                },
            );
        }
    }

    fn send(&self, lane: usize, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.queues[lane].send(job) {
            (job.then)(Err(StoreError::Closed));
        }
    }
}

/// The outcomes of one piece of work's parts, gathered.
struct Merge {
    /// Parts not yet answered.
    waiting: usize,
    /// Outcomes by the original slot (a redelivery read split over lanes: its replies joined).
    done: Vec<Option<Done>>,
    failed: Option<StoreError>,
    then: Option<Then>,
}

impl Merge {
    fn part(
        merge: &Mutex<Merge>,
        places: Vec<usize>,
        outcome: Result<Vec<Option<Done>>, StoreError>,
    ) {
        {
            let mut this = lock(merge);
            match outcome {
                Ok(done) => {
                    for (slot, done) in places.into_iter().zip(done) {
                        match (&mut this.done[slot], done) {
                            (Some(Done::Held(held)), Some(Done::Held(more))) => held.extend(more),
                            (place, done) => *place = done,
                        }
                    }
                }
                Err(error) => {
                    this.failed.get_or_insert(error);
                }
            }
            this.waiting -= 1;
            if this.waiting > 0 {
                return;
            }
        }
        Merge::finish(merge);
    }

    fn finish(merge: &Mutex<Merge>) {
        let (then, outcome) = {
            let mut this = lock(merge);
            let Some(then) = this.then.take() else { return };
            let outcome = match this.failed.take() {
                Some(error) => Err(error),
                None => {
                    let mut done = std::mem::take(&mut this.done);
                    for slot in done.iter_mut().flatten() {
                        if let Done::Held(held) = slot {
                            held.sort_unstable_by(|a, b| {
                                (a.device.as_str(), a.id).cmp(&(b.device.as_str(), b.id))
                            });
                        }
                    }
                    Ok(done)
                }
            };
            (then, outcome)
        };
        then(outcome);
    }
}

fn lock(merge: &Mutex<Merge>) -> std::sync::MutexGuard<'_, Merge> {
    merge.lock().unwrap_or_else(|e| e.into_inner())
}

/// The device whose rows `work` writes (`None`: no device's; the first lane takes it).
fn key(work: &Work) -> Option<&str> {
    match work {
        Work::Command(command) => match command {
            Command::Admit { request, .. } => Some(request.device.as_str()),
            Command::Find(device, _)
            | Command::Cancel { device, .. }
            | Command::Ack(device, _)
            | Command::Telemetry(device, _) => Some(device.as_str()),
            Command::Dead(letter) => letter.device.as_deref(),
        },
        Work::Complete(completion) => Some(completion.device.as_str()),
        Work::Published(mark) => Some(mark.device.as_str()),
        Work::Ack(device, ..) => Some(device.as_str()),
        Work::HeldFor(devices, ..) => devices.first().map(DeviceId::as_str),
    }
}

/// The lane of a device, of `n`.
fn lane(device: &str, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let mut hasher = DefaultHasher::new();
    device.hash(&mut hasher);
    (hasher.finish() % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::requests::FinalReply;
    use crate::wire::{Correlation, RequestId};

    fn reply(device: &str) -> FinalReply {
        FinalReply {
            id: RequestId::new(),
            device: DeviceId::parse(device).expect("device"),
            corr: Correlation(bytes::Bytes::from_static(b"c")),
            reply_topic: String::new(),
            status: 200,
            payload: Vec::new(),
            expires_ms: 0,
            envelope: false,
        }
    }

    /// Two devices that take different lanes of two.
    fn apart() -> (String, String) {
        let first = "dev-0".to_owned();
        let other = (1..100)
            .map(|i| format!("dev-{i}"))
            .find(|d| lane(d, 2) != lane(&first, 2))
            .expect("some device takes the other lane");
        (first, other)
    }

    #[test]
    fn a_device_keeps_its_lane_and_devices_spread_over_lanes() {
        assert_eq!(lane("dev-7", 2), lane("dev-7", 2));
        let firsts = (0..100)
            .filter(|i| lane(&format!("dev-{i}"), 2) == 0)
            .count();
        assert!((20..=80).contains(&firsts), "{firsts} of 100 on lane 0");
    }

    #[test]
    fn parts_are_answered_once_all_committed_in_the_callers_order() {
        let (a, b) = apart();
        let (from_a, from_b) = (reply(&a), reply(&b));
        let answer = Arc::new(Mutex::new(None));
        let then: Then = {
            let answer = answer.clone();
            Box::new(move |outcome| *answer.lock().expect("lock") = Some(outcome))
        };
        let merge = Mutex::new(Merge {
            waiting: 2,
            done: (0..3).map(|_| None).collect(),
            failed: None,
            then: Some(then),
        });
        // Slot 0 (a wake of both devices) was split over both lanes; slot 1 is lane 2's alone,
        // slot 2 lane 1's. Lane 2 answers first.
        Merge::part(
            &merge,
            vec![1, 0],
            Ok(vec![
                Some(Done::Published(true)),
                Some(Done::Held(vec![from_b.clone()])),
            ]),
        );
        assert!(
            answer.lock().expect("lock").is_none(),
            "one part still waiting"
        );
        Merge::part(
            &merge,
            vec![0, 2],
            Ok(vec![Some(Done::Held(vec![from_a.clone()])), None]),
        );
        let outcome = answer
            .lock()
            .expect("lock")
            .take()
            .expect("answered")
            .expect("ok");
        assert_eq!(outcome.len(), 3);
        let Some(Done::Held(held)) = &outcome[0] else {
            panic!("not a redelivery read: {:?}", outcome[0]);
        };
        let mut expected = [from_a, from_b];
        expected.sort_by(|x, y| x.device.as_str().cmp(y.device.as_str()));
        assert_eq!(
            held.iter().map(|r| r.id).collect::<Vec<_>>(),
            expected.iter().map(|r| r.id).collect::<Vec<_>>(),
            "both lanes' replies, by device"
        );
        assert!(matches!(outcome[1], Some(Done::Published(true))));
        assert!(outcome[2].is_none());
    }

    #[test]
    fn a_part_that_failed_fails_the_whole() {
        let answer = Arc::new(Mutex::new(None));
        let then: Then = {
            let answer = answer.clone();
            Box::new(move |outcome| *answer.lock().expect("lock") = Some(outcome))
        };
        let merge = Mutex::new(Merge {
            waiting: 2,
            done: vec![None, None],
            failed: None,
            then: Some(then),
        });
        Merge::part(&merge, vec![0], Err(StoreError::Closed));
        Merge::part(&merge, vec![1], Ok(vec![Some(Done::Published(true))]));
        assert!(matches!(
            answer.lock().expect("lock").take(),
            Some(Err(StoreError::Closed))
        ));
    }
}
