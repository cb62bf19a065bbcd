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

use crate::wire::ErrorCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::analytics::scheduler::Scheduler;
use crate::config::Limits;
use crate::flow::{DeviceEvent, Inbound, OutboundReply, Replies};
use crate::metrics::IntakeStats;
use crate::store::commands::{Command, Outcome, Settling, Written};
use crate::store::deadletters::DeadLetter;
use crate::store::{Store, StoreError};
use crate::wire::{topics, Reply};

use classify::Address;

/// Most publishes handled in one batch.
const MAX_BATCH: usize = 1024;

/// A batch refused while its `COMMIT` is settled: the plans of its publishes still to answer
/// (`None`: answered already) with when each was read, and the store's outcomes once it says.
type Unsettled = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    Vec<Option<(plan::Plan, i64)>>,
                    Result<Vec<Option<Outcome>>, StoreError>,
                ),
            > + Send,
    >,
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
        let sent: Vec<bool> = work.iter().map(Option::is_some).collect();
        let outcomes: Vec<Option<Outcome>> = if !sent.contains(&true) {
            work.into_iter().map(|_| None).collect()
        } else {
            match self.store.write(work).await {
                Written::Done(Ok(outcomes)) => outcomes,
                Written::Done(Err(StoreError::Closed)) => return Err(StoreError::Closed),
                Written::Done(Err(error)) => {
                    // The store marked itself degraded (unless it was a conflict): nothing of
                    // this batch was committed.
                    tracing::warn!(%error, publishes = plans.len(), "intake batch not committed");
                    self.unwritten(plans, stored).await;
                    return Ok(None);
                }
                Written::Unsettled(settling) => {
                    return Ok(Some(self.unsettled(plans, stored, sent, settling).await));
                }
            }
        };
        for (((incoming, plan), outcome), (stored, sent)) in plans
            .into_iter()
            .zip(outcomes)
            .zip(stored.into_iter().zip(sent))
        {
            let at_ms = incoming.received_ms;
            if stored && !sent {
                incoming.refuse().await;
                plan.unwritten(self, at_ms).await;
            } else {
                incoming.ack().await;
                plan.finish(self, outcome, at_ms).await;
            }
        }
        Ok(None)
    }

    /// A batch whose `COMMIT` answer was lost: its row may or may not exist, so its publishes
    /// are neither acknowledged nor answered `503`. Each that had store work in it is refused
    /// now, in receive order, without an answer (the next batches are answered meanwhile); its
    /// answer waits for the store to settle the batch ([`Intake::settled`]). The others go on
    /// as usual.
    async fn unsettled(
        &self,
        plans: Vec<(Inbound, plan::Plan)>,
        stored: Vec<bool>,
        sent: Vec<bool>,
        settling: Settling,
    ) -> Unsettled {
        tracing::warn!(
            publishes = plans.len(),
            "intake batch's commit answer was lost: refused, and answered once the database \
             says whether it committed"
        );
        let mut waiting = Vec::with_capacity(plans.len());
        for ((incoming, plan), (stored, sent)) in
            plans.into_iter().zip(stored.into_iter().zip(sent))
        {
            let at_ms = incoming.received_ms;
            if stored && sent {
                incoming.refuse().await;
                waiting.push(Some((plan, at_ms)));
            } else if stored {
                incoming.refuse().await;
                plan.unwritten(self, at_ms).await;
                waiting.push(None);
            } else {
                incoming.ack().await;
                plan.finish(self, None, at_ms).await;
                waiting.push(None);
            }
        }
        Box::pin(async move { (waiting, settling.await) })
    }

    /// Answers the publishes of a batch the store settled: as committed (`202`, and a new request
    /// goes to the scheduler), or as not stored (`503`).
    async fn settled(
        &self,
        waiting: Vec<Option<(plan::Plan, i64)>>,
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

    /// Answers a batch whose store work was not committed: each publish that needed the store
    /// is refused and answered as [`plan::Plan::unwritten`] says; the others go on as usual.
    async fn unwritten(&self, plans: Vec<(Inbound, plan::Plan)>, stored: Vec<bool>) {
        for ((incoming, plan), stored) in plans.into_iter().zip(stored) {
            let at_ms = incoming.received_ms;
            if stored {
                incoming.refuse().await;
                plan.unwritten(self, at_ms).await;
            } else {
                incoming.ack().await;
                plan.finish(self, None, at_ms).await;
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
