//! The PostgreSQL engine (`[store] engine = "postgres"`): one database that several gateways
//! share, through tokio-postgres.
//!
//! Writes go through [`commit`] (group commit, pipelined, one transaction per batch) or, for
//! the few outside it, [`transaction`] (which also commits the batches: no wait unbounded, no
//! lost `COMMIT` answer guessed); reads borrow a connection from the [`pool`]. The schema is in
//! [`schema`] (versioned, migrated under an advisory lock), each table's statements in [`requests`], [`delivery`], [`devices`]
//! and [`tables`]; operators' views in [`views`] (their typed methods in [`operators`]).
//!
//! **A row found by its key says its state as `COALESCE(delivery, '') = 'held'` (or `state`),
//! not `delivery = 'held'`.** The partial indexes of held and queued rows (`requests_held`,
//! `requests_held_owner`, `requests_owner_queued`) end in `id`. After an `ANALYZE` taken when
//! little was held or queued they look empty, and a statement that names their predicate was
//! planned as a whole scan of one of them, filtering on `id`, instead of a probe of the primary
//! key: 7-15 k pages per publish count, and the server's CPU per request doubled in 3 of 22
//! runs of three gateways (session 8). The `COALESCE` form means the same and implies no index's
//! predicate, so only the key's index serves it. Statements that want a partial index (a
//! device's held replies in id order, the expiry sweep, the takeover) name its predicate, and
//! each partial index has a predicate only its own lookups imply (`expires_ms IS NOT NULL`,
//! `owner IS NOT NULL`: migrations 6 and 7). The store test
//! `postgres_rows_found_by_key_do_not_scan_the_partial_indexes` plans a request's whole way
//! generically over statistics that say nothing is queued or held.

mod cluster;
mod commit;
mod console;
mod delivery;
mod devices;
mod grouped;
mod lanes;
mod marks;
mod operators;
mod pool;
mod requests;
mod schema;
mod tables;
mod tls;
mod transaction;
mod views;
mod work;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::metrics::Histogram;
use crate::store::cluster::{ClusterView, Takeover};
use crate::store::commands::{Command, Outcome, Written};
use crate::store::deadletters::{DeadLetter, Undeliverable};
use crate::store::requests::{
    Admission, Completion, Existing, FinalReply, NewRequest, StoredRequest,
};
use crate::store::{now_ms, Prune, StoreError};
use crate::wire::{Correlation, DeviceId, RequestId};
pub use console::{PgConsole, PgReader};
use pool::Pool;
use work::{Done, Work};

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let text = match (error.as_db_error(), std::error::Error::source(&error)) {
            (Some(db), _) => format!("{}: {}", db.code().code(), db.message()),
            (None, Some(source)) => format!("{error}: {source}"),
            (None, None) => error.to_string(),
        };
        match error.code() {
            Some(code)
                if *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE =>
            {
                StoreError::Conflict(text)
            }
            // Connection lost, the server shutting down or out of resources, or taking no
            // writes (a read-only standby, which a failover can leave the URL pointing at).
            Some(code)
                if code.code().starts_with("08")
                    || code.code().starts_with("57")
                    || code.code().starts_with("53")
                    || *code == SqlState::READ_ONLY_SQL_TRANSACTION =>
            {
                StoreError::Unavailable(text)
            }
            // The login (28000, 28P01), the database's name, or the rights: `store.url`'s.
            Some(code)
                if code.code().starts_with("28")
                    || *code == SqlState::INVALID_CATALOG_NAME
                    || *code == SqlState::INSUFFICIENT_PRIVILEGE =>
            {
                StoreError::Refused(text)
            }
            Some(_) => StoreError::Sql(text),
            None => StoreError::Unavailable(text),
        }
    }
}

