//! Rows ↔ Herald types, shared by every SQL dialect.
//!
//! The schema conventions are the same on SQLite and PostgreSQL: ids are UUID text, counters
//! and positions are signed 64-bit integers, payloads are bytes, metadata is
//! [`herald::Metadata`] as JSON text, times are integer milliseconds since the Unix epoch. So
//! the row structs below (decoded with `sqlx::FromRow`, which is generic over the database)
//! and the conversions are written once; a dialect module only brings its SQL text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::store::{RecordedEvent, SagaRecord, Snapshot};
use herald::{Message, MessageId, Metadata};

use crate::error::SqlError;

/// A `u64` (version, position, sequence) as the `i64` the column holds.
pub(crate) fn to_i64(what: &'static str, value: u64) -> Result<i64, SqlError> {
    i64::try_from(value).map_err(|_| SqlError::OutOfRange { what, value: value.to_string() })
}

/// An `i64` column as the `u64` Herald uses; negative values cannot have been written by Herald.
pub(crate) fn to_u64(what: &'static str, value: i64) -> Result<u64, SqlError> {
    u64::try_from(value).map_err(|_| SqlError::OutOfRange { what, value: value.to_string() })
}

/// A lower bound (`from_version`, `after`) for a query: values above `i64::MAX` match nothing
/// anyway, so they are clamped rather than refused.
pub(crate) fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `LIMIT`: `usize::MAX` means "all".
pub(crate) fn limit(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch, from the system clock: leases and nack delays are
/// compared across processes, so they need a clock every process shares.
pub(crate) fn now_millis() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A due time in milliseconds since the Unix epoch, rounded up, so a message scheduled for a
/// time inside a millisecond is never published before it. Times before the epoch are long
/// past, which means now: stored as 0 (the due scan relies on due times not being negative).
pub(crate) fn due_millis(at: chrono::DateTime<chrono::Utc>) -> i64 {
    let floor = at.timestamp_millis();
    let ceil = if at.timestamp_subsec_nanos().is_multiple_of(1_000_000) { floor } else { floor.saturating_add(1) };
    ceil.max(0)
}

/// A duration in milliseconds (time to live of a lease), saturating.
pub(crate) fn ttl_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `now + d` in milliseconds, saturating.
pub(crate) fn after(now: i64, d: Duration) -> i64 {
    now.saturating_add(ttl_millis(d))
}

/// Metadata as stored.
pub(crate) fn metadata_json(metadata: &Metadata) -> Result<String, SqlError> {
    serde_json::to_string(metadata)
        .map_err(|e| SqlError::Corrupt { table: "(encoding)", detail: format!("metadata is not serialisable: {e}") })
}

fn parse_metadata(table: &'static str, text: &str) -> Result<Metadata, SqlError> {
    serde_json::from_str(text).map_err(|e| SqlError::Corrupt { table, detail: format!("bad metadata JSON: {e}") })
}

fn parse_id(table: &'static str, text: &str) -> Result<MessageId, SqlError> {
    MessageId::parse(text).map_err(|e| SqlError::Corrupt { table, detail: format!("bad message id `{text}`: {e}") })
}

/// A message's columns, encoded once before any statement runs (so an encoding failure never
/// leaves a transaction half-written).
#[derive(Debug)]
pub(crate) struct MessageColumns<'a> {
    pub id: String,
    pub name: &'a str,
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
    pub metadata: String,
}

impl<'a> MessageColumns<'a> {
    pub(crate) fn new(m: &'a Message) -> Result<Self, SqlError> {
        Ok(Self {
            id: m.id.to_string(),
            name: &m.name,
            topic: &m.topic,
            key: &m.key,
            payload: &m.payload,
            metadata: metadata_json(&m.metadata)?,
        })
    }
}

/// A row of `herald_events`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub position: i64,
    pub stream: String,
    pub version: i64,
    pub id: String,
    pub name: String,
    pub payload: Vec<u8>,
    pub metadata: String,
}

impl EventRow {
    pub(crate) fn into_event(self) -> Result<RecordedEvent, SqlError> {
        const T: &str = "herald_events";
        Ok(RecordedEvent {
            id: parse_id(T, &self.id)?,
            metadata: parse_metadata(T, &self.metadata)?,
            stream: self.stream,
            version: to_u64("version", self.version)?,
            position: to_u64("position", self.position)?,
            name: self.name,
            payload: self.payload,
        })
    }
}

