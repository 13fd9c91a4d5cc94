//! [`SqliteQueue`]: the SQL broker's storage on SQLite, driven by herald's
//! [`QueueBroker`](herald::queue::QueueBroker).
//!
//! Topics live in `herald_broker_messages` (one log for all topics, global positions). Each
//! consumer group has a row in `herald_broker_groups` (how far it has taken messages in) and
//! its unsettled messages in `herald_broker_pending` (delivery count, when claimable again).
//! A claim is one `BEGIN IMMEDIATE` transaction, so consumers of a group in any number of
//! processes never lease the same message twice.

use std::time::Duration;

use async_trait::async_trait;
use herald::Message;
use herald::observability::EarlierMessages;
use herald::pubsub::{Capabilities, PubSubError, Settlement, StartFrom};
use herald::queue::{
    Ack, Claimed, EARLIER_COUNT_LIMIT, EnsuredGroup, GroupPolicy, QueueBackend, QueueBroker, dead_letter_for,
    expired_reason,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use super::{SqliteDatabase, sql};
use crate::error::SqlError;
use crate::rows::{self, MessageColumns, after, limit, now_millis, to_i64};

/// The SQL broker on SQLite: a [`QueueBroker`] over [`SqliteQueue`]. Get one from
/// [`SqliteDatabase::broker`].
pub type SqlBroker = QueueBroker<SqliteQueue>;

/// At most this many new messages are taken into a group's pending set per claim, so one claim
/// stays short however far behind the group is.
const TAKE_PER_CLAIM: i64 = 1000;

fn backend(e: impl Into<SqlError>) -> PubSubError {
    PubSubError::backend(e.into())
}

fn unknown_group(topic: &str, group: &str) -> PubSubError {
    PubSubError::InvalidOptions(format!("group `{group}` on topic `{topic}` does not exist"))
}

/// The storage of the SQL broker on SQLite. Durable: topics, groups and leases survive
/// restarts, and several processes can share one file.
#[derive(Clone, Debug)]
pub struct SqliteQueue {
    db: SqliteDatabase,
}

impl SqliteQueue {
    /// A queue on `db`.
    pub fn new(db: SqliteDatabase) -> Self {
        Self { db }
    }

    /// The database.
    pub fn database(&self) -> &SqliteDatabase {
        &self.db
    }
}

/// Appends one message to its topic (de-duplicated on `(topic, id)`). Also used by stores that
/// publish inside the unit of work (`SqliteConfig::publish_to_sql_broker`).
pub(super) fn publish_one(conn: &Connection, m: &Message, now: i64) -> Result<(), SqlError> {
    let c = MessageColumns::new(m)?;
    conn.prepare_cached(sql::PUBLISH)?.execute(params![c.topic, c.id, c.name, c.key, c.payload, c.metadata, now])?;
    Ok(())
}

fn group_next(conn: &Connection, topic: &str, group: &str) -> Result<Option<i64>, rusqlite::Error> {
    conn.prepare_cached(sql::GROUP_NEXT)?.query_row([topic, group], |r| r.get(0)).optional()
}

impl SqliteQueue {
    /// Whether a claim could find anything, without taking the write lock: idle subscriptions
    /// poll often, and most polls find nothing. `None` when the group does not exist.
    fn worth_claiming(&self, topic: &str, group: &str, now: i64) -> Result<Option<bool>, SqlError> {
        let found: Option<i64> = self.db.read(|c| {
            c.prepare_cached(sql::CLAIM_PROBE)?.query_row(params![topic, group, now], |r| r.get(0)).optional()
        })?;
        Ok(found.map(|f| f != 0))
    }

    /// The claim itself, in one write transaction. Returns the claims and whether any message
    /// was dead-lettered.
    async fn claim_in_tx(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        policy: &GroupPolicy,
    ) -> Result<Result<(Vec<Claimed>, bool), PubSubError>, SqlError> {
        let write = self.db.begin_write().await?;
        let now = now_millis();
        let conn = write.conn();

        // (a) Take new messages of the topic into the group's pending set.
        let Some(next) = group_next(conn, topic, group)? else {
            return Ok(Err(unknown_group(topic, group)));
        };
        let last: Option<i64> = conn
            .prepare_cached(sql::LAST_NEW_POSITION)?
            .query_row(params![topic, next, TAKE_PER_CLAIM], |r| r.get(0))?;
        if let Some(last) = last {
            conn.prepare_cached(sql::TAKE_NEW)?.execute(params![group, topic, next, last])?;
            conn.prepare_cached(sql::ADVANCE_GROUP)?.execute(params![last + 1, topic, group])?;
        }

        // (b) The keys' oldest visible messages: lease those with deliveries left, dead-letter
        // those whose last allowed delivery expired.
        let rows = conn
            .prepare_cached(sql::CLAIMABLE)?
            .query_map(params![topic, group, now, limit(max)], rows::sqlite::pending)?
            .collect::<Result<Vec<_>, _>>()?;
        let until = after(now, policy.ack_wait);
        let mut claimed = Vec::with_capacity(rows.len());
        let mut any_dead = false;
        for row in rows {
            let (position, attempts, message) = row.into_parts()?;
            let position_i = to_i64("position", position)?;
            if attempts >= policy.max_deliveries {
                let reason = expired_reason(attempts);
                let dead = dead_letter_for(&message, group, attempts, &reason, &policy.dead_letter_topic);
                conn.prepare_cached(sql::SETTLE_DELETE)?.execute(params![topic, group, position_i])?;
                publish_one(conn, &dead, now)?;
                any_dead = true;
                continue;
            }
            conn.prepare_cached(sql::LEASE)?.execute(params![topic, group, position_i, until])?;
            claimed.push(Claimed { message, position, attempt: attempts + 1 });
        }
        write.commit().await?;
        Ok(Ok((claimed, any_dead)))
    }

    /// Runs a settlement statement guarded by `attempts = ?4`; `?5` is `visible_at` if given.
    async fn settle_if_current(
        &self,
        statement: &'static str,
        (topic, group, position, attempt): (&str, &str, i64, i64),
        visible_at: Option<i64>,
    ) -> Result<Result<(), PubSubError>, SqlError> {
        let write = self.db.begin_write().await?;
        let done = {
            let mut stmt = write.conn().prepare_cached(statement)?;
            match visible_at {
                Some(at) => stmt.execute(params![topic, group, position, attempt, at])?,
                None => stmt.execute(params![topic, group, position, attempt])?,
            }
        };
        write.commit().await?;
        if done == 1 { Ok(Ok(())) } else { self.not_current(topic, group) }
    }

    /// Acks in one unit of work: one guarded statement each.
    async fn ack_many_in_tx(&self, acks: &[Ack<'_>]) -> Result<Vec<Result<(), PubSubError>>, SqlError> {
        let write = self.db.begin_write().await?;
        let conn = write.conn();
        let mut outcomes = Vec::with_capacity(acks.len());
        for a in acks {
            let position = to_i64("position", a.position)?;
            let done = conn.prepare_cached(sql::ACK_IF_CURRENT)?.execute(params![
                a.topic,
                a.group,
                position,
                i64::from(a.attempt)
            ])?;
            outcomes.push(if done == 1 {
                Ok(())
            } else if group_next(conn, a.topic, a.group)?.is_some() {
                Err(PubSubError::LeaseLost)
            } else {
                Err(unknown_group(a.topic, a.group))
            });
        }
        write.commit().await?;
        Ok(outcomes)
    }

    /// The error for a settlement of a delivery that is no longer current.
    fn not_current(&self, topic: &str, group: &str) -> Result<Result<(), PubSubError>, SqlError> {
        let exists = self.db.read(|c| group_next(c, topic, group))?.is_some();
        Ok(Err(if exists { PubSubError::LeaseLost } else { unknown_group(topic, group) }))
    }

    async fn settle_in_tx(
        &self,
        topic: &str,
        group: &str,
        position: u64,
        attempt: u32,
        settlement: Settlement,
        policy: &GroupPolicy,
    ) -> Result<Result<(), PubSubError>, SqlError> {
        let position_i = to_i64("position", position)?;
        let current = (topic, group, position_i, i64::from(attempt));
        let reason = match settlement {
            // The common settlements are one guarded statement each.
            Settlement::Ack => return self.settle_if_current(sql::ACK_IF_CURRENT, current, None).await,
            Settlement::Nack { delay, .. } if attempt < policy.max_deliveries => {
                let at = after(now_millis(), delay);
                return self.settle_if_current(sql::DELAY_IF_CURRENT, current, Some(at)).await;
            }
            Settlement::Nack { reason, .. } => herald::queue::last_nack_reason(reason, policy.max_deliveries),
            Settlement::DeadLetter { reason } => reason,
        };
        // To the dead-letter topic, atomically with leaving the group.
        let write = self.db.begin_write().await?;
        let conn = write.conn();
        let attempts: Option<i64> = conn
            .prepare_cached(sql::PENDING_ATTEMPTS)?
            .query_row(params![topic, group, position_i], |r| r.get(0))
            .optional()?;
        if attempts != Some(i64::from(attempt)) {
            drop(write);
            return self.not_current(topic, group);
        }
        let original = conn.prepare_cached(sql::MESSAGE_AT)?.query_row([position_i], rows::sqlite::message)?;
        let original = original.into_message("herald_broker_messages")?;
        let dead = dead_letter_for(&original, group, attempt, &reason, &policy.dead_letter_topic);
        conn.prepare_cached(sql::SETTLE_DELETE)?.execute(params![topic, group, position_i])?;
        publish_one(conn, &dead, now_millis())?;
        write.commit().await?;
        Ok(Ok(()))
    }
}

#[async_trait]
impl QueueBackend for SqliteQueue {
    fn capabilities(&self) -> Capabilities {
        Capabilities::FULL
    }

    async fn append(&self, messages: &[Message]) -> Result<(), PubSubError> {
        let write = self.db.begin_write().await.map_err(backend)?;
        let now = now_millis();
        for m in messages {
            publish_one(write.conn(), m, now).map_err(backend)?;
        }
        write.commit().await.map_err(backend)
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<Option<u64>, PubSubError> {
        let lag: Option<i64> = self
            .db
            .read(|c| c.prepare_cached(sql::GROUP_LAG)?.query_row([topic, group], |r| r.get(0)).optional())
            .map_err(backend)?;
        Ok(lag.map(|n| u64::try_from(n).unwrap_or(0)))
    }

    async fn ensure_group(&self, topic: &str, group: &str, start: StartFrom) -> Result<EnsuredGroup, PubSubError> {
        let write = self.db.begin_write().await.map_err(backend)?;
        let conn = write.conn();
        let next: i64 = match start {
            StartFrom::Beginning => 1,
            StartFrom::Latest => conn.query_row(sql::END_POSITION, [], |r| r.get(0)).map_err(backend)?,
            StartFrom::Position(p) => to_i64("position", p.max(1)).map_err(backend)?,
        };
        let created = conn
            .prepare_cached(sql::CREATE_GROUP)
            .and_then(|mut s| s.execute(params![topic, group, next, now_millis()]))
            .map_err(backend)?
            == 1;
        let ensured = if !created {
            EnsuredGroup::Existing
        } else if start == StartFrom::Latest {
            let limit = to_i64("limit", EARLIER_COUNT_LIMIT).map_err(backend)?;
            let n: i64 = conn
                .prepare_cached(sql::EARLIER_MESSAGES)
                .and_then(|mut s| s.query_row(params![topic, next, limit], |r| r.get(0)))
                .map_err(backend)?;
            EnsuredGroup::Created {
                skipped: EarlierMessages::counted(u64::try_from(n).unwrap_or(0), EARLIER_COUNT_LIMIT),
            }
        } else {
            EnsuredGroup::Created { skipped: EarlierMessages::Exactly(0) }
        };
        write.commit().await.map_err(backend)?;
        Ok(ensured)
    }

    async fn claim(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        policy: &GroupPolicy,
    ) -> Result<Vec<Claimed>, PubSubError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let probe = self.worth_claiming(topic, group, now_millis()).map_err(backend)?;
        match probe {
            None => return Err(unknown_group(topic, group)),
            Some(false) => return Ok(Vec::new()),
            Some(true) => {}
        }
        let (claimed, any_dead) = self.claim_in_tx(topic, group, max, policy).await.map_err(backend)??;
        if any_dead {
            self.db.queue_changed().notify_waiters();
        }
        Ok(claimed)
    }

    async fn settle(
        &self,
        topic: &str,
        group: &str,
        position: u64,
        attempt: u32,
        settlement: Settlement,
        policy: &GroupPolicy,
    ) -> Result<(), PubSubError> {
        self.settle_in_tx(topic, group, position, attempt, settlement, policy).await.map_err(backend)?
    }

    async fn ack_many(&self, acks: &[Ack<'_>]) -> Result<Vec<Result<(), PubSubError>>, PubSubError> {
        self.ack_many_in_tx(acks).await.map_err(backend)
    }

    async fn release(&self, topic: &str, group: &str, position: u64, attempt: u32) -> Result<(), PubSubError> {
        let position = to_i64("position", position).map_err(backend)?;
        let write = self.db.begin_write().await.map_err(backend)?;
        write
            .conn()
            .prepare_cached(sql::RELEASE_IF_CURRENT)
            .and_then(|mut s| s.execute(params![topic, group, position, i64::from(attempt)]))
            .map_err(backend)?;
        write.commit().await.map_err(backend)
    }

    fn changed(&self) -> &Notify {
        self.db.queue_changed()
    }

    fn doorbells(&self) -> &herald::queue::Doorbells {
        self.db.queue_doorbells()
    }

    fn poll_interval(&self) -> Duration {
        // This process's publishes and settlements notify, and the WAL watcher notices other
        // processes' writes (module docs of `sqlite`); the poll only backs both up.
        super::FALLBACK_POLL
    }

    fn claim_linger(&self) -> Duration {
        // A claim is a write transaction; under load, let a few settlements gather first.
        Duration::from_millis(2)
    }
}
