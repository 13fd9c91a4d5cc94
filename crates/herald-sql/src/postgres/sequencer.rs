//! The global log's sequencer: gives committed events their positions, after their
//! transactions committed (docs/adr/0003-postgres-global-log.md, "Superseded: a sequencer after
//! commit").
//!
//! Appending transactions insert events with `position` NULL and hold no lock. A *run* of the
//! sequencer is one or more short transactions, each of which takes the sequencer's advisory
//! lock for the schema, then numbers the oldest committed unsequenced rows (in `seq`, insertion,
//! order) from the current head of the log on. Each [`PostgresDatabase`](super::PostgresDatabase)
//! runs one sequencer task; the tasks of several handles or processes on one schema take turns
//! on the lock, so they never assign a position twice.
//!
//! Why readers never skip: READ COMMITTED lets a batch see only committed rows; batches are
//! serialised by the lock, and a committed batch is visible before its lock is released, so the
//! next batch starts above it; a batch becomes visible at once (one transaction); a row still
//! uncommitted when a batch runs is sequenced by a later batch, above everything visible before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{CHANNEL, SEQUENCER_LOCK, sql};

/// Rows numbered per sequencer transaction; a run loops while batches come back full.
const BATCH: i64 = 5_000;

/// How often the task looks for committed rows nobody asked it to sequence (a process that
/// crashed between its commit and its sequencer's run; other processes' readers also trigger a
/// run when they find such rows, see [`Sequencer::run_and_wait`]).
const POLL: Duration = Duration::from_secs(2);

/// The handle on a database's sequencer task: ask for a run, or wait for one.
#[derive(Debug)]
pub(crate) struct Sequencer {
    /// Asks the task for a run (a stored permit when it is busy: requests coalesce).
    wake: Notify,
    /// Runs started so far (incremented before a run reads anything).
    started: AtomicU64,
    /// Runs finished so far (whatever their outcome).
    finished: watch::Sender<u64>,
}

impl Sequencer {
    pub(crate) fn new() -> Self {
        Self { wake: Notify::new(), started: AtomicU64::new(0), finished: watch::Sender::new(0) }
    }

    /// Asks for a run soon (after a commit that appended), without waiting.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Asks for a run and waits until one that started after this call has finished, so every
    /// event committed before the call has a position (or the run failed, or the task stopped:
    /// then the caller reads what is sequenced, which is still a gap-free prefix of the log).
    pub(crate) async fn run_and_wait(&self, stop: &CancellationToken) {
        let mut finished = self.finished.subscribe();
        let target = self.started.load(Ordering::SeqCst) + 1;
        self.wake.notify_one();
        tokio::select! {
            _ = finished.wait_for(|&n| n >= target) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// What the task needs; no handle on the database itself, so the last handle's drop still
/// stops it.
pub(super) struct Context {
    pub pool: PgPool,
    pub lock_key: i32,
    pub store_changes: Arc<Notify>,
    pub store_payload: String,
    pub sequencer: Arc<Sequencer>,
    /// Whether batches need an explicit READ COMMITTED transaction (the session's default
    /// isolation is stricter); found out by the first batch.
    pub explicit: AtomicBool,
}

/// The sequencer task: a run when asked (coalescing requests), when the poll finds committed
/// unsequenced rows, until stopped.
pub(super) async fn run(cx: Context, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let asked = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = cx.sequencer.wake.notified() => true,
            () = tokio::time::sleep(POLL) => false,
        };
        if !asked && !unsequenced(&cx.pool).await.unwrap_or(true) {
            continue;
        }
        cx.sequencer.started.fetch_add(1, Ordering::SeqCst);
        let outcome = sequence_all(&cx).await;
        cx.sequencer.finished.send_modify(|n| *n += 1);
        match outcome {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "the event log's sequencer failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50) * failures.min(40)) => {}
                }
                cx.sequencer.wake();
            }
        }
    }
}

/// Whether committed events wait for a position.
pub(super) async fn unsequenced<'c, E: sqlx::PgExecutor<'c>>(conn: E) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(sql::UNSEQUENCED).fetch_one(conn).await
}

/// Batches until one comes back less than full; readers are woken after each batch that
/// assigned positions.
async fn sequence_all(cx: &Context) -> Result<(), sqlx::Error> {
    loop {
        let n = batch(cx).await?;
        if n > 0 {
            cx.store_changes.notify_waiters();
        }
        if n < BATCH as u64 {
            return Ok(());
        }
    }
}

/// One sequencer batch; returns how many rows got a position (announced to other processes'
/// readers by `pg_notify`, delivered at commit, when there were any).
///
/// One autocommit call when the session's default isolation is READ COMMITTED (the lock is
/// released by the statement's implicit commit); otherwise the function refuses, and from then
/// on each batch runs in an explicit READ COMMITTED transaction (two more round trips).
async fn batch(cx: &Context) -> Result<u64, sqlx::Error> {
    let call = || {
        sqlx::query_scalar::<_, i64>(sql::SEQUENCE_BATCH)
            .bind(SEQUENCER_LOCK)
            .bind(cx.lock_key)
            .bind(BATCH)
            .bind(CHANNEL)
            .bind(&cx.store_payload)
    };
    if !cx.explicit.load(Ordering::Relaxed) {
        match call().fetch_one(&cx.pool).await {
            Ok(n) => return Ok(u64::try_from(n).unwrap_or(0)),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25000") => {
                tracing::debug!("the default isolation is not READ COMMITTED; sequencing in explicit transactions");
                cx.explicit.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let mut tx = cx.pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?;
    let n = call().fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
