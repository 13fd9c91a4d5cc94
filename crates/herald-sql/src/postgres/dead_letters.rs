//! The dead-letter archive on PostgreSQL: [`PostgresStore`] is a [`DeadLetterArchive`] whose changes
//! join the caller's [`PostgresTransaction`] (so a replay's status change and its outbox row
//! commit together). See ADR 0006.

use async_trait::async_trait;
use herald::MessageId;
use herald::dead_letters::{
    DeadLetter, DeadLetterArchive, DeadLetterFilter, DeadLetterStatus, Page, PendingCount, Resolution, check_resolution,
};
use herald::store::{StoreError, Transaction};
use sqlx::PgConnection;

use super::{PostgresStore, PostgresTransaction};
use crate::dead_letters::{
    COUNT, DeadLetterRow, FilterValues, GET, INSERT, LIST, LetterColumns, PENDING_COUNTS, RESOLVE, STATUS,
    pending_counts,
};
use crate::error::SqlError;
use crate::rows::{limit, now_millis};

fn backend(e: impl Into<SqlError>) -> StoreError {
    StoreError::backend(e.into())
}

/// The connection of `tx`, which must be a transaction of a PostgreSQL store.
fn connection(tx: &mut dyn Transaction) -> Result<&mut PgConnection, StoreError> {
    match tx.as_any_mut().downcast_mut::<PostgresTransaction>() {
        Some(tx) => Ok(tx.connection()),
        None => Err(StoreError::Invalid(
            "the PostgreSQL dead-letter archive joins only transactions of a PostgreSQL store".into(),
        )),
    }
}

fn letter(row: DeadLetterRow) -> Result<DeadLetter, StoreError> {
    row.into_letter().map_err(backend)
}

#[async_trait]
impl DeadLetterArchive for PostgresStore {
    async fn archive(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<bool, StoreError> {
        let c = LetterColumns::new(letter).map_err(backend)?;
        let done = sqlx::query(INSERT)
            .bind(&c.id)
            .bind(&letter.dead_letter_topic)
            .bind(&letter.group)
            .bind(&letter.reason)
            .bind(i64::from(letter.attempts))
            .bind(c.dead_lettered_at)
            .bind(&c.message.id)
            .bind(c.message.name)
            .bind(c.message.topic)
            .bind(c.message.key)
            .bind(c.message.payload)
            .bind(&c.message.metadata)
            .bind(now_millis())
            .execute(connection(tx)?)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn get(&self, id: MessageId) -> Result<Option<DeadLetter>, StoreError> {
        let row: Option<DeadLetterRow> =
            sqlx::query_as(GET).bind(id.to_string()).fetch_optional(self.database().pool()).await.map_err(backend)?;
        row.map(letter).transpose()
    }

    async fn list(&self, filter: &DeadLetterFilter, page: &Page) -> Result<Vec<DeadLetter>, StoreError> {
        let f = FilterValues::new(filter);
        let rows: Vec<DeadLetterRow> = sqlx::query_as(LIST)
            .bind(f.topic)
            .bind(f.group)
            .bind(f.status)
            .bind(page.after.map(|a| a.to_string()))
            .bind(limit(page.limit))
            .fetch_all(self.database().pool())
            .await
            .map_err(backend)?;
        rows.into_iter().map(letter).collect()
    }

    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        let f = FilterValues::new(filter);
        let n: i64 = sqlx::query_scalar(COUNT)
            .bind(f.topic)
            .bind(f.group)
            .bind(f.status)
            .fetch_one(self.database().pool())
            .await
            .map_err(backend)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn pending_counts(&self) -> Result<Vec<PendingCount>, StoreError> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as(PENDING_COUNTS).fetch_all(self.database().pool()).await.map_err(backend)?;
        Ok(pending_counts(rows))
    }

    async fn resolve(
        &self,
        tx: &mut dyn Transaction,
        id: MessageId,
        status: DeadLetterStatus,
        replay_id: Option<MessageId>,
    ) -> Result<Resolution, StoreError> {
        check_resolution(status)?;
        let conn = connection(tx)?;
        // A concurrent resolution holds the row lock; this waits for it and then re-checks
        // `status = 'pending'` against the committed row (READ COMMITTED), so at most one wins.
        let row: Option<DeadLetterRow> = sqlx::query_as(RESOLVE)
            .bind(status.as_str())
            .bind(now_millis())
            .bind(replay_id.map(|r| r.to_string()))
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
        if let Some(row) = row {
            return Ok(Resolution::Resolved(Box::new(letter(row)?)));
        }
        let current: Option<String> =
            sqlx::query_scalar(STATUS).bind(id.to_string()).fetch_optional(conn).await.map_err(backend)?;
        match current {
            None => Ok(Resolution::NotFound),
            Some(s) => Ok(Resolution::NotPending(s.parse().map_err(|e: String| StoreError::Invalid(e))?)),
        }
    }
}
