//! [`SqliteStore`] and [`SqliteTransaction`]: every storage port of Herald on one SQLite file.

use std::any::Any;
use std::time::Duration;

use async_trait::async_trait;
use herald::memory::{check_saga_version, validate_append};
use herald::store::{
    AppendResult, ExpectedVersion, NewEvent, OutboxRecord, OutboxStats, RecordedEvent, SagaRecord, Snapshot, Store,
    StoreError, Transaction,
};
use herald::{Message, MessageId};
use sqlx::{Acquire, SqliteConnection};
use tokio::sync::Notify;

use super::{SqliteDatabase, WriteTx, sql};
use crate::error::SqlError;
use crate::rows::{
    EventRow, MessageColumns, OutboxRow, SagaRow, SnapshotRow, bound, limit, metadata_json, now_millis, to_i64, to_u64,
    ttl_millis,
};

fn backend(e: impl Into<SqlError>) -> StoreError {
    StoreError::backend(e.into())
}

/// Herald's storage ports on SQLite. Cheap to clone; clones share the database.
///
/// Reads outside a transaction run on any pooled connection, in parallel with a writer (WAL).
/// [`begin`](Store::begin) starts a [`SqliteTransaction`] with `BEGIN IMMEDIATE`; see the
/// [module docs](crate::sqlite) for why that makes positions follow commit order.
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

    /// Starts a unit of work, typed (no downcast needed).
    pub async fn begin_sqlite(&self) -> Result<SqliteTransaction, StoreError> {
        let write = self.db.begin_write().await.map_err(backend)?;
        Ok(SqliteTransaction { write, db: self.db.clone(), hooks: Vec::new(), direct: self.direct.then(Vec::new) })
    }
}

/// A unit of work on a [`SqliteStore`]: one `BEGIN IMMEDIATE` transaction. It holds the write
/// lock from start to commit, so keep it short; dropping it rolls back.
///
/// The handler's own tables join the same transaction through [`connection`](Self::connection);
/// from a `&mut dyn Transaction`, downcast with
/// `tx.as_any_mut().downcast_mut::<SqliteTransaction>()`.
pub struct SqliteTransaction {
    write: WriteTx,
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
    /// of work. Do not `COMMIT` or `ROLLBACK` through it.
    pub fn connection(&mut self) -> &mut SqliteConnection {
        self.write.conn()
    }

    async fn insert_events(
        conn: &mut SqliteConnection,
        stream: &str,
        current: u64,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        let metadata: Vec<String> =
            events.iter().map(|e| metadata_json(&e.metadata)).collect::<Result<_, _>>().map_err(backend)?;
        let now = now_millis();
        for (i, (e, metadata)) in events.iter().zip(metadata).enumerate() {
            let version = current + 1 + i as u64;
            sqlx::query(sql::INSERT_EVENT)
                .bind(stream)
                .bind(to_i64("version", version).map_err(backend)?)
                .bind(e.id.to_string())
                .bind(&e.name)
                .bind(&e.payload)
                .bind(metadata)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(|err| insert_error(stream, version, err))?;
        }
        Ok(())
    }
}

/// A unique violation on `(stream, version)` means another writer got there first (which
/// `BEGIN IMMEDIATE` should make impossible, but the constraint is the last line of defence).
fn insert_error(stream: &str, version: u64, err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
            subject: stream.to_owned(),
            detail: format!("version {version} was written by another transaction"),
        },
        _ => backend(err),
    }
}

async fn stream_version(conn: &mut SqliteConnection, stream: &str) -> Result<u64, StoreError> {
    let v: i64 = sqlx::query_scalar(sql::STREAM_VERSION).bind(stream).fetch_one(conn).await.map_err(backend)?;
    to_u64("version", v).map_err(backend)
}

async fn read_stream<'c, E>(
    conn: E,
    stream: &str,
    from_version: u64,
    n: usize,
) -> Result<Vec<RecordedEvent>, StoreError>
where
    E: sqlx::SqliteExecutor<'c>,
{
    let rows: Vec<EventRow> = sqlx::query_as(sql::READ_STREAM)
        .bind(stream)
        .bind(bound(from_version))
        .bind(limit(n))
        .fetch_all(conn)
        .await
        .map_err(backend)?;
    rows.into_iter().map(|r| r.into_event().map_err(backend)).collect()
}

