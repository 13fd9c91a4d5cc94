//! [`PostgresStore`] and [`PostgresTransaction`]: every storage port of Herald in one
//! PostgreSQL schema.

use std::any::Any;
use std::time::Duration;

use async_trait::async_trait;
use herald::memory::{check_saga_version, validate_append};
use herald::store::{
    AppendResult, ExpectedVersion, LeaseGrant, NewEvent, OutboxRecord, OutboxStats, RecordedEvent, SagaRecord,
    Snapshot, Store, StoreError, Transaction,
};
use herald::{Message, MessageId};
use sqlx::{PgConnection, Postgres};
use tokio::sync::Notify;

use super::{PostgresDatabase, sql};
use crate::error::SqlError;
use crate::rows::{
    EventRow, LoadStreamRow, MessageColumns, OutboxRow, ReadAllRow, SagaRow, SnapshotRow, bound, due_millis, limit,
    metadata_json, now_millis, to_i64, to_u64, ttl_millis,
};

/// How many times an `ExpectedVersion::Any` append re-reads the stream's version after other
/// transactions took the versions it was inserting.
const MAX_ANY_RETRIES: u32 = 100;

fn backend(e: impl Into<SqlError>) -> StoreError {
    StoreError::backend(e.into())
}

/// What a failed statement means for the caller. A unique violation (a stream version or an
/// inbox entry someone else wrote), a deadlock or a serialization failure all mean "someone
/// else got there first; reload and retry": [`StoreError::Conflict`] on `subject`. Anything
/// else is a backend error.
fn statement_error(subject: &str, err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        let code = db.code();
        let retryable = matches!(code.as_deref(), Some("23505" | "40P01" | "40001"));
        if retryable {
            return StoreError::Conflict { subject: subject.to_owned(), detail: db.message().to_owned() };
        }
    }
    backend(err)
}

/// Herald's storage ports on PostgreSQL. Cheap to clone; clones share the database.
///
/// Reads outside a transaction run on any pooled connection. [`begin`](Store::begin) starts a
/// [`PostgresTransaction`]; its appends take no lock, and the database's sequencer gives them
/// positions after commit (see the [module docs](crate::postgres)). `read_all` and
/// `read_stream` wait for the sequencer when committed events have no position yet, so they
/// always return committed events with their positions.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    db: PostgresDatabase,
}

impl PostgresStore {
    pub(crate) fn new(db: PostgresDatabase) -> Self {
        Self { db }
    }

    /// The database this store writes to.
    pub fn database(&self) -> &PostgresDatabase {
        &self.db
    }

    /// Starts a unit of work, typed (no downcast needed).
    pub async fn begin_postgres(&self) -> Result<PostgresTransaction, StoreError> {
        let tx = self.db.begin().await.map_err(backend)?;
        Ok(PostgresTransaction {
            tx,
            db: self.db.clone(),
            hooks: Vec::new(),
            appended: false,
            failed: false,
            enqueued: false,
            scheduled: false,
        })
    }
}

/// A unit of work on a [`PostgresStore`]: one READ COMMITTED transaction. Dropping it rolls back.
///
/// Appends take no lock: appending transactions run and commit in parallel. Two appends to one
/// stream at the same version meet on `UNIQUE (stream, version)`: the second waits for the
/// first transaction to end. Events get their global-log positions from the sequencer after
/// commit, so inside the transaction [`read_stream`](Transaction::read_stream) reports position
/// 0 for events without one yet (this transaction's own appends, or events committed a moment
/// ago).
///
/// The handler's own tables join the same transaction through
/// [`any::query`](crate::any::query)`(..).execute(tx)` (dialect-neutral; `tx` may be the
/// `&mut dyn Transaction` a handler or projection is given, no downcast) or through
/// [`connection`](Self::connection).
///
/// In PostgreSQL a failed statement aborts the whole transaction (and `COMMIT` then silently
/// rolls back). So once one of Herald's statements has failed — a conflict included — `commit`
/// refuses with an error instead of pretending; a failed statement of the application's own,
/// through [`connection`](Self::connection), is the application's to handle.
pub struct PostgresTransaction {
    tx: sqlx::Transaction<'static, Postgres>,
    db: PostgresDatabase,
    hooks: Vec<Box<dyn FnOnce() + Send>>,
    /// Whether this transaction appended events (the commit wakes the sequencer).
    appended: bool,
    /// Whether a statement failed (the transaction is aborted server-side).
    failed: bool,
    /// Whether this transaction enqueued outbox messages: the commit wakes this process's relay
    /// (other processes' relays by the `pg_notify` sent with the rows). Events are announced by
    /// the sequencer once they have positions.
    enqueued: bool,
    /// Whether this transaction scheduled outbox messages: the commit tells this process's relay
    /// to ask for the next due time (other processes' by the statement's `pg_notify`).
    scheduled: bool,
}

