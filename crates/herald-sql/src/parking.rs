//! Rows of `herald_parked` ↔ [`ParkedKey`] and the statements on them, shared by both dialects
//! (`sqlite/parking.rs` and `postgres/parking.rs` run them). See [`herald::parking`].
//!
//! A key's sequence in a group is its rows in `seq` order; the first is its head. Every
//! statement runs in the caller's transaction except [`PARKED`] (a listing for operators).

use chrono::{DateTime, Utc};
use herald::MessageId;
use herald::parking::ParkedKey;

use crate::error::SqlError;
use crate::rows::{MessageColumns, to_u64};

pub(crate) const TABLE: &str = "herald_parked";

// --- the statements (both dialects; `$n` placeholders, see `crate::sql`) ---

/// The id of key `$2`'s head in group `$1`.
pub(crate) const HEAD: &str = "SELECT entry_id FROM herald_parked WHERE grp = $1 AND key = $2 ORDER BY seq LIMIT 1";

/// Appends entry `$3` (parked at `$10`, with the message `$4`…`$9`, all NULL for none) to key
/// `$2`'s sequence in group `$1`; inserts nothing if the entry is already in it.
pub(crate) const PARK: &str = "INSERT INTO herald_parked \
     (grp, key, entry_id, message_id, name, topic, message_key, payload, metadata, parked_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (grp, key, entry_id) DO NOTHING";

/// Removes key `$2`'s first entry in group `$1` if it is `$3`.
pub(crate) const ADVANCE: &str = "DELETE FROM herald_parked WHERE seq = \
     (SELECT seq FROM herald_parked WHERE grp = $1 AND key = $2 ORDER BY seq LIMIT 1) AND entry_id = $3";

/// The message of key `$2`'s first entry in group `$1`, under the names `MessageRow` reads; no
/// row when the key has no sequence or its first entry has no message.
pub(crate) const FIRST_MESSAGE: &str = "SELECT message_id AS id, name, topic, message_key AS key, payload, metadata \
     FROM herald_parked WHERE seq = \
     (SELECT seq FROM herald_parked WHERE grp = $1 AND key = $2 ORDER BY seq LIMIT 1) AND message_id IS NOT NULL";

/// Per key with a sequence, of group `$1` (NULL = every group), by group and key: its head's id
/// and parked time and the number of entries. (`CAST`, not `::`, so that SQLite reads it too;
/// PostgreSQL needs the type of a bare NULL.)
pub(crate) const PARKED: &str = "SELECT p.grp, p.key, p.entry_id, p.parked_at, s.entries FROM \
       (SELECT grp, key, MIN(seq) AS head, CAST(COUNT(*) AS BIGINT) AS entries FROM herald_parked \
        WHERE CAST($1 AS TEXT) IS NULL OR grp = $1 GROUP BY grp, key) AS s \
     JOIN herald_parked AS p ON p.seq = s.head \
     ORDER BY p.grp, p.key";

/// A row of [`PARKED`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ParkedRow {
    pub grp: String,
    pub key: String,
    pub entry_id: String,
    pub parked_at: i64,
    pub entries: i64,
}

fn corrupt(detail: String) -> SqlError {
    SqlError::Corrupt { table: TABLE, detail }
}

/// An `entry_id` as the id it is.
pub(crate) fn parse_id(text: &str) -> Result<MessageId, SqlError> {
    MessageId::parse(text).map_err(|e| corrupt(format!("bad entry id `{text}`: {e}")))
}

impl ParkedRow {
    pub(crate) fn into_parked(self) -> Result<ParkedKey, SqlError> {
        Ok(ParkedKey {
            head: parse_id(&self.entry_id)?,
            entries: to_u64("entries", self.entries)?,
            since: DateTime::<Utc>::from_timestamp_millis(self.parked_at)
                .ok_or_else(|| corrupt(format!("time {} out of range", self.parked_at)))?,
            group: self.grp,
            key: self.key,
        })
    }
}

/// The rows of [`PARKED`] as [`ParkedKey`]s.
pub(crate) fn parked_keys(rows: Vec<ParkedRow>) -> Result<Vec<ParkedKey>, SqlError> {
    rows.into_iter().map(ParkedRow::into_parked).collect()
}

/// An entry's columns for [`PARK`], encoded before any statement runs; the message's are
/// `None` (bound as NULLs) for an entry without one.
#[derive(Debug)]
pub(crate) struct EntryColumns<'a> {
    pub entry_id: String,
    pub message: Option<MessageColumns<'a>>,
}

impl<'a> EntryColumns<'a> {
    pub(crate) fn new(id: MessageId, message: Option<&'a herald::Message>) -> Result<Self, SqlError> {
        Ok(Self { entry_id: id.to_string(), message: message.map(MessageColumns::new).transpose()? })
    }

    pub(crate) fn message_id(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.id.as_str())
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.name)
    }

    pub(crate) fn topic(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.topic)
    }

    pub(crate) fn key(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.key)
    }

    pub(crate) fn payload(&self) -> Option<&[u8]> {
        self.message.as_ref().map(|m| m.payload)
    }

    pub(crate) fn metadata(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.metadata.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_row_decodes_to_its_key() -> Result<(), SqlError> {
        let head = MessageId::new();
        let row = ParkedRow {
            grp: "billing".into(),
            key: "o-1".into(),
            entry_id: head.to_string(),
            parked_at: 1_700_000_000_123,
            entries: 3,
        };
        let parked = row.into_parked()?;
        assert_eq!(
            (parked.group.as_str(), parked.key.as_str(), parked.head, parked.entries),
            ("billing", "o-1", head, 3)
        );
        assert_eq!(parked.since.timestamp_millis(), 1_700_000_000_123);
        Ok(())
    }

    #[test]
    fn a_corrupt_entry_id_is_an_error_not_a_panic() {
        let row = ParkedRow { grp: "g".into(), key: "k".into(), entry_id: "nope".into(), parked_at: 0, entries: 1 };
        assert!(matches!(row.into_parked(), Err(SqlError::Corrupt { table: TABLE, .. })));
    }
}
