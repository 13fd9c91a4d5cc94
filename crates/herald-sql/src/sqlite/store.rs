//! [`SqliteStore`] and [`SqliteTransaction`]: every storage port of Herald on one SQLite file.

use std::any::Any;
use std::time::Duration;

use async_trait::async_trait;
use herald::memory::{check_saga_version, validate_append};
use herald::store::{
    AppendResult, ExpectedVersion, LeaseGrant, NewEvent, OutboxRecord, OutboxStats, RecordedEvent, SagaRecord,
    Snapshot, Store, StoreError, Transaction,
};
use herald::{Message, MessageId};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use super::{SqliteDatabase, WriteTx, sql};
use crate::error::SqlError;
use crate::rows::{
    self, MessageColumns, bound, due_millis, limit, metadata_json, now_millis, to_i64, to_u64, ttl_millis,
};

fn backend(e: impl Into<SqlError>) -> StoreError {
    StoreError::backend(e.into())
}

/// Herald's storage ports on SQLite. Cheap to clone; clones share the database.
///
/// Reads outside a transaction run on a reader connection, in parallel with the writer (WAL).
/// [`begin`](Store::begin) starts a [`SqliteTransaction`], whose first statement takes the
/// write lock (`BEGIN IMMEDIATE`); see the [module docs](crate::sqlite) for why that makes
/// positions follow commit order.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    db: SqliteDatabase,
    /// Enqueued messages go straight into this database's SQL broker
    /// ([`SqliteConfig::publish_to_sql_broker`](crate::SqliteConfig::publish_to_sql_broker)).
    direct: bool,
}

impl SqliteStore {
    pub(crate) fn new(db: SqliteDatabase) -> Self {
        let direct = db.publishes_to_sql_broker();
        Self { db, direct }
    }

    /// The database this store writes to.
    pub fn database(&self) -> &SqliteDatabase {
        &self.db
    }

    /// Starts a unit of work, typed (no downcast needed). Takes no lock: the writer is taken
    /// by the transaction's first statement (see [`SqliteTransaction`]).
    pub async fn begin_sqlite(&self) -> Result<SqliteTransaction, StoreError> {
        if self.db.is_closed() {
            return Err(backend(SqlError::Closed));
        }
        Ok(SqliteTransaction {
            write: None,
            db: self.db.clone(),
            hooks: Vec::new(),
            direct: self.direct.then(Vec::new),
        })
    }
}

/// A unit of work on a [`SqliteStore`]: one `BEGIN IMMEDIATE` transaction (a savepoint in a
/// group commit, ADR 0011). Dropping it rolls back.
///
/// It takes this process's write lock at its **first statement** (any read or write through
/// it, including the application's SQL), not at [`begin`](Store::begin), and holds it until it
/// ends: a handler may do its slow non-database work (HTTP calls, sleeps) before its first
/// statement without holding up anyone else's writes, and should keep everything after it
/// short. A transaction that runs no statement commits without touching the database.
///
/// While it holds the lock, the same tokio task cannot take it again: another unit of work's
/// first statement, or a write through the pool (`query(..).execute(&db)`), fails at once with
/// [`SqlError::WriteLockHeld`] instead of waiting for itself. Run such statements through this
/// transaction. (The holder is known by its task, so do not move a begun transaction to
/// another task while the first one goes on writing.)
///
/// The handler's own tables join the same transaction through
/// [`any::query`](crate::any::query)`(..).execute(tx)` (dialect-neutral; `tx` may be the
/// `&mut dyn Transaction` a handler or projection is given) or, SQLite only, through
/// [`connection`](Self::connection).
pub struct SqliteTransaction {
    /// The writer, once the first statement took it.
    write: Option<WriteTx>,
    db: SqliteDatabase,
    hooks: Vec<Box<dyn FnOnce() + Send>>,
    /// With `publish_to_sql_broker`: the topics published to so far (and how
    /// many messages each), to wake their subscriptions and count them at commit.
    direct: Option<Vec<(String, u64)>>,
}

impl std::fmt::Debug for SqliteTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTransaction").field("hooks", &self.hooks.len()).finish_non_exhaustive()
    }
}

