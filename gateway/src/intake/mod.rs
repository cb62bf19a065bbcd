//! Intake: broker → store. Takes every publish the service receives, in order, in batches:
//! classifies each ([`classify`]), does all their store work in one transaction, and only after
//! the commit acks them (in receive order), answers (`202`, errors, duplicates, control ops) and
//! hands accepted jobs to the scheduler.
//!
//! While the store is degraded (see [`crate::store::health`]), or when a batch's commit fails,
//! nothing of the batch is committed: its requests are answered `503` (`store_unavailable`,
//! with `retry_after_ms`) and every publish that needed the store is refused
//! ([`Inbound::refuse`]), never acknowledged. A batch whose `COMMIT` was sent but whose answer
//! was lost (PostgreSQL) may or may not be stored: its publishes are refused without an answer
//! at once, so the batches behind it go on, and answered once the store settles it (`202` and
//! the scheduler if it committed, `503` if not).
//!
//! **Invariant:** a request row is committed before any reply about it is published, and a
//! publish is acknowledged only after what it carries was committed.

pub mod classify;
mod plan;

use crate::logging::log_repeated;
use crate::wire::ErrorCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Level;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::analytics::scheduler::Scheduler;
use crate::config::Limits;
use crate::flow::{DeviceEvent, Inbound, OutboundReply, Replies};
use crate::metrics::IntakeStats;
use crate::store::commands::{Command, Outcome, Written};
use crate::store::deadletters::DeadLetter;
use crate::store::{Store, StoreError};
use crate::wire::{topics, Reply};

use classify::Address;

/// Most publishes handled in one batch.
const MAX_BATCH: usize = 1024;

/// A publish refused while its batch's `COMMIT` is settled: its plan, and when it was read.
type Waiting = (plan::Plan, i64);

/// A batch refused while its `COMMIT` is settled: its publishes still to answer (`None`:
/// answered already), and the store's outcomes once it says.
type Unsettled = BoxFuture<
    'static,
    (
        Vec<Option<Waiting>>,
        Result<Vec<Option<Outcome>>, StoreError>,
    ),
>;

/// The intake stage.
pub struct Intake {
    /// The store.
    pub store: Store,
    /// Replies and dead-letter announcements.
    pub replies: Replies,
    /// Admission and queueing.
    pub scheduler: Arc<Scheduler>,
    /// Limits.
    pub limits: Limits,
    /// For `gateway/{gw}/deadletter`.
    pub gateway_id: String,
    /// Final replies intake itself produces (a cancel's `410`), for the outbox.
    pub replies_tx: mpsc::UnboundedSender<crate::store::requests::FinalReply>,
    /// Device events for the outbox.
    pub events_tx: mpsc::UnboundedSender<DeviceEvent>,
    /// Set while draining: new requests get `503`.
    pub draining: Arc<AtomicBool>,
    /// Counters.
    pub stats: Arc<IntakeStats>,
    /// How many batches are refused and wait for the store to settle their `COMMIT`, so that
    /// a stop can give their answers a moment.
    pub unsettled: tokio::sync::watch::Sender<usize>,
}

