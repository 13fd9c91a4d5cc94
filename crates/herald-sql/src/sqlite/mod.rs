//! Herald on SQLite: [`SqliteDatabase`] (the pool and the writers' turn), [`SqliteStore`] and
//! [`SqliteTransaction`] (every storage port) and [`SqliteQueue`] (the SQL broker).
//!
//! # Why every write starts with `BEGIN IMMEDIATE`
//!
//! SQLite has one writer at a time. A plain (deferred) `BEGIN` takes the write lock only at the
//! first write, so a transaction that reads a stream's version and then appends would check
//! the version *before* holding the lock: two of them could both pass the check, and in WAL
//! mode the second one's upgrade fails at once with `SQLITE_BUSY_SNAPSHOT`, which the busy
//! timeout cannot wait out. `BEGIN IMMEDIATE` takes the write lock first. From then on the
//! transaction sees every commit before it and nobody else commits until it ends, so:
//!
//! * the expected-version check and the insert are one atomic step (no lost updates);
//! * `AUTOINCREMENT` positions are handed out while holding the lock, so they increase in
//!   commit order: a reader that has seen position `p` can never later find a committed event
//!   below `p` (the global log never shows a gap that later fills);
//! * the broker's claim (copy new messages, dead-letter, lease) is one consistent step.
//!
//! Within one process the writers also queue on a fair async semaphore before asking SQLite,
//! so a burst of writers is served in order instead of sleeping in SQLite's busy handler (which
//! polls with growing sleeps and can starve a waiter); other processes are still kept out by
//! SQLite's own lock, waited for up to the busy timeout. Readers never take the turn: in WAL
//! mode they read a consistent snapshot while a writer works.
//!
//! # Waking up without polling
//!
//! This process's commits, publishes and settlements notify its readers and subscriptions
//! directly. SQLite has no signal between processes, so a small watcher task looks at the
//! write-ahead log's size and modification time every [`WATCH_INTERVAL`] (one `stat`, no
//! query) and, when it changed, wakes everyone: at once if this process wrote nothing since the
//! last look, else at most every [`BUSY_WAKE_INTERVAL`] (the change was most likely this
//! process's own, already announced, and waking every subscription costs a query each).

mod dead_letters;
mod queue;
mod sql;
mod store;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub use queue::{SqlBroker, SqliteQueue};
pub use store::{SqliteStore, SqliteTransaction};

use crate::config::SqliteConfig;
use crate::error::SqlError;

/// The schema, embedded at compile time from `migrations/sqlite`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// An open SQLite database holding every Herald port. Cheap to clone: clones share one
/// connection pool, one writers' turn and the wake-up signals, so a store and a broker made
/// from the same database wake each other's readers at once.
#[derive(Clone, Debug)]
pub struct SqliteDatabase {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Readers and writers both borrow connections from here.
    pool: SqlitePool,
    /// One permit: the writer whose turn it is in this process (see the module docs).
    write_turn: Arc<Semaphore>,
    /// How long a writer waits for its turn, here and in SQLite's busy handler.
    busy_timeout: Duration,
    /// Notified after every store commit in this process (`Store::changes`).
    store_changes: Notify,
    /// Notified when broker messages were appended or released in this process
    /// (`QueueBackend::changed`).
    queue_changed: Notify,
    /// Per-topic wake-ups of this process's subscriptions, shared by every broker on this
    /// database.
    queue_doorbells: herald::queue::Doorbells,
    /// How many times this process took the writers' turn: the watcher tells its own writes
    /// from other processes' by it.
    local_writes: AtomicU64,
    /// Stops the write-ahead log watcher.
    stop: CancellationToken,
    /// Stores enqueue straight into the SQL broker (`SqliteConfig::publish_to_sql_broker`).
    publish_to_sql_broker: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How often the watcher looks at the write-ahead log for other processes' commits.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// How often the watcher wakes everyone at most while this process writes too.
pub const BUSY_WAKE_INTERVAL: Duration = Duration::from_millis(500);

/// How often readers and subscriptions look for work no signal announced (the watcher misses
/// another process's commit that lands while this process writes too).
const FALLBACK_POLL: Duration = Duration::from_secs(5);

impl SqliteDatabase {
    /// Opens (creating if needed) and migrates the database at `url_or_path`
    /// (`sqlite://file.db` or `file.db`) with the default settings of [`SqliteConfig`].
    pub async fn open(url_or_path: &str) -> Result<Self, SqlError> {
        SqliteConfig::new(url_or_path).open().await
    }

