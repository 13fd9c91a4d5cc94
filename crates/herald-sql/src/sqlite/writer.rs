//! The writer connection and group commit.
//!
//! SQLite has one writer at a time, and each commit costs more than the statements before it:
//! the changed pages are appended to the write-ahead log (a page is written whole however
//! little of it changed, and the broker's and the log's hot pages change in every unit of
//! work), the file locks are taken and released, and every so often a checkpoint syncs. So
//! when other writers of this process are already waiting for their turn, a finished unit of
//! work does not commit on its own: it releases its savepoint, hands the still-open
//! transaction to the next writer, and waits. The last unit of the group (nobody waiting, or
//! [`MAX_GROUP`] reached) commits for everyone, and everyone's `commit` returns only then, with
//! that outcome. One commit, many units of work.
//!
//! What each unit sees is unchanged: its statements run inside a savepoint of its own, so a
//! unit that fails or is dropped rolls back alone (`ROLLBACK TO`); positions are still handed
//! out by one writer at a time, in order; a unit's `commit` returns after the data is
//! committed, so its hooks (doorbells, `on_commit`) run after other connections can read it.
//! A group commit that fails fails every unit in it: none of them was committed.
//!
//! A writer that deferred its commit also queues for the connection itself, so a group whose
//! next writer gave up waiting (a cancelled task) is committed by the units already in it.
//!
//! The slot remembers who holds the writer (the tokio task, or the thread outside a task), so
//! a task that asks for it while it already holds it — a second unit of work, or a write on
//! the pool, from inside a handler's open unit of work — fails at once
//! ([`SqlError::WriteLockHeld`]) instead of waiting for itself until the busy timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

use crate::error::SqlError;

/// At most this many units of work share one commit (bounds the wait of the first one).
pub(crate) const MAX_GROUP: usize = 32;

/// The writer connection and the group committing on it, if one is open.
#[derive(Debug)]
pub(crate) struct Writer {
    conn: Connection,
    group: Option<Arc<Group>>,
}

impl Writer {
    pub(crate) fn new(conn: Connection) -> Self {
        Self { conn, group: None }
    }
}

/// One physical transaction shared by consecutive units of work.
#[derive(Debug, Default)]
struct Group {
    /// Units that ended in it so far (committed into it or rolled back out of it).
    units: AtomicUsize,
    /// Units whose work is in it (released savepoints).
    kept: AtomicUsize,
    /// The outcome of the commit, once it happened.
    outcome: OnceLock<Result<(), String>>,
    settled: Notify,
}

impl Group {
    fn settle(&self, outcome: Result<(), String>) {
        let _ = self.outcome.set(outcome);
        self.settled.notify_waiters();
    }
}

/// Who holds the writer for a unit of work: the tokio task that took it, or the thread when it
/// was taken outside a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

impl Holder {
    fn current() -> Self {
        match tokio::task::try_id() {
            Some(id) => Self::Task(id),
            None => Self::Thread(std::thread::current().id()),
        }
    }
}

/// The writer's mutex, how many are waiting for it and who holds it.
#[derive(Debug)]
pub(crate) struct WriterSlot {
    writer: Arc<Mutex<Writer>>,
    waiting: AtomicUsize,
    /// Who holds the writer for a unit of work (set while a [`Held`] lives). Written only by
    /// the holder, under the writer's mutex, so a task that reads its own id here holds it.
    holder: std::sync::Mutex<Option<Holder>>,
}

impl WriterSlot {
    pub(crate) fn new(writer: Writer) -> Self {
        Self { writer: Arc::new(Mutex::new(writer)), waiting: AtomicUsize::new(0), holder: std::sync::Mutex::new(None) }
    }

    fn holder(&self) -> std::sync::MutexGuard<'_, Option<Holder>> {
        self.holder.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the calling task (or thread, outside a task) holds the writer in a unit of work.
    pub(crate) fn held_here(&self) -> bool {
        *self.holder() == Some(Holder::current())
    }