impl SqliteTransaction {
    /// The transaction's connection, for the application's own statements in the same unit
    /// of work; takes the write lock first if no statement has yet (waiting for this process's
    /// turn to write). Do not `COMMIT` or `ROLLBACK` through it. Statements run in place on the
    /// calling thread (microseconds each); do not hold the reference across an `.await`.
    ///
    /// # Errors
    /// [`SqlError::WriteLockHeld`] if this task already holds the write lock in another open
    /// transaction; [`SqlError::WriteLockTimeout`] after the busy timeout; [`SqlError::Closed`].
    pub async fn connection(&mut self) -> Result<&Connection, SqlError> {
        if self.write.is_none() {
            self.write = Some(self.db.begin_write().await?);
        }
        Ok(self.begun())
    }

    /// Whether the transaction has taken the write lock (run a statement) yet.
    pub fn has_begun(&self) -> bool {
        self.write.is_some()
    }

    /// The connection of a transaction that has begun (after `connection`).
    fn begun(&self) -> &Connection {
        self.write.as_ref().expect("the transaction's first statement took the writer").conn()
    }

    /// The connection, taking the write lock first if needed (see `connection`).
    async fn conn(&mut self) -> Result<&Connection, StoreError> {
        self.connection().await.map_err(backend)
    }

    fn insert_events(conn: &Connection, stream: &str, current: u64, events: &[NewEvent]) -> Result<(), StoreError> {
        let metadata: Vec<String> =
            events.iter().map(|e| metadata_json(&e.metadata)).collect::<Result<_, _>>().map_err(backend)?;
        let now = now_millis();
        let mut insert = conn.prepare_cached(sql::INSERT_EVENT).map_err(backend)?;
        for (i, (e, metadata)) in events.iter().zip(metadata).enumerate() {
            let version = current + 1 + i as u64;
            let v = to_i64("version", version).map_err(backend)?;
            insert
                .execute(params![stream, v, e.id.to_string(), e.name, e.payload, metadata, now])
                .map_err(|err| insert_error(stream, version, err))?;
        }
        Ok(())
    }
}

/// A unique violation on `(stream, version)` means another writer got there first (which
/// `BEGIN IMMEDIATE` should make impossible, but the constraint is the last line of defence).
fn insert_error(stream: &str, version: u64, err: rusqlite::Error) -> StoreError {
    if err.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) {
        return StoreError::Conflict {
            subject: stream.to_owned(),
            detail: format!("version {version} was written by another transaction"),
        };
    }
    backend(err)
}

fn stream_version(conn: &Connection, stream: &str) -> Result<u64, StoreError> {
    let v: i64 = conn
        .prepare_cached(sql::STREAM_VERSION)
        .and_then(|mut s| s.query_row([stream], |r| r.get(0)))
        .map_err(backend)?;
    to_u64("version", v).map_err(backend)
}

fn read_stream(conn: &Connection, stream: &str, from_version: u64, n: usize) -> Result<Vec<RecordedEvent>, SqlError> {
    let mut stmt = conn.prepare_cached(sql::READ_STREAM)?;
    let rows = stmt.query_map(params![stream, bound(from_version), limit(n)], rows::sqlite::event)?;
    rows.map(|r| r?.into_event()).collect()
}

fn load_snapshot(conn: &Connection, stream: &str) -> Result<Option<Snapshot>, SqlError> {
    let row = conn.prepare_cached(sql::LOAD_SNAPSHOT)?.query_row([stream], rows::sqlite::snapshot).optional()?;
    row.map(rows::SnapshotRow::into_snapshot).transpose()
}

fn load_checkpoint(conn: &Connection, name: &str) -> Result<Option<u64>, SqlError> {
    let p: Option<i64> = conn.prepare_cached(sql::LOAD_CHECKPOINT)?.query_row([name], |r| r.get(0)).optional()?;
    p.map(|p| to_u64("position", p)).transpose()
}

fn load_saga(conn: &Connection, name: &str, id: &str) -> Result<Option<SagaRecord>, SqlError> {
    let row = conn.prepare_cached(sql::LOAD_SAGA)?.query_row([name, id], rows::sqlite::saga).optional()?;
    row.map(rows::SagaRow::into_record).transpose()
}

