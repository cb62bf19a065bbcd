//! One device's table of requests in flight, and the classification of every reply it receives.
//!
//! Fed by the device loops (a request sent, a reply received); feeds [`crate::metrics`] with one
//! [`Outcome`] per reply. No I/O and no clock of its own, so it is tested directly.
//!
//! **Invariant:** every request sent ends in exactly one of `replies_ok`, `replies_error`,
//! `mismatched` (a final reply that was wrong) or, via [`Tracker::give_up`], `lost`.
//!
//! With `strict_202`, a final reply that overtakes its `202` is accepted provisionally: the `202`
//! must still arrive, with the same request id, before the run ends ([`Outcome::Late202`]); if it
//! never does, [`Tracker::give_up`] reports it as `final_without_202`.
//!
//! The checks a reply goes through are in the private `checks` module.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wire::{RequestId, Status};

use crate::workload::{correlation, parse_correlation, Expect};

mod checks;

/// The parts of a received PUBLISH that the checks look at.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The topic it arrived on.
    pub topic: &'a str,
    /// MQTT 5 Correlation Data.
    pub corr: Option<&'a [u8]>,
    /// MQTT 5 Content Type.
    pub content_type: Option<&'a str>,
    /// The `status` user property.
    pub status_property: Option<&'a str>,
    /// The CBOR payload.
    pub payload: &'a [u8],
}

/// What one reply meant.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The first `202` for a pending request.
    Accepted {
        /// Request published → `202` received.
        latency: Duration,
    },
    /// The first final reply for a request, correct.
    Final {
        /// Its status code (200, or an error the gateway chose to send).
        status: u16,
        /// Request published → final reply received.
        latency: Duration,
        /// Whether a `202` came before it.
        had_202: bool,
    },
    /// The `202` of a request whose final reply came first (strict mode); it matched.
    Late202 {
        /// Request published → `202` received.
        latency: Duration,
    },
    /// A reply for a request already answered (at-least-once delivery); dropped.
    Duplicate,
    /// Another `202` with the same request id for a request still pending: the answer to a
    /// retry (a sleepy device sends a request again when no `202` came before it slept).
    Repeated202,
    /// A reply whose correlation names another run of device-sim (same device id).
    Foreign,
    /// A reply that broke the protocol. `finished` when it was the request's final reply.
    Mismatch {
        /// Stable reason, a JSON key in the report.
        reason: &'static str,
        /// Detail for the log.
        detail: String,
        /// Whether the request it names is now finished.
        finished: bool,
    },
}

/// A request sent and not yet finally answered.
#[derive(Debug)]
struct Pending {
    expect: Expect,
    sent_at: Instant,
    request_id: Option<RequestId>,
}

/// A request answered before its `202` (strict mode).
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    /// The final reply's request id, which the `202` must repeat.
    request_id: Option<RequestId>,
    /// When the request was sent.
    sent_at: Instant,
    /// The final reply's status, so it can be reclassified if the `202` never comes.
    status: u16,
}

/// What a device leaves unsettled when its run ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Requests with no final reply: lost.
    pub lost: u64,
    /// Answered with `200` but the `202` never came: to move from `replies_ok` to `mismatched`.
    pub ok_without_202: u64,
    /// Answered with an error but the `202` never came: from `replies_error` to `mismatched`.
    pub error_without_202: u64,
}

/// One device's requests.
#[derive(Debug)]
pub struct Tracker {
    nonce: u64,
    next_seq: u64,
    strict_202: bool,
    reply_topic: String,
    pending: HashMap<u64, Pending>,
    finished: HashSet<u64>,
    /// Strict mode: answered requests whose `202` has not come yet.
    awaiting_202: HashMap<u64, Awaiting>,
}

impl Tracker {
    /// A tracker for a device whose replies arrive on `reply_topic`. With `strict_202`, a final
    /// reply must follow a `202` carrying the same request id.
    pub fn new(nonce: u64, reply_topic: String, strict_202: bool) -> Tracker {
        Tracker {
            nonce,
            next_seq: 0,
            strict_202,
            reply_topic,
            pending: HashMap::new(),
            finished: HashSet::new(),
            awaiting_202: HashMap::new(),
        }
    }

    /// Registers a request about to be published and returns its fresh correlation data.
    /// `sent_at` is when it was (or, open loop, was scheduled to be) sent.
    pub fn start(&mut self, expect: Expect, sent_at: Instant) -> Bytes {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(
            seq,
            Pending {
                expect,
                sent_at,
                request_id: None,
            },
        );
        correlation(self.nonce, seq)
    }

    /// Requests sent and not finally answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Requests started so far.
    pub fn started(&self) -> u64 {
        self.next_seq
    }

    /// Requests still waiting for anything: a final reply, or (strict mode) a late `202`.
    pub fn unsettled(&self) -> usize {
        self.pending.len() + self.awaiting_202.len()
    }

    /// Ends the run: every request still pending is lost, and (strict mode) every final reply
    /// whose `202` never came is reclassified as mismatched.
    pub fn give_up(&mut self) -> Leftovers {
        let ok = self
            .awaiting_202
            .values()
            .filter(|a| a.status == 200)
            .count() as u64;
        let leftovers = Leftovers {
            lost: self.pending.len() as u64,
            ok_without_202: ok,
            error_without_202: self.awaiting_202.len() as u64 - ok,
        };
        self.pending.clear();
        self.awaiting_202.clear();
        leftovers
    }

    /// Classifies a received reply.
    pub fn on_reply(&mut self, msg: Incoming<'_>, now: Instant) -> Outcome {
        let mismatch = |reason, detail: String| Outcome::Mismatch {
            reason,
            detail,
            finished: false,
        };
        let Some(corr) = msg.corr else {
            return mismatch(
                "no_correlation",
                format!("reply on {} without one", msg.topic),
            );
        };
        let Some((nonce, seq)) = parse_correlation(corr) else {
            return mismatch("unknown_correlation", format!("{} bytes", corr.len()));
        };
        if nonce != self.nonce {
            return Outcome::Foreign;
        }
        if self.awaiting_202.contains_key(&seq) {
            return self.late_202(seq, msg, now);
        }
        if self.finished.contains(&seq) {
            return Outcome::Duplicate;
        }
        if !self.pending.contains_key(&seq) {
            return mismatch("unknown_correlation", format!("sequence {seq} never sent"));
        }
        match self.check_envelope(msg) {
            Ok(reply) if reply.status == Status::Accepted => self.accepted(seq, &reply, now),
            Ok(reply) => self.finish(seq, &reply, now),
            // A broken final reply ends its request; a broken 202 leaves it pending.
            Err((reason, detail, is_final)) => {
                if is_final {
                    self.pending.remove(&seq);
                    self.finished.insert(seq);
                }
                Outcome::Mismatch {
                    reason,
                    detail,
                    finished: is_final,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