/// A handle to the PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Arc<Pool>,
    lanes: Arc<lanes::Lanes>,
    commit_latency: Arc<Histogram>,
    runtime: Handle,
    me: Arc<str>,
    lease: Duration,
    started_ms: i64,
    view: Arc<Mutex<Option<ClusterView>>>,
    /// Whether other gateways are alive on the database (as of the last heartbeat).
    shared: Arc<AtomicBool>,
    /// Publish counts held back for their acks to carry (see [`marks`]).
    marks: Arc<marks::Marks>,
    /// The heartbeat's own connection, outside the pool: a beat never waits for a committer's
    /// transaction (a lock wait there would otherwise let this live gateway's lease run out).
    beat_conn: Arc<tokio::sync::Mutex<Option<pool::Conn>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, migrates (one gateway at a time), joins the cluster as `me` with a fresh
    /// lease (before anything is admitted, so nothing of this gateway looks abandoned) and starts
    /// the committer.
    pub async fn open(
        url: &str,
        pool_size: usize,
        me: &str,
        lease: Duration,
    ) -> Result<PgStore, StoreError> {
        let pool = Pool::new(url, pool_size)?;
        let mut conn = pool::answered(pool.connect()).await?;
        schema::migrate(&mut conn.client).await?;
        devices::reset_awake(&conn, me).await?;
        let started_ms = now_ms();
        cluster::heartbeat(&conn, me, started_ms, started_ms, lease.as_millis() as i64).await?;
        // The connection that migrated and joined goes on renewing the lease.
        let beat_conn = Arc::new(tokio::sync::Mutex::new(Some(conn)));
        let commit_latency = Arc::new(Histogram::default());
        let shared = Arc::new(AtomicBool::new(false));
        let lanes = Arc::new(lanes::Lanes::start(&pool, &commit_latency, me, &shared));
        let marks = Arc::new(marks::Marks::default());
        tokio::spawn(marks::flush(
            marks.clone(),
            Arc::downgrade(&lanes),
            shared.clone(),
        ));
        Ok(PgStore {
            pool,
            lanes,
            commit_latency,
            runtime: Handle::current(),
            me: me.into(),
            lease,
            started_ms,
            view: Arc::default(),
            shared,
            marks,
            beat_conn,
        })
    }

    /// See [`crate::store::Store::lease`].
    pub fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    /// See [`crate::store::Store::heartbeat`]. The cluster-wide totals are counted again only
    /// once every gateway alive had a beat's time to count them (every `alive` beats): counting
    /// reads the queued and held indexes whole, which cost 25-40 ms a count with the requests'
    /// churn of a loaded cluster, and three gateways counting at every beat spent a tenth of
    /// this 2-core machine on it. So the cluster counts about twice a second whatever its size,
    /// and a gateway's totals are at most `alive` beats old.
    ///
    /// Beats run on their own connection, not the pool's: renewing the lease never waits for the
    /// committers. A broken connection is dropped and the next beat connects again; so is one
    /// whose server did not answer within [`pool::ANSWER_TIMEOUT`] (the beat then fails, and the
    /// gateway degrades).
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let mut slot = self.beat_conn.lock().await;
        let conn = match slot.take() {
            Some(conn) if !conn.client.is_closed() => conn,
            // Bounded too: a frozen server's kernel accepts the connection, then nothing answers.
            _ => pool::answered(self.pool.connect()).await?,
        };
        let result = pool::answered(self.beat(&conn)).await;
        match result {
            Err(StoreError::Unavailable(_)) if !conn.client.is_closed() => conn.close(),
            _ if !conn.client.is_closed() => *slot = Some(conn),
            _ => {}
        }
        result
    }

    async fn beat(&self, conn: &pool::Conn) -> Result<(), StoreError> {
        let now = now_ms();
        let lease_ms = self.lease.as_millis() as i64;
        cluster::heartbeat(conn, &self.me, self.started_ms, now, lease_ms).await?;
        let counted = self.cluster_view().and_then(|view| {
            let every = crate::store::cluster::beat_every(self.lease).as_millis() as i64;
            let fresh = now - view.totals_ms < every * view.alive().max(1) as i64;
            fresh.then_some((view.totals, view.totals_ms))
        });
        let view = cluster::view(conn, now, counted).await?;
        self.shared.store(view.alive() > 1, Ordering::Relaxed);
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
        Ok(())
    }

    /// See [`crate::store::Store::leave`].
    pub async fn leave(&self) -> Result<(), StoreError> {
        // Bounded: a lane that waits to settle a lost commit while the database cannot be
        // reached would otherwise hold the stop for as long; the others then wait out the lease.
        pool::answered(self.barrier()).await?;
        self.pool
            .run(async |conn| cluster::leave(conn, &self.me).await)
            .await
    }

    /// See [`crate::store::Store::cluster_view`].
    pub fn cluster_view(&self) -> Option<ClusterView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// See [`crate::store::Store::prunes`].
    pub fn prunes(&self) -> bool {
        let view = self.cluster_view();
        view.as_ref()
            .and_then(ClusterView::pruner)
            .is_none_or(|pruner| pruner == &*self.me)
    }

    /// See [`crate::store::Store::take_over`].
    pub async fn take_over(&self, limit: usize) -> Result<Takeover, StoreError> {
        transaction::on_pool(&self.pool, async |conn| {
            cluster::take_over(conn, &self.me, now_ms(), limit).await
        })
        .await
    }

    /// How long group commits take.
    pub fn commit_latency(&self) -> &Histogram {
        &self.commit_latency
    }

    fn submit(
        &self,
        work: Vec<Option<Work>>,
        then: impl FnOnce(Result<Vec<Option<Done>>, StoreError>) + Send + 'static,
    ) {
        self.lanes.submit(work, Box::new(then));
    }

    async fn commit(&self, work: Vec<Option<Work>>) -> Result<Vec<Option<Done>>, StoreError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.submit(work, move |outcome| {
            let _ = done_tx.send(outcome);
        });
        done_rx.await.unwrap_or(Err(StoreError::Closed))
    }

    async fn command(&self, command: Command) -> Result<Outcome, StoreError> {
        match self.commit(vec![Some(Work::Command(command))]).await?.pop() {
            Some(Some(Done::Command(outcome))) => Ok(outcome),
            _ => Err(StoreError::Sql("store answered out of kind".into())),
        }
    }

    /// See [`crate::store::Store::write`]: a batch whose `COMMIT` answer is lost is handed back
    /// unsettled at once, and settled in the background ([`commit::Job::unsettled`]).
    pub async fn write(&self, commands: Vec<Option<Command>>) -> Written {
        let (done_tx, done_rx) = oneshot::channel();
        let (unsettled_tx, unsettled_rx) = oneshot::channel();
        self.lanes.submit_telling(
            self.commands_work(commands),
            Box::new(move |outcome| {
                let _ = done_tx.send(outcome);
            }),
            Some(unsettled_tx),
        );
        let mut done =
            Box::pin(
                async move { commands_outcomes(done_rx.await.unwrap_or(Err(StoreError::Closed))) },
            );
        tokio::select! {
            biased;
            outcomes = &mut done => Written::Done(outcomes),
            Ok(()) = unsettled_rx => Written::Unsettled(done),
        }
    }

    /// Intake's commands as the committer's work (an ack takes the publish count it ends).
    fn commands_work(&self, commands: Vec<Option<Command>>) -> Vec<Option<Work>> {
        commands
            .into_iter()
            .map(|command| {
                command.map(|command| match command {
                    Command::Ack(device, corr) => {
                        let count = self.marks.take_for_ack(&device, &corr);
                        Work::Ack(device, corr, count)
                    }
                    command => Work::Command(command),
                })
            })
            .collect()
    }

    /// See [`crate::store::Store::admit`].
    pub async fn admit(
        &self,
        request: NewRequest,
        dedupe_after_ms: i64,
    ) -> Result<Admission, StoreError> {
        match self
            .command(Command::Admit {
                request,
                dedupe_after_ms,
                max_pending: 0,
            })
            .await?
        {
            Outcome::Admitted(admission) => Ok(admission),
            _ => Err(StoreError::Sql("store answered out of kind".into())),
        }
    }

    /// See [`crate::store::Store::find`].
    pub async fn find(
        &self,
        device: DeviceId,
        corr: Correlation,
    ) -> Result<Option<Existing>, StoreError> {
        self.pool
            .run(async |conn| requests::find(conn, &device, &corr).await)
            .await
    }

    /// See [`crate::store::Store::complete_then`].
    pub fn complete_then(
        &self,
        completion: Completion,
        then: impl FnOnce(Result<bool, StoreError>) + Send + 'static,
    ) {
        self.submit(vec![Some(Work::Complete(completion))], move |outcome| {
            then(outcome.map(|mut done| matches!(done.pop(), Some(Some(Done::Completed(true))))))
        });
    }

    /// See [`crate::store::Store::complete`].
    pub async fn complete(&self, completion: Completion) -> Result<bool, StoreError> {
        let done = self.commit(vec![Some(Work::Complete(completion))]).await?;
        Ok(matches!(done.last(), Some(Some(Done::Completed(true)))))
    }

    /// See [`crate::store::Store::mark_published`].
    pub fn mark_published(&self, id: RequestId, device: &DeviceId, corr: &Correlation) {
        self.marks.push(id, device, corr);
    }

    /// See [`crate::store::Store::unpublished`].
    pub async fn unpublished(&self) -> Result<Vec<FinalReply>, StoreError> {
        self.pool
            .run(async |conn| delivery::unpublished(conn, &self.me).await)
            .await
    }

    /// See [`crate::store::Store::queued_extent`].
    pub async fn queued_extent(&self) -> Result<(usize, Option<RequestId>), StoreError> {
        self.pool
            .run(async |conn| requests::queued_extent(conn, &self.me).await)
            .await
    }

    /// See [`crate::store::Store::queued_after`].
    pub async fn queued_after(
        &self,
        after: Option<RequestId>,
        until: RequestId,
        limit: usize,
    ) -> Result<Vec<StoredRequest>, StoreError> {
        self.pool
            .run(async |conn| requests::queued_after(conn, &self.me, after, until, limit).await)
            .await
    }

    /// See [`crate::store::Store::held_for`].
    pub async fn held_for(
        &self,
        devices: Vec<DeviceId>,
        limit: usize,
        quiet: Duration,
    ) -> Result<Vec<FinalReply>, StoreError> {
        // No quiet period: every held reply, however recently sent (a publish count queued
        // just before this read may carry a later clock than this).
        let sent_before_ms = if quiet.is_zero() {
            i64::MAX
        } else {
            crate::store::now_ms() - quiet.as_millis() as i64
        };
        // Through the commit queue, after the publish counts: it must see them.
        match self
            .commit_after_counts(vec![Some(Work::HeldFor(devices, limit, sent_before_ms))])
            .await?
            .pop()
        {
            Some(Some(Done::Held(held))) => Ok(held),
            _ => Err(StoreError::Sql("store answered out of kind".into())),
        }
    }

    /// See [`crate::store::Store::held_for`] (while degraded; PostgreSQL's reads and writes do
    /// not share a fate the way SQLite's group commit does, so this is the same read).
    pub async fn held_for_read(
        &self,
        devices: Vec<DeviceId>,
        limit: usize,
        quiet: Duration,
    ) -> Result<Vec<FinalReply>, StoreError> {
        self.held_for(devices, limit, quiet).await
    }

    /// See [`crate::store::Store::probe`]: a transaction through the committer, which connects
    /// afresh when its connection broke.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.ping().await
    }

    /// See [`crate::store::Store::held_counts`].
    pub async fn held_counts(&self, devices: Vec<DeviceId>) -> Result<Vec<usize>, StoreError> {
        self.pool
            .run(async |conn| delivery::held_counts(conn, &devices).await)
            .await
    }

    /// See [`crate::store::Store::held_total`]: the cluster's held replies as the heartbeat last
    /// counted them (at most `alive` beats ago), counted here only before the first beat. The
    /// status document asks every second; counting each time read the whole held index again
    /// (0.57 s of the server's statement time in 10 s with three gateways).
    pub async fn held_total(&self) -> Result<usize, StoreError> {
        match self.cluster_view() {
            Some(view) => Ok(view.totals.held as usize),
            None => {
                self.pool
                    .run(async |conn| delivery::held_total(conn).await)
                    .await
            }
        }
    }

    /// See [`crate::store::Store::expire_held`].
    pub async fn expire_held(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        transaction::on_pool(&self.pool, async |conn| {
            delivery::expire_held(conn, now_ms, limit).await
        })
        .await
    }

    /// See [`crate::store::Store::undeliverable`].
    pub async fn undeliverable(
        &self,
        replies: Vec<Undeliverable>,
        now_ms: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        transaction::on_pool(&self.pool, async |conn| {
            let mut letters = Vec::with_capacity(replies.len());
            for reply in &replies {
                letters.push(delivery::undeliverable(conn, reply, now_ms).await?);
            }
            Ok(letters)
        })
        .await
    }

    /// One chunk of [`crate::store::Store::prune`], bounded like the pool's other work.
    pub async fn prune(&self, what: Prune, limit: usize) -> Result<usize, StoreError> {
        let me = &*self.me;
        self.pool
            .run(async |conn| match what {
                Prune::Requests(before_ms) => {
                    transaction::prune_marks(conn).await?;
                    requests::prune(conn, before_ms, limit).await
                }
                Prune::Readings(before_ms) => {
                    tables::prune_readings(conn, me, before_ms, limit).await
                }
                Prune::Cap(keep) => tables::cap_readings(conn, me, keep, limit).await,
            })
            .await
    }

    /// See [`crate::store::Store::ping`].
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.barrier().await
    }

    /// Commits the publish counts held back (see [`marks`]) and then `rest`, in one job, so that
    /// `rest` sees them; the outcomes of `rest`.
    async fn commit_after_counts(
        &self,
        rest: Vec<Option<Work>>,
    ) -> Result<Vec<Option<Done>>, StoreError> {
        let taken = self.marks.take();
        let mut work = marks::work(&taken);
        let counts = work.len();
        work.extend(rest);
        let done = self.commit(work).await;
        self.marks.settle(taken, &done);
        Ok(done?.split_off(counts))
    }

    /// Commits the publish counts held back, once everything queued before, on both lanes,
    /// committed.
    async fn barrier(&self) -> Result<(), StoreError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.lanes.submit_to(
            lanes::INTAKE,
            commit::Job {
                work: Vec::new(),
                then: Box::new(move |outcome| {
                    let _ = done_tx.send(outcome);
                }),
                unsettled: None,
            },
        );
        let intake = async { done_rx.await.unwrap_or(Err(StoreError::Closed)) };
        let (counted, intake) = tokio::join!(self.commit_after_counts(Vec::new()), intake);
        counted?;
        intake.map(drop)
    }

    /// A reader for one worker thread.
    pub fn reader(&self) -> PgReader {
        PgReader {
            pool: self.pool.clone(),
            runtime: self.runtime.clone(),
        }
    }
}

/// The committer's outcomes of intake's commands, as the commands' outcomes.
fn commands_outcomes(
    done: Result<Vec<Option<Done>>, StoreError>,
) -> Result<Vec<Option<Outcome>>, StoreError> {
    done?
        .into_iter()
        .map(|done| match done {
            Some(Done::Command(outcome)) => Ok(Some(outcome)),
            None => Ok(None),
            Some(_) => Err(StoreError::Sql("store answered out of kind".into())),
        })
        .collect()
}
