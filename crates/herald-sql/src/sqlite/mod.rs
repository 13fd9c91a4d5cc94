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
//! A [`SqliteTransaction`] does this at its *first statement*, not at `begin`: a router begins
//! the unit of work before the handler runs, and a handler that first waits on something else
//! (an HTTP call) must not hold every other writer of the process up meanwhile. Nothing is
//! lost by waiting: the transaction has read nothing before its first statement.
//!
//! Within one process the writers queue, in order, for the one writer connection (a fair async
//! mutex) before asking SQLite, so a burst of writers is served in order instead of sleeping in
//! SQLite's busy handler; another process's lock is waited for without blocking a thread (the
//! `BEGIN IMMEDIATE` is retried with growing pauses, up to the busy timeout). Readers never
//! wait for the writer: in WAL mode they read a consistent snapshot while it works.
//!
//! # Why statements run in place (ADR 0011)
//!
//! A SQLite statement is a few microseconds of CPU. A driver that runs each connection on a
//! thread of its own (sqlx) pays two thread switches per statement, ten times the statement,
//! and a write transaction holds the write lock across every one of them. So Herald talks to
//! SQLite through rusqlite and runs each statement on the task's own thread: the writer
//! connection is borrowed for the length of the transaction, a reader connection for the length
//! of one read. No statement waits on anything but SQLite itself (the database is local;
//! `synchronous = NORMAL` in WAL mode syncs only at checkpoints).
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
mod migrate;
mod parking;
mod queue;
mod sql;
mod store;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use queue::{SqlBroker, SqliteQueue};
pub use store::{SqliteStore, SqliteTransaction};
pub(crate) use writer::WriteTx;
use writer::{Writer, WriterSlot};

use crate::config::SqliteConfig;
use crate::error::SqlError;

/// An open SQLite database holding every Herald port. Cheap to clone: clones share the
/// connections, the writers' turn and the wake-up signals, so a store and a broker made from
/// the same database wake each other's readers at once.
#[derive(Clone, Debug)]
pub struct SqliteDatabase {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// How connections are opened (readers are opened on demand).
    target: Target,
    /// The one writer connection; holding it is this process's turn to write (and group
    /// commit, see `writer`).
    writer: Arc<WriterSlot>,
    /// Idle reader connections (at most `max_readers` kept).
    readers: Mutex<Vec<Connection>>,
    max_readers: usize,
    /// How long a writer waits for its turn, here and behind other processes' locks.
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
    /// Stops the write-ahead log watcher; set by `close`, after which nothing runs.
    stop: CancellationToken,
    /// Stores enqueue straight into the SQL broker (`SqliteConfig::publish_to_sql_broker`).
    publish_to_sql_broker: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Where the database is and how to open a connection to it.
#[derive(Clone, Debug)]
struct Target {
    /// A plain path, or a `file:` URI when the URL carried options (`?mode=ro`…).
    name: String,
    flags: OpenFlags,
    /// The file itself (its `-wal` is watched).
    file: PathBuf,
}

impl Target {
    /// `sqlite://path`, `sqlite:path` or `path`; a query (`?mode=rwc`) is passed to SQLite as a
    /// URI filename, which is where SQLite reads those options.
    fn parse(url: &str) -> Self {
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        let base = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        match path.split_once('?') {
            Some((file, query)) => Self {
                name: format!("file:{file}?{query}"),
                flags: base | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_URI,
                file: PathBuf::from(file),
            },
            None => {
                Self { name: path.to_owned(), flags: base | OpenFlags::SQLITE_OPEN_CREATE, file: PathBuf::from(path) }
            }
        }
    }

    /// A new connection with Herald's settings. `busy` is how long a statement waits for
    /// another process's lock inside SQLite (readers: rarely at all in WAL mode).
    fn open(&self, busy: Duration) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(&self.name, self.flags)?;
        conn.busy_timeout(busy)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // `temp_store = MEMORY`: each unit of work is a savepoint, and the sub-journal that lets
        // one roll back alone stays in memory instead of spilling to a temporary file.
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;")?;
        // Plans never depend on the values bound. Without this, SQLite (3.4x, with STAT4)
        // re-prepares a cached statement every time a parameter that the planner looked at is
        // bound again — any `LIMIT ?` — which was 14 % of a busy server's CPU, most of it while
        // holding the write lock (claims, stream reads).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        Ok(conn)
    }
}

