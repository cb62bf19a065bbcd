//! Publish counts, a moment late. A reply's row is written when its request is admitted, when
//! it completes, when it is published (its count) and when its device acks it; each write is a
//! new row version with an entry in each of the row's indexes, and the publish count was the
//! costliest of the four (measured: half of the server's statement time). Its device usually
//! acks within milliseconds, so a count waits here up to [`DELAY`]: when the ack comes first,
//! the ack's own update carries the count ([`Marks::take_for_ack`]), and the row is written once
//! instead of twice. With other gateways on the database the wait also keeps two gateways'
//! transactions off one row: the ack may come through another gateway, which commits it first.
//!
//! A count still waiting is committed before anything that must see it: a wake's redelivery
//! read, a `ping`, a graceful stop ([`Marks::take`]). A crash loses at most the last [`DELAY`]
//! of counts: those replies look unpublished and are published again after the restart (or by
//! the gateway that takes over), which the contract allows (devices dedupe by correlation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::commit::Work;
use super::lanes::Lanes;
use crate::wire::{Correlation, DeviceId, RequestId};

/// How long a publish count waits for its ack.
pub const DELAY: Duration = Duration::from_millis(100);

/// A reply's publishes not yet counted: its request and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// The request.
    pub id: RequestId,
    /// Publishes to add.
    pub n: u32,
}

/// Publish counts not yet handed to the commit queue, by the reply's (device, correlation).
#[derive(Default)]
pub struct Marks {
    pending: Mutex<HashMap<(DeviceId, Correlation), Count>>,
}

impl Marks {
    /// Holds a count for the next flush (or its ack).
    pub fn push(&self, id: RequestId, device: &DeviceId, corr: &Correlation) {
        self.lock()
            .entry((device.clone(), corr.clone()))
            .and_modify(|count| count.n += 1)
            .or_insert(Count { id, n: 1 });
    }

    /// The count waiting for the reply this ack ends, to be written with the ack.
    pub fn take_for_ack(&self, device: &DeviceId, corr: &Correlation) -> Option<Count> {
        let mut pending = self.lock();
        if pending.is_empty() {
            return None;
        }
        pending.remove(&(device.clone(), corr.clone()))
    }

    /// Every held count, as work for the commit queue (to go ahead of what must see them).
    pub fn take(&self) -> Vec<Option<Work>> {
        std::mem::take(&mut *self.lock())
            .into_iter()
            .flat_map(|((device, _), count)| {
                std::iter::repeat_n((count.id, device), count.n as usize)
            })
            .map(|(id, device)| Some(Work::Published(id, device)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(DeviceId, Correlation), Count>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hands the held counts to the commit queue every [`DELAY`], until the store is gone.
pub async fn flush(marks: Arc<Marks>, lanes: Weak<Lanes>) {
    loop {
        tokio::time::sleep(DELAY).await;
        let Some(lanes) = lanes.upgrade() else { return };
        let work = marks.take();
        if !work.is_empty() {
            lanes.submit(work, Box::new(|_| {}));
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
        let rest: Vec<_> = marks.take().into_iter().flatten().collect();
        assert!(
            matches!(rest.as_slice(), [Work::Published(id, device)] if *id == b && *device == db)
        );
        assert!(marks.take().is_empty());
    }
}
