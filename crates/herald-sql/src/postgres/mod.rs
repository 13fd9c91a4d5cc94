//! Herald on PostgreSQL: [`PostgresDatabase`] (the pool, its schema and the wake-up signals),
//! [`PostgresStore`] and [`PostgresTransaction`] (every storage port) and [`PostgresQueue`] (the
//! SQL broker).
//!
//! # A schema per module
//!
//! Every table lives in one schema chosen by configuration ([`PostgresConfig::schema`], default
//! `herald`): it is created if missing, migrated, and set as the `search_path` of every pooled
//! connection (a start-up parameter, so no extra round trip), so the SQL text is the same
//! whatever the schema. Several modules can share one database, each in its own schema, and the
//! application's own tables (read models) can sit next to Herald's.
//!
//! # Positions are assigned after commit, by a sequencer
//!
//! A `bigserial` alone does not keep the global log gap-free for readers: a sequence value is
//! taken at insert time, but transactions commit in any order, so a reader could see position 11
//! committed while 10 is still in flight, and then never go back for 10. So appending
//! transactions insert their events *without* a position and take no lock; each database runs a
//! sequencer task that, in short transactions serialised by
//! `pg_advisory_xact_lock(SEQUENCER, hash(schema))`, gives committed unsequenced events the next
//! positions (`sequencer.rs` says why readers then never skip). A commit that appended wakes the
//! sequencer at once; readers (`read_all`, `read_stream` outside a transaction) that find
//! committed events without a position wait for a run, so a committed event is always readable
//! with its position. See `docs/adr/0003-postgres-global-log.md`, which also records the
//! advisory lock around appends this replaced. The broker's message log still takes a lock of
//! that kind around publishes (a group's `next_position` must never pass a position that commits
//! later).
//!
//! # Waking readers in other processes
//!
//! `Store::changes` (events readable in the global log), `Store::outbox_changes` and
//! `QueueBackend::changed` are notified at once after this process's commits (for events: after
//! the sequencer gave them positions). Sequencer runs that assigned positions, commits that
//! enqueue outbox messages and commits that publish broker messages also send
//! `pg_notify('herald_changes', '<schema>:store' | '<schema>:outbox' | '<schema>:queue')`, and
//! commits that schedule outbox messages `'<schema>:scheduled'` (`Store::scheduled_changes`)
//! (delivered at commit; the outbox's with the enqueueing statement itself, no extra round trip),
//! and, unless [`PostgresConfig::listen`] is off, each database runs one listener task (one
//! pooled connection) that forwards those notifications to the same signals, so readers in other
//! processes wake without waiting for their poll. Polling stays as the safety net. Appends
//! alone do not `pg_notify`: PostgreSQL serialises notifying commits (a database-wide lock held
//! through the commit's WAL flush), which would serialise appenders again.
//!
//! Of two appends expecting the same version exactly one commits: the second one's insert waits
//! on `UNIQUE (stream, version)` for the first to end, and reports a conflict if it committed.

mod dead_letters;
mod parking;
mod queue;
mod sequencer;
mod sql;
mod store;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use queue::{PgBroker, PostgresQueue};
pub use store::{PostgresStore, PostgresTransaction};

use self::sequencer::Sequencer;
use crate::config::PostgresConfig;
use crate::error::SqlError;

/// The schema, embedded at compile time from `migrations/postgres`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock classes (first key of `pg_advisory_xact_lock(int, int)`; the second is the
/// schema's hash). "HRL" followed by a number, so they are recognisable in `pg_locks`. The
/// event log's sequencer (the class appenders took before the sequencer; see ADR 0003).
pub(crate) const SEQUENCER_LOCK: i32 = 0x4852_4c01;
/// The broker's message log.
pub(crate) const BROKER_LOCK: i32 = 0x4852_4c02;
/// A captured table's changes (`herald_sql::changes`; the second key is the table's hash).
pub(crate) const CAPTURE_LOCK: i32 = 0x4852_4c03;

