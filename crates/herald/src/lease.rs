//! Singletons for services with replicas: background work that must run in exactly one process
//! at a time — the outbox relay, each projection, the saga timeout scan — runs under a named
//! [lease](crate::store::Store::acquire_lease) of the store, with hand-over when its holder
//! dies or stops.
//!
//! A [`Singleton`] runs a job only while it holds its lease:
//!
//! ```text
//! standby ──acquire every ttl/3──► granted ──► job(grant, cancel) running
//!    ▲                                │  renew every ttl/3 (same token expected)
//!    │                                ├─ renewal refused, failed, or not back in time
//!    │                                │    └─► cancel the job at once, wait for it ──► standby
//!    │                                ├─ shutdown ──► cancel the job, wait, release ──► return
//!    └────────────────────────────────┴─ job ended on its own ──► release ──► return its result
//! ```
//!
//! Every process runs the same singleton; one holds the lease and runs the job, the others
//! stand by and poll. A holder that stops cleanly releases the lease, so a standby takes over
//! within a third of the time to live; one that dies leaves it to run out (`ttl`).
//!
//! # What a lease does not guarantee
//!
//! A lease is only as good as time: a holder paused longer than `ttl` (a GC pause, a stopped VM,
//! a lost network) may still be running its job when a standby takes over. The singleton
//! cancels its job as soon as a renewal is refused or fails, and when a renewal has not come
//! back by the time the lease would run out (measured from before asking, so it errs early);
//! but a job already inside a write cannot be stopped half-way. So writes that must never happen
//! twice are *fenced*: they carry the grant's [fencing token](LeaseGrant::token), and the store
//! refuses a token older than one it has seen ([`Transaction::save_checkpoint_if`]; projections
//! do this, ADR 0015). Work that is harmless to repeat (publishing the outbox, whose consumers
//! de-duplicate; the saga timeout scan, whose saves are versioned) needs no fence.
//!
//! [`Transaction::save_checkpoint_if`]: crate::store::Transaction::save_checkpoint_if

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{LeaseGrant, Store, StoreError};

/// The lease of the outbox relay ([`OutboxRelay`](crate::outbox::OutboxRelay)).
pub const OUTBOX_RELAY: &str = "herald:outbox-relay";

/// The lease of projection `name` ([`ProjectionRunner::run_leased`](crate::projection::ProjectionRunner::run_leased)).
pub fn projection_lease(name: &str) -> String {
    format!("herald:projection:{name}")
}

/// The lease of saga `name`'s timeout scan
/// ([`Orchestrator::run_timeouts_leased`](crate::saga::Orchestrator::run_timeouts_leased)).
pub fn saga_timeouts_lease(name: &str) -> String {
    format!("herald:saga-timeouts:{name}")
}

/// The shortest time to live a [`Singleton`] accepts.
pub const MIN_TTL: Duration = Duration::from_millis(30);

/// Runs a job in one process at a time: only while holding lease `name` of a store. See the
/// [module docs](self).
#[derive(Clone)]
pub struct Singleton {
    store: Arc<dyn Store>,
    name: String,
    holder: String,
    ttl: Duration,
}

impl fmt::Debug for Singleton {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Singleton")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Why a holder stopped holding.
enum Lost {
    /// Another holder has the lease (or this one got it back with a new token).
    Refused(Option<u64>),
    /// The store failed.
    Failed(StoreError),
    /// No renewal came back before the lease would run out.
    TimedOut,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(None) => f.write_str("another holder has the lease"),
            Self::Refused(Some(token)) => write!(f, "the lease ran out and was granted again (token {token})"),
            Self::Failed(e) => write!(f, "renewing failed: {e}"),
            Self::TimedOut => f.write_str("no renewal came back before the lease would run out"),
        }
    }
}