impl Intake {
    /// Handles publishes until the inbox closes. A store that cannot write degrades the
    /// gateway (see [`Intake::process`]); only a closed store (its thread is gone) is returned,
    /// as fatal.
    pub async fn run(self, mut inbox_rx: mpsc::Receiver<Inbound>) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut settling = FuturesUnordered::new();
        loop {
            tokio::select! {
                Some((plans, result)) = settling.next(), if !settling.is_empty() => {
                    self.settled(plans, result).await;
                    self.unsettled.send_replace(settling.len());
                }
                received = inbox_rx.recv_many(&mut batch, MAX_BATCH) => {
                    if received == 0 {
                        return Ok(());
                    }
                    if let Some(unsettled) = self.process(std::mem::take(&mut batch)).await? {
                        settling.push(unsettled);
                        self.unsettled.send_replace(settling.len());
                    }
                }
            }
        }
    }

    /// Handles one batch; a batch whose `COMMIT` answer was lost comes back to be answered once
    /// the store settles it ([`Intake::settled`]).
    async fn process(&self, publishes: Vec<Inbound>) -> Result<Option<Unsettled>, StoreError> {
        let draining = self.draining.load(Ordering::Relaxed);
        let mut plans = Vec::with_capacity(publishes.len());
        let mut work = Vec::with_capacity(publishes.len());
        for incoming in publishes {
            let (plan, db) = plan::plan(&incoming.publish, self, draining);
            plans.push((incoming, plan));
            work.push(db);
        }
        let stored: Vec<bool> = work.iter().map(Option::is_some).collect();
        // While degraded only acks of held replies are tried, and only when the released disk
        // reserve gives accepted work room to finish; everything else is refused.
        let health = self.store.health();
        if health.is_degraded() {
            let finishing = health.finishing();
            work = work
                .into_iter()
                .map(|command| command.filter(|c| finishing && matches!(c, Command::Ack(..))))
                .collect();
        }
        let mut sent: Vec<bool> = work.iter().map(Option::is_some).collect();
        // `Some` of no outcomes: none was committed.
        let outcomes = if !sent.contains(&true) {
            Some(Vec::new())
        } else {
            match self.store.write(work).await {
                Written::Done(Ok(outcomes)) => Some(outcomes),
                Written::Done(Err(StoreError::Closed)) => return Err(StoreError::Closed),
                Written::Done(Err(error)) => {
                    // The store marked itself degraded (unless it was a conflict): nothing of
                    // this batch was committed.
                    let publishes = plans.len();
                    log_repeated!(Level::WARN, %error, publishes, "intake batch not committed");
                    sent.fill(false);
                    Some(Vec::new())
                }
                Written::Unsettled(settling) => {
                    tracing::warn!(
                        publishes = plans.len(),
                        "intake batch's commit answer was lost: refused, and answered once the \
                         database says whether it committed"
                    );
                    let waiting = self.acknowledge(plans, stored, sent, None).await;
                    return Ok(Some(Box::pin(async move { (waiting, settling.await) })));
                }
            }
        };
        self.acknowledge(plans, stored, sent, outcomes).await;
        Ok(None)
    }

    /// Acknowledges or refuses each publish of a batch, in receive order, and answers it:
    /// - without store work (`stored` false): acknowledged, answered as usual;
    /// - its store work not committed (`sent` false: left out while degraded, or its batch
    ///   failed): refused, answered as not stored ([`plan::Plan::unwritten`]);
    /// - committed: acknowledged, answered as its outcome says (`outcomes`, in order; one
    ///   missing is none);
    /// - its batch's `COMMIT` answer lost (`outcomes` is `None`): its row may or may not exist,
    ///   so it is refused now without an answer (the next batches are answered meanwhile) and
    ///   handed back, to be answered once the store settles the batch ([`Intake::settled`]).
    async fn acknowledge(
        &self,
        plans: Vec<(Inbound, plan::Plan)>,
        stored: Vec<bool>,
        sent: Vec<bool>,
        outcomes: Option<Vec<Option<Outcome>>>,
    ) -> Vec<Option<Waiting>> {
        let unsettled = outcomes.is_none();
        let outcomes = outcomes.unwrap_or_default().into_iter().map(Some);
        let outcomes = outcomes.chain(std::iter::repeat_with(|| None));
        let mut waiting = Vec::new();
        for (((incoming, plan), outcome), (stored, sent)) in plans
            .into_iter()
            .zip(outcomes)
            .zip(stored.into_iter().zip(sent))
        {
            let at_ms = incoming.received_ms;
            if stored && sent && unsettled {
                incoming.refuse().await;
                waiting.push(Some((plan, at_ms)));
                continue;
            }
            if stored && !sent {
                incoming.refuse().await;
                plan.unwritten(self, at_ms).await;
            } else {
                incoming.ack().await;
                plan.finish(self, outcome.flatten(), at_ms).await;
            }
            if unsettled {
                waiting.push(None);
            }
        }
        waiting
    }

    /// Answers the publishes of a batch the store settled: as committed (`202`, and a new request
    /// goes to the scheduler), or as not stored (`503`).
    async fn settled(
        &self,
        waiting: Vec<Option<Waiting>>,
        result: Result<Vec<Option<Outcome>>, StoreError>,
    ) {
        tracing::warn!(
            committed = result.is_ok(),
            "intake batch whose commit answer was lost is settled"
        );
        match result {
            Ok(outcomes) => {
                for (plan, outcome) in waiting.into_iter().zip(outcomes) {
                    if let Some((plan, at_ms)) = plan {
                        plan.finish(self, outcome, at_ms).await;
                    }
                }
            }
            Err(_) => {
                for (plan, at_ms) in waiting.into_iter().flatten() {
                    plan.unwritten(self, at_ms).await;
                }
            }
        }
    }

    /// Publishes a reply that is not held (202, intake errors, duplicates' 202, control ops).
    async fn answer(&self, address: &Address, mut reply: Reply) {
        if address.envelope {
            reply.corr = address.corr.clone();
        }
        self.replies
            .reply(OutboundReply {
                device: address.device.clone(),
                topic: address.topic.clone(),
                payload: reply.encode(),
                corr: address.corr.clone(),
                status: reply.status,
                expiry: self.limits.reply_ttl,
                envelope: address.envelope,
            })
            .await;
    }

    /// Publishes a dead letter for operators.
    async fn announce_dead(&self, letter: &DeadLetter) {
        let topic = topics::deadletter(&self.gateway_id);
        self.replies
            .announce(topic, crate::status::deadletter_json(letter), false)
            .await;
    }

    fn refusal_reply(&self, code: ErrorCode, message: &str, retry_after_ms: u64) -> Reply {
        let mut reply = Reply::rejected(code, message);
        reply.retry_after_ms = Some(retry_after_ms);
        reply
    }

    fn deadline_ms(&self, received_ms: i64, expiry_s: Option<u32>) -> i64 {
        let timeout = self.limits.op_timeout;
        let own = expiry_s.map_or(timeout, |s| Duration::from_secs(u64::from(s)).min(timeout));
        received_ms + own.as_millis() as i64
    }
}
