//! The password pool: slow (argon2) password checks on a few threads of their own, with a short
//! queue in front of them.
//!
//! Fed by the login guard with (stored hash, presented password) and a deadline; feeds back
//! whether they match. **Invariant:** at most `threads + queue` checks are admitted at once; a
//! check that cannot be admitted by its deadline is [`Busy`] and never hashed. So password
//! checks can take no more than `threads` cores whatever arrives, and nothing else (device
//! secrets, certificates, tokio's blocking pool) ever waits behind them.

use std::num::NonZeroUsize;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

use crate::frontdoor::secrets;

/// No place in the pool before the deadline: refuse without hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password checks are all busy")]
pub struct Busy;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on the pool; its threads end when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct PasswordPool {
    places: Arc<Semaphore>,
    jobs_tx: SyncSender<Job>,
}

impl PasswordPool {
    /// Starts `threads` threads with `queue` places waiting in front of them.
    pub fn start(threads: NonZeroUsize, queue: usize) -> std::io::Result<PasswordPool> {
        let places = threads.get() + queue;
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(places);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        for n in 0..threads.get() {
            let jobs_rx = jobs_rx.clone();
            std::thread::Builder::new()
                .name(format!("roost-password-{n}"))
                .spawn(move || work(&jobs_rx))?;
        }
        Ok(PasswordPool {
            places: Arc::new(Semaphore::new(places)),
            jobs_tx,
        })
    }

    /// Whether `presented` matches `stored`, checked on the pool; [`Busy`] when no place freed
    /// up before `deadline`.
    pub async fn verify(
        &self,
        stored: String,
        presented: String,
        deadline: Instant,
    ) -> Result<bool, Busy> {
        let place = tokio::time::timeout_at(deadline, self.places.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        let (done_tx, done_rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let matched = secrets::verify(&stored, &presented);
            drop(place);
            let _ = done_tx.send(matched);
        });
        // Never full: a job is only sent while holding one of the channel's places.
        self.jobs_tx.try_send(job).map_err(|_| Busy)?;
        done_rx.await.map_err(|_| Busy)
    }

    /// Places free right now (threads idle plus queue room).
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.places.available_permits()
    }
}

fn work(jobs_rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let jobs_rx = jobs_rx.lock().unwrap_or_else(|e| e.into_inner());
            jobs_rx.recv()
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// The thread count for `limits.password_threads`: as configured, or for 0 a quarter of the
/// cores, at least one.
pub fn threads_for(configured: usize) -> NonZeroUsize {
    NonZeroUsize::new(configured).unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        NonZeroUsize::new(cores / 4).unwrap_or(NonZeroUsize::MIN)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_check_without_a_place_by_its_deadline_is_busy_and_one_that_gets_a_place_runs() {
        let stored = secrets::hash_operator_password("right").expect("hash");
        let pool = PasswordPool::start(NonZeroUsize::MIN, 1).expect("pool");
        assert_eq!(pool.free(), 2);
        // Every place taken (as by two slow checks in flight).
        let taken = pool
            .places
            .clone()
            .acquire_many_owned(2)
            .await
            .expect("places");
        let soon = Instant::now() + Duration::from_millis(20);
        let refused = pool.verify(stored.clone(), "right".into(), soon);
        let refused = tokio::time::timeout(Duration::from_secs(10), refused).await;
        assert_eq!(refused, Ok(Err(Busy)), "refused at its deadline");
        // A check with time left waits for a place and runs once one frees up.
        let deadline = Instant::now() + Duration::from_secs(30);
        let waiting = tokio::spawn({
            let (pool, stored) = (pool.clone(), stored.clone());
            async move { pool.verify(stored, "right".into(), deadline).await }
        });
        drop(taken);
        assert_eq!(waiting.await.expect("task"), Ok(true));
        assert_eq!(
            pool.verify(stored, "wrong".into(), deadline).await,
            Ok(false)
        );
        assert_eq!(pool.free(), 2);
    }

    #[test]
    fn zero_threads_means_a_quarter_of_the_cores_at_least_one() {
        assert_eq!(threads_for(3).get(), 3);
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(threads_for(0).get(), (cores / 4).max(1));
    }
}
