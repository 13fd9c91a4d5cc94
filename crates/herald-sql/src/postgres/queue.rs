//! [`PostgresQueue`]: the SQL broker's storage on PostgreSQL, driven by herald's
//! [`QueueBroker`](herald::queue::QueueBroker). Same tables and semantics as the SQLite queue.
//!
//! Topics live in `herald_broker_messages` (one log for all topics, global positions, assigned
//! under the broker's advisory lock so they commit in order). Each consumer group has a row in
//! `herald_broker_groups` (how far it has taken messages in) and its unsettled messages in
//! `herald_broker_pending`. A claim is one transaction that starts by locking its group's row
//! (`SELECT … FOR UPDATE`): claims of one group in any number of processes run one at a time
//! and never lease a message twice, while claims of other groups run in parallel.

use std::time::Duration;

use async_trait::async_trait;
use herald::Message;
use herald::observability::EarlierMessages;
use herald::pubsub::{Capabilities, PubSubError, Settlement, StartFrom};
use herald::queue::{
    Ack, Claimed, EARLIER_COUNT_LIMIT, EnsuredGroup, GroupPolicy, QueueBackend, QueueBroker, dead_letter_for,
    expired_reason,
};
use sqlx::PgConnection;
use tokio::sync::Notify;

use super::{BROKER_LOCK, PostgresDatabase, sql};
use crate::error::SqlError;
use crate::rows::{MessageColumns, MessageRow, PendingRow, after, limit, now_millis, to_i64};

/// The SQL broker on PostgreSQL: a [`QueueBroker`] over [`PostgresQueue`]. Get one from
/// [`PostgresDatabase::broker`].
pub type PgBroker = QueueBroker<PostgresQueue>;

/// At most this many new messages are taken into a group's pending set per claim, so one claim
/// stays short however far behind the group is.
const TAKE_PER_CLAIM: i64 = 1000;

fn backend(e: impl Into<SqlError>) -> PubSubError {
    PubSubError::backend(e.into())
}

fn unknown_group(topic: &str, group: &str) -> PubSubError {
    PubSubError::InvalidOptions(format!("group `{group}` on topic `{topic}` does not exist"))
}

/// The storage of the SQL broker on PostgreSQL. Durable: topics, groups and leases survive
/// restarts, and any number of processes can share one schema.
#[derive(Clone, Debug)]
pub struct PostgresQueue {
    db: PostgresDatabase,
}

impl PostgresQueue {
    /// A queue on `db`.
    pub fn new(db: PostgresDatabase) -> Self {
        Self { db }
    }

    /// The database.
    pub fn database(&self) -> &PostgresDatabase {
        &self.db
    }
}