impl std::fmt::Debug for PostgresTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTransaction")
            .field("hooks", &self.hooks.len())
            .field("appended", &self.appended)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl PostgresTransaction {
    /// The transaction's connection, for the application's own statements in the same unit
    /// of work (its `search_path` is the Herald schema). Do not `COMMIT` or `ROLLBACK`
    /// through it.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Records the outcome of one of Herald's statements: an error poisons the transaction.
    fn track<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// One attempt at an append (one statement, [`sql::APPEND`]): the stream's version, and
    /// whether the events were inserted after it. `false` with a matching version means another
    /// transaction committed one of those versions first; nothing is left written then.
    async fn try_append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<(u64, bool), StoreError> {
        let (ids, names, payloads, metadata) = event_columns(events)?;
        let required = required_version(expected)?;
        let done = sqlx::query_as(sql::APPEND)
            .bind(stream)
            .bind(ids)
            .bind(names)
            .bind(payloads)
            .bind(metadata)
            .bind(now_millis())
            .bind(required)
            .fetch_one(&mut *self.tx)
            .await;
        let (current, inserted): (i64, Vec<i64>) = self.track(done).map_err(|e| statement_error(stream, e))?;
        let current = to_u64("version", current).map_err(backend)?;
        if inserted.len() == events.len() {
            return Ok((current, true));
        }
        if !inserted.is_empty() {
            // Versions past the other append's: take them back, the append is all or nothing.
            let undone = sqlx::query(sql::DELETE_EVENTS).bind(inserted).execute(&mut *self.tx).await;
            self.track(undone).map_err(|e| statement_error(stream, e))?;
        }
        Ok((current, false))
    }
}

/// The events' columns as arrays, for `UNNEST`: ids, names, payloads, metadata.
#[allow(clippy::type_complexity)]
fn event_columns(events: &[NewEvent]) -> Result<(Vec<String>, Vec<&str>, Vec<&[u8]>, Vec<String>), StoreError> {
    let metadata: Vec<String> =
        events.iter().map(|e| metadata_json(&e.metadata)).collect::<Result<_, _>>().map_err(backend)?;
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    Ok((ids, names, payloads, metadata))
}

/// The version an append requires (`NULL`: any).
fn required_version(expected: ExpectedVersion) -> Result<Option<i64>, StoreError> {
    Ok(match expected {
        ExpectedVersion::Any => None,
        ExpectedVersion::NoStream => Some(0),
        ExpectedVersion::Exact(v) => Some(to_i64("version", v).map_err(backend)?),
    })
}

/// The stream's snapshot and up to `n` events after it, in one statement.
async fn load_stream<'c, E: sqlx::PgExecutor<'c>>(
    conn: E,
    stream: &str,
    n: usize,
) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), sqlx::Error> {
    let rows: Vec<LoadStreamRow> = sqlx::query_as(sql::LOAD_STREAM).bind(stream).bind(limit(n)).fetch_all(conn).await?;
    LoadStreamRow::decode(stream, rows).map_err(decode_error)
}

async fn read_stream<'c, E: sqlx::PgExecutor<'c>>(
    conn: E,
    stream: &str,
    from_version: u64,
    n: usize,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as::<_, EventRow>(sql::READ_STREAM)
        .bind(stream)
        .bind(bound(from_version))
        .bind(limit(n))
        .fetch_all(conn)
        .await
        .and_then(|rows| rows.into_iter().map(|r| r.into_event().map_err(decode_error)).collect())
}