/// The `LISTEN`/`NOTIFY` channel announcing commits; the payload is `<schema>:store` or
/// `<schema>:queue`.
pub(crate) const CHANNEL: &str = "herald_changes";

/// An open PostgreSQL database (one schema of it) holding every Herald port. Cheap to clone:
/// clones share one connection pool and the wake-up signals, so a store and a broker made from
/// the same database wake each other's readers at once.
#[derive(Clone, Debug)]
pub struct PostgresDatabase {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Every connection has `search_path` set to `schema`.
    pool: PgPool,
    /// The schema holding Herald's tables.
    schema: String,
    /// The second key of the advisory locks: a stable hash of `schema`, so appenders in other
    /// schemas of the same database never wait for each other.
    lock_key: i32,
    /// Notified after every store commit in this process, and by the listener for other
    /// processes' commits (`Store::changes`).
    store_changes: Arc<Notify>,
    /// Notified after this process's commits that enqueued outbox messages, and by the
    /// listener for other processes' (`Store::outbox_changes`): wakes the relay only.
    outbox_changes: Arc<Notify>,
    /// Notified after this process's commits that scheduled outbox messages, and by the
    /// listener for other processes' (`Store::scheduled_changes`): the relay asks for the next
    /// due time again.
    scheduled_changes: Arc<Notify>,
    /// Notified when broker messages were appended or released in this process, and by the
    /// listener for other processes' publishes (`QueueBackend::changed`).
    queue_changed: Arc<Notify>,
    /// Per-topic wake-ups of this process's subscriptions, shared by every broker on this
    /// database.
    queue_doorbells: herald::queue::Doorbells,
    /// The `NOTIFY` payloads this schema's commits send.
    store_payload: String,
    outbox_payload: String,
    scheduled_payload: String,
    queue_payload: String,
    /// Gives committed events their positions (a task, woken after appending commits).
    sequencer: Arc<Sequencer>,
    /// Stops the listener and sequencer tasks; cancelled by [`PostgresDatabase::close`] or when
    /// the last handle is dropped.
    stop: CancellationToken,
    /// The listener and sequencer tasks.
    tasks: TaskTracker,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long a pooled connection may sit idle before it is pinged on its way out.
const IDLE_BEFORE_PING: std::time::Duration = std::time::Duration::from_secs(1);

impl PostgresDatabase {
    /// Opens the database at `url` (`postgres://user@host/db`) with the default settings of
    /// [`PostgresConfig`] (schema `herald`), creating and migrating the schema if needed.
    pub async fn open(url: &str) -> Result<Self, SqlError> {
        PostgresConfig::new(url).open().await
    }

