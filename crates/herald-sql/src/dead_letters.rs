//! Rows of `herald_dead_letters` ↔ [`DeadLetter`] and the statements on them, shared by both
//! dialects (`sqlite/dead_letters.rs` and `postgres/dead_letters.rs` run them). See ADR 0006.

use chrono::{DateTime, Utc};
use herald::MessageId;
use herald::dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterStatus, PendingCount};

use crate::error::SqlError;
use crate::rows::{MessageColumns, MessageRow};

const TABLE: &str = "herald_dead_letters";

// --- the statements (both dialects; `$n` placeholders, see `crate::sql`) ---

/// Every query returns these columns, the original message's under the names `MessageRow` reads.
macro_rules! select {
    ($($rest:literal)*) => {
        concat!(
            "SELECT id AS letter_id, dead_letter_topic, grp, reason, attempts, dead_lettered_at, status, resolved_at, \
             replay_id, message_id AS id, name, topic, key, payload, metadata FROM herald_dead_letters ",
            $($rest),*
        )
    };
}

pub(crate) const INSERT: &str = "INSERT INTO herald_dead_letters (id, dead_letter_topic, grp, reason, attempts, dead_lettered_at, \
     message_id, name, topic, key, payload, metadata, status, archived_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', $13) ON CONFLICT (id) DO NOTHING";

pub(crate) const GET: &str = select!("WHERE id = $1");

/// Filters `$1` topic, `$2` group, `$3` status (each NULL = any), after id `$4`, at most `$5`.
/// (`CAST`, not `::`, so that SQLite reads it too; PostgreSQL needs the type of a bare NULL.)
pub(crate) const LIST: &str = select!(
    "WHERE (CAST($1 AS TEXT) IS NULL OR topic = $1) AND (CAST($2 AS TEXT) IS NULL OR grp = $2) "
    "AND (CAST($3 AS TEXT) IS NULL OR status = $3) AND (CAST($4 AS TEXT) IS NULL OR id > $4) ORDER BY id LIMIT $5"
);

pub(crate) const COUNT: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM herald_dead_letters \
     WHERE (CAST($1 AS TEXT) IS NULL OR topic = $1) AND (CAST($2 AS TEXT) IS NULL OR grp = $2) \
     AND (CAST($3 AS TEXT) IS NULL OR status = $3)";

/// Sets status `$1`, resolved at `$2`, replay id `$3` on letter `$4` if it is still pending.
pub(crate) const RESOLVE: &str = "UPDATE herald_dead_letters SET status = $1, resolved_at = $2, replay_id = $3 \
     WHERE id = $4 AND status = 'pending' \
     RETURNING id AS letter_id, dead_letter_topic, grp, reason, attempts, dead_lettered_at, status, resolved_at, \
     replay_id, message_id AS id, name, topic, key, payload, metadata";

pub(crate) const STATUS: &str = "SELECT status FROM herald_dead_letters WHERE id = $1";

/// The pending dead letters per original topic and group (`topic`, `grp`, count), for the
/// `herald_dead_letters_pending` gauge: one pass over the `(status, id)` index.
pub(crate) const PENDING_COUNTS: &str = "SELECT topic, grp, CAST(COUNT(*) AS BIGINT) FROM herald_dead_letters \
     WHERE status = 'pending' GROUP BY topic, grp";

/// [`PendingCount`]s from `(topic, grp, count)` rows.
pub(crate) fn pending_counts(rows: Vec<(String, String, i64)>) -> Vec<PendingCount> {
    rows.into_iter()
        .map(|(topic, group, n)| PendingCount { topic, group, pending: u64::try_from(n).unwrap_or(0) })
        .collect()
}

/// A row of `herald_dead_letters`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeadLetterRow {
    pub letter_id: String,
    pub dead_letter_topic: String,
    pub grp: String,
    pub reason: String,
    pub attempts: i64,
    pub dead_lettered_at: i64,
    pub status: String,
    pub resolved_at: Option<i64>,
    pub replay_id: Option<String>,
    #[sqlx(flatten)]
    pub message: MessageRow,
}

fn corrupt(detail: String) -> SqlError {
    SqlError::Corrupt { table: TABLE, detail }
}

fn parse_id(text: &str) -> Result<MessageId, SqlError> {
    MessageId::parse(text).map_err(|e| corrupt(format!("bad id `{text}`: {e}")))
}

fn time(ms: i64) -> Result<DateTime<Utc>, SqlError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("time {ms} out of range")))
}

impl DeadLetterRow {
    pub(crate) fn into_letter(self) -> Result<DeadLetter, SqlError> {
        Ok(DeadLetter {
            id: parse_id(&self.letter_id)?,
            dead_letter_topic: self.dead_letter_topic,
            group: self.grp,
            reason: self.reason,
            attempts: u32::try_from(self.attempts)
                .map_err(|_| SqlError::OutOfRange { what: "attempts", value: self.attempts.to_string() })?,
            dead_lettered_at: time(self.dead_lettered_at)?,
            status: self.status.parse().map_err(corrupt)?,
            resolved_at: self.resolved_at.map(time).transpose()?,
            replay_id: self.replay_id.as_deref().map(parse_id).transpose()?,
            message: self.message.into_message(TABLE)?,
        })
    }
}

/// A dead letter's columns for an insert, encoded before any statement runs.
#[derive(Debug)]
pub(crate) struct LetterColumns<'a> {
    pub id: String,
    pub dead_lettered_at: i64,
    pub message: MessageColumns<'a>,
}

impl<'a> LetterColumns<'a> {
    pub(crate) fn new(letter: &'a DeadLetter) -> Result<Self, SqlError> {
        Ok(Self {
            id: letter.id.to_string(),
            dead_lettered_at: letter.dead_lettered_at.timestamp_millis(),
            message: MessageColumns::new(&letter.message)?,
        })
    }
}

/// A filter's values, bound as nullable parameters (`NULL` = no condition).
#[derive(Debug)]
pub(crate) struct FilterValues {
    pub topic: Option<String>,
    pub group: Option<String>,
    pub status: Option<&'static str>,
}

impl FilterValues {
    pub(crate) fn new(filter: &DeadLetterFilter) -> Self {
        Self {
            topic: filter.topic.clone(),
            group: filter.group.clone(),
            status: filter.status.map(DeadLetterStatus::as_str),
        }
    }
}
