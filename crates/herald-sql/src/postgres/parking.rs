//! The parking lot on PostgreSQL: [`PostgresStore`] is a [`ParkingLot`] whose reads and changes join
//! the caller's [`PostgresTransaction`] (so a message is parked, or a head removed and the next entry
//! released through the outbox, in the handler's unit of work). See [`herald::parking`].

use async_trait::async_trait;
use herald::parking::{ParkedKey, ParkingLot};
use herald::store::{StoreError, Transaction};
use herald::{Message, MessageId};
use sqlx::PgConnection;

use super::{PostgresStore, PostgresTransaction};
use crate::error::SqlError;
use crate::parking::{
    ADVANCE, EntryColumns, FIRST_MESSAGE, HEAD, PARK, PARKED, ParkedRow, TABLE, parked_keys, parse_id,
};
use crate::rows::{MessageRow, now_millis};

fn backend(e: impl Into<SqlError>) -> StoreError {
    StoreError::backend(e.into())
}

/// The connection of `tx`, which must be a transaction of a PostgreSQL store.
fn connection(tx: &mut dyn Transaction) -> Result<&mut PgConnection, StoreError> {
    match tx.as_any_mut().downcast_mut::<PostgresTransaction>() {
        Some(tx) => Ok(tx.connection()),
        None => {
            Err(StoreError::Invalid("the PostgreSQL parking lot joins only transactions of a PostgreSQL store".into()))
        }
    }
}

#[async_trait]
impl ParkingLot for PostgresStore {
    async fn head(&self, tx: &mut dyn Transaction, group: &str, key: &str) -> Result<Option<MessageId>, StoreError> {
        let head: Option<String> =
            sqlx::query_scalar(HEAD).bind(group).bind(key).fetch_optional(connection(tx)?).await.map_err(backend)?;
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
        // A concurrent uncommitted park of the same entry makes this wait for its transaction:
        // if it commits, this inserts nothing (`false`); if it rolls back, this inserts.
        let done = sqlx::query(PARK)
            .bind(group)
            .bind(key)
            .bind(&c.entry_id)
            .bind(c.message_id())
            .bind(c.name())
            .bind(c.topic())
            .bind(c.key())
            .bind(c.payload())
            .bind(c.metadata())
            .bind(now_millis())
            .execute(connection(tx)?)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn advance(
        &self,
        tx: &mut dyn Transaction,
        group: &str,
        key: &str,
        head: MessageId,
    ) -> Result<Option<Message>, StoreError> {
        let conn = connection(tx)?;
        let removed = sqlx::query(ADVANCE)
            .bind(group)
            .bind(key)
            .bind(head.to_string())
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        if removed.rows_affected() == 0 {
            return Ok(None);
        }
        let next: Option<MessageRow> =
            sqlx::query_as(FIRST_MESSAGE).bind(group).bind(key).fetch_optional(conn).await.map_err(backend)?;
        next.map(|row| row.into_message(TABLE)).transpose().map_err(backend)
    }

    async fn parked(&self, group: Option<&str>) -> Result<Vec<ParkedKey>, StoreError> {
        let rows: Vec<ParkedRow> =
            sqlx::query_as(PARKED).bind(group).fetch_all(self.database().pool()).await.map_err(backend)?;
        parked_keys(rows).map_err(backend)
    }
}