/// A row Herald cannot read, carried through sqlx's error type so it can be tracked like a
/// failed statement.
fn decode_error(e: SqlError) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

async fn load_snapshot<'c, E: sqlx::PgExecutor<'c>>(conn: E, stream: &str) -> Result<Option<Snapshot>, sqlx::Error> {
    let row: Option<SnapshotRow> = sqlx::query_as(sql::LOAD_SNAPSHOT).bind(stream).fetch_optional(conn).await?;
    row.map(|r| r.into_snapshot().map_err(decode_error)).transpose()
}

async fn load_checkpoint<'c, E: sqlx::PgExecutor<'c>>(conn: E, name: &str) -> Result<Option<u64>, sqlx::Error> {
    let p: Option<i64> = sqlx::query_scalar(sql::LOAD_CHECKPOINT).bind(name).fetch_optional(conn).await?;
    p.map(|p| to_u64("position", p).map_err(decode_error)).transpose()
}

async fn load_saga<'c, E: sqlx::PgExecutor<'c>>(
    conn: E,
    name: &str,
    id: &str,
) -> Result<Option<SagaRecord>, sqlx::Error> {
    let row: Option<SagaRow> = sqlx::query_as(sql::LOAD_SAGA).bind(name).bind(id).fetch_optional(conn).await?;
    row.map(|r| r.into_record().map_err(decode_error)).transpose()
}

async fn saga_version<'c, E: sqlx::PgExecutor<'c>>(conn: E, name: &str, id: &str) -> Result<u64, sqlx::Error> {
    let v: Option<i64> = sqlx::query_scalar(sql::SAGA_VERSION).bind(name).bind(id).fetch_optional(conn).await?;
    v.map(|v| to_u64("version", v).map_err(decode_error)).transpose().map(|v| v.unwrap_or(0))
}