/// An event's columns that a `LEFT JOIN` may leave NULL (no event on the row).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OptionalEventColumns {
    pub position: Option<i64>,
    pub version: Option<i64>,
    pub id: Option<String>,
    pub name: Option<String>,
    pub payload: Option<Vec<u8>>,
    pub metadata: Option<String>,
}

impl OptionalEventColumns {
    /// The event of `stream` on this row, if there is one.
    pub(crate) fn into_event(self, stream: impl FnOnce() -> String) -> Result<Option<RecordedEvent>, SqlError> {
        const T: &str = "herald_events";
        let (Some(position), Some(version), Some(id), Some(name), Some(payload), Some(metadata)) =
            (self.position, self.version, self.id, self.name, self.payload, self.metadata)
        else {
            return Ok(None);
        };
        Ok(Some(RecordedEvent {
            id: parse_id(T, &id)?,
            metadata: parse_metadata(T, &metadata)?,
            stream: stream(),
            version: to_u64("version", version)?,
            position: to_u64("position", position)?,
            name,
            payload,
        }))
    }
}

/// A row of PostgreSQL's `LOAD_STREAM`: the stream's snapshot (its payload on the first row
/// only; NULL without a snapshot) beside one of the events after it (NULL when none follow).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LoadStreamRow {
    pub snapshot_version: Option<i64>,
    pub snapshot_payload: Option<Vec<u8>>,
    #[sqlx(flatten)]
    pub event: OptionalEventColumns,
}

impl LoadStreamRow {
    /// The snapshot and the events of `stream` from `LOAD_STREAM`'s rows.
    pub(crate) fn decode(stream: &str, rows: Vec<Self>) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), SqlError> {
        let mut snapshot = None;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            if let (Some(version), Some(payload)) = (row.snapshot_version, row.snapshot_payload) {
                snapshot = Some(Snapshot { stream: stream.to_owned(), version: to_u64("version", version)?, payload });
            }
            events.extend(row.event.into_event(|| stream.to_owned())?);
        }
        Ok((snapshot, events))
    }
}

/// A row of PostgreSQL's `READ_ALL_AT_HEAD`: whether committed events wait for a position,
/// beside one event of the global log (NULL when there is none).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ReadAllRow {
    pub pending: bool,
    pub stream: Option<String>,
    #[sqlx(flatten)]
    pub event: OptionalEventColumns,
}

impl ReadAllRow {
    /// Whether events wait for a position, and the events read.
    pub(crate) fn decode(rows: Vec<Self>) -> Result<(bool, Vec<RecordedEvent>), SqlError> {
        let mut pending = false;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            pending |= row.pending;
            let stream = row.stream;
            events.extend(row.event.into_event(|| stream.unwrap_or_default())?);
        }
        Ok((pending, events))
    }
}

/// The message columns of `herald_outbox` and `herald_broker_messages`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MessageRow {
    pub id: String,
    pub name: String,
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub metadata: String,
}

impl MessageRow {
    pub(crate) fn into_message(self, table: &'static str) -> Result<Message, SqlError> {
        Ok(Message {
            id: parse_id(table, &self.id)?,
            metadata: parse_metadata(table, &self.metadata)?,
            name: self.name,
            topic: self.topic,
            key: self.key,
            payload: self.payload,
        })
    }
}

/// A row of `herald_outbox`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OutboxRow {
    pub sequence: i64,
    #[sqlx(flatten)]
    pub message: MessageRow,
}

impl OutboxRow {
    pub(crate) fn into_record(self) -> Result<herald::store::OutboxRecord, SqlError> {
        Ok(herald::store::OutboxRecord {
            sequence: to_u64("sequence", self.sequence)?,
            message: self.message.into_message("herald_outbox")?,
        })
    }
}

/// A row of `herald_snapshots`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    pub stream: String,
    pub version: i64,
    pub payload: Vec<u8>,
}

