//! Intake: broker → store. Takes every publish the service receives, in order, in batches:
//! classifies each ([`classify`]), does all their store work in one transaction, and only after
//! the commit acks them (in receive order), answers (`202`, errors, duplicates, control ops) and
//! hands accepted jobs to the scheduler.
//!
//! **Invariant:** a request row is committed before any reply about it is published.

pub mod classify;
mod plan;

use crate::wire::ErrorCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::analytics::scheduler::Scheduler;
use crate::config::Limits;
use crate::flow::{DeviceEvent, Inbound, OutboundReply, Replies};
use crate::metrics::IntakeStats;
use crate::store::commands::Outcome;
use crate::store::deadletters::DeadLetter;
use crate::store::{Store, StoreError};
use crate::wire::{topics, Reply};

use classify::Address;

/// Most publishes handled in one batch.
const MAX_BATCH: usize = 1024;

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
}

impl Intake {
    /// Handles publishes until the inbox closes. A store failure is returned: it is fatal.
    pub async fn run(self, mut inbox_rx: mpsc::Receiver<Inbound>) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while inbox_rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.process(std::mem::take(&mut batch)).await?;
        }
        Ok(())
    }

    async fn process(&self, publishes: Vec<Inbound>) -> Result<(), StoreError> {
        let draining = self.draining.load(Ordering::Relaxed);
        let mut plans = Vec::with_capacity(publishes.len());
        let mut work = Vec::with_capacity(publishes.len());
        for incoming in publishes {
            let (plan, db) = plan::plan(&incoming.publish, self, draining);
            plans.push((incoming, plan));
            work.push(db);
        }
        let outcomes: Vec<Option<Outcome>> = if work.iter().all(Option::is_none) {
            work.into_iter().map(|_| None).collect()
        } else {
            self.store.batch(work).await?
        };
        for ((incoming, plan), outcome) in plans.into_iter().zip(outcomes) {
            incoming.ack().await;
            plan.finish(self, outcome).await;
        }
        Ok(())
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