#[async_trait]
impl Transaction for PostgresTransaction {
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        // No lock: a concurrent append to this stream shows up in `try_append`, which waits
        // for it and reports whether it took our versions.
        let mut raced = 0;
        loop {
            let (current, inserted) = self.try_append(stream, expected, &events).await?;
            if !expected.matches(current) {
                // Nothing was written: the transaction stays usable.
                return Err(StoreError::version_conflict(stream, expected, current));
            }
            if inserted {
                self.appended = true;
                return Ok(AppendResult { next_expected_version: current + events.len() as u64 });
            }
            // Another transaction committed versions after `current` while we inserted.
            // `Any` appends after them; an exact expectation no longer holds.
            raced += 1;
            if expected != ExpectedVersion::Any || raced >= MAX_ANY_RETRIES {
                return Err(StoreError::Conflict {
                    subject: stream.to_owned(),
                    detail: format!("expected {expected:?}; another transaction appended to the stream concurrently"),
                });
            }
        }
    }

    async fn read_stream(
        &mut self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let read = read_stream(&mut *self.tx, stream, from_version, limit).await;
        self.track(read).map_err(backend)
    }

    async fn save_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let done = sqlx::query(sql::SAVE_SNAPSHOT)
            .bind(&snapshot.stream)
            .bind(to_i64("version", snapshot.version).map_err(backend)?)
            .bind(&snapshot.payload)
            .bind(now_millis())
            .execute(&mut *self.tx)
            .await;
        self.track(done).map_err(backend)?;
        Ok(())
    }

    async fn load_snapshot(&mut self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        let read = load_snapshot(&mut *self.tx, stream).await;
        self.track(read).map_err(backend)
    }

    async fn load_stream(
        &mut self,
        stream: &str,
        n: usize,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), StoreError> {
        let read = load_stream(&mut *self.tx, stream, n).await;
        self.track(read).map_err(backend)
    }

    async fn enqueue(&mut self, mut messages: Vec<Message>) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let (ids, names, topics, keys, payloads, metadata) = columns_of(&mut messages)?;
        let done = sqlx::query(sql::ENQUEUE)
            .bind(ids)
            .bind(names)
            .bind(topics)
            .bind(keys)
            .bind(payloads)
            .bind(metadata)
            .bind(now_millis())
            .bind(super::CHANNEL)
            .bind(self.db.outbox_payload())
            .execute(&mut *self.tx)
            .await;
        self.track(done).map_err(backend)?;
        // Announced to other processes by the statement; this process's relay at commit.
        self.enqueued = true;
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
        let (ids, names, topics, keys, payloads, metadata) = columns_of(&mut messages)?;
        let done = sqlx::query(sql::SCHEDULE)
            .bind(due_millis(at))
            .bind(ids)
            .bind(names)
            .bind(topics)
            .bind(keys)
            .bind(payloads)
            .bind(metadata)
            .bind(now_millis())
            .bind(super::CHANNEL)
            .bind(self.db.scheduled_payload())
            .execute(&mut *self.tx)
            .await;
        self.track(done).map_err(backend)?;
        self.scheduled = true;
        Ok(())
    }

    async fn record_handled(&mut self, handler: &str, message_id: MessageId) -> Result<bool, StoreError> {
        // If a concurrent transaction inserted the pair, this waits for it: nothing inserted
        // (false) if it commits, inserted if it rolls back. A deadlock with that transaction
        // surfaces as a conflict.
        let done = sqlx::query(sql::RECORD_HANDLED)
            .bind(handler)
            .bind(message_id.to_string())
            .bind(now_millis())
            .execute(&mut *self.tx)
            .await;
        let done = self.track(done).map_err(|e| statement_error(&format!("inbox {handler}/{message_id}"), e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn save_checkpoint(&mut self, name: &str, position: u64) -> Result<(), StoreError> {
        let done = sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(name)
            .bind(to_i64("position", position).map_err(backend)?)
            .bind(now_millis())
            .execute(&mut *self.tx)
            .await;
        self.track(done).map_err(backend)?;
        Ok(())
    }

    async fn save_checkpoint_if(
        &mut self,
        name: &str,
        expected: u64,
        position: u64,
        token: Option<u64>,
    ) -> Result<(), StoreError> {
        let subject = format!("checkpoint {name}");
        let position_i = to_i64("position", position).map_err(backend)?;
        let token_i = token.map(|t| to_i64("token", t)).transpose().map_err(backend)?;
        let updated = sqlx::query(sql::UPDATE_CHECKPOINT_IF)
            .bind(name)
            .bind(to_i64("position", expected).map_err(backend)?)
            .bind(position_i)
            .bind(token_i)
            .bind(now_millis())
            .execute(&mut *self.tx)
            .await;
        let mut saved = self.track(updated).map_err(|e| statement_error(&subject, e))?.rows_affected() == 1;
        if !saved && expected == 0 {
            let inserted = sqlx::query(sql::INSERT_CHECKPOINT_IF)
                .bind(name)
                .bind(position_i)
                .bind(token_i)
                .bind(now_millis())
                .execute(&mut *self.tx)
                .await;
            saved = self.track(inserted).map_err(|e| statement_error(&subject, e))?.rows_affected() == 1;
        }
        if saved {
            return Ok(());
        }
        let found: Result<Option<(i64, i64)>, _> =
            sqlx::query_as(sql::CHECKPOINT_AND_TOKEN).bind(name).fetch_optional(&mut *self.tx).await;
        let found = self.track(found).map_err(backend)?;
        let (found, found_token) = match found {
            Some((p, t)) => (Some(to_u64("position", p).map_err(backend)?), to_u64("token", t).map_err(backend)?),
            None => (None, 0),
        };
        Err(StoreError::fenced(name, expected, found, token, found_token))
    }

    async fn load_checkpoint(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        let read = load_checkpoint(&mut *self.tx, name).await;
        self.track(read).map_err(backend)
    }

    async fn save_saga(&mut self, record: &SagaRecord) -> Result<(), StoreError> {
        let subject = format!("saga {}/{}", record.name, record.id);
        if record.version == 0 {
            return check_saga_version(record, 0);
        }
        // One guarded statement (insert if new, update if the stored version is the previous
        // one), so two concurrent saves of one version cannot both succeed.
        let statement = if record.version == 1 { sql::INSERT_SAGA } else { sql::UPDATE_SAGA };
        let done = sqlx::query(statement)
            .bind(&record.name)
            .bind(&record.id)
            .bind(to_i64("version", record.version).map_err(backend)?)
            .bind(record.step)
            .bind(record.compensating)
            .bind(record.done)
            .bind(&record.data)
            .bind(now_millis())
            .bind(record.deadline.map(|d| to_i64("deadline", d)).transpose().map_err(backend)?)
            .execute(&mut *self.tx)
            .await;
        let done = self.track(done).map_err(|e| statement_error(&subject, e))?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        let current = saga_version(&mut *self.tx, &record.name, &record.id).await;
        let current = self.track(current).map_err(backend)?;
        check_saga_version(record, current)?;
        // The stored version moved between the two statements.
        Err(StoreError::Conflict { subject, detail: "saved concurrently by another transaction".into() })
    }

    async fn load_saga(&mut self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError> {
        let read = load_saga(&mut *self.tx, name, id).await;
        self.track(read).map_err(backend)
    }

    fn on_commit(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.hooks.push(f);
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send) {
        self
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let Self { tx, db, hooks, failed, appended, enqueued, scheduled } = *self;
        if failed {
            tx.rollback().await.map_err(backend)?;
            return Err(StoreError::Invalid(
                "the transaction was aborted by an earlier failed statement; it was rolled back".into(),
            ));
        }
        tx.commit().await.map_err(|e| statement_error("commit", e))?;
        if appended {
            // Its events' positions come from the sequencer, which wakes readers after
            // assigning them; the commit does not wait for it.
            db.wake_sequencer();
        }
        if enqueued {
            db.outbox_changes().notify_waiters();
        }
        if scheduled {
            db.scheduled_changes().notify_waiters();
        }
        for hook in hooks {
            hook();
        }
        Ok(())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn begin(&self) -> Result<Box<dyn Transaction>, StoreError> {
        Ok(Box::new(self.begin_postgres().await?))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = read_stream(self.db.pool(), stream, from_version, limit).await.map_err(backend)?;
        if events.iter().all(|e| e.position > 0) {
            return Ok(events);
        }
        // Committed events without a position yet: wait for the sequencer, read again.
        self.db.sequence_committed().await.map_err(backend)?;
        read_stream(self.db.pool(), stream, from_version, limit).await.map_err(backend)
    }

    async fn read_all(&self, after: u64, n: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        // Only sequenced rows are read. The sequencer numbers committed rows in batches above
        // every earlier batch, and a batch becomes visible at once, so this never returns
        // position p while a lower one is still to appear.
        //
        // At the head of the log, events committed before this call but not sequenced yet
        // belong here too (read-your-writes). The first read says, in the same snapshot,
        // whether any wait for a position: if none do, every event committed before it is
        // in it with its position; if some do, wait for a sequencer run and read again.
        let rows: Vec<ReadAllRow> = sqlx::query_as(sql::READ_ALL_AT_HEAD)
            .bind(bound(after))
            .bind(limit(n))
            .fetch_all(self.db.pool())
            .await
            .map_err(backend)?;
        let (pending, events) = ReadAllRow::decode(rows).map_err(backend)?;
        if events.len() >= n || !pending {
            return Ok(events);
        }
        self.db.await_sequencer_run().await;
        let rows: Vec<EventRow> = sqlx::query_as(sql::READ_ALL)
            .bind(bound(after))
            .bind(limit(n))
            .fetch_all(self.db.pool())
            .await
            .map_err(backend)?;
        rows.into_iter().map(|r| r.into_event().map_err(backend)).collect()
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        load_snapshot(self.db.pool(), stream).await.map_err(backend)
    }

    async fn load_stream(&self, stream: &str, n: usize) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), StoreError> {
        // No wait for the sequencer: an aggregate needs versions (position 0 = not numbered yet).
        load_stream(self.db.pool(), stream, n).await.map_err(backend)
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        // One autocommit statement, all or nothing: a version another transaction committed
        // first fails it with a unique violation (a conflict), so nothing is ever half written.
        let (ids, names, payloads, metadata) = event_columns(&events)?;
        let required = required_version(expected)?;
        let mut raced = 0;
        loop {
            let done = sqlx::query_scalar::<_, i64>(sql::APPEND_ALONE)
                .bind(stream)
                .bind(&ids)
                .bind(&names)
                .bind(&payloads)
                .bind(&metadata)
                .bind(now_millis())
                .bind(required)
                .fetch_one(self.db.pool())
                .await;
            match done {
                Ok(current) => {
                    let current = to_u64("version", current).map_err(backend)?;
                    if !expected.matches(current) {
                        return Err(StoreError::version_conflict(stream, expected, current));
                    }
                    self.db.wake_sequencer();
                    return Ok(AppendResult { next_expected_version: current + events.len() as u64 });
                }
                Err(e) => match statement_error(stream, e) {
                    // Another append took a version first; `Any` appends after it.
                    StoreError::Conflict { .. } if expected == ExpectedVersion::Any && raced < MAX_ANY_RETRIES => {
                        raced += 1;
                    }
                    e => return Err(e),
                },
            }
        }
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        load_checkpoint(self.db.pool(), name).await.map_err(backend)
    }

    async fn load_saga(&self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError> {
        load_saga(self.db.pool(), name, id).await.map_err(backend)
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
        let list: Vec<i64> =
            sequences.iter().map(|s| to_i64("sequence", *s)).collect::<Result<_, _>>().map_err(backend)?;
        sqlx::query(sql::OUTBOX_REMOVE).bind(list).execute(self.db.pool()).await.map_err(backend)?;
        Ok(())
    }

    async fn next_scheduled(&self) -> Result<Option<Duration>, StoreError> {
        let millis: Option<i64> =
            sqlx::query_scalar(sql::NEXT_SCHEDULED).fetch_one(self.db.pool()).await.map_err(backend)?;
        Ok(millis.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<LeaseGrant>, StoreError> {
        let token: Option<i64> = sqlx::query_scalar(sql::ACQUIRE_LEASE)
            .bind(name)
            .bind(holder)
            .bind(ttl_millis(ttl))
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| statement_error(&format!("lease {name}"), e))?;
        let Some(token) = token else { return Ok(None) };
        let token = to_u64("token", token).map_err(backend)?;
        Ok(Some(LeaseGrant { name: name.to_owned(), holder: holder.to_owned(), token }))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(sql::RELEASE_LEASE).bind(name).bind(holder).execute(self.db.pool()).await.map_err(backend)?;
        Ok(())
    }

    fn changes(&self) -> &Notify {
        self.db.store_changes()
    }

    fn outbox_changes(&self) -> &Notify {
        self.db.outbox_changes()
    }

    fn scheduled_changes(&self) -> &Notify {
        // Its own signal: `next_scheduled` is a round trip, which the relay then makes only
        // after commits that scheduled something, not after every outbox commit.
        self.db.scheduled_changes()
    }

    fn poll_interval(&self) -> Duration {
        // The sequencer wakes this process's readers, LISTEN/NOTIFY other processes' readers;
        // the poll backs both up.
        Duration::from_secs(1)
    }
}

/// The outbox columns of `messages` as one array per column (what `UNNEST` takes), each message
/// stamped with the current trace first; encoded before any statement runs.
#[allow(clippy::type_complexity)]
fn columns_of(
    messages: &mut [Message],
) -> Result<(Vec<String>, Vec<&str>, Vec<&str>, Vec<&str>, Vec<&[u8]>, Vec<String>), StoreError> {
    for m in messages.iter_mut() {
        herald::observability::fill_current(&mut m.metadata);
    }
    let columns: Vec<MessageColumns<'_>> =
        messages.iter().map(MessageColumns::new).collect::<Result<_, _>>().map_err(backend)?;
    let mut arrays = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in columns {
        arrays.0.push(c.id);
        arrays.1.push(c.name);
        arrays.2.push(c.topic);
        arrays.3.push(c.key);
        arrays.4.push(c.payload);
        arrays.5.push(c.metadata);
    }
    Ok(arrays)
}
