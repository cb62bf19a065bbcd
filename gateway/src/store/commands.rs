//! Intake's batch: the typed store work of each publish ([`Command`]) and what it found
//! ([`Outcome`]). A batch runs in one transaction; its outcomes come back in command order, and
//! only once the transaction has committed.

use super::deadletters::DeadLetter;
use super::requests::{Admission, CancelOutcome, CancelReply, Existing, NewRequest};
use super::telemetry::Reading;
use crate::wire::{Correlation, DeviceId, RequestId};

/// Store work for one publish.
#[derive(Debug, Clone)]
pub enum Command {
    /// Store a new request unless its (device, correlation) is known within the dedupe window
    /// (received after `dedupe_after_ms`).
    Admit {
        /// The request.
        request: NewRequest,
        /// Start of the dedupe window.
        dedupe_after_ms: i64,
        /// `limits.max_pending_per_device`, held across every gateway of a shared store (a
        /// new request past it is [`Admission::OverQuota`]); one gateway on SQLite holds it in
        /// its scheduler and ignores this.
        max_pending: usize,
    },
    /// Look a request up by its dedupe key (`status`, duplicates).
    Find(DeviceId, Correlation),
    /// Cancel a queued request, recording its final `410`.
    Cancel {
        /// The device.
        device: DeviceId,
        /// The correlation of the request to cancel.
        of: Correlation,
        /// Now.
        now_ms: i64,
        /// End of the `410`'s TTL.
        expires_ms: i64,
        /// Builds the `410`'s payload.
        reply: CancelReply,
    },
    /// Record a dead letter.
    Dead(DeadLetter),
    /// The device acknowledged a final reply.
    Ack(DeviceId, Correlation),
    /// Store telemetry readings.
    Telemetry(DeviceId, Vec<Reading>),
}

/// What a [`Command`] found, once committed.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// For [`Command::Admit`].
    Admitted(Admission),
    /// For [`Command::Find`].
    Found(Option<Existing>),
    /// For [`Command::Cancel`].
    Cancel(CancelOutcome),
    /// For [`Command::Ack`]: the request whose held reply was acknowledged.
    Acked(Option<RequestId>),
    /// For [`Command::Dead`].
    Done,
    /// For [`Command::Telemetry`]: how many of its readings were new; the others were copies
    /// of readings already stored (same device, metric and `ts`), left as they were.
    Readings {
        /// Readings stored.
        stored: usize,
        /// Copies not stored.
        copies: usize,
    },
}

impl Outcome {
    /// A telemetry command's outcome: `stored` of its `readings` were new.
    pub fn readings(stored: usize, readings: usize) -> Outcome {
        Outcome::Readings {
            stored,
            copies: readings.saturating_sub(stored),
        }
    }
}

/// A batch's outcomes once the database says what became of them.
pub type Settling =
    futures_util::future::BoxFuture<'static, Result<Vec<Option<Outcome>>, super::StoreError>>;

/// What became of intake's batch ([`super::Store::write`]).
pub enum Written {
    /// Committed (the outcomes), or not (the failure), as [`super::Store::batch`] answers.
    Done(Result<Vec<Option<Outcome>>, super::StoreError>),
    /// Its `COMMIT` was sent and the answer lost (PostgreSQL): whether it committed is not
    /// known yet. The future says, once the database does; meanwhile the store takes the next
    /// batches.
    Unsettled(Settling),
}
