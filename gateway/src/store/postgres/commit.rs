//! Group commit on PostgreSQL. Writers (intake's batches, workers' completions, the outbox's
//! publish counts and its redelivery reads) queue their typed work on a lane
//! ([`super::lanes`]); each lane's committer takes everything waiting, borrows a connection, and
//! runs it as one transaction whose statements are **pipelined** (sent without waiting for each
//! answer), then commits once and only then answers each writer. A lane's transactions run one
//! after another, in queue order, as on SQLite's store thread: work sees everything queued
//! before it on its lane (a wake's redelivery read sees the publish count the outbox queued just
//! before), and what waits meanwhile makes the next batch larger. Each transaction goes through
//! [`transaction::run_or_lose`]: no wait for the server longer than
//! [`ANSWER_TIMEOUT`](super::pool::ANSWER_TIMEOUT), and a lost `COMMIT` answer settled by asking
//! the database before any writer is answered. A batch with a writer that must not wait for
//! that (intake: [`Job::unsettled`]) is settled in the background while the lane goes on; it is
//! then the one exception to the lane's order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::Level;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};

use super::grouped;
use super::marks::Count;
use super::pool::{answered, Conn, Pool};
use super::transaction::{self, Begun};
use super::work::{run_slot, Done, Work};
use crate::logging::log_repeated;
use crate::metrics::Histogram;
use crate::store::commands::{Command, Outcome};
use crate::store::requests::Admission;
use crate::store::StoreError;

/// Most pieces of work in one transaction.
const MAX_BATCH: usize = 2048;
/// Runs of a batch that meets deadlocks or serialization failures before it fails.
const MAX_TRIES: u32 = 5;
/// How long a lane waits for more work after the first, while other gateways are alive. Each
/// gateway then gets a share of the traffic, and its batches were that much smaller: in 10 s
/// runs, one gateway committed 2,170 transactions for 38,600 requests, three gateways 6,969 for
/// 35,500, and the cost of a transaction (its statements, their plans, the commit) is paid on
/// the same CPUs. Waiting a millisecond, about what a commit takes under load, made it 4,952
/// for 39,900 (`docs/BENCHMARKS.md`, session 8).
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// A writer's work, and what to call once it committed (or failed).
pub struct Job {
    /// The work, in order; `None` entries stay `None`.
    pub work: Vec<Option<Work>>,
    /// Called with the outcomes after the commit.
    pub then: Then,
    /// Told at once when the answer to the batch's `COMMIT` is lost, for a writer that must not
    /// wait while the database is asked whether it committed (intake): the batch is then
    /// settled in the background, `then` called once the database says, and the lane goes on.
    /// `None`: the lane waits for the answer, and so does the writer.
    pub unsettled: Option<oneshot::Sender<()>>,
}

/// Runs jobs until every sender is gone.
pub async fn run(
    mut jobs_rx: mpsc::UnboundedReceiver<Job>,
    pool: Arc<Pool>,
    latency: Arc<Histogram>,
    me: Arc<str>,
    shared: Arc<AtomicBool>,
) {
    let mut waiting = Vec::new();
    while jobs_rx.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        if shared.load(Ordering::Relaxed) && waiting.len() < MAX_BATCH {
            tokio::time::sleep(LINGER).await;
            while waiting.len() < MAX_BATCH {
                match jobs_rx.try_recv() {
                    Ok(job) => waiting.push(job),
                    Err(_) => break,
                }
            }
        }
        let mut work = Vec::with_capacity(waiting.len());
        let mut thens = Vec::with_capacity(waiting.len());
        let mut unsettled = Vec::new();
        for job in waiting.drain(..) {
            work.push(job.work);
            thens.push(job.then);
            unsettled.extend(job.unsettled);
        }
        let started = Instant::now();
        let outcome = match answered(pool.get()).await {
            Ok(mut conn) => {
                let mut tries = 1;
                loop {
                    let shared = shared.load(Ordering::Relaxed);
                    let batch = async |conn: &Conn| batch(conn, &me, &work, shared).await;
                    match transaction::run_or_lose(&mut conn, batch).await {
                        // Another transaction (this gateway's or another's) locked rows in the
                        // other order: run the whole batch again.
                        Err(StoreError::Conflict(error)) if tries < MAX_TRIES => {
                            tracing::debug!(%error, tries, "store batch retried");
                            tries += 1;
                        }
                        outcome => break outcome,
                    }
                }
            }
            Err(error) => Err(error),
        };
        latency.observe(started.elapsed());
        match outcome {
            Ok(Ok(outcomes)) => deliver(thens, Ok(outcomes)),
            Err(error) => deliver(thens, Err(error)),
            Ok(Err(lost)) if unsettled.is_empty() => deliver(thens, lost.settle(&pool).await),
            Ok(Err(lost)) => {
                tracing::warn!(
                    jobs = thens.len(),
                    "a commit's answer was lost: its writers are told, and the lane goes on \
                     while it is settled"
                );
                for told in unsettled {
                    let _ = told.send(());
                }
                let pool = pool.clone();
                tokio::spawn(async move { deliver(thens, lost.settle(&pool).await) });
            }
        }
    }
}