/// Prepared statements kept per connection (Herald's own need ~50).
const STATEMENT_CACHE: usize = 128;

/// How long a writer's statement waits inside SQLite for a lock it cannot get (the write lock
/// itself is waited for outside, see `begin_write`).
const WRITER_STATEMENT_BUSY: Duration = Duration::from_millis(200);

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
        let open_error = |source| SqlError::Sqlite { url: url.to_owned(), source };
        let target = Target::parse(url);
        let writer = target.open(WRITER_STATEMENT_BUSY).map_err(open_error)?;
        // WAL: readers and the writer do not block each other. Persistent in the file.
        writer.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).map_err(open_error)?;
        let shared = Arc::new(Shared {
            target,
            writer: Arc::new(WriterSlot::new(Writer::new(writer))),
            readers: Mutex::new(Vec::new()),
            max_readers: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
            busy_timeout: config.busy_timeout(),
            store_changes: Notify::new(),
            queue_changed: Notify::new(),
            queue_doorbells: herald::queue::Doorbells::default(),
            local_writes: AtomicU64::new(0),
            stop: CancellationToken::new(),
            publish_to_sql_broker: config.publish_to_sql_broker,
        });
        let db = Self { shared };
        migrate::run(&db, url).await?;
        let mut wal = db.shared.target.file.clone().into_os_string();
        wal.push("-wal");
        let stop = db.shared.stop.clone();
        // Ends when the database is closed or its last handle dropped (`Shared::drop`).
        tokio::spawn(watch_wal(PathBuf::from(wal), Arc::downgrade(&db.shared), stop));
        Ok(db)
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

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.shared.target.file
    }

    /// Runs `f` on a reader connection (a consistent snapshot of the last commit; in parallel
    /// with the writer), for the application's own queries outside a unit of work.
    ///
    /// `f` runs in place on the calling task's thread: keep it to a few statements.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>) -> Result<T, SqlError> {
        if self.shared.stop.is_cancelled() {
            return Err(SqlError::Closed);
        }
        let idle = self.shared.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.shared.target.open(self.shared.busy_timeout)?,
        };
        let result = f(&conn);
        let mut readers = self.shared.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if readers.len() < self.shared.max_readers {
            readers.push(conn);
        }
        Ok(result?)
    }

    /// Runs one application statement outside a unit of work (`any::query(..)` on the
    /// database): on a reader connection when it only reads, else as a unit of work of its own
    /// on the writer (in turn with this process's other writers, committed before this returns).
    ///
    /// # Errors
    /// [`SqlError::WriteLockHeld`] at once for a write from a task that holds the write lock
    /// in an open transaction (it would wait for itself); what `f` or SQLite said.
    pub(crate) async fn statement<T>(
        &self,
        sql: &str,
        f: impl Fn(&Connection) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let read = self.read(|c| Ok(if c.prepare_cached(sql)?.readonly() { Some(f(c)) } else { None }))?;
        if let Some(out) = read {
            return out;
        }
        let write = self.begin_write().await?;
        let out = f(write.conn())?;
        write.commit().await?;
        self.shared.store_changes.notify_waiters();
        Ok(out)
    }

    /// Runs several `;`-separated statements as a unit of work of its own on the writer.
    pub(crate) async fn script(&self, text: &str) -> Result<(), SqlError> {
        let write = self.begin_write().await?;
        write.conn().execute_batch(text)?;
        write.commit().await?;
        self.shared.store_changes.notify_waiters();
        Ok(())
    }

    /// Whether the database was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.stop.is_cancelled()
    }

    /// Closes the database: later use fails with [`SqlError::Closed`]; connections close as
    /// their last user lets go.
    pub async fn close(&self) {
        self.shared.stop.cancel();
        self.shared.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// Starts a unit of work on the writer: waits for this process's turn, then joins the
    /// open group commit or starts one with `BEGIN IMMEDIATE` (see `writer`).
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, SqlError> {
        if self.shared.stop.is_cancelled() {
            return Err(SqlError::Closed);
        }
        let wait = self.shared.busy_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        self.shared.local_writes.fetch_add(1, Ordering::Relaxed);
        writer::begin(&self.shared.writer, deadline, WRITER_STATEMENT_BUSY).await.map_err(|e| match e {
            SqlError::WriteLockTimeout(_) => SqlError::WriteLockTimeout(wait),
            other => other,
        })
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
