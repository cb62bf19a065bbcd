//! Recovery on start: what a previous run (clean stop or kill -9) left in the store goes back
//! into the flow. Final replies that were committed but never handed to the broker are
//! published ([`republish`], before serving). Queued requests are queued again ([`Backlog`],
//! in the background while the gateway already serves): a page at a time, oldest first, topped
//! up whenever the scheduler's queue runs low, so a backlog of a million requests neither delays
//! the start nor fills memory. Ops are pure, so a run a crash interrupted simply runs again; only
//! a committed completion counts as an execution.

use crate::wire::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::analytics::ops::{self, PrepareError};
use crate::analytics::scheduler::Scheduler;
use crate::analytics::Job;
use crate::config::Limits;
use crate::store::requests::{Completion, FinalReply, StoredRequest};
use crate::store::{now_ms, Store, StoreError};
use crate::wire::envelope::decode_value;
use crate::wire::{Reply, RequestId, State, Status};

/// Queued requests read from the store at a time.
pub const PAGE: usize = 10_000;
/// The next page is read once fewer jobs than this wait in the scheduler.
pub const LOW_WATER: usize = 10_000;
/// How often a full scheduler is looked at again.
const TOP_UP_EVERY: Duration = Duration::from_millis(10);

/// Hands final replies that were committed but never published to the outbox; returns how many.
pub async fn republish(
    store: &Store,
    done_tx: &mpsc::UnboundedSender<FinalReply>,
) -> Result<usize, StoreError> {
    let unpublished = store.unpublished().await?;
    let count = unpublished.len();
    for reply in unpublished {
        let _ = done_tx.send(reply);
    }
    Ok(count)
}

/// The queued requests a previous run left, fed to the scheduler a page at a time.
pub struct Backlog {
    store: Store,
    scheduler: Arc<Scheduler>,
    limits: Limits,
    /// A request whose stored call no longer prepares gets its `500` here.
    done_tx: mpsc::UnboundedSender<FinalReply>,
    /// The newest request queued before this run: newer ones were queued by this run itself.
    until: Option<RequestId>,
    /// The last request fed to the scheduler (a run that failed resumes after it).
    after: Option<RequestId>,
    /// Rows per page ([`PAGE`]).
    pub page: usize,
    /// Top-up threshold ([`LOW_WATER`]).
    pub low_water: usize,
}

impl Backlog {
    /// Looks at what a previous run left queued, before this run queues anything; returns the
    /// backlog and its size.
    pub async fn open(
        store: &Store,
        scheduler: &Arc<Scheduler>,
        limits: &Limits,
        done_tx: &mpsc::UnboundedSender<FinalReply>,
    ) -> Result<(Backlog, usize), StoreError> {
        let (size, until) = store.queued_extent().await?;
        let backlog = Backlog {
            store: store.clone(),
            scheduler: scheduler.clone(),
            limits: limits.clone(),
            done_tx: done_tx.clone(),
            until,
            after: None,
            page: PAGE,
            low_water: LOW_WATER,
        };
        Ok((backlog, size))
    }

    /// Feeds every queued request to the scheduler, oldest first; returns how many went.
    /// Stops early if the scheduler closes (the gateway drains; the rest stays queued). After
    /// a store failure, running it again resumes after the last request it fed.
    pub async fn run(&mut self) -> Result<usize, StoreError> {
        let Some(until) = self.until else {
            return Ok(0);
        };
        let mut requeued = 0;
        loop {
            while self.scheduler.counts().queued >= self.low_water {
                if self.scheduler.is_closed() {
                    return Ok(requeued);
                }
                tokio::time::sleep(TOP_UP_EVERY).await;
            }
            let page = self.page;
            let rows = self.store.queued_after(self.after, until, page).await?;
            let last_page = rows.len() < self.page;
            for stored in rows {
                let id = stored.id;
                requeued += usize::from(self.requeue(stored).await?);
                self.after = Some(id);
            }
            if last_page || self.scheduler.is_closed() {
                return Ok(requeued);
            }
        }
    }

    /// Queues one stored request; false when its call no longer prepares (it then fails).
    async fn requeue(&self, stored: StoredRequest) -> Result<bool, StoreError> {
        requeue(
            &self.store,
            &self.scheduler,
            &self.limits,
            &self.done_tx,
            stored,
        )
        .await
    }
}