type Outcomes = Vec<Vec<Option<Done>>>;

/// What a job's writer is called with.
pub type Then = Box<dyn FnOnce(Result<Vec<Option<Done>>, StoreError>) + Send>;

/// A batch's work, in a transaction it opens ([`transaction::begin`]) and leaves open for
/// [`transaction::run`] to commit: its outcomes, or the failure that ends the batch.
async fn batch(
    conn: &Conn,
    me: &str,
    jobs: &[Vec<Option<Work>>],
    shared: bool,
) -> Result<(Begun, Outcomes), StoreError> {
    let (begun, done) = if jobs.iter().flatten().flatten().any(reads_what_came_before) {
        // A `status` or `cancel` must see the requests before it in the batch: one at a time
        // (pipelined, a command preparing a statement could overtake an earlier one). Except
        // the readings, which nothing reads back: all first, in one statement, in key order
        // (two gateways storing copies of the same readings then never wait in a cycle).
        let begun = transaction::begin(conn).await?;
        let readings: Vec<_> = jobs
            .iter()
            .flatten()
            .filter_map(|work| match work {
                Some(Work::Command(Command::Telemetry(device, readings))) => {
                    Some((device, readings.as_slice()))
                }
                _ => None,
            })
            .collect();
        let mut recorded = grouped::telemetry(conn, me, &readings)
            .await?
            .into_iter()
            .zip(readings);
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut outcomes = Vec::with_capacity(job.len());
            for work in job {
                outcomes.push(match work {
                    Some(Work::Command(Command::Telemetry(..))) => {
                        let (stored, (_, readings)) = recorded.next().expect("one per publish");
                        let outcome = Outcome::readings(stored, readings.len());
                        Ok(Some(Done::Command(outcome)))
                    }
                    work => run_slot(conn, me, work).await,
                });
            }
            done.push(outcomes);
        }
        (begun, done)
    } else {
        grouped(conn, me, jobs, shared).await?
    };
    Ok((begun, outcomes_of(done)?))
}

/// The outcomes of a batch's work, or the failure that ends the batch.
fn outcomes_of(done: Slots) -> Result<Outcomes, StoreError> {
    let mut outcomes = Vec::with_capacity(done.len());
    let mut failed: Option<StoreError> = None;
    for job in done {
        let mut outcome = Vec::with_capacity(job.len());
        for slot in job {
            match slot {
                Ok(done) => outcome.push(done),
                // A conflict aborts the transaction, and every statement after it then fails
                // with 25P02 ("transaction is aborted"), some of them earlier in the batch's
                // order: keep the conflict, so that the batch is run again.
                Err(error) => {
                    let conflict = matches!(error, StoreError::Conflict(_));
                    if failed.is_none()
                        || (conflict && !matches!(failed, Some(StoreError::Conflict(_))))
                    {
                        failed = Some(error);
                    }
                }
            }
        }
        outcomes.push(outcome);
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(outcomes),
    }
}

/// One piece of work's outcome.
type Slot = Result<Option<Done>, StoreError>;
type Slots = Vec<Vec<Slot>>;