/// Appends one message to its topic (de-duplicated on `(topic, id)`). The caller holds the
/// broker's advisory lock.
async fn publish_one(conn: &mut PgConnection, m: &Message, now: i64) -> Result<(), SqlError> {
    let c = MessageColumns::new(m)?;
    sqlx::query(sql::PUBLISH)
        .bind(c.topic)
        .bind(c.id)
        .bind(c.name)
        .bind(c.key)
        .bind(c.payload)
        .bind(c.metadata)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

impl PostgresQueue {
    async fn group_exists(&self, topic: &str, group: &str) -> Result<bool, SqlError> {
        let next: Option<i64> =
            sqlx::query_scalar(sql::GROUP_NEXT).bind(topic).bind(group).fetch_optional(self.db.pool()).await?;
        Ok(next.is_some())
    }

    /// Whether a claim could find anything, without locking: idle subscriptions poll often,
    /// and most polls find nothing. `None` when the group does not exist.
    async fn worth_claiming(&self, topic: &str, group: &str, now: i64) -> Result<Option<bool>, SqlError> {
        let found: Option<bool> = sqlx::query_scalar(sql::CLAIM_PROBE)
            .bind(topic)
            .bind(group)
            .bind(now)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(found)
    }

    /// The claim itself, in one transaction holding the group's row. Returns the claims and
    /// whether any message was dead-lettered.
    async fn claim_in_tx(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        policy: &GroupPolicy,
    ) -> Result<Result<(Vec<Claimed>, bool), PubSubError>, SqlError> {
        let mut tx = self.db.begin().await?;
        let now = now_millis();

        // (a) Take new messages of the topic into the group's pending set. Positions commit in
        // order (the broker lock), so nothing below `last` can still appear.
        let next: Option<i64> =
            sqlx::query_scalar(sql::LOCK_GROUP).bind(topic).bind(group).fetch_optional(&mut *tx).await?;
        let Some(next) = next else {
            return Ok(Err(unknown_group(topic, group)));
        };
        let last: Option<i64> = sqlx::query_scalar(sql::LAST_NEW_POSITION)
            .bind(topic)
            .bind(next)
            .bind(TAKE_PER_CLAIM)
            .fetch_one(&mut *tx)
            .await?;
        if let Some(last) = last {
            sqlx::query(sql::TAKE_NEW).bind(group).bind(topic).bind(next).bind(last).execute(&mut *tx).await?;
            sqlx::query(sql::ADVANCE_GROUP).bind(last + 1).bind(topic).bind(group).execute(&mut *tx).await?;
        }

        // (b) The keys' oldest visible messages: lease those with deliveries left, dead-letter
        // those whose last allowed delivery expired.
        let rows: Vec<PendingRow> = sqlx::query_as(sql::CLAIMABLE)
            .bind(topic)
            .bind(group)
            .bind(now)
            .bind(limit(max))
            .fetch_all(&mut *tx)
            .await?;
        let until = after(now, policy.ack_wait);
        let mut claimed = Vec::with_capacity(rows.len());
        let mut leased = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        for row in rows {
            let (position, attempts, message) = row.into_parts()?;
            let position_i = to_i64("position", position)?;
            if attempts >= policy.max_deliveries {
                let reason = expired_reason(attempts);
                dead.push((position_i, dead_letter_for(&message, group, attempts, &reason, &policy.dead_letter_topic)));
                continue;
            }
            leased.push(position_i);
            claimed.push(Claimed { message, position, attempt: attempts + 1 });
        }
        if !leased.is_empty() {
            sqlx::query(sql::LEASE).bind(topic).bind(group).bind(leased).bind(until).execute(&mut *tx).await?;
        }
        if !dead.is_empty() {
            for (position, _) in &dead {
                sqlx::query(sql::SETTLE_DELETE).bind(topic).bind(group).bind(position).execute(&mut *tx).await?;
            }
            // Last, so the broker lock is held as briefly as possible.
            self.db.lock_log(&mut tx, BROKER_LOCK).await?;
            for (_, letter) in &dead {
                publish_one(&mut tx, letter, now).await?;
            }
        }
        tx.commit().await?;
        Ok(Ok((claimed, !dead.is_empty())))
    }

    /// Runs a settlement statement guarded by `attempts = $4`; `$5` is `visible_at` if given.
    async fn settle_if_current(
        &self,
        statement: &'static str,
        (topic, group, position, attempt): (&str, &str, i64, i64),
        visible_at: Option<i64>,
    ) -> Result<Result<(), PubSubError>, SqlError> {
        let mut query = sqlx::query(statement).bind(topic).bind(group).bind(position).bind(attempt);
        if let Some(at) = visible_at {
            query = query.bind(at);
        }
        let done = query.execute(self.db.pool()).await?.rows_affected();
        if done == 1 { Ok(Ok(())) } else { self.not_current(topic, group).await }
    }

    /// Acks in one statement; an ack that was not current is told why like `settle` would.
    async fn ack_many_at_once(&self, acks: &[Ack<'_>]) -> Result<Vec<Result<(), PubSubError>>, SqlError> {
        let topics: Vec<&str> = acks.iter().map(|a| a.topic).collect();
        let groups: Vec<&str> = acks.iter().map(|a| a.group).collect();
        let positions: Vec<i64> = acks.iter().map(|a| to_i64("position", a.position)).collect::<Result<_, _>>()?;
        let attempts: Vec<i64> = acks.iter().map(|a| i64::from(a.attempt)).collect();
        let done: Vec<i64> = sqlx::query_scalar(sql::ACK_MANY_IF_CURRENT)
            .bind(&topics)
            .bind(&groups)
            .bind(&positions)
            .bind(&attempts)
            .fetch_all(self.db.pool())
            .await?;
        let mut acked = vec![false; acks.len()];
        for i in done {
            if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| acked.get_mut(i)) {
                *slot = true;
            }
        }
        let mut outcomes = Vec::with_capacity(acks.len());
        for (a, acked) in acks.iter().zip(acked) {
            outcomes.push(if acked { Ok(()) } else { self.not_current(a.topic, a.group).await? });
        }
        Ok(outcomes)
    }

    /// The error for a settlement of a delivery that is no longer current.
    async fn not_current(&self, topic: &str, group: &str) -> Result<Result<(), PubSubError>, SqlError> {
        Ok(Err(if self.group_exists(topic, group).await? {
            PubSubError::LeaseLost
        } else {
            unknown_group(topic, group)
        }))
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
            // The common settlements are one guarded statement each, no transaction needed.
            Settlement::Ack => return self.settle_if_current(sql::ACK_IF_CURRENT, current, None).await,
            Settlement::Nack { delay, .. } if attempt < policy.max_deliveries => {
                let at = after(now_millis(), delay);
                let settled = self.settle_if_current(sql::DELAY_IF_CURRENT, current, Some(at)).await?;
                if settled.is_ok() && delay.is_zero() {
                    // Redeliverable now: wake the group's consumers in other processes too.
                    self.wake_consumers().await?;
                }
                return Ok(settled);
            }
            Settlement::Nack { reason, .. } => herald::queue::last_nack_reason(reason, policy.max_deliveries),
            Settlement::DeadLetter { reason } => reason,
        };
        // To the dead-letter topic, atomically with leaving the group. The pending row is
        // locked first, so a concurrent claim cannot lease it in between.
        let mut tx = self.db.begin().await?;
        let attempts: Option<i64> = sqlx::query_scalar(sql::PENDING_ATTEMPTS)
            .bind(topic)
            .bind(group)
            .bind(position_i)
            .fetch_optional(&mut *tx)
            .await?;
        if attempts != Some(i64::from(attempt)) {
            drop(tx);
            return self.not_current(topic, group).await;
        }
        let original: MessageRow = sqlx::query_as(sql::MESSAGE_AT).bind(position_i).fetch_one(&mut *tx).await?;
        let original = original.into_message("herald_broker_messages")?;
        let dead = dead_letter_for(&original, group, attempt, &reason, &policy.dead_letter_topic);
        sqlx::query(sql::SETTLE_DELETE).bind(topic).bind(group).bind(position_i).execute(&mut *tx).await?;
        self.db.lock_log(&mut tx, BROKER_LOCK).await?;
        publish_one(&mut tx, &dead, now_millis()).await?;
        self.db.announce_queue(&mut tx).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Tells this process's and other processes' subscriptions that something became claimable.
    async fn wake_consumers(&self) -> Result<(), SqlError> {
        self.db.queue_changed().notify_waiters();
        let mut conn = self.db.pool().acquire().await?;
        self.db.announce_queue(&mut conn).await?;
        Ok(())
    }

    async fn append_in_tx(&self, messages: &[Message]) -> Result<(), SqlError> {
        // Encoded before the lock is taken, so the lock is held only for the inserts.
        let columns: Vec<MessageColumns<'_>> = messages.iter().map(MessageColumns::new).collect::<Result<_, _>>()?;
        let mut tx = self.db.begin().await?;
        self.db.lock_log(&mut tx, BROKER_LOCK).await?;
        let now = now_millis();
        for c in columns {
            sqlx::query(sql::PUBLISH)
                .bind(c.topic)
                .bind(c.id)
                .bind(c.name)
                .bind(c.key)
                .bind(c.payload)
                .bind(c.metadata)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        self.db.announce_queue(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl QueueBackend for PostgresQueue {
    fn capabilities(&self) -> Capabilities {
        Capabilities::FULL
    }

    async fn append(&self, messages: &[Message]) -> Result<(), PubSubError> {
        self.append_in_tx(messages).await.map_err(backend)
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<Option<u64>, PubSubError> {
        let lag: Option<i64> = sqlx::query_scalar(sql::GROUP_LAG)
            .bind(topic)
            .bind(group)
            .fetch_optional(self.db.pool())
            .await
            .map_err(backend)?;
        Ok(lag.map(|n| u64::try_from(n).unwrap_or(0)))
    }

    async fn ensure_group(&self, topic: &str, group: &str, start: StartFrom) -> Result<EnsuredGroup, PubSubError> {
        let pool = self.db.pool();
        let next: i64 = match start {
            StartFrom::Beginning => 1,
            StartFrom::Latest => sqlx::query_scalar(sql::END_POSITION).fetch_one(pool).await.map_err(backend)?,
            StartFrom::Position(p) => to_i64("position", p.max(1)).map_err(backend)?,
        };
        let created = sqlx::query(sql::CREATE_GROUP)
            .bind(topic)
            .bind(group)
            .bind(next)
            .bind(now_millis())
            .execute(pool)
            .await
            .map_err(backend)?
            .rows_affected()
            == 1;
        if !created {
            return Ok(EnsuredGroup::Existing);
        }
        if start != StartFrom::Latest {
            return Ok(EnsuredGroup::Created { skipped: EarlierMessages::Exactly(0) });
        }
        let limit = to_i64("limit", EARLIER_COUNT_LIMIT).map_err(backend)?;
        let n: i64 = sqlx::query_scalar(sql::EARLIER_MESSAGES)
            .bind(topic)
            .bind(next)
            .bind(limit)
            .fetch_one(pool)
            .await
            .map_err(backend)?;
        Ok(EnsuredGroup::Created {
            skipped: EarlierMessages::counted(u64::try_from(n).unwrap_or(0), EARLIER_COUNT_LIMIT),
        })
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
        let probe = self.worth_claiming(topic, group, now_millis()).await.map_err(backend)?;
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
        self.ack_many_at_once(acks).await.map_err(backend)
    }

    async fn release(&self, topic: &str, group: &str, position: u64, attempt: u32) -> Result<(), PubSubError> {
        let position = to_i64("position", position).map_err(backend)?;
        sqlx::query(sql::RELEASE_IF_CURRENT)
            .bind(topic)
            .bind(group)
            .bind(position)
            .bind(i64::from(attempt))
            .execute(self.db.pool())
            .await
            .map_err(backend)?;
        // Handed back for immediate redelivery, possibly to another process.
        self.wake_consumers().await.map_err(backend)
    }

    fn changed(&self) -> &Notify {
        self.db.queue_changed()
    }

    fn doorbells(&self) -> &herald::queue::Doorbells {
        self.db.queue_doorbells()
    }

    fn poll_interval(&self) -> Duration {
        // Publishes in any process are announced by LISTEN/NOTIFY; the poll backs that up.
        Duration::from_secs(1)
    }

    fn claim_linger(&self) -> Duration {
        // A claim is a transaction; under load, let a few settlements gather first.
        Duration::from_millis(2)
    }
}
