//! The checks every reply goes through once [`Tracker::on_reply`] has matched its correlation to
//! a request of this run: topic and properties, the `202`'s shape, and the final reply's request
//! id and result (recomputed by [`crate::verify`]).

use std::time::Instant;

use wire::{Reply, State, Status};

use super::{Awaiting, Incoming, Outcome, Tracker};
use crate::verify;

impl Tracker {
    /// Checks topic, properties and payload shape common to every reply.
    pub(super) fn check_envelope(
        &self,
        msg: Incoming<'_>,
    ) -> Result<Reply, (&'static str, String, bool)> {
        let reply = Reply::decode(msg.payload).map_err(|e| ("bad_payload", e.to_string(), true))?;
        let is_final = reply.status != Status::Accepted;
        let fail = |reason, detail: String| Err((reason, detail, is_final));
        if msg.topic != self.reply_topic {
            return fail("wrong_topic", msg.topic.to_owned());
        }
        if msg.content_type != Some("application/cbor") {
            return fail("content_type", format!("{:?}", msg.content_type));
        }
        let code = reply.status.code().to_string();
        if msg.status_property != Some(code.as_str()) {
            return fail(
                "status_property",
                format!("{:?} vs {code}", msg.status_property),
            );
        }
        if reply.status.is_error() && reply.error.is_none() {
            return fail("no_error_member", code);
        }
        Ok(reply)
    }

    /// A reply for a request answered before its `202`: the `202` (checked like any other) ends
    /// the wait; a repeated final is a duplicate.
    pub(super) fn late_202(&mut self, seq: u64, msg: Incoming<'_>, now: Instant) -> Outcome {
        let reply = match self.check_envelope(msg) {
            Ok(reply) if reply.status == Status::Accepted => reply,
            Ok(_) => return Outcome::Duplicate,
            Err((reason, detail, _)) => {
                return Outcome::Mismatch {
                    reason,
                    detail,
                    finished: false,
                }
            }
        };
        let Some(Awaiting {
            request_id: final_id,
            sent_at,
            ..
        }) = self.awaiting_202.remove(&seq)
        else {
            return Outcome::Duplicate;
        };
        match (final_id, reply.request_id) {
            (Some(known), Some(got)) if known != got => Outcome::Mismatch {
                reason: "request_id_changed",
                detail: format!("late 202 said {got}, final {known}"),
                finished: false,
            },
            (_, None) => Outcome::Mismatch {
                reason: "bad_202",
                detail: "202 without request_id".into(),
                finished: false,
            },
            _ => Outcome::Late202 {
                latency: now.saturating_duration_since(sent_at),
            },
        }
    }

    pub(super) fn accepted(&mut self, seq: u64, reply: &Reply, now: Instant) -> Outcome {
        let Some(pending) = self.pending.get_mut(&seq) else {
            return Outcome::Duplicate;
        };
        let shape_ok = matches!(
            reply.state,
            State::Accepted | State::Queued | State::Running
        ) && reply.retry_after_ms.is_some();
        let Some(id) = reply.request_id.filter(|_| shape_ok) else {
            let detail = format!("state {:?}, request_id {:?}", reply.state, reply.request_id);
            return Outcome::Mismatch {
                reason: "bad_202",
                detail,
                finished: false,
            };
        };
        match pending.request_id {
            Some(known) if known == id => Outcome::Repeated202,
            Some(known) => Outcome::Mismatch {
                reason: "request_id_changed",
                detail: format!("202 said {id}, earlier {known}"),
                finished: false,
            },
            None => {
                pending.request_id = Some(id);
                Outcome::Accepted {
                    latency: now.saturating_duration_since(pending.sent_at),
                }
            }
        }
    }

    pub(super) fn finish(&mut self, seq: u64, reply: &Reply, now: Instant) -> Outcome {
        let Some(pending) = self.pending.remove(&seq) else {
            return Outcome::Duplicate;
        };
        self.finished.insert(seq);
        let latency = now.saturating_duration_since(pending.sent_at);
        let had_202 = pending.request_id.is_some();
        let bad = |reason, detail: String| Outcome::Mismatch {
            reason,
            detail,
            finished: true,
        };
        // Errors found at intake come without a 202 (and without a stored request id).
        let rejected = reply.state == State::Rejected;
        if let (Some(known), Some(got)) = (pending.request_id, reply.request_id) {
            if known != got {
                return bad(
                    "request_id_changed",
                    format!("final {got}, 202 said {known}"),
                );
            }
        }
        if reply.status == Status::Ok {
            if reply.state != State::Done {
                return bad("bad_final", format!("200 with state {:?}", reply.state));
            }
            if reply.request_id.is_none() && self.strict_202 {
                return bad("bad_final", "200 without request_id".into());
            }
            if let Err(wrong) = verify::check(&pending.expect, reply.result.as_ref()) {
                return bad(wrong.reason, wrong.detail);
            }
        }
        if self.strict_202 && !rejected && !had_202 {
            let awaiting = Awaiting {
                request_id: reply.request_id,
                sent_at: pending.sent_at,
                status: reply.status.code(),
            };
            self.awaiting_202.insert(seq, awaiting);
        }
        Outcome::Final {
            status: reply.status.code(),
            latency,
            had_202,
        }
    }
}
