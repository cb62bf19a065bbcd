//! Publish counts, a moment late. A reply's row is written when its request is admitted, when
//! it completes, when it is published (its count) and when its device acks it; each write is a
//! new row version with an entry in each of the row's indexes, and the publish count was the
//! costliest of the four (measured: half of the server's statement time). Its device usually
//! acks within milliseconds, so a count waits here up to [`DELAY`]: when the ack comes first,
//! the ack's own update carries the count ([`Marks::take_for_ack`]), and the row is written once
//! instead of twice. With other gateways on the database the wait also keeps two gateways'
//! transactions off one row: the ack may come through another gateway, which commits it first.
//!
//! With other gateways alive, two acks in three come through another gateway (the broker's
//! round robin), which cannot carry the count: it waits [`SHARED_DELAY`] instead, by when the
//! ack has nearly always committed, so that its flush finds the reply ended and writes nothing
//! (`docs/BENCHMARKS.md`: written alone, those counts were 26,839 row updates in 10 s of three
//! gateways in session 12, each holding a row lock that the other gateway's ack then waited for
//! in its intake batch; in session 13 the wait took those lock waits away).
//!
//! A count still waiting is committed before anything that must see it: a wake's redelivery
//! read, a `ping`, a graceful stop ([`Marks::take`]). A crash loses at most the counts of the
//! last [`SHARED_DELAY`]: those replies, if not acked, look unpublished and are published again
//! after the restart (or by the gateway that takes over), which the contract allows (devices
//! dedupe by correlation).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::lanes::Lanes;
use super::work::{Done, Work};
use crate::wire::{Correlation, DeviceId, RequestId};

/// How long a publish count waits for its ack.
pub const DELAY: Duration = Duration::from_millis(100);

/// How long it waits while other gateways are alive (see the module's doc).
pub const SHARED_DELAY: Duration = Duration::from_secs(1);

/// Flushes a count may be skipped (its row locked elsewhere) before it is given up: a reply
/// whose count is lost is published again after a crash, which the contract allows.
const MAX_TRIES: u32 = 50;

/// A reply's publishes not yet counted: its request and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// The request.
    pub id: RequestId,
    /// Publishes to add.
    pub n: u32,
}

/// A count on its way to the database.
#[derive(Debug, Clone)]
pub struct Mark {
    /// The reply's device.
    pub device: DeviceId,
    /// The reply's correlation.
    pub corr: Correlation,
    /// Its request and publishes.
    pub count: Count,
    /// Flushes that skipped it.
    tries: u32,
}

/// A count held: how many publishes, the flushes that skipped it, and since when it waits.
type Held = (Count, u32, Instant);

/// Publish counts not yet handed to the commit queue, by the reply's (device, correlation).
#[derive(Default)]
pub struct Marks {
    pending: Mutex<HashMap<(DeviceId, Correlation), Held>>,
}

impl Marks {
    /// Holds a count for the next flush (or its ack).
    pub fn push(&self, id: RequestId, device: &DeviceId, corr: &Correlation) {
        self.lock()
            .entry((device.clone(), corr.clone()))
            .and_modify(|(count, _, _)| count.n += 1)
            .or_insert((Count { id, n: 1 }, 0, Instant::now()));
    }

    /// The count waiting for the reply this ack ends, to be written with the ack.
    pub fn take_for_ack(&self, device: &DeviceId, corr: &Correlation) -> Option<Count> {
        let mut pending = self.lock();
        if pending.is_empty() {
            return None;
        }
        pending
            .remove(&(device.clone(), corr.clone()))
            .map(|(count, _, _)| count)
    }

    /// Every held count (to go to the commit queue ahead of what must see them: [`work`];
    /// then [`Marks::settle`]).
    pub fn take(&self) -> Vec<Mark> {
        std::mem::take(&mut *self.lock())
            .into_iter()
            .map(mark)
            .collect()
    }

    /// The counts held since `before` or earlier (as [`Marks::take`]).
    pub fn take_older(&self, before: Instant) -> Vec<Mark> {
        let mut pending = self.lock();
        let due: Vec<_> = pending
            .iter()
            .filter(|(_, (_, _, since))| *since <= before)
            .map(|(key, _)| key.clone())
            .collect();
        due.into_iter()
            .filter_map(|key| pending.remove_entry(&key))
            .map(mark)
            .collect()
    }

