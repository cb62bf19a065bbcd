//! One publish's path through a batch: what to do before the commit ([`plan`] reserves a slot
//! and picks the store work, a typed [`Command`] the store runs in the batch's transaction), and
//! what to publish after the commit ([`Plan::finish`]).

use crate::wire::ErrorCode;
use ciborium::Value;
use rumqttc::v5::mqttbytes::v5::Publish;

use super::classify::{classify, Address, Incoming, RequestKind};
use super::Intake;
use crate::analytics::scheduler::Refusal;
use crate::analytics::Job;
use crate::flow::{DeviceEvent, OutboundReply};
use crate::store::commands::{Command, Outcome};
use crate::store::deadletters::DeadLetter;
use crate::store::now_ms;
use crate::store::requests::{Admission, CancelOutcome, Existing, NewRequest};
use crate::wire::envelope::decode_value;
use crate::wire::{Correlation, DeviceId, Reply, RequestId, State, Status};

/// The 410 a cancel records (the store calls this inside its transaction).
fn cancelled_reply(id: RequestId, envelope: bool, of: &Correlation) -> Vec<u8> {
    let mut reply = Reply::new(Status::Gone, State::Cancelled)
        .with_error(ErrorCode::Cancelled, "the device cancelled this request");
    reply.request_id = Some(id);
    if envelope {
        reply.corr = Some(of.clone());
    }
    reply.encode()
}

/// What to do after the commit. Every device event is sent from here, so the outbox sees them
/// in receive order.
pub(super) enum Plan {
    Admit {
        address: Address,
        job: Job,
    },
    Status {
        address: Address,
    },
    Cancel {
        address: Address,
    },
    Reject {
        address: Address,
        reply: Reply,
        dead: Option<DeadLetter>,
    },
    Refuse {
        address: Address,
        reply: Reply,
    },
    Ack(DeviceId),
    Seen(DeviceId, Option<u64>),
    Awake(DeviceId, u64),
    Asleep(DeviceId),
    Ignored,
}

/// Plans one publish: classifies it, reserves a scheduler slot for a new request, and picks
/// the store work.
pub(super) fn plan(publish: &Publish, intake: &Intake, draining: bool) -> (Plan, Option<Command>) {
    match classify(publish, &intake.limits) {
        Incoming::Request(valid) => {
            let address = valid.address;
            let device = address.device.clone();
            match valid.kind {
                RequestKind::Analytics(call) => {
                    if draining {
                        let reply = intake.refusal_reply(
                            ErrorCode::Draining,
                            "the gateway is shutting down",
                            1000,
                        );
                        return (Plan::Refuse { address, reply }, None);
                    }
                    if let Err(refusal) = intake.scheduler.reserve(&device) {
                        let reply = match refusal {
                            Refusal::DeviceQuota { retry_after_ms } => intake.refusal_reply(ErrorCode::TooManyPending,
                                &format!("the device has limits.max_pending_per_device = {} requests pending", intake.limits.max_pending_per_device),
                                retry_after_ms,
                            ),
                            Refusal::QueueFull { retry_after_ms } => intake.refusal_reply(ErrorCode::QueueFull,
                                "the gateway's queue is full",
                                retry_after_ms,
                            ),
                        };
                        return (Plan::Refuse { address, reply }, None);
                    }
                    let received_ms = now_ms();
                    let new = NewRequest {
                        id: RequestId::new(),
                        device: device.clone(),
                        corr: valid.corr.clone(),
                        op: valid.op,
                        args: valid.args,
                        reply_topic: address.topic.clone(),
                        envelope: address.envelope,
                        received_ms,
                        deadline_ms: intake.deadline_ms(received_ms, valid.expiry_s),
                    };
                    let job = Job {
                        id: new.id,
                        device,
                        corr: valid.corr,
                        call,
                        reply_topic: new.reply_topic.clone(),
                        envelope: new.envelope,
                        received_ms,
                        deadline_ms: new.deadline_ms,
                    };
                    (
                        Plan::Admit { address, job },
                        Some(Command::Admit {
                            request: new,
                            dedupe_after_ms: received_ms
                                - intake.limits.dedupe_window.as_millis() as i64,
                            max_pending: intake.limits.max_pending_per_device,
                        }),
                    )
                }
                RequestKind::Status(of) => {
                    (Plan::Status { address }, Some(Command::Find(device, of)))
                }
                RequestKind::Cancel(of) => {
                    let now = now_ms();
                    let expires_ms = now + intake.limits.reply_ttl.as_millis() as i64;
                    (
                        Plan::Cancel { address },
                        Some(Command::Cancel {
                            device,
                            of,
                            now_ms: now,
                            expires_ms,
                            reply: cancelled_reply,
                        }),
                    )
                }
            }
        }
        Incoming::Rejected(rejection) => {
            let db = rejection.dead.clone().map(Command::Dead);
            let plan = Plan::Reject {
                address: rejection.address,
                reply: rejection.reply,
                dead: rejection.dead,
            };
            (plan, db)
        }
        Incoming::Ack(device, corr) => {
            (Plan::Ack(device.clone()), Some(Command::Ack(device, corr)))
        }
        Incoming::Telemetry(device, readings) => (
            Plan::Seen(device.clone(), None),
            Some(Command::Telemetry(device, readings)),
        ),
        Incoming::Presence(device, Some(listen_ms)) => (Plan::Awake(device, listen_ms), None),
        Incoming::Presence(device, None) => (Plan::Asleep(device), None),
        Incoming::Ignored => (Plan::Ignored, None),
    }
}

