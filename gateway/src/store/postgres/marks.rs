//! Publish counts, a moment late while other gateways share the database. A reply published
//! here is usually acked through another gateway within milliseconds, and both the publish
//! count and the ack update the reply's row: committed at once, the two gateways' transactions
//! lock that row together and wait for each other's commits. Counted [`DELAY`] later, the ack
//! has committed and nothing waits. Alone on the database nothing collides, and counts go to the
//! commit queue at once.
//!
//! A count still waiting is committed before anything that must see it: a wake's redelivery
//! read, a `ping`, a graceful stop ([`Marks::take`]). A crash loses at most the last [`DELAY`]
//! of counts: those replies look unpublished and are published again after the restart (or by
//! the gateway that takes over), which the contract allows (devices dedupe by correlation).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::WeakUnboundedSender;

use super::commit::{Job, Work};
use crate::wire::RequestId;

/// How long a publish count waits while other gateways are alive.
pub const DELAY: Duration = Duration::from_millis(100);

/// Publish counts not yet handed to the commit queue.
#[derive(Default)]
pub struct Marks {
    pending: Mutex<Vec<RequestId>>,
}

impl Marks {
    /// Holds a count for the next flush.
    pub fn push(&self, id: RequestId) {
        self.lock().push(id);
    }

    /// Every held count, as work for the commit queue (to go ahead of what must see them).
    pub fn take(&self) -> Vec<Option<Work>> {
        std::mem::take(&mut *self.lock())
            .into_iter()
            .map(|id| Some(Work::Published(id)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RequestId>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hands the held counts to the commit queue every [`DELAY`], until the store is gone.
pub async fn flush(marks: Arc<Marks>, jobs: WeakUnboundedSender<Job>) {
    loop {
        tokio::time::sleep(DELAY).await;
        let Some(jobs) = jobs.upgrade() else { return };
        let work = marks.take();
        if !work.is_empty() {
            let _ = jobs.send(Job {
                work,
                then: Box::new(|_| {}),
            });
        }
    }
}
