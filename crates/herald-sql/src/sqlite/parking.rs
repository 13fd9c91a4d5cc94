//! The parking lot on SQLite: [`SqliteStore`] is a [`ParkingLot`] whose reads and changes join
//! the caller's [`SqliteTransaction`] (so a message is parked, or a head removed and the next entry
//! released through the outbox, in the handler's unit of work). See [`herald::parking`].

use async_trait::async_trait;
use herald::parking::{ParkedKey, ParkingLot};
use herald::store::{StoreError, Transaction};
use herald::{Message, MessageId};
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, SqliteTransaction};
use crate::error::SqlError;
use crate::parking::{
    ADVANCE, EntryColumns, FIRST_MESSAGE, HEAD, PARK, PARKED, ParkedRow, TABLE, parked_keys, parse_id,
};
use crate::rows::{self, now_millis};

fn backend(e: impl Into<SqlError>) -> StoreError {
    StoreError::backend(e.into())
}

/// The transaction `tx`, which must be a transaction of a SQLite store.
fn sqlite(tx: &mut dyn Transaction) -> Result<&mut SqliteTransaction, StoreError> {
    tx.as_any_mut()
        .downcast_mut::<SqliteTransaction>()
        .ok_or_else(|| StoreError::Invalid("the SQLite parking lot joins only transactions of a SQLite store".into()))
}

fn parked_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ParkedRow> {
    Ok(ParkedRow {
        grp: r.get("grp")?,
        key: r.get("key")?,
        entry_id: r.get("entry_id")?,
        parked_at: r.get("parked_at")?,
        entries: r.get("entries")?,
    })
}

#[async_trait]
impl ParkingLot for SqliteStore {
    async fn head(&self, tx: &mut dyn Transaction, group: &str, key: &str) -> Result<Option<MessageId>, StoreError> {
        // In the transaction (it takes the write lock): what it reads is what it then parks
        // behind or advances, with no other writer in between.
        let head: Option<String> = sqlite(tx)?
            .connection()
            .await
            .map_err(backend)?
            .prepare_cached(HEAD)
            .and_then(|mut s| s.query_row(params![group, key], |r| r.get(0)).optional())
            .map_err(backend)?;
        head.as_deref().map(parse_id).transpose().map_err(backend)
    }

    async fn park(
        &self,
        tx: &mut dyn Transaction,
        group: &str,
        key: &str,
        id: MessageId,
        message: Option<&Message>,
    ) -> Result<bool, StoreError> {
        let c = EntryColumns::new(id, message).map_err(backend)?;
        let inserted = sqlite(tx)?
            .connection()
            .await
            .map_err(backend)?
            .prepare_cached(PARK)
            .and_then(|mut s| {
                s.execute(params![
                    group,
                    key,
                    c.entry_id,
                    c.message_id(),
                    c.name(),
                    c.topic(),
                    c.key(),
                    c.payload(),
                    c.metadata(),
                    now_millis()
                ])
            })
            .map_err(backend)?;
        Ok(inserted == 1)
    }

    async fn advance(
        &self,
        tx: &mut dyn Transaction,
        group: &str,
        key: &str,
        head: MessageId,
    ) -> Result<Option<Message>, StoreError> {
        let conn = sqlite(tx)?.connection().await.map_err(backend)?;
        let removed = conn
            .prepare_cached(ADVANCE)
            .and_then(|mut s| s.execute(params![group, key, head.to_string()]))
            .map_err(backend)?;
        if removed == 0 {
            return Ok(None);
        }
        let next = conn
            .prepare_cached(FIRST_MESSAGE)
            .and_then(|mut s| s.query_row(params![group, key], rows::sqlite::message).optional())
            .map_err(backend)?;
        next.map(|row| row.into_message(TABLE)).transpose().map_err(backend)
    }

    async fn parked(&self, group: Option<&str>) -> Result<Vec<ParkedKey>, StoreError> {
        let rows = self
            .database()
            .read(|c| c.prepare_cached(PARKED)?.query_map(params![group], parked_row)?.collect::<Result<Vec<_>, _>>())
            .map_err(backend)?;
        parked_keys(rows).map_err(backend)
    }
}