    /// Opens the database described by a validated `config`.
    pub(crate) async fn connect(config: &PostgresConfig) -> Result<Self, SqlError> {
        let url = config.url.trim();
        let open_error = |source| SqlError::Open { url: url.to_owned(), source };
        let mut options =
            PgConnectOptions::from_str(url).map_err(open_error)?.options([("search_path", config.schema.as_str())]);
        if let Some(name) = &config.application_name {
            options = options.application_name(name);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout())
            // sqlx pings every connection it hands out: one more round trip per unit of work.
            // A connection in use a moment ago is alive; only one idle for a while is checked
            // (a server restart shows up there, and a failed ping just opens a new one).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_BEFORE_PING {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(open_error)?;
        prepare(&pool, url, &config.schema).await?;
        let shared = Shared {
            schema: config.schema.clone(),
            lock_key: schema_lock_key(&config.schema),
            store_changes: Arc::new(Notify::new()),
            outbox_changes: Arc::new(Notify::new()),
            scheduled_changes: Arc::new(Notify::new()),
            queue_changed: Arc::new(Notify::new()),
            queue_doorbells: herald::queue::Doorbells::default(),
            store_payload: format!("{}:store", config.schema),
            outbox_payload: format!("{}:outbox", config.schema),
            scheduled_payload: format!("{}:scheduled", config.schema),
            queue_payload: format!("{}:queue", config.schema),
            sequencer: Arc::new(Sequencer::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            pool,
        };
        let sequencer = sequencer::Context {
            pool: shared.pool.clone(),
            lock_key: shared.lock_key,
            store_changes: shared.store_changes.clone(),
            store_payload: shared.store_payload.clone(),
            sequencer: shared.sequencer.clone(),
            explicit: std::sync::atomic::AtomicBool::new(false),
        };
        shared.tasks.spawn(sequencer::run(sequencer, shared.stop.clone()));
        if config.listen {
            let listener = PgListener::connect_with(&shared.pool).await.map_err(open_error)?;
            let forward = Forward {
                store: (shared.store_payload.clone(), shared.store_changes.clone()),
                outbox: (shared.outbox_payload.clone(), shared.outbox_changes.clone()),
                scheduled: (shared.scheduled_payload.clone(), shared.scheduled_changes.clone()),
                queue: (shared.queue_payload.clone(), shared.queue_changed.clone()),
            };
            shared.tasks.spawn(listen(listener, forward, shared.stop.clone()));
        }
        shared.tasks.close();
        Ok(Self { shared: Arc::new(shared) })
    }

    /// The event store, outbox, inbox, checkpoints and saga store on this database.
    pub fn store(&self) -> PostgresStore {
        PostgresStore::new(self.clone())
    }

    /// The SQL broker on this database: durable topics, consumer groups, per-key order, dead
    /// letters. Messages published through it are visible to every process using the schema.
    pub fn broker(&self) -> PgBroker {
        PgBroker::new(PostgresQueue::new(self.clone()))
    }

    /// The connection pool (its connections' `search_path` is [`schema`](Self::schema)), for
    /// the application's own queries.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// The schema holding Herald's tables.
    pub fn schema(&self) -> &str {
        &self.shared.schema
    }

    /// Stops the listener and the sequencer and closes every connection (waiting for borrowed ones to come
    /// back). Later use fails.
    pub async fn close(&self) {
        self.shared.stop.cancel();
        self.shared.tasks.wait().await;
        self.shared.pool.close().await;
    }

    /// Starts a READ COMMITTED transaction (whatever the server's default), which the
    /// advisory-lock and sequencer reasoning relies on: each statement sees every commit before
    /// it.
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        self.shared.pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await
    }

    /// Takes the transaction-scoped advisory lock `class` for this schema.
    pub(crate) async fn lock_log(&self, conn: &mut sqlx::PgConnection, class: i32) -> Result<(), sqlx::Error> {
        sqlx::query(sql::LOG_LOCK).bind(class).bind(self.shared.lock_key).execute(conn).await?;
        Ok(())
    }

    /// The `NOTIFY` payload announcing this schema's new outbox rows to other processes.
    pub(crate) fn outbox_payload(&self) -> &str {
        &self.shared.outbox_payload
    }

    /// The `NOTIFY` payload announcing this schema's new scheduled outbox rows to other
    /// processes.
    pub(crate) fn scheduled_payload(&self) -> &str {
        &self.shared.scheduled_payload
    }

    /// Announces this transaction's broker publishes to other processes at commit.
    pub(crate) async fn announce_queue(&self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(sql::NOTIFY).bind(CHANNEL).bind(&self.shared.queue_payload).execute(conn).await?;
        Ok(())
    }

    /// Asks the sequencer for a run soon (after a commit that appended events).
    pub(crate) fn wake_sequencer(&self) {
        self.shared.sequencer.wake();
    }