    /// Opens the database described by a validated `config`.
    pub(crate) async fn connect(config: &SqliteConfig) -> Result<Self, SqlError> {
        let url = config.url.trim();
        let open_error = |source| SqlError::Open { url: url.to_owned(), source };
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url).map_err(open_error)?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let file = options.get_filename().to_owned();
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(config.busy_timeout());
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.busy_timeout())
            // sqlx pings every connection it hands out, a round trip to the connection's
            // worker thread each time; a local file cannot hang up.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        migrate(&pool, url).await?;
        let shared = Arc::new(Shared {
            pool,
            write_turn: Arc::new(Semaphore::new(1)),
            busy_timeout: config.busy_timeout(),
            store_changes: Notify::new(),
            queue_changed: Notify::new(),
            queue_doorbells: herald::queue::Doorbells::default(),
            local_writes: AtomicU64::new(0),
            stop: CancellationToken::new(),
            publish_to_sql_broker: config.publish_to_sql_broker,
        });
        // An in-memory database has no file and no other process.
        let in_memory = file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:");
        if !in_memory {
            let mut wal = file.into_os_string();
            wal.push("-wal");
            let stop = shared.stop.clone();
            // Ends when the database is closed or its last handle dropped (`Shared::drop`).
            tokio::spawn(watch_wal(PathBuf::from(wal), Arc::downgrade(&shared), stop));
        }
        Ok(Self { shared })
    }

    /// The event store, outbox, inbox, checkpoints and saga store on this database.
    pub fn store(&self) -> SqliteStore {
        SqliteStore::new(self.clone())
    }

    /// The SQL broker on this database: durable topics, consumer groups, per-key order, dead
    /// letters. Messages published through it are visible to every process using the file.
    pub fn broker(&self) -> SqlBroker {
        SqlBroker::new(SqliteQueue::new(self.clone()))
    }

    /// The connection pool, for the application's own queries.
    pub fn pool(&self) -> &SqlitePool {
        &self.shared.pool
    }

    /// Closes every connection (waiting for borrowed ones to come back). Later use fails.
    pub async fn close(&self) {
        self.shared.stop.cancel();
        self.shared.pool.close().await;
    }

    /// Waits for this process's writers' turn (for a single autocommit write statement).
    pub(crate) async fn write_turn(&self) -> Result<OwnedSemaphorePermit, SqlError> {
        self.shared.local_writes.fetch_add(1, Ordering::Relaxed);
        let wait = self.shared.busy_timeout;
        tokio::time::timeout(wait, self.shared.write_turn.clone().acquire_owned())
            .await
            .map_err(|_| SqlError::WriteLockTimeout(wait))?
            .map_err(|_| SqlError::WriteLockTimeout(wait))
    }

    /// Starts a write transaction: waits for this process's turn, then `BEGIN IMMEDIATE`.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, SqlError> {
        let turn = self.write_turn().await?;
        let tx = self.shared.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Whether stores enqueue straight into the SQL broker.
    pub(crate) fn publishes_to_sql_broker(&self) -> bool {
        self.shared.publish_to_sql_broker
    }

    pub(crate) fn store_changes(&self) -> &Notify {
        &self.shared.store_changes
    }

    pub(crate) fn queue_changed(&self) -> &Notify {
        &self.shared.queue_changed
    }

    pub(crate) fn queue_doorbells(&self) -> &herald::queue::Doorbells {
        &self.shared.queue_doorbells
    }
}

/// A `BEGIN IMMEDIATE` transaction holding this process's writers' turn. Dropping it rolls back
/// and gives the turn to the next writer.
pub(crate) struct WriteTx {
    // Declared before `_turn` so the rollback is queued before the next writer is let in.
    tx: sqlx::Transaction<'static, Sqlite>,
    _turn: OwnedSemaphorePermit,
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx").finish_non_exhaustive()
    }
}

impl WriteTx {
    /// The connection, for statements inside the transaction.
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// Commits, then gives the turn to the next writer.
    pub(crate) async fn commit(self) -> Result<(), SqlError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// The write-ahead log's size and modification time, if it exists.
fn wal_stamp(wal: &std::path::Path) -> Option<(u64, Option<SystemTime>)> {
    std::fs::metadata(wal).ok().map(|m| (m.len(), m.modified().ok()))
}

/// Wakes this process's readers and subscriptions when the write-ahead log changed while this
/// process wrote nothing (see the module docs), until `stop` or the database is gone.
async fn watch_wal(wal: PathBuf, shared: Weak<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = wal_stamp(&wal);
    let mut local = shared.upgrade().map_or(0, |s| s.local_writes.load(Ordering::Relaxed));
    let mut woke = tokio::time::Instant::now();
    // A change seen but not announced yet (this process was writing too).
    let mut pending = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(shared) = shared.upgrade() else { return };
        let stamp = wal_stamp(&wal);
        let writes = shared.local_writes.load(Ordering::Relaxed);
        pending |= stamp != last;
        if pending && (writes == local || woke.elapsed() >= BUSY_WAKE_INTERVAL) {
            shared.store_changes.notify_waiters();
            shared.queue_changed.notify_waiters();
            (woke, pending) = (tokio::time::Instant::now(), false);
        }
        (last, local) = (stamp, writes);
    }
}

/// Runs the embedded migrations. Two processes opening a new file at the same moment can race
/// (SQLite migrations take no lock), so a failure is retried after a pause: by then the other
/// process has finished and there is nothing left to do.
async fn migrate(pool: &SqlitePool, url: &str) -> Result<(), SqlError> {
    let mut attempt = 0;
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::debug!(url, error = %e, attempt, "migration failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(source) => return Err(SqlError::Migrate { url: url.to_owned(), source }),
        }
    }
}