#[async_trait]
impl Transaction for SqliteTransaction {
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        let conn = self.conn().await?;
        // We hold the write lock: nobody can append between this read and our inserts.
        let current = stream_version(conn, stream)?;
        if !expected.matches(current) {
            return Err(StoreError::version_conflict(stream, expected, current));
        }
        if events.len() == 1 {
            // One statement is atomic on its own.
            Self::insert_events(conn, stream, current, &events)?;
        } else {
            // A savepoint, so a failed append leaves nothing behind even if the caller goes on
            // to commit the rest of the unit of work.
            conn.execute_batch("SAVEPOINT herald_append").map_err(backend)?;
            match Self::insert_events(conn, stream, current, &events) {
                Ok(()) => conn.execute_batch("RELEASE herald_append").map_err(backend)?,
                Err(e) => {
                    conn.execute_batch("ROLLBACK TO herald_append; RELEASE herald_append").map_err(backend)?;
                    return Err(e);
                }
            }
        }
        Ok(AppendResult { next_expected_version: current + events.len() as u64 })
    }

    async fn read_stream(
        &mut self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_stream(self.conn().await?, stream, from_version, limit).map_err(backend)
    }

    async fn save_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let version = to_i64("version", snapshot.version).map_err(backend)?;
        self.conn()
            .await?
            .prepare_cached(sql::SAVE_SNAPSHOT)
            .and_then(|mut s| s.execute(params![snapshot.stream, version, snapshot.payload, now_millis()]))
            .map_err(backend)?;
        Ok(())
    }

    async fn load_snapshot(&mut self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        load_snapshot(self.conn().await?, stream).map_err(backend)
    }

    async fn enqueue(&mut self, mut messages: Vec<Message>) -> Result<(), StoreError> {
        for m in &mut messages {
            herald::observability::fill_current(&mut m.metadata);
        }
        let now = now_millis();
        self.conn().await?;
        let conn = self.write.as_ref().expect("the writer was just taken").conn();
        if let Some(published) = &mut self.direct {
            for m in &messages {
                super::queue::publish_one(conn, m, now).map_err(backend)?;
                match published.iter_mut().find(|(topic, _)| *topic == m.topic) {
                    Some((_, n)) => *n += 1,
                    None => published.push((m.topic.clone(), 1)),
                }
            }
            return Ok(());
        }
        let columns: Vec<MessageColumns<'_>> =
            messages.iter().map(MessageColumns::new).collect::<Result<_, _>>().map_err(backend)?;
        let mut insert = conn.prepare_cached(sql::ENQUEUE).map_err(backend)?;
        for c in columns {
            insert.execute(params![c.id, c.name, c.topic, c.key, c.payload, c.metadata, now]).map_err(backend)?;
        }
        Ok(())
    }

    async fn schedule(
        &mut self,
        mut messages: Vec<Message>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        for m in &mut messages {
            herald::observability::fill_current(&mut m.metadata);
        }
        let (now, due) = (now_millis(), due_millis(at));
        let count = to_i64("scheduled messages", messages.len() as u64).map_err(backend)?;
        let columns: Vec<MessageColumns<'_>> =
            messages.iter().map(MessageColumns::new).collect::<Result<_, _>>().map_err(backend)?;
        let conn = self.conn().await?;
        // Their places in the outbox order, taken now (the writer is ours): the last of `count`.
        let reserve = |statement: &str| {
            conn.prepare_cached(statement).and_then(|mut s| s.query_row([count], |r| r.get::<_, i64>(0)).optional())
        };
        let last = match reserve(sql::RESERVE_SEQUENCES).map_err(backend)? {
            Some(last) => last,
            None => reserve(sql::RESERVE_FIRST_SEQUENCES).map_err(backend)?.ok_or_else(|| {
                backend(SqlError::Corrupt {
                    table: "sqlite_sequence",
                    detail: "reserving outbox sequences for scheduled messages returned nothing".into(),
                })
            })?,
        };
        let mut insert = conn.prepare_cached(sql::SCHEDULE).map_err(backend)?;
        for (sequence, c) in (last - count + 1..).zip(columns) {
            insert
                .execute(params![sequence, due, c.id, c.name, c.topic, c.key, c.payload, c.metadata, now])
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn record_handled(&mut self, handler: &str, message_id: MessageId) -> Result<bool, StoreError> {
        // We hold the write lock, so "inserted" here means no committed transaction recorded
        // the pair and no concurrent one can until we end.
        let done = self
            .conn()
            .await?
            .prepare_cached(sql::RECORD_HANDLED)
            .and_then(|mut s| s.execute(params![handler, message_id.to_string(), now_millis()]))
            .map_err(backend)?;
        Ok(done == 1)
    }

    async fn save_checkpoint(&mut self, name: &str, position: u64) -> Result<(), StoreError> {
        let position = to_i64("position", position).map_err(backend)?;
        self.conn()
            .await?
            .prepare_cached(sql::SAVE_CHECKPOINT)
            .and_then(|mut s| s.execute(params![name, position, now_millis()]))
            .map_err(backend)?;
        Ok(())
    }

    async fn save_checkpoint_if(
        &mut self,
        name: &str,
        expected: u64,
        position: u64,
        token: Option<u64>,
    ) -> Result<(), StoreError> {
        let position = to_i64("position", position).map_err(backend)?;
        let token_i = token.map(|t| to_i64("token", t)).transpose().map_err(backend)?;
        let conn = self.conn().await?;
        // The writer is this transaction's until it ends: check, then write.
        let found: Option<(i64, i64)> = conn
            .prepare_cached(sql::CHECKPOINT_AND_TOKEN)
            .and_then(|mut s| s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(backend)?;
        let (found, found_token) = match found {
            Some((p, t)) => (Some(to_u64("position", p).map_err(backend)?), to_u64("token", t).map_err(backend)?),
            None => (None, 0),
        };
        if token.is_some_and(|mine| found_token > mine) || found.unwrap_or(0) != expected {
            return Err(StoreError::fenced(name, expected, found, token, found_token));
        }
        conn.prepare_cached(sql::SAVE_CHECKPOINT_IF)
            .and_then(|mut s| s.execute(params![name, position, token_i, now_millis()]))
            .map_err(backend)?;
        Ok(())
    }

    async fn load_checkpoint(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        load_checkpoint(self.conn().await?, name).map_err(backend)
    }

    async fn save_saga(&mut self, record: &SagaRecord) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let current: Option<i64> = conn
            .prepare_cached(sql::SAGA_VERSION)
            .and_then(|mut s| s.query_row([&record.name, &record.id], |r| r.get(0)).optional())
            .map_err(backend)?;
        let current = current.map(|v| to_u64("version", v)).transpose().map_err(backend)?.unwrap_or(0);
        check_saga_version(record, current)?;
        let version = to_i64("version", record.version).map_err(backend)?;
        let deadline = record.deadline.map(|d| to_i64("deadline", d)).transpose().map_err(backend)?;
        conn.prepare_cached(sql::SAVE_SAGA)
            .and_then(|mut s| {
                s.execute(params![
                    record.name,
                    record.id,
                    version,
                    record.step,
                    record.compensating,
                    record.done,
                    record.data,
                    now_millis(),
                    deadline
                ])
            })
            .map_err(backend)?;
        Ok(())
    }

    async fn load_saga(&mut self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError> {
        load_saga(self.conn().await?, name, id).map_err(backend)
    }

    fn on_commit(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.hooks.push(f);
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send) {
        self
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let Self { write, db, hooks, direct } = *self;
        // A transaction that ran no statement has nothing to commit.
        if let Some(write) = write {
            write.commit().await.map_err(backend)?;
            db.store_changes().notify_waiters();
        }
        for (topic, n) in direct.unwrap_or_default() {
            herald::observability::record_published_to(&topic, n);
            db.queue_doorbells().ring_topic(&topic);
        }
        for hook in hooks {
            hook();
        }
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn begin(&self) -> Result<Box<dyn Transaction>, StoreError> {
        Ok(Box::new(self.begin_sqlite().await?))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.db.read(|c| Ok(read_stream(c, stream, from_version, limit))).map_err(backend)?.map_err(backend)
    }

    async fn read_all(&self, after: u64, n: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        // One statement reads one snapshot, and positions follow commit order (BEGIN
        // IMMEDIATE), so this never returns position p while a lower one is still to commit.
        let rows = self
            .db
            .read(|c| {
                let mut stmt = c.prepare_cached(sql::READ_ALL)?;
                stmt.query_map(params![bound(after), limit(n)], rows::sqlite::event)?.collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        rows.into_iter().map(|r| r.into_event().map_err(backend)).collect()
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        self.db.read(|c| Ok(load_snapshot(c, stream))).map_err(backend)?.map_err(backend)
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.db.read(|c| Ok(load_checkpoint(c, name))).map_err(backend)?.map_err(backend)
    }

    async fn load_saga(&self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError> {
        self.db.read(|c| Ok(load_saga(c, name, id))).map_err(backend)?.map_err(backend)
    }

    async fn due_sagas(&self, name: &str, now_millis: u64, n: usize) -> Result<Vec<SagaRecord>, StoreError> {
        let rows = self
            .db
            .read(|c| {
                let mut stmt = c.prepare_cached(sql::DUE_SAGAS)?;
                stmt.query_map(params![name, bound(now_millis), limit(n)], rows::sqlite::saga)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        rows.into_iter().map(|r| r.into_record().map_err(backend)).collect()
    }

    async fn outbox_pending(&self, n: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let rows = self
            .db
            .read(|c| {
                let mut stmt = c.prepare_cached(sql::OUTBOX_PENDING)?;
                stmt.query_map([limit(n)], rows::sqlite::outbox)?.collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        rows.into_iter().map(|r| r.into_record().map_err(backend)).collect()
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let (count, oldest): (i64, Option<i64>) = self
            .db
            .read(|c| c.prepare_cached(sql::OUTBOX_STATS)?.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(backend)?;
        Ok(OutboxStats {
            backlog: to_u64("outbox count", count).map_err(backend)?,
            oldest: oldest.and_then(chrono::DateTime::from_timestamp_millis),
        })
    }

    async fn outbox_remove(&self, sequences: &[u64]) -> Result<(), StoreError> {
        if sequences.is_empty() {
            return Ok(());
        }
        let list = serde_json::to_string(sequences).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let write = self.db.begin_write().await.map_err(backend)?;
        for statement in [sql::OUTBOX_REMOVE, sql::OUTBOX_REMOVE_SCHEDULED] {
            write.conn().prepare_cached(statement).and_then(|mut s| s.execute([&list])).map_err(backend)?;
        }
        write.commit().await.map_err(backend)
    }

    async fn next_scheduled(&self) -> Result<Option<Duration>, StoreError> {
        let millis: Option<i64> =
            self.db.read(|c| c.prepare_cached(sql::NEXT_SCHEDULED)?.query_row([], |r| r.get(0))).map_err(backend)?;
        Ok(millis.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<LeaseGrant>, StoreError> {
        let write = self.db.begin_write().await.map_err(backend)?;
        let token: Option<i64> = write
            .conn()
            .prepare_cached(sql::ACQUIRE_LEASE)
            .and_then(|mut s| s.query_row(params![name, holder, ttl_millis(ttl)], |r| r.get(0)).optional())
            .map_err(backend)?;
        write.commit().await.map_err(backend)?;
        let Some(token) = token else { return Ok(None) };
        let token = to_u64("token", token).map_err(backend)?;
        Ok(Some(LeaseGrant { name: name.to_owned(), holder: holder.to_owned(), token }))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let write = self.db.begin_write().await.map_err(backend)?;
        write.conn().prepare_cached(sql::RELEASE_LEASE).and_then(|mut s| s.execute([name, holder])).map_err(backend)?;
        write.commit().await.map_err(backend)
    }

    fn changes(&self) -> &Notify {
        self.db.store_changes()
    }

    fn poll_interval(&self) -> Duration {
        // This process's commits notify, and the WAL watcher notices other processes'
        // commits; the poll only backs both up.
        super::FALLBACK_POLL
    }
}