async fn load_snapshot<'c, E: sqlx::SqliteExecutor<'c>>(conn: E, stream: &str) -> Result<Option<Snapshot>, StoreError> {
    let row: Option<SnapshotRow> =
        sqlx::query_as(sql::LOAD_SNAPSHOT).bind(stream).fetch_optional(conn).await.map_err(backend)?;
    row.map(|r| r.into_snapshot().map_err(backend)).transpose()
}

async fn load_checkpoint<'c, E: sqlx::SqliteExecutor<'c>>(conn: E, name: &str) -> Result<Option<u64>, StoreError> {
    let p: Option<i64> =
        sqlx::query_scalar(sql::LOAD_CHECKPOINT).bind(name).fetch_optional(conn).await.map_err(backend)?;
    p.map(|p| to_u64("position", p).map_err(backend)).transpose()
}

async fn load_saga<'c, E: sqlx::SqliteExecutor<'c>>(
    conn: E,
    name: &str,
    id: &str,
) -> Result<Option<SagaRecord>, StoreError> {
    let row: Option<SagaRow> =
        sqlx::query_as(sql::LOAD_SAGA).bind(name).bind(id).fetch_optional(conn).await.map_err(backend)?;
    row.map(|r| r.into_record().map_err(backend)).transpose()
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
        let conn = self.write.conn();
        // We hold the write lock: nobody can append between this read and our inserts.
        let current = stream_version(&mut *conn, stream).await?;
        if !expected.matches(current) {
            return Err(StoreError::version_conflict(stream, expected, current));
        }
        if events.len() == 1 {
            // One statement is atomic on its own.
            Self::insert_events(conn, stream, current, &events).await?;
        } else {
            // A savepoint, so a failed append leaves nothing behind even if the caller goes on
            // to commit the rest of the unit of work.
            let mut savepoint = conn.begin().await.map_err(backend)?;
            Self::insert_events(&mut savepoint, stream, current, &events).await?;
            savepoint.commit().await.map_err(backend)?;
        }
        Ok(AppendResult { next_expected_version: current + events.len() as u64 })
    }

    async fn read_stream(
        &mut self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_stream(self.write.conn(), stream, from_version, limit).await
    }

    async fn save_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        sqlx::query(sql::SAVE_SNAPSHOT)
            .bind(&snapshot.stream)
            .bind(to_i64("version", snapshot.version).map_err(backend)?)
            .bind(&snapshot.payload)
            .bind(now_millis())
            .execute(self.write.conn())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn load_snapshot(&mut self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        load_snapshot(self.write.conn(), stream).await
    }

    async fn enqueue(&mut self, mut messages: Vec<Message>) -> Result<(), StoreError> {
        for m in &mut messages {
            herald::observability::fill_current(&mut m.metadata);
        }
        let now = now_millis();
        let conn = self.write.conn();
        if let Some(published) = &mut self.direct {
            for m in &messages {
                super::queue::publish_one(&mut *conn, m, now).await.map_err(backend)?;
                match published.iter_mut().find(|(topic, _)| *topic == m.topic) {
                    Some((_, n)) => *n += 1,
                    None => published.push((m.topic.clone(), 1)),
                }
            }
            return Ok(());
        }
        let columns: Vec<MessageColumns<'_>> =
            messages.iter().map(MessageColumns::new).collect::<Result<_, _>>().map_err(backend)?;
        for c in columns {
            sqlx::query(sql::ENQUEUE)
                .bind(c.id)
                .bind(c.name)
                .bind(c.topic)
                .bind(c.key)
                .bind(c.payload)
                .bind(c.metadata)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn record_handled(&mut self, handler: &str, message_id: MessageId) -> Result<bool, StoreError> {
        // We hold the write lock, so "inserted" here means no committed transaction recorded
        // the pair and no concurrent one can until we end.
        let done = sqlx::query(sql::RECORD_HANDLED)
            .bind(handler)
            .bind(message_id.to_string())
            .bind(now_millis())
            .execute(self.write.conn())
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn save_checkpoint(&mut self, name: &str, position: u64) -> Result<(), StoreError> {
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(name)
            .bind(to_i64("position", position).map_err(backend)?)
            .bind(now_millis())
            .execute(self.write.conn())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn load_checkpoint(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        load_checkpoint(self.write.conn(), name).await
    }

    async fn save_saga(&mut self, record: &SagaRecord) -> Result<(), StoreError> {
        let conn = self.write.conn();
        let current: Option<i64> = sqlx::query_scalar(sql::SAGA_VERSION)
            .bind(&record.name)
            .bind(&record.id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
        let current = current.map(|v| to_u64("version", v)).transpose().map_err(backend)?.unwrap_or(0);
        check_saga_version(record, current)?;
        sqlx::query(sql::SAVE_SAGA)
            .bind(&record.name)
            .bind(&record.id)
            .bind(to_i64("version", record.version).map_err(backend)?)
            .bind(record.step)
            .bind(record.compensating)
            .bind(record.done)
            .bind(&record.data)
            .bind(now_millis())
            .bind(record.deadline.map(|d| to_i64("deadline", d)).transpose().map_err(backend)?)
            .execute(conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn load_saga(&mut self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError> {
        load_saga(self.write.conn(), name, id).await
    }

    fn on_commit(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.hooks.push(f);
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send) {
        self
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let Self { write, db, hooks, direct } = *self;
        write.commit().await.map_err(backend)?;
        db.store_changes().notify_waiters();
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
        read_stream(self.db.pool(), stream, from_version, limit).await
    }

    async fn read_all(&self, after: u64, n: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        // One statement reads one snapshot, and positions follow commit order (BEGIN
        // IMMEDIATE), so this never returns position p while a lower one is still to commit.
        let rows: Vec<EventRow> = sqlx::query_as(sql::READ_ALL)
            .bind(bound(after))
            .bind(limit(n))
            .fetch_all(self.db.pool())
            .await
            .map_err(backend)?;
        rows.into_iter().map(|r| r.into_event().map_err(backend)).collect()
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        load_snapshot(self.db.pool(), stream).await
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        load_checkpoint(self.db.pool(), name).await
    }

    async fn load_saga(&self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError> {
        load_saga(self.db.pool(), name, id).await
    }

    async fn due_sagas(&self, name: &str, now_millis: u64, n: usize) -> Result<Vec<SagaRecord>, StoreError> {
        let rows: Vec<SagaRow> = sqlx::query_as(sql::DUE_SAGAS)
            .bind(name)
            .bind(bound(now_millis))
            .bind(limit(n))
            .fetch_all(self.db.pool())
            .await
            .map_err(backend)?;
        rows.into_iter().map(|r| r.into_record().map_err(backend)).collect()
    }

    async fn outbox_pending(&self, n: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let rows: Vec<OutboxRow> =
            sqlx::query_as(sql::OUTBOX_PENDING).bind(limit(n)).fetch_all(self.db.pool()).await.map_err(backend)?;
        rows.into_iter().map(|r| r.into_record().map_err(backend)).collect()
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let (count, oldest): (i64, Option<i64>) =
            sqlx::query_as(sql::OUTBOX_STATS).fetch_one(self.db.pool()).await.map_err(backend)?;
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
        let mut write = self.db.begin_write().await.map_err(backend)?;
        sqlx::query(sql::OUTBOX_REMOVE).bind(list).execute(write.conn()).await.map_err(backend)?;
        write.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn outbox_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut write = self.db.begin_write().await.map_err(backend)?;
        let held = sqlx::query(sql::OUTBOX_LEASE)
            .bind(holder)
            .bind(ttl_millis(ttl))
            .fetch_optional(write.conn())
            .await
            .map_err(backend)?
            .is_some();
        write.commit().await.map_err(backend)?;
        Ok(held)
    }

    async fn outbox_lease_release(&self, holder: &str) -> Result<(), StoreError> {
        let mut write = self.db.begin_write().await.map_err(backend)?;
        sqlx::query(sql::OUTBOX_LEASE_RELEASE).bind(holder).execute(write.conn()).await.map_err(backend)?;
        write.commit().await.map_err(backend)?;
        Ok(())
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