    /// If committed events wait for a position, waits for a sequencer run that started after
    /// this call (so they have one, unless the run failed) and returns `true`. One probe of an
    /// index that is usually empty when nothing waits.
    pub(crate) async fn sequence_committed(&self) -> Result<bool, sqlx::Error> {
        if !sequencer::unsequenced(&self.shared.pool).await? {
            return Ok(false);
        }
        self.shared.sequencer.run_and_wait(&self.shared.stop).await;
        Ok(true)
    }

    /// Waits for a sequencer run that started after this call (the caller saw committed
    /// events without a position).
    pub(crate) async fn await_sequencer_run(&self) {
        self.shared.sequencer.run_and_wait(&self.shared.stop).await;
    }

    pub(crate) fn store_changes(&self) -> &Notify {
        &self.shared.store_changes
    }

    pub(crate) fn outbox_changes(&self) -> &Notify {
        &self.shared.outbox_changes
    }

    pub(crate) fn scheduled_changes(&self) -> &Notify {
        &self.shared.scheduled_changes
    }

    pub(crate) fn queue_changed(&self) -> &Notify {
        &self.shared.queue_changed
    }

    pub(crate) fn queue_doorbells(&self) -> &herald::queue::Doorbells {
        &self.shared.queue_doorbells
    }
}

/// Where the listener forwards notifications: (payload, signal) for sequenced events, outbox
/// rows, scheduled outbox rows and the queue.
struct Forward {
    store: (String, Arc<Notify>),
    outbox: (String, Arc<Notify>),
    scheduled: (String, Arc<Notify>),
    queue: (String, Arc<Notify>),
}

/// The listener task: forwards this schema's `NOTIFY`s to the wake-up signals until stopped.
/// A lost connection is re-established by `PgListener` (notifications sent meanwhile are lost;
/// the readers' polling covers that gap).
async fn listen(mut listener: PgListener, forward: Forward, stop: CancellationToken) {
    if let Err(e) = listener.listen(CHANNEL).await {
        tracing::warn!(error = %e, "cannot LISTEN; other processes' commits are found by polling");
        return;
    }
    let mut failures = 0u32;
    loop {
        let received = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            received = listener.recv() => received,
        };
        match received {
            Ok(n) => {
                failures = 0;
                if n.payload() == forward.store.0 {
                    forward.store.1.notify_waiters();
                } else if n.payload() == forward.outbox.0 {
                    forward.outbox.1.notify_waiters();
                } else if n.payload() == forward.scheduled.0 {
                    forward.scheduled.1.notify_waiters();
                } else if n.payload() == forward.queue.0 {
                    forward.queue.1.notify_waiters();
                }
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, failures, "the change listener failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100) * failures.min(50)) => {}
                }
            }
        }
    }
}

/// FNV-1a of the schema name: stable across processes and builds (unlike `DefaultHasher`).
fn schema_lock_key(schema: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in schema.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// Creates the schema if missing and runs the embedded migrations in it (the migrations table,
/// `_sqlx_migrations`, is created in the schema too, so each schema is migrated on its own).
/// Two processes creating one schema at the same moment can race on `CREATE SCHEMA IF NOT
/// EXISTS` (a unique violation in the catalogue), so a failure is retried after a pause.
async fn prepare(pool: &PgPool, url: &str, schema: &str) -> Result<(), SqlError> {
    // `schema` is a validated plain identifier (PostgresConfig::validate); quoted anyway.
    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    let mut attempt = 0;
    loop {
        let created = sqlx::query(sqlx::AssertSqlSafe(create.clone())).execute(pool).await;
        let result = match created {
            Ok(_) => MIGRATOR.run(pool).await,
            Err(e) => Err(sqlx::migrate::MigrateError::Execute(e)),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::debug!(url, schema, error = %e, attempt, "preparing the schema failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(source) => return Err(SqlError::Migrate { url: url.to_owned(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_is_stable_and_depends_on_the_schema() {
        assert_eq!(schema_lock_key("herald"), schema_lock_key("herald"));
        assert_ne!(schema_lock_key("herald"), schema_lock_key("ordering"));
    }
}