impl SnapshotRow {
    pub(crate) fn into_snapshot(self) -> Result<Snapshot, SqlError> {
        Ok(Snapshot { stream: self.stream, version: to_u64("version", self.version)?, payload: self.payload })
    }
}

/// A row of `herald_sagas`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SagaRow {
    pub name: String,
    pub id: String,
    pub version: i64,
    pub step: i64,
    pub compensating: bool,
    pub done: bool,
    pub data: Vec<u8>,
    pub deadline: Option<i64>,
}

impl SagaRow {
    pub(crate) fn into_record(self) -> Result<SagaRecord, SqlError> {
        Ok(SagaRecord {
            name: self.name,
            id: self.id,
            version: to_u64("version", self.version)?,
            step: self.step,
            compensating: self.compensating,
            done: self.done,
            data: self.data,
            deadline: self.deadline.map(|d| to_u64("deadline", d)).transpose()?,
        })
    }
}

/// A broker pending row joined with its message.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PendingRow {
    pub position: i64,
    pub attempts: i64,
    #[sqlx(flatten)]
    pub message: MessageRow,
}

impl PendingRow {
    /// The position, the delivery count and the message.
    pub(crate) fn into_parts(self) -> Result<(u64, u32, Message), SqlError> {
        let attempts = u32::try_from(self.attempts)
            .map_err(|_| SqlError::OutOfRange { what: "attempts", value: self.attempts.to_string() })?;
        Ok((to_u64("position", self.position)?, attempts, self.message.into_message("herald_broker_messages")?))
    }
}

/// Rows read by SQLite statements (rusqlite), by column name: the same structs as PostgreSQL's.
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite {
    use rusqlite::Row;

    use super::{EventRow, MessageRow, OutboxRow, PendingRow, SagaRow, SnapshotRow};

    pub(crate) fn event(r: &Row<'_>) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            position: r.get("position")?,
            stream: r.get("stream")?,
            version: r.get("version")?,
            id: r.get("id")?,
            name: r.get("name")?,
            payload: r.get("payload")?,
            metadata: r.get("metadata")?,
        })
    }

    pub(crate) fn message(r: &Row<'_>) -> rusqlite::Result<MessageRow> {
        Ok(MessageRow {
            id: r.get("id")?,
            name: r.get("name")?,
            topic: r.get("topic")?,
            key: r.get("key")?,
            payload: r.get("payload")?,
            metadata: r.get("metadata")?,
        })
    }

    pub(crate) fn outbox(r: &Row<'_>) -> rusqlite::Result<OutboxRow> {
        Ok(OutboxRow { sequence: r.get("sequence")?, message: message(r)? })
    }

    pub(crate) fn pending(r: &Row<'_>) -> rusqlite::Result<PendingRow> {
        Ok(PendingRow { position: r.get("position")?, attempts: r.get("attempts")?, message: message(r)? })
    }

    pub(crate) fn snapshot(r: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
        Ok(SnapshotRow { stream: r.get("stream")?, version: r.get("version")?, payload: r.get("payload")? })
    }

    pub(crate) fn saga(r: &Row<'_>) -> rusqlite::Result<SagaRow> {
        Ok(SagaRow {
            name: r.get("name")?,
            id: r.get("id")?,
            version: r.get("version")?,
            step: r.get("step")?,
            compensating: r.get("compensating")?,
            done: r.get("done")?,
            data: r.get("data")?,
            deadline: r.get("deadline")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_outside_the_column_range_are_refused_not_wrapped() {
        assert!(to_i64("position", u64::MAX).is_err());
        assert!(to_u64("position", -1).is_err());
        assert_eq!(bound(u64::MAX), i64::MAX);
        assert_eq!(limit(usize::MAX), i64::MAX);
    }

    #[test]
    fn a_message_row_decodes_back_to_the_message() -> Result<(), SqlError> {
        let m = Message::new("t", "N.v1", b"{}".to_vec()).with_key("k").with_header("h", "v");
        let c = MessageColumns::new(&m)?;
        let row = MessageRow {
            id: c.id,
            name: c.name.to_owned(),
            topic: c.topic.to_owned(),
            key: c.key.to_owned(),
            payload: c.payload.to_vec(),
            metadata: c.metadata,
        };
        assert_eq!(row.into_message("test")?, m);
        Ok(())
    }
}