    /// Waits (in order) for the writer connection, up to `deadline`, and marks the calling task
    /// as its holder.
    async fn lock(self: &Arc<Self>, deadline: tokio::time::Instant) -> Option<Held> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = tokio::time::timeout_at(deadline, self.writer.clone().lock_owned()).await.ok();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let guard = guard?;
        *self.holder() = Some(Holder::current());
        Some(Held { guard, slot: self.clone() })
    }

    fn others_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }
}

/// The writer, held for a unit of work: forgets its holder before it lets go of the mutex.
struct Held {
    guard: OwnedMutexGuard<Writer>,
    slot: Arc<WriterSlot>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Before `guard` (a field) is dropped, so the next holder's mark is never erased.
        *self.slot.holder() = None;
    }
}

impl std::ops::Deref for Held {
    type Target = Writer;
    fn deref(&self) -> &Writer {
        &self.guard
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Writer {
        &mut self.guard
    }
}

/// Whether SQLite refused for a lock another connection holds.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

fn run(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Starts a unit of work on the writer: joins the open group, or opens one with
/// `BEGIN IMMEDIATE` (retried, without blocking a thread, while another process holds the write
/// lock, until `deadline`).
///
/// # Errors
/// [`SqlError::WriteLockHeld`] at once if the calling task already holds the writer (waiting
/// would be waiting for itself).
pub(crate) async fn begin(
    slot: &Arc<WriterSlot>,
    deadline: tokio::time::Instant,
    statement_busy: Duration,
) -> Result<WriteTx, SqlError> {
    if slot.held_here() {
        return Err(SqlError::WriteLockHeld);
    }
    let mut guard = slot.lock(deadline).await.ok_or(SqlError::WriteLockTimeout(Duration::ZERO))?;
    let group = match &guard.group {
        Some(group) => group.clone(),
        None => {
            begin_immediate(&mut guard, deadline, statement_busy).await?;
            let group = Arc::new(Group::default());
            guard.group = Some(group.clone());
            group
        }
    };
    if let Err(e) = run(&guard.conn, "SAVEPOINT herald_unit") {
        let mut tx = WriteTx { guard: Some(guard), group, slot: slot.clone(), open: false };
        tx.end_group_if_last();
        drop(tx.guard.take());
        return Err(e.into());
    }
    Ok(WriteTx { guard: Some(guard), group, slot: slot.clone(), open: true })
}

async fn begin_immediate(
    writer: &mut Writer,
    deadline: tokio::time::Instant,
    statement_busy: Duration,
) -> Result<(), SqlError> {
    // Another process's lock: fail at once inside SQLite, wait here without a thread.
    writer.conn.busy_timeout(Duration::ZERO)?;
    let mut pause = Duration::from_millis(1);
    let outcome = loop {
        let begun = run(&writer.conn, "BEGIN IMMEDIATE");
        match begun {
            Ok(()) => break Ok(()),
            Err(e) if is_busy(&e) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) if is_busy(&e) => break Err(SqlError::WriteLockTimeout(Duration::ZERO)),
            Err(e) => break Err(e.into()),
        }
    };
    writer.conn.busy_timeout(statement_busy)?;
    outcome
}

/// A unit of work on the writer connection: a savepoint inside the group's `BEGIN IMMEDIATE`
/// transaction, holding this process's turn to write. Dropping it rolls the unit back.
pub(crate) struct WriteTx {
    guard: Option<Held>,
    group: Arc<Group>,
    slot: Arc<WriterSlot>,
    /// The savepoint is neither released nor rolled back yet.
    open: bool,
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx").field("open", &self.open).finish_non_exhaustive()
    }
}

impl WriteTx {
    /// The connection, for statements inside the unit of work.
    pub(crate) fn conn(&self) -> &Connection {
        // The guard is taken only by `commit` and `drop`, which consume the unit.
        &self.guard.as_ref().expect("a live unit of work holds the writer").conn
    }

