//! Rows of `herald_dead_letters` ↔ [`DeadLetter`], shared by both dialects (whose SQL lives in
//! `sqlite/dead_letters.rs` and `postgres/dead_letters.rs`). See ADR 0006.

use chrono::{DateTime, Utc};
use herald::MessageId;
use herald::dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterStatus};

use crate::error::SqlError;
use crate::rows::{MessageColumns, MessageRow};

const TABLE: &str = "herald_dead_letters";

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
