//! Store work on PostgreSQL, typed ([`Work`], [`Done`]), and each piece run alone: one statement
//! (or a few) at a time. [`super::commit`] runs most of a batch as grouped statements
//! ([`super::grouped`]) and comes here for the rest and for what those left undecided.

use super::marks::{Count, Mark};
use super::pool::Conn;
use super::{delivery, grouped, requests, tables};
use crate::store::commands::{Command, Outcome};
use crate::store::requests::{Completion, FinalReply};
use crate::store::StoreError;
use crate::wire::{Correlation, DeviceId};

/// One piece of write work.
#[derive(Debug)]
pub enum Work {
    /// One of intake's commands.
    Command(Command),
    /// A worker's completion.
    Complete(Completion),
    /// A reply was handed to the broker (counted unless another transaction holds its row).
    Published(Mark),
    /// A device's ack of its reply, with the reply's publishes not yet counted (see
    /// [`super::marks`]), which the ack's update counts; answered as [`Command::Ack`].
    Ack(DeviceId, Correlation, Option<Count>),
    /// Held replies of these devices, at most this many each, not sent since the time given
    /// (a wake's redelivery, claimed).
    HeldFor(Vec<DeviceId>, usize, i64),
}

/// What a piece of work found.
#[derive(Debug)]
pub enum Done {
    /// For [`Work::Command`].
    Command(Outcome),
    /// For [`Work::Complete`]: whether the request was still queued.
    Completed(bool),
    /// For [`Work::Published`]: whether the count was settled (not: its row was locked
    /// elsewhere; see [`grouped::published`]).
    Published(bool),
    /// For [`Work::HeldFor`].
    Held(Vec<FinalReply>),
}

/// Runs one slot of a job (`None`: a publish with no store work).
pub async fn run_slot(
    conn: &Conn,
    me: &str,
    work: &Option<Work>,
) -> Result<Option<Done>, StoreError> {
    match work {
        Some(work) => run_work(conn, me, work).await.map(Some),
        None => Ok(None),
    }
}

async fn run_work(conn: &Conn, me: &str, work: &Work) -> Result<Done, StoreError> {
    Ok(match work {
        Work::Command(command) => Done::Command(run_command(conn, me, command).await?),
        Work::Complete(completion) => Done::Completed(requests::complete(conn, completion).await?),
        Work::Published(mark) => Done::Published(
            grouped::published(conn, &[mark.count])
                .await?
                .first()
                .copied()
                .unwrap_or(false),
        ),
        // An ack that ends nothing drops the publishes it carries: its reply is no longer held.
        Work::Ack(device, corr, count) => Done::Command(Outcome::Acked(
            delivery::ack(conn, device, corr, *count).await?,
        )),
        Work::HeldFor(devices, limit, sent_before_ms) => {
            Done::Held(delivery::held_for(conn, me, devices, *limit, *sent_before_ms).await?)
        }
    })
}

async fn run_command(conn: &Conn, me: &str, command: &Command) -> Result<Outcome, StoreError> {
    Ok(match command {
        Command::Admit {
            request,
            dedupe_after_ms,
            max_pending,
        } => Outcome::Admitted(
            requests::admit(conn, me, request, *dedupe_after_ms, *max_pending).await?,
        ),
        Command::Find(device, corr) => Outcome::Found(requests::find(conn, device, corr).await?),
        Command::Cancel {
            device,
            of,
            now_ms,
            expires_ms,
            reply,
        } => Outcome::Cancel(
            requests::cancel(conn, me, device, of, *now_ms, *expires_ms, *reply).await?,
        ),
        Command::Dead(letter) => {
            tables::insert_dead_letter(conn, letter).await?;
            Outcome::Done
        }
        Command::Ack(device, corr) => {
            Outcome::Acked(delivery::ack(conn, device, corr, None).await?)
        }
        // A batch stores its readings grouped before the rest (`commit::batch`); this is the
        // same statement for one publish.
        Command::Telemetry(device, readings) => {
            let stored = grouped::telemetry(conn, me, &[(device, readings.as_slice())]).await?;
            Outcome::readings(stored.first().copied().unwrap_or(0), readings.len())
        }
    })
}