    /// Commits the unit (with the others of its group) and returns once it is committed.
    pub(crate) async fn commit(mut self) -> Result<(), SqlError> {
        let released = run(self.conn(), "RELEASE herald_unit");
        if let Err(e) = released {
            // `drop` rolls the unit back.
            return Err(e.into());
        }
        self.open = false;
        self.group.kept.fetch_add(1, Ordering::SeqCst);
        let units = self.group.units.fetch_add(1, Ordering::SeqCst) + 1;
        let group = self.group.clone();
        let slot = self.slot.clone();
        let mut guard = self.guard.take().expect("a live unit of work holds the writer");
        if slot.others_waiting() && units < MAX_GROUP {
            // Hand the open transaction to the next writer; the group's last unit commits.
            drop(guard);
            return wait_for(&slot, &group).await;
        }
        commit_group(&mut guard).map_err(SqlError::from)
    }

    /// After this unit ended without its work: ends the group. What the unit saw (a version
    /// conflict, say) may be the group's earlier units' work, so that work is committed before
    /// the unit's caller can act on it (re-read through another connection).
    fn end_group_if_last(&mut self) {
        let Some(guard) = self.guard.as_mut() else { return };
        self.group.units.fetch_add(1, Ordering::SeqCst);
        if self.group.kept.load(Ordering::SeqCst) == 0 {
            // Nothing in the transaction: end it.
            if let Err(e) = run(&guard.conn, "ROLLBACK") {
                tracing::warn!(error = %e, "rollback failed");
            }
            guard.group = None;
            self.group.settle(Ok(()));
        } else if let Err(e) = commit_group(guard) {
            tracing::warn!(error = %e, "group commit after a rollback failed");
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(guard) = self.guard.as_ref() else { return };
        if self.open {
            self.open = false;
            if let Err(e) =
                run(&guard.conn, "ROLLBACK TO herald_unit").and_then(|()| run(&guard.conn, "RELEASE herald_unit"))
            {
                // The savepoint is unusable: give up the whole group (its units are told).
                tracing::warn!(error = %e, "rollback of a unit of work failed; rolling back its group");
                if let Some(guard) = self.guard.as_mut() {
                    abort_group(guard, &format!("rolled back: {e}"));
                }
                return;
            }
        }
        self.end_group_if_last();
    }
}

/// Commits the open group (if any) and tells its units.
fn commit_group(writer: &mut Writer) -> Result<(), rusqlite::Error> {
    let Some(group) = writer.group.take() else { return Ok(()) };
    match run(&writer.conn, "COMMIT") {
        Ok(()) => {
            group.settle(Ok(()));
            Ok(())
        }
        Err(e) => {
            if !writer.conn.is_autocommit() {
                let _ = run(&writer.conn, "ROLLBACK");
            }
            group.settle(Err(e.to_string()));
            Err(e)
        }
    }
}

fn abort_group(writer: &mut Writer, why: &str) {
    if !writer.conn.is_autocommit() {
        let _ = run(&writer.conn, "ROLLBACK");
    }
    if let Some(group) = writer.group.take() {
        group.settle(Err(why.to_owned()));
    }
}

/// Waits until `group` is settled; if the writer comes free first and the group is still open
/// (its next writer went away), commits it.
async fn wait_for(slot: &WriterSlot, group: &Arc<Group>) -> Result<(), SqlError> {
    loop {
        let settled = group.settled.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        if let Some(outcome) = group.outcome.get() {
            return outcome.clone().map_err(SqlError::GroupCommit);
        }
        tokio::select! {
            () = &mut settled => {}
            mut guard = slot.writer.clone().lock_owned() => {
                if guard.group.as_ref().is_some_and(|g| Arc::ptr_eq(g, group)) {
                    return commit_group(&mut guard).map_err(SqlError::from);
                }
            }
        }
    }
}
