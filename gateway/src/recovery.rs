//! Recovery on start: what a previous run (clean stop or kill -9) left in the store goes back
//! into the flow. Queued requests are queued again (ops are pure, so a run a crash interrupted
//! simply runs again; only a committed completion counts as an execution). Final replies that
//! were committed but never handed to the broker are published.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::analytics::ops::{self, PrepareError};
use crate::analytics::scheduler::Scheduler;
use crate::analytics::Job;
use crate::config::Limits;
use crate::store::requests::{self, Completion, FinalReply, StoredRequest};
use crate::store::{now_ms, Store, StoreError};
use crate::wire::envelope::decode_value;
use crate::wire::{Reply, State, Status};

/// What recovery did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recovered {
    /// Requests queued again.
    pub requeued: usize,
    /// Final replies sent to the outbox.
    pub republished: usize,
}

/// Requeues unfinished requests and hands unpublished final replies to the outbox.
pub async fn recover(
    store: &Store,
    scheduler: &Arc<Scheduler>,
    limits: &Limits,
    done_tx: &mpsc::UnboundedSender<FinalReply>,
) -> Result<Recovered, StoreError> {
    let (queued, unpublished) = store
        .call(|txn| Ok((requests::queued(txn)?, requests::unpublished(txn)?)))
        .await?;
    let mut recovered = Recovered::default();
    for reply in unpublished {
        let _ = done_tx.send(reply);
        recovered.republished += 1;
    }
    for stored in queued {
        match job(&stored, limits) {
            Ok(job) => {
                scheduler.push_recovered(job);
                recovered.requeued += 1;
            }
            Err(message) => {
                // The stored arguments no longer make a valid call (e.g. an op was removed):
                // the request still ends in exactly one final reply.
                let mut reply =
                    Reply::new(Status::Failed, State::Failed).with_error("op_failed", message);
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
                if store
                    .call(move |txn| requests::complete(txn, &completion))
                    .await?
                {
                    let _ = done_tx.send(final_reply);
                }
            }
        }
    }
    Ok(recovered)
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