impl Plan {
    /// Publishes what this publish's outcome calls for; `at_ms` is when it was read
    /// ([`crate::flow::Inbound::received_ms`]).
    pub(super) async fn finish(self, intake: &Intake, outcome: Option<Outcome>, at_ms: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let seen = |device: &DeviceId, listen_ms: Option<u64>| {
            let window = listen_ms.map_or(
                intake.limits.listen_window,
                std::time::Duration::from_millis,
            );
            let _ = intake
                .events_tx
                .send(DeviceEvent::Seen(device.clone(), window, at_ms));
        };
        match (self, outcome) {
            (Plan::Admit { address, job }, Some(Outcome::Admitted(Admission::New))) => {
                intake.stats.accepted.fetch_add(1, Relaxed);
                let mut reply = Reply::new(Status::Accepted, State::Accepted);
                reply.request_id = Some(job.id);
                let points = job.call.inline_len().max(1);
                let cost_key = job.call.cost_key();
                reply.retry_after_ms = Some(intake.scheduler.estimate_ms(cost_key, points));
                tracing::debug!(request_id = %job.id, device_id = %job.device, "accepted");
                seen(&job.device, None);
                // The 202 goes out before the job can finish, so it always precedes the final.
                intake.answer(&address, reply).await;
                intake.scheduler.push(job);
            }
            (
                Plan::Admit { address, job },
                Some(Outcome::Admitted(Admission::Existing(existing))),
            ) => {
                intake.stats.duplicates.fetch_add(1, Relaxed);
                intake.scheduler.release(&job.device);
                seen(&job.device, None);
                duplicate(intake, &address, existing).await;
            }
            (Plan::Admit { address, job }, Some(Outcome::Admitted(Admission::OverQuota))) => {
                intake.stats.over_quota.fetch_add(1, Relaxed);
                intake.scheduler.release(&job.device);
                seen(&job.device, None);
                let reply = intake.refusal_reply(
                    ErrorCode::TooManyPending,
                    &format!(
                        "the device has limits.max_pending_per_device = {} requests pending",
                        intake.limits.max_pending_per_device
                    ),
                    intake.scheduler.estimate_ms(job.call.cost_key(), 1),
                );
                rejected(intake, &job.device, &reply);
                intake.answer(&address, reply).await;
            }
            (Plan::Status { address }, Some(Outcome::Found(found))) => {
                seen(&address.device, None);
                let reply = match found {
                    Some(existing) => {
                        let state = if existing.state == State::Queued
                            && intake.scheduler.is_running(existing.id)
                        {
                            State::Running
                        } else {
                            existing.state
                        };
                        let mut entries = vec![(text("state"), text(state.as_str()))];
                        if let Some(payload) =
                            existing.reply.as_deref().and_then(|p| decode_value(p).ok())
                        {
                            entries.push((text("reply"), payload));
                        }
                        let mut reply = Reply::new(Status::Ok, State::Done);
                        reply.request_id = Some(existing.id);
                        reply.result = Some(Value::Map(entries));
                        reply
                    }
                    None => unknown_request(),
                };
                intake.answer(&address, reply).await;
            }
            (Plan::Cancel { address }, Some(Outcome::Cancel(outcome))) => {
                seen(&address.device, None);
                let reply = match outcome {
                    CancelOutcome::Cancelled(final_reply) => {
                        intake.scheduler.remove(&final_reply.device, final_reply.id);
                        let mut reply = Reply::new(Status::Ok, State::Done);
                        reply.request_id = Some(final_reply.id);
                        reply.result = Some(Value::Map(vec![(text("state"), text("cancelled"))]));
                        let _ = intake.replies_tx.send(final_reply);
                        reply
                    }
                    CancelOutcome::AlreadyFinished(state) => Reply::rejected(
                        ErrorCode::AlreadyFinished,
                        format!("the request has already finished ({})", state.as_str()),
                    ),
                    CancelOutcome::NotFound => unknown_request(),
                };
                intake.answer(&address, reply).await;
            }
            (
                Plan::Reject {
                    address,
                    reply,
                    dead,
                },
                _,
            ) => {
                intake.stats.rejected.fetch_add(1, Relaxed);
                tracing::info!(device_id = %address.device, status = reply.status.code(), "rejected");
                rejected(intake, &address.device, &reply);
                intake.answer(&address, reply).await;
                if let Some(dead) = dead {
                    intake.stats.dead_lettered(&dead.reason);
                    intake.announce_dead(&dead).await;
                }
            }
            (Plan::Refuse { address, reply }, _) => {
                let counter = if reply.status == Status::TooMany {
                    &intake.stats.over_quota
                } else {
                    &intake.stats.unavailable
                };
                counter.fetch_add(1, Relaxed);
                rejected(intake, &address.device, &reply);
                intake.answer(&address, reply).await;
            }
            (Plan::Ack(device), Some(Outcome::Acked(acked))) => {
                seen(&device, None);
                if let Some(id) = acked {
                    tracing::debug!(request_id = %id, device_id = %device, "acked");
                    let _ = intake.events_tx.send(DeviceEvent::Acked(device));
                }
            }
            (Plan::Seen(device, listen_ms), outcome) => {
                if let Some(Outcome::Readings { stored, copies }) = outcome {
                    let stats = &intake.stats;
                    stats.readings_stored.fetch_add(stored as u64, Relaxed);
                    stats.reading_copies.fetch_add(copies as u64, Relaxed);
                }
                seen(&device, listen_ms)
            }
            // On a shared store another gateway may have seen this device fall asleep (its
            // `asleep` went there): an explicit wake is a wake here too, whatever this
            // gateway's own view says, so its held replies come now.
            (Plan::Awake(device, listen_ms), _) => {
                if intake.store.lease().is_some() {
                    let _ = intake
                        .events_tx
                        .send(DeviceEvent::Asleep(device.clone(), at_ms));
                }
                seen(&device, Some(listen_ms));
            }
            // Sent here, in receive order, after the events of earlier publishes.
            (Plan::Asleep(device), _) => {
                let _ = intake.events_tx.send(DeviceEvent::Asleep(device, at_ms));
            }
            (Plan::Ignored, _) => {}
            (_, _) => tracing::error!("intake plan and store outcome disagree"),
        }
    }
}