/// The batch's admissions, completions, publish counts, acks and readings as one statement of
/// each kind
/// ([`grouped`]), sent together with the rest of its work one statement each, all pipelined
/// after `BEGIN` (with other gateways on the database, the acks lock their rows in id order:
/// [`grouped::ack`]); then, one at a time, whatever the grouped statements left
/// undecided (an admission that met its key, its device's full quota or a quota slot another
/// gateway took, a request completed twice in the batch). Statements of one kind run in the
/// order the work was queued (admissions sorted by device); kinds run completions, publish
/// counts, acks, the rest (a wake's redelivery read sees the publish counts of its batch), then
/// the admissions.
async fn grouped(
    conn: &Conn,
    me: &str,
    jobs: &[Vec<Option<Work>>],
    shared: bool,
) -> Result<(Begun, Slots), StoreError> {
    let mut admits = Vec::new();
    let mut completions = Vec::new();
    let mut published = Vec::new();
    let mut acks = Vec::new();
    let mut readings = Vec::new();
    let mut rest = Vec::new();
    let mut ranks: HashMap<&str, usize> = HashMap::new();
    let mut completing = HashSet::new();
    for (j, job) in jobs.iter().enumerate() {
        for (s, work) in job.iter().enumerate() {
            match work {
                Some(Work::Command(Command::Admit {
                    request,
                    max_pending,
                    ..
                })) => {
                    let rank = ranks.entry(request.device.as_str()).or_default();
                    admits.push((
                        (j, s),
                        grouped::Admit {
                            request,
                            max_pending: *max_pending,
                            rank: *rank,
                            batched: 0,
                        },
                    ));
                    *rank += 1;
                }
                Some(Work::Complete(done)) if completing.insert(done.id) => {
                    completions.push(((j, s), done));
                }
                Some(Work::Published(mark)) => published.push(((j, s), mark.count)),
                Some(Work::Ack(device, corr, count)) => {
                    acks.push((
                        (j, s),
                        grouped::Ack {
                            device,
                            corr: corr.as_bytes(),
                            count: *count,
                        },
                    ));
                }
                Some(Work::Command(Command::Telemetry(device, stored))) => {
                    readings.push(((j, s), (device, stored.as_slice())));
                }
                _ => rest.push((j, s)),
            }
        }
    }
    let mut done: Vec<Vec<Option<Slot>>> = jobs
        .iter()
        .map(|job| job.iter().map(|_| None).collect())
        .collect();
    // Admissions by device, then rank: the order the grouped insert takes quota slots in.
    admits.sort_by(|(_, a), (_, b)| a.request.device.as_str().cmp(b.request.device.as_str()));
    for (_, admit) in &mut admits {
        admit.batched = ranks[admit.request.device.as_str()];
    }
    let admit_rows: Vec<_> = admits.iter().map(|(_, a)| a.clone()).collect();
    let completion_rows: Vec<_> = completions.iter().map(|(_, c)| *c).collect();
    let counts: Vec<Count> = published.iter().map(|(_, count)| *count).collect();
    let ack_rows: Vec<_> = acks.iter().map(|(_, a)| a.clone()).collect();
    let reading_rows: Vec<_> = readings.iter().map(|(_, r)| *r).collect();
    // Every statement below is prepared (cached) before any is sent, so they reach the server
    // in the order they are issued, all in one flight: `BEGIN`, the grouped statements and the
    // rest, the admissions last.
    grouped::prepare(conn).await?;
    let begun = transaction::begin(conn);
    let admission = grouped::admit(conn, me, &admit_rows);
    let statements = async {
        tokio::join!(
            grouped::complete(conn, &completion_rows),
            grouped::published(conn, &counts),
            grouped::ack(conn, &ack_rows, shared),
            grouped::telemetry(conn, me, &reading_rows),
            join_all(rest.iter().map(|&(j, s)| run_slot(conn, me, &jobs[j][s]))),
            admission,
        )
    };
    let (begun, (completed, counted, acked, recorded, others, stored)) =
        tokio::join!(begun, statements);
    let begun = begun?;
    let failed = [
        stored.as_ref().err(),
        completed.as_ref().err(),
        counted.as_ref().err(),
        acked.as_ref().err(),
        recorded.as_ref().err(),
    ];
    if let Some(error) = failed
        .iter()
        .flatten()
        .find(|e| matches!(e, StoreError::Conflict(_)))
        .or(failed.iter().flatten().next())
    {
        return Err((*error).clone());
    }
    let (stored, completed, counted, acked, recorded) =
        (stored?, completed?, counted?, acked?, recorded?);
    // An ack that ended nothing drops the publishes it carried: its reply is no longer held.
    for (((j, s), _), acked) in acks.iter().zip(acked) {
        done[*j][*s] = Some(Ok(Some(Done::Command(Outcome::Acked(acked)))));
    }
    for (((j, s), _), counted) in published.iter().zip(counted) {
        done[*j][*s] = Some(Ok(Some(Done::Published(counted))));
    }
    for (((j, s), (_, readings)), recorded) in readings.iter().zip(recorded) {
        let outcome = Outcome::readings(recorded, readings.len());
        done[*j][*s] = Some(Ok(Some(Done::Command(outcome))));
    }
    for (((j, s), _), completed) in completions.iter().zip(completed) {
        done[*j][*s] = Some(Ok(Some(Done::Completed(completed))));
    }
    for (((j, s), _), stored) in admits.iter().zip(stored) {
        if stored {
            done[*j][*s] = Some(Ok(Some(Done::Command(Outcome::Admitted(Admission::New)))));
        }
    }
    for (&(j, s), outcome) in rest.iter().zip(others) {
        done[j][s] = Some(outcome);
    }
    // Undecided: run one at a time, in the batch's order.
    for (j, job) in jobs.iter().enumerate() {
        for (s, work) in job.iter().enumerate() {
            if done[j][s].is_none() {
                done[j][s] = Some(run_slot(conn, me, work).await);
            }
        }
    }
    let done = done
        .into_iter()
        .map(|job| job.into_iter().flatten().collect())
        .collect();
    Ok((begun, done))
}

/// Whether this work reads requests that earlier work of its batch may have written.
fn reads_what_came_before(work: &Work) -> bool {
    matches!(
        work,
        Work::Command(Command::Find(..) | Command::Cancel { .. })
    )
}

fn deliver(thens: Vec<Then>, outcome: Result<Outcomes, StoreError>) {
    match outcome {
        Ok(outcomes) => {
            for (then, outcome) in thens.into_iter().zip(outcomes) {
                then(Ok(outcome));
            }
        }
        Err(error) => {
            log_repeated!(Level::ERROR, %error, "store commit failed");
            for then in thens {
                then(Err(error.clone()));
            }
        }
    }
}