    /// Holds again the counts of `taken` that its commit skipped (their rows were locked by
    /// another transaction: see [`super::grouped::published`]), or all of them if the commit
    /// failed; `done` starts with their outcomes, in order.
    pub fn settle<E>(&self, taken: Vec<Mark>, done: &Result<Vec<Option<Done>>, E>) {
        let counted = |i: usize| match done {
            Ok(done) => matches!(done.get(i), Some(Some(Done::Published(true)))),
            Err(_) => false,
        };
        let mut pending = self.lock();
        for (i, mark) in taken.into_iter().enumerate() {
            if counted(i) || mark.tries + 1 >= MAX_TRIES {
                continue;
            }
            let (count, tries, _) = pending.entry((mark.device, mark.corr)).or_insert((
                Count { n: 0, ..mark.count },
                0,
                Instant::now(),
            ));
            count.n += mark.count.n;
            *tries = (*tries).max(mark.tries + 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(DeviceId, Correlation), Held>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn mark(((device, corr), (count, tries, _)): ((DeviceId, Correlation), Held)) -> Mark {
    Mark {
        device,
        corr,
        count,
        tries,
    }
}

/// `taken` as work for the commit queue.
pub fn work(taken: &[Mark]) -> Vec<Option<Work>> {
    taken
        .iter()
        .map(|mark| Some(Work::Published(mark.clone())))
        .collect()
}

/// Hands the counts held [`DELAY`] ([`SHARED_DELAY`] while `shared`: other gateways alive) to
/// the commit queue, every [`DELAY`], until the store is gone.
pub async fn flush(marks: Arc<Marks>, lanes: Weak<Lanes>, shared: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(DELAY).await;
        let Some(lanes) = lanes.upgrade() else { return };
        let wait = if shared.load(Ordering::Relaxed) {
            SHARED_DELAY
        } else {
            DELAY
        };
        let Some(before) = Instant::now().checked_sub(wait) else {
            continue;
        };
        let taken = marks.take_older(before);
        if !taken.is_empty() {
            let work = work(&taken);
            let marks = marks.clone();
            lanes.submit(work, Box::new(move |done| marks.settle(taken, &done)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(device: &str, corr: &str) -> (DeviceId, Correlation) {
        (
            DeviceId::parse(device).expect("device id"),
            Correlation(corr.as_bytes().to_vec().into()),
        )
    }

    #[test]
    fn an_ack_takes_its_replys_counts_and_leaves_the_others() {
        let marks = Marks::default();
        let (a, b) = (RequestId::new(), RequestId::new());
        let (da, ca) = key("dev-a", "1");
        let (db, cb) = key("dev-b", "1");
        marks.push(a, &da, &ca);
        marks.push(a, &da, &ca);
        marks.push(b, &db, &cb);
        assert_eq!(marks.take_for_ack(&da, &ca), Some(Count { id: a, n: 2 }));
        assert_eq!(marks.take_for_ack(&da, &ca), None, "taken once");
        let rest = marks.take();
        assert_eq!(rest.len(), 1);
        assert_eq!(
            (rest[0].count, &rest[0].device),
            (Count { id: b, n: 1 }, &db)
        );
        assert!(marks.take().is_empty());
    }

    #[test]
    fn only_counts_held_long_enough_are_taken_for_a_flush() {
        let marks = Marks::default();
        let (a, b) = (RequestId::new(), RequestId::new());
        let (da, ca) = key("dev-a", "1");
        let (db, cb) = key("dev-b", "1");
        marks.push(a, &da, &ca);
        let between = Instant::now();
        marks.push(b, &db, &cb);
        marks.push(a, &da, &ca);
        let taken = marks.take_older(between);
        assert_eq!(taken.len(), 1, "b came after");
        assert_eq!(taken[0].count, Count { id: a, n: 2 });
        assert!(marks.take_older(between).is_empty());
        assert_eq!(marks.take()[0].count.id, b, "b waits on");
    }

    #[test]
    fn a_count_skipped_by_its_commit_is_held_again_and_added_to_newer_ones() {
        let marks = Marks::default();
        let (a, b) = (RequestId::new(), RequestId::new());
        let (da, ca) = key("dev-a", "1");
        let (db, cb) = key("dev-b", "1");
        marks.push(a, &da, &ca);
        marks.push(b, &db, &cb);
        let mut taken = marks.take();
        taken.sort_by(|x, y| x.device.cmp(&y.device));
        // a's row was locked elsewhere; b's was counted. Meanwhile a went out once more.
        marks.push(a, &da, &ca);
        let done: Result<_, ()> = Ok(vec![
            Some(Done::Published(false)),
            Some(Done::Published(true)),
        ]);
        marks.settle(taken, &done);
        let again = marks.take();
        assert_eq!(again.len(), 1, "b's count is not held again");
        assert_eq!(again[0].count, Count { id: a, n: 2 });
        // A failed commit holds all again, until the count was skipped too often.
        marks.settle::<()>(again.clone(), &Err(()));
        assert_eq!(marks.take()[0].count.n, 2);
        let mut stale = again;
        stale[0].tries = MAX_TRIES - 1;
        marks.settle::<()>(stale, &Err(()));
        assert!(marks.take().is_empty(), "given up");
    }
}