impl Plan {
    /// What a publish whose store work was not committed (the store is degraded) gets: a
    /// request or control op `503` (`store_unavailable`, with `retry_after_ms`) and its
    /// scheduler slot back; bad input its error reply (the dead letter is announced, not
    /// stored); an ack nothing (its reply stays held and is delivered again on the next wake);
    /// telemetry nothing (the device sends it again, since it was not acknowledged).
    pub(super) async fn unwritten(self, intake: &Intake, at_ms: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let unavailable = |address: Address| async move {
            intake.stats.unavailable.fetch_add(1, Relaxed);
            let reply = intake.refusal_reply(
                ErrorCode::StoreUnavailable,
                "the gateway cannot store requests now; try again later",
                crate::store::health::RETRY_AFTER_MS,
            );
            intake.answer(&address, reply).await;
        };
        match self {
            Plan::Admit { address, job } => {
                intake.scheduler.release(&job.device);
                unavailable(address).await;
            }
            Plan::Status { address } | Plan::Cancel { address } => unavailable(address).await,
            Plan::Reject {
                address,
                reply,
                dead,
            } => {
                intake.stats.rejected.fetch_add(1, Relaxed);
                intake.answer(&address, reply).await;
                if let Some(dead) = dead {
                    tracing::warn!(device_id = %address.device, "dead letter not stored: the store is degraded");
                    intake.announce_dead(&dead).await;
                }
            }
            Plan::Ack(_) | Plan::Seen(..) => {}
            other => other.finish(intake, None, at_ms).await,
        }
    }
}

/// Answers a duplicate with the request's current state: `202` while pending, the stored
/// final reply (byte for byte) once finished.
async fn duplicate(intake: &Intake, address: &Address, existing: Existing) {
    match (existing.reply, existing.status) {
        (Some(payload), Some(status)) => {
            let left_ms = existing
                .expires_ms
                .map_or(1000, |e| (e - now_ms()).max(1000)) as u64;
            let status = Status::from_code(u64::from(status)).unwrap_or(Status::Failed);
            intake
                .replies
                .reply(OutboundReply {
                    device: address.device.clone(),
                    topic: existing.reply_topic,
                    payload,
                    corr: address.corr.clone(),
                    status,
                    expiry: std::time::Duration::from_millis(left_ms),
                    envelope: address.envelope,
                })
                .await;
        }
        _ => {
            let mut reply = Reply::new(Status::Accepted, State::Queued);
            reply.request_id = Some(existing.id);
            reply.retry_after_ms = Some(intake.scheduler.estimate_ms(&existing.op, 1));
            intake.answer(address, reply).await;
        }
    }
}

/// Tells the outbox the device was answered with an error: its status's `last_error`.
fn rejected(intake: &Intake, device: &DeviceId, reply: &Reply) {
    if let Some(error) = &reply.error {
        let text = format!("{}: {}", error.code, error.message);
        let _ = intake
            .events_tx
            .send(DeviceEvent::Rejected(device.clone(), text));
    }
}

fn unknown_request() -> Reply {
    Reply::rejected(
        ErrorCode::UnknownRequest,
        "no request of this device has that correlation",
    )
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}