/// Queues one stored request (from the backlog, or taken over from a dead gateway); false when
/// its call no longer prepares (it then fails with `500`, still exactly one final reply).
pub async fn requeue(
    store: &Store,
    scheduler: &Scheduler,
    limits: &Limits,
    done_tx: &mpsc::UnboundedSender<FinalReply>,
    stored: StoredRequest,
) -> Result<bool, StoreError> {
    match job(&stored, limits) {
        Ok(job) => {
            scheduler.push_recovered(job);
            Ok(true)
        }
        Err(message) => {
            // The stored arguments no longer make a valid call (e.g. an op was removed):
            // the request still ends in exactly one final reply.
            let mut reply =
                Reply::new(Status::Failed, State::Failed).with_error(ErrorCode::OpFailed, message);
            reply.request_id = Some(stored.id);
            if stored.envelope {
                reply.corr = Some(stored.corr.clone());
            }
            let now = now_ms();
            let final_reply = FinalReply {
                id: stored.id,
                device: stored.device,
                corr: stored.corr,
                reply_topic: stored.reply_topic,
                status: 500,
                payload: reply.encode(),
                expires_ms: now + limits.reply_ttl.as_millis() as i64,
                envelope: stored.envelope,
            };
            let completion = Completion {
                id: final_reply.id,
                state: State::Failed,
                status: 500,
                payload: final_reply.payload.clone(),
                finished_ms: now,
                expires_ms: final_reply.expires_ms,
                executed: false,
            };
            if store.complete(completion).await? {
                let _ = done_tx.send(final_reply);
            }
            Ok(false)
        }
    }
}

fn job(stored: &StoredRequest, limits: &Limits) -> Result<Job, String> {
    let args = decode_value(&stored.args).map_err(|e| e.to_string())?;
    let call = ops::prepare(&stored.op, &args, limits.max_series_len)
        .map_err(|error: PrepareError| error.to_string())?;
    Ok(Job {
        id: stored.id,
        device: stored.device.clone(),
        corr: stored.corr.clone(),
        call,
        reply_topic: stored.reply_topic.clone(),
        envelope: stored.envelope,
        received_ms: stored.received_ms,
        deadline_ms: stored.deadline_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::requests::NewRequest;
    use crate::wire::{Correlation, DeviceId};
    use ciborium::Value;

    fn request(n: u64) -> NewRequest {
        let args = Value::Map(vec![(
            Value::Text("values".into()),
            Value::Array(vec![Value::Float(n as f64)]),
        )]);
        let device = DeviceId::parse("backlog-1").expect("valid");
        NewRequest {
            id: RequestId::new(),
            reply_topic: crate::wire::topics::reply(&device),
            device,
            corr: Correlation(n.to_be_bytes().to_vec().into()),
            op: "stats".into(),
            args: crate::wire::envelope::encode_value(&args),
            envelope: false,
            received_ms: now_ms(),
            deadline_ms: now_ms() + 60_000,
        }
    }

    async fn admit(store: &Store, new: NewRequest) -> RequestId {
        let id = new.id;
        store.admit(new, 0).await.expect("admitted");
        id
    }

    /// A backlog bigger than a page arrives whole, oldest first, each request once, never more
    /// than a page above the low water mark at a time; what this run queued itself is not fed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_backlog_is_fed_a_page_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&Default::default(), dir.path())
            .await
            .expect("store opens");
        let limits = Limits::default();
        let scheduler = Arc::new(Scheduler::new(1_000, 1_000, 1));
        let (done_tx, _done_rx) = mpsc::unbounded_channel();
        let mut left = Vec::new();
        for n in 0..10 {
            left.push(admit(&store, request(n)).await);
        }
        let (mut backlog, size) = Backlog::open(&store, &scheduler, &limits, &done_tx)
            .await
            .expect("opens");
        assert_eq!(size, 10);
        (backlog.page, backlog.low_water) = (3, 2);
        let newer = admit(&store, request(99)).await;
        let feeder = tokio::spawn(async move { backlog.run().await });
        let popped = tokio::task::spawn_blocking(move || {
            let mut popped = Vec::new();
            while popped.len() < 10 {
                assert!(
                    scheduler.counts().queued <= 2 + 3,
                    "at most a page above low water"
                );
                popped.push(scheduler.pop().expect("open").id);
            }
            popped
        })
        .await
        .expect("popped");
        assert_eq!(feeder.await.expect("task").expect("fed"), 10);
        assert_eq!(popped, left, "oldest first, each once");
        assert!(!popped.contains(&newer));
    }
}