impl Singleton {
    /// A singleton on lease `name` of `store`, held as `holder` for `ttl` (at least
    /// [`MIN_TTL`]) after each renewal. `holder` must be unique among the processes running at
    /// the same time (a host or pod name plus something random, for instance); a stable name per
    /// deployment slot lets a restarted process take its lease back at once.
    pub fn new(store: Arc<dyn Store>, name: impl Into<String>, holder: impl Into<String>, ttl: Duration) -> Self {
        Self { store, name: name.into(), holder: holder.into(), ttl: ttl.max(MIN_TTL) }
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This process's name in the lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The lease's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often the holder renews and a standby polls: a third of the time to live.
    pub fn interval(&self) -> Duration {
        self.ttl / 3
    }

    /// Runs `job` whenever this process holds the lease, until `shutdown`.
    ///
    /// While standing by, tries to acquire the lease every [`interval`](Self::interval). Once
    /// granted, calls `job(grant, cancel)` and renews the lease every interval while the job
    /// runs. If a renewal is refused, fails, returns another token, or has not come back when
    /// the lease would run out, `cancel` is cancelled at once, the job is awaited (for at most
    /// the time to live; then it is dropped) and the singleton stands by again. On `shutdown`,
    /// `cancel` is cancelled too (it is a child of `shutdown`), the job is awaited — still
    /// holding the lease, which is renewed meanwhile — and the lease released; `run` returns
    /// the job's result (`Ok(())` if it was standing by).
    ///
    /// A job that returns on its own (without being cancelled) ends the singleton: the lease is
    /// released and its result returned — unless the lease turns out to be lost by then (the
    /// job may have stopped *because* a newer holder fenced it off), in which case the result is
    /// logged and the singleton stands by again.
    ///
    /// The job runs on the caller's task (no task is spawned): aborting or dropping `run`
    /// drops the job too, and leaves the lease to run out, as a crash would.
    pub async fn run<F, Fut, E>(&self, shutdown: CancellationToken, mut job: F) -> Result<(), E>
    where
        F: FnMut(LeaseGrant, CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let asked = Instant::now();
            let grant = match self.store.acquire_lease(&self.name, &self.holder, self.ttl).await {
                Ok(grant) => grant,
                Err(e) => {
                    tracing::warn!(lease = %self.name, holder = %self.holder, error = %e, "acquiring the lease failed; will retry");
                    None
                }
            };
            let Some(grant) = grant else {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(self.interval()) => continue,
                }
            };
            tracing::info!(lease = %self.name, holder = %self.holder, token = grant.token, "lease acquired; starting the job");
            let cancel = shutdown.child_token();
            let work = job(grant.clone(), cancel.clone());
            tokio::pin!(work);
            let ended = tokio::select! {
                result = &mut work => Some(result),
                lost = self.keep(&grant, asked) => {
                    tracing::warn!(
                        lease = %self.name, holder = %self.holder, token = grant.token, reason = %lost,
                        "lease lost; stopping the job"
                    );
                    cancel.cancel();
                    match tokio::time::timeout(self.ttl, &mut work).await {
                        Ok(Err(e)) => tracing::warn!(lease = %self.name, error = %e, "the job ended with an error after losing the lease"),
                        Ok(Ok(())) => {}
                        Err(_) => tracing::warn!(lease = %self.name, "the job did not stop within the time to live; dropped"),
                    }
                    None
                }
            };
            let Some(result) = ended else { continue };
            if !shutdown.is_cancelled() && !self.still_held(&grant).await {
                if let Err(e) = &result {
                    tracing::warn!(lease = %self.name, holder = %self.holder, error = %e, "the job stopped after the lease was lost");
                }
                continue;
            }
            self.release().await;
            return result;
        }
    }

    /// Renews the lease every interval while the job runs; returns only when it is lost.
    async fn keep(&self, grant: &LeaseGrant, mut asked: Instant) -> Lost {
        loop {
            // Valid until `ttl` after the last successful request (measured before sending it).
            let deadline = asked + self.ttl;
            tokio::time::sleep_until(asked + self.interval()).await;
            let now = Instant::now();
            let renewal = self.store.acquire_lease(&self.name, &self.holder, self.ttl);
            match tokio::time::timeout_at(deadline, renewal).await {
                Ok(Ok(Some(g))) if g.token == grant.token => asked = now,
                Ok(Ok(Some(g))) => return Lost::Refused(Some(g.token)),
                Ok(Ok(None)) => return Lost::Refused(None),
                Ok(Err(e)) => return Lost::Failed(e),
                Err(_) => return Lost::TimedOut,
            }
        }
    }

    /// Whether this holder still holds the lease with `grant`'s token (renewing it).
    async fn still_held(&self, grant: &LeaseGrant) -> bool {
        matches!(
            self.store.acquire_lease(&self.name, &self.holder, self.ttl).await,
            Ok(Some(g)) if g.token == grant.token
        )
    }

    async fn release(&self) {
        match self.store.release_lease(&self.name, &self.holder).await {
            Ok(()) => tracing::info!(lease = %self.name, holder = %self.holder, "lease released"),
            Err(e) => tracing::warn!(
                lease = %self.name, holder = %self.holder, error = %e,
                "releasing the lease failed; another holder takes over when it runs out"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::memory::MemoryStore;

    const TTL: Duration = Duration::from_millis(150);
    const WAIT: Duration = Duration::from_secs(10);

    /// Waits until `condition` holds; panics after `WAIT`.
    async fn until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// What the jobs of several singletons did: who runs now, how many at once at most, and
    /// every grant in order.
    #[derive(Default)]
    struct Board {
        running: Mutex<Vec<String>>,
        most: AtomicUsize,
        grants: Mutex<Vec<LeaseGrant>>,
    }

    impl Board {
        fn running(&self) -> Vec<String> {
            self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
        }

        fn grants(&self) -> Vec<LeaseGrant> {
            self.grants.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
        }

        /// A job that records itself while it runs, until cancelled.
        async fn job(&self, grant: LeaseGrant, cancel: CancellationToken) -> Result<(), String> {
            {
                let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                running.push(grant.holder.clone());
                self.most.fetch_max(running.len(), Ordering::SeqCst);
            }
            self.grants.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(grant.clone());
            cancel.cancelled().await;
            self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|h| *h != grant.holder);
            Ok(())
        }
    }

    fn spawn(
        store: &MemoryStore,
        holder: &str,
        board: &Arc<Board>,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<Result<(), String>> {
        spawn_with(store, holder, board, shutdown, TTL)
    }

    fn spawn_with(
        store: &MemoryStore,
        holder: &str,
        board: &Arc<Board>,
        shutdown: &CancellationToken,
        ttl: Duration,
    ) -> tokio::task::JoinHandle<Result<(), String>> {
        let singleton = Singleton::new(Arc::new(store.clone()), "test-lease", holder, ttl);
        let (board, shutdown) = (board.clone(), shutdown.clone());
        tokio::spawn(async move { singleton.run(shutdown, |grant, cancel| board.job(grant, cancel)).await })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_runs_the_job_and_a_standby_takes_over_on_a_clean_stop() {
        let store = MemoryStore::new();
        let board = Arc::new(Board::default());
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        // A longer ttl here, so that "taken over well before the ttl" is a robust check.
        let ttl = Duration::from_millis(1500);
        let a = spawn_with(&store, "a", &board, &stop_a, ttl);
        until("a runs", || board.running() == ["a"]).await;
        let b = spawn_with(&store, "b", &board, &stop_b, ttl);
        // A few renewals later, still only a.
        tokio::time::sleep(ttl).await;
        assert_eq!(board.running(), ["a"], "the standby waits while the holder renews");

        let stopped = Instant::now();
        stop_a.cancel();
        a.await.expect("a's task").expect("a stopped cleanly");
        until("b takes over", || board.running() == ["b"]).await;
        assert!(stopped.elapsed() < ttl, "a released lease is taken at the standby's next poll, not after the ttl");
        let grants = board.grants();
        assert_eq!(grants.len(), 2);
        assert!(grants[1].token > grants[0].token, "the new holder's token is larger: {grants:?}");

        stop_b.cancel();
        b.await.expect("b's task").expect("b stopped cleanly");
        assert_eq!(board.most.load(Ordering::SeqCst), 1, "never two jobs at once");
        assert!(board.running().is_empty());
        // b released on its way out: the lease is free at once.
        let grant = store.acquire_lease("test-lease", "c", TTL).await.expect("acquire");
        assert!(grant.is_some_and(|g| g.token > grants[1].token));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_holders_lease_runs_out_and_a_standby_takes_over() {
        let store = MemoryStore::new();
        let board = Arc::new(Board::default());
        let stop = CancellationToken::new();
        let a = spawn(&store, "a", &board, &stop);
        until("a runs", || board.running() == ["a"]).await;
        let b = spawn(&store, "b", &board, &stop);
        // a dies without a word: its job is dropped with it, its lease left to run out.
        a.abort();
        let _ = a.await;
        board.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        until("b takes over", || board.running() == ["b"]).await;
        let grants = board.grants();
        assert_eq!(grants.iter().map(|g| g.holder.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(grants[1].token > grants[0].token);
        stop.cancel();
        b.await.expect("b's task").expect("b stopped cleanly");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_that_loses_its_lease_cancels_its_job_at_once_and_stands_by() {
        let store = MemoryStore::new();
        let board = Arc::new(Board::default());
        let stop = CancellationToken::new();
        let a = spawn(&store, "a", &board, &stop);
        until("a runs", || board.running() == ["a"]).await;
        // Someone else gets the lease behind a's back (as if a had been paused past its ttl).
        store.release_lease("test-lease", "a").await.expect("release");
        let thief = store.acquire_lease("test-lease", "thief", Duration::from_secs(60)).await.expect("acquire");
        let thief = thief.expect("a released lease is free");
        // The thief's lease is long: only a's next renewal (every ttl/3) can stop a's job.
        until("a's job is cancelled", || board.running().is_empty()).await;
        // a stands by; once the thief lets go, a runs again with a newer token.
        store.release_lease("test-lease", "thief").await.expect("release");
        until("a runs again", || board.running() == ["a"]).await;
        let grants = board.grants();
        assert_eq!(grants.len(), 2);
        assert!(grants[1].token > thief.token && thief.token > grants[0].token, "{grants:?} / {thief:?}");
        stop.cancel();
        a.await.expect("a's task").expect("a stopped cleanly");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_ends_the_run_with_its_error_and_releases() {
        let store = MemoryStore::new();
        let singleton = Singleton::new(Arc::new(store.clone()), "test-lease", "a", TTL);
        let runs = AtomicUsize::new(0);
        let result = singleton
            .run(CancellationToken::new(), |_, _| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("broken".to_owned()) }
            })
            .await;
        assert_eq!(result, Err("broken".to_owned()));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(store.acquire_lease("test-lease", "b", TTL).await.expect("acquire").is_some(), "released");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_while_standing_by_returns_at_once() {
        let store = MemoryStore::new();
        store.acquire_lease("test-lease", "other", Duration::from_secs(60)).await.expect("acquire");
        let board = Arc::new(Board::default());
        let stop = CancellationToken::new();
        let a = spawn(&store, "a", &board, &stop);
        tokio::time::sleep(TTL / 2).await;
        stop.cancel();
        tokio::time::timeout(WAIT, a).await.expect("stops").expect("task").expect("ok");
        assert!(board.grants().is_empty(), "the job never ran");
    }
}
