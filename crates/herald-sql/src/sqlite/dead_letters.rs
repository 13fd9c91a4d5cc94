//! The dead-letter archive on SQLite: [`SqliteStore`] is a [`DeadLetterArchive`] whose changes
//! join the caller's [`SqliteTransaction`] (so a replay's status change and its outbox row
//! commit together). See ADR 0006.

use async_trait::async_trait;
use herald::MessageId;
use herald::dead_letters::{
    DeadLetter, DeadLetterArchive, DeadLetterFilter, DeadLetterStatus, Page, PendingCount, Resolution, check_resolution,
};
use herald::store::{StoreError, Transaction};
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, SqliteTransaction};
use crate::dead_letters::{
    COUNT, DeadLetterRow, FilterValues, GET, INSERT, LIST, LetterColumns, PENDING_COUNTS, RESOLVE, STATUS,
    pending_counts,
};
use crate::error::SqlError;
use crate::rows::{self, limit, now_millis};

fn backend(e: impl Into<SqlError>) -> StoreError {
    StoreError::backend(e.into())
}

/// The transaction `tx`, which must be a transaction of a SQLite store.
fn sqlite(tx: &mut dyn Transaction) -> Result<&mut SqliteTransaction, StoreError> {
    tx.as_any_mut().downcast_mut::<SqliteTransaction>().ok_or_else(|| {
        StoreError::Invalid("the SQLite dead-letter archive joins only transactions of a SQLite store".into())
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetterRow> {
    Ok(DeadLetterRow {
        letter_id: r.get("letter_id")?,
        dead_letter_topic: r.get("dead_letter_topic")?,
        grp: r.get("grp")?,
        reason: r.get("reason")?,
        attempts: r.get("attempts")?,
        dead_lettered_at: r.get("dead_lettered_at")?,
        status: r.get("status")?,
        resolved_at: r.get("resolved_at")?,
        replay_id: r.get("replay_id")?,
        message: rows::sqlite::message(r)?,
    })
}

fn letter(row: DeadLetterRow) -> Result<DeadLetter, StoreError> {
    row.into_letter().map_err(backend)
}

#[async_trait]
impl DeadLetterArchive for SqliteStore {
    async fn archive(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<bool, StoreError> {
        let c = LetterColumns::new(letter).map_err(backend)?;
        let done = sqlite(tx)?
            .connection()
            .await
            .map_err(backend)?
            .prepare_cached(INSERT)
            .and_then(|mut s| {
                s.execute(params![
                    c.id,
                    letter.dead_letter_topic,
                    letter.group,
                    letter.reason,
                    i64::from(letter.attempts),
                    c.dead_lettered_at,
                    c.message.id,
                    c.message.name,
                    c.message.topic,
                    c.message.key,
                    c.message.payload,
                    c.message.metadata,
                    now_millis()
                ])
            })
            .map_err(backend)?;
        Ok(done == 1)
    }

    async fn get(&self, id: MessageId) -> Result<Option<DeadLetter>, StoreError> {
        let found = self
            .database()
            .read(|c| c.prepare_cached(GET)?.query_row([id.to_string()], row).optional())
            .map_err(backend)?;
        found.map(letter).transpose()
    }

    async fn list(&self, filter: &DeadLetterFilter, page: &Page) -> Result<Vec<DeadLetter>, StoreError> {
        let f = FilterValues::new(filter);
        let after = page.after.map(|a| a.to_string());
        let rows = self
            .database()
            .read(|c| {
                c.prepare_cached(LIST)?
                    .query_map(params![f.topic, f.group, f.status, after, limit(page.limit)], row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
        rows.into_iter().map(letter).collect()
    }

    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        let f = FilterValues::new(filter);
        let n: i64 = self
            .database()
            .read(|c| c.prepare_cached(COUNT)?.query_row(params![f.topic, f.group, f.status], |r| r.get(0)))
            .map_err(backend)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn pending_counts(&self) -> Result<Vec<PendingCount>, StoreError> {
        let rows = self
            .database()
            .read(|c| {
                c.prepare_cached(PENDING_COUNTS)?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)?;
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
        let conn = sqlite(tx)?.connection().await.map_err(backend)?;
        // The transaction holds the write lock (BEGIN IMMEDIATE): nobody resolves it meanwhile.
        let resolved = conn
            .prepare_cached(RESOLVE)
            .and_then(|mut s| {
                s.query_row(
                    params![status.as_str(), now_millis(), replay_id.map(|r| r.to_string()), id.to_string()],
                    row,
                )
                .optional()
            })
            .map_err(backend)?;
        if let Some(resolved) = resolved {
            return Ok(Resolution::Resolved(Box::new(letter(resolved)?)));
        }
        let current: Option<String> = conn
            .prepare_cached(STATUS)
            .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
            .map_err(backend)?;
        match current {
            None => Ok(Resolution::NotFound),
            Some(s) => Ok(Resolution::NotPending(s.parse().map_err(|e: String| StoreError::Invalid(e))?)),
        }
    }
}
