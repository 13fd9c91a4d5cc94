//! Storage ports: the event store, snapshots, outbox, inbox, checkpoints and saga state, all
//! written through one [`Transaction`] — the unit of work.
//!
//! A command or an incoming message runs in one transaction: load the aggregate, decide events,
//! append them with the expected version, change the handler's own state, enqueue outgoing
//! messages in the outbox, record the inbox entry, commit. Nothing is visible to anyone else
//! before [`Transaction::commit`]; dropping a transaction rolls it back.
//!
//! # Contracts (checked by `herald-conformance`)
//!
//! * **Streams.** Versions start at 1 and have no gaps. An append whose [`ExpectedVersion`] does
//!   not hold fails with [`StoreError::Conflict`] and writes nothing; of two concurrent appends
//!   expecting the same version exactly one commits.
//! * **The global log.** Every committed event has a position; positions increase in commit
//!   order, so a reader that has seen position `p` will never later find a committed event
//!   below `p`. [`LogReader`] follows the log: catch up, then live. A store may assign positions
//!   just after commit (PostgreSQL: a sequencer numbers committed events in batches, in
//!   insertion order within a batch, so "commit order" holds between batches): its `read_all`
//!   and `read_stream` still return every event committed before the call, with its position;
//!   inside a transaction, an event without one yet reads as position 0.
//! * **Atomicity.** Everything in one transaction, across streams and ports, commits or
//!   nothing does.
//! * **Outbox.** Enqueued messages become visible to the relay at commit, oldest first, and stay
//!   until [`Store::outbox_remove`] is called after the broker accepted them.
//! * **Scheduled messages.** [`Transaction::schedule`] puts messages in the outbox with a due
//!   time: they commit (or not) with the rest of the unit, and [`Store::outbox_pending`] lists
//!   them only from their due time on, by the store's clock (so processes with skewed clocks
//!   agree); a due time in the past means now. Among due messages the outbox order applies (a
//!   scheduled message keeps the place it took when it was scheduled), and a scheduled message
//!   never holds back messages enqueued after it. [`Store::next_scheduled`] says how long until
//!   the next one falls due, so the relay sleeps until then. ADR 0021.
//! * **Leases.** [`Store::acquire_lease`] grants a named lease to one holder at a time, across
//!   every process sharing the store, until its time to live runs out; the holder renews it by
//!   acquiring again, and [`Store::release_lease`] hands it over at once. Every grant carries a
//!   [fencing token](LeaseGrant::token) that is larger each time the lease changes hands (and
//!   the same while its holder renews it in time), so writes made under a lease can be refused
//!   once a newer holder exists. Times are the store's own clock (the database server's), so
//!   holders on machines with skewed clocks still agree. The outbox relay, projections and the
//!   saga timeout scan run under leases ([`crate::lease`]); ADR 0015.
//! * **Fenced checkpoints.** [`Transaction::save_checkpoint_if`] saves a checkpoint only if it
//!   is still where the caller left it and no newer lease holder (larger fencing token) has
//!   saved it; otherwise it fails with [`StoreError::Fenced`] and the transaction — with the
//!   read-model writes of the batch — must be rolled back. Of two concurrent saves expecting the
//!   same position, at most one commits.
//! * **Inbox.** [`Transaction::record_handled`] returns `true` the first time a
//!   `(handler, message id)` pair is recorded and `false` after that pair has committed; of two
//!   concurrent transactions recording the same pair, at most one commits.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::codec::{CodecError, EventSet};
use crate::message::{Message, MessageId, Metadata};

/// What an append expects of the stream's current version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist (version 0).
    NoStream,
    /// The stream's last event must have exactly this version (0 = no stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` version satisfies this expectation.
    pub fn matches(self, current: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current == 0,
            Self::Exact(v) => current == v,
        }
    }
}

/// Errors from the stores.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An optimistic-concurrency check failed: someone else wrote first. Reload and retry.
    #[error("conflict on `{subject}`: {detail}")]
    Conflict {
        /// The stream, saga or inbox entry that was contended.
        subject: String,
        /// What was expected and what was found.
        detail: String,
    },
    /// An event could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The argument is invalid (empty stream name, empty event list…).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database failed; usually worth retrying.
    #[error("storage error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A conditional checkpoint save ([`Transaction::save_checkpoint_if`]) was refused: the
    /// checkpoint moved since the caller read it (another runner or a rebuild), or a newer
    /// lease holder saved it (this writer's fencing token is stale: it lost the lease). Not
    /// worth retrying as is: roll back, and stop (or reload the checkpoint and start over).
    #[error("checkpoint `{name}` not saved: {}", fence_reason(*.expected, *.found, *.token, *.found_token))]
    Fenced {
        /// The checkpoint.
        name: String,
        /// The position the writer expected to find.
        expected: u64,
        /// The position found (`None`: no checkpoint).
        found: Option<u64>,
        /// The writer's fencing token, if it wrote under a lease.
        token: Option<u64>,
        /// The fencing token stored with the checkpoint (0: never saved under a lease).
        found_token: u64,
    },
}

fn fence_reason(expected: u64, found: Option<u64>, token: Option<u64>, found_token: u64) -> String {
    match token {
        Some(mine) if found_token > mine => format!(
            "a newer lease holder saved it (fencing token {found_token} > this writer's {mine}): \
             this writer lost its lease and must stop"
        ),
        _ => format!(
            "it moved from {expected} to {} since this writer read it (another runner, or a rebuild)",
            found.map_or_else(|| "nothing".to_owned(), |p| p.to_string())
        ),
    }
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }

    /// A version conflict on `stream`.
    pub fn version_conflict(stream: &str, expected: ExpectedVersion, actual: u64) -> Self {
        Self::Conflict {
            subject: stream.to_owned(),
            detail: format!("expected {expected:?}, stream is at version {actual}"),
        }
    }

    /// Whether this is a [`StoreError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// Whether this is a [`StoreError::Fenced`].
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }

    /// Whether this is a [`StoreError::Fenced`] because a newer lease holder saved the
    /// checkpoint (rather than because it moved under a writer without a lease, or with the
    /// current one).
    pub fn is_stale_lease(&self) -> bool {
        matches!(self, Self::Fenced { token: Some(mine), found_token, .. } if found_token > mine)
    }

    /// The [`StoreError::Fenced`] for a conditional save of checkpoint `name` that found
    /// `found` (with `found_token`) instead of `expected`, or a newer token than `token`.
    pub fn fenced(name: &str, expected: u64, found: Option<u64>, token: Option<u64>, found_token: u64) -> Self {
        Self::Fenced { name: name.to_owned(), expected, found, token, found_token }
    }
}

/// A lease held: what [`Store::acquire_lease`] returns to its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease's name.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token: larger every time the lease changes hands (another holder, or the
    /// same holder again after the lease was released or ran out), the same while its holder
    /// renews it in time. Starts at 1. Pass it to
    /// [`Transaction::save_checkpoint_if`] so a stale holder's writes are refused.
    pub token: u64,
}

/// An event about to be appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id (also the id of any message made from it).
    pub id: MessageId,
    /// Event name, e.g. `stores.StoreCreated.v1`.
    pub name: String,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// Correlation, causation, trace context, time.
    pub metadata: Metadata,
}

impl NewEvent {
    /// Encodes a typed event with fresh metadata.
    pub fn encode<E: EventSet>(event: &E) -> Result<Self, CodecError> {
        Ok(Self {
            id: MessageId::new(),
            name: event.event_name().to_owned(),
            payload: event.encode()?,
            metadata: Metadata::default(),
        })
    }

    /// An event with this name and payload.
    pub fn new(name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self { id: MessageId::new(), name: name.into(), payload: payload.into(), metadata: Metadata::default() }
    }

    /// Marks the event as caused by `cause` (see [`Message::caused_by`]).
    #[must_use]
    pub fn caused_by(mut self, cause: &Message) -> Self {
        self.metadata.continue_from(cause);
        self
    }
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Its stream.
    pub stream: String,
    /// Its version in the stream (1-based).
    pub version: u64,
    /// Its position in the global log (1-based; 0 = not assigned yet, only ever read inside a
    /// transaction: see the global log's contract above).
    pub position: u64,
    /// Event id.
    pub id: MessageId,
    /// Event name.
    pub name: String,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// Metadata as appended.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// Decodes the payload as `E` (as written: no upcasting; see [`decode_with`](Self::decode_with)).
    pub fn decode<E: EventSet>(&self) -> Result<E, CodecError> {
        E::decode(&self.name, &self.payload)
    }

    /// Decodes the payload as `E`, upcasting old shapes with `registry` first.
    pub fn decode_with<E: EventSet>(&self, registry: &crate::codec::Registry) -> Result<E, CodecError> {
        registry.decode(&self.name, &self.payload)
    }

    /// The id of aggregate `A` whose stream holds this event; `None` if it is another's (see
    /// [`aggregate_id`](crate::aggregate::aggregate_id)).
    pub fn aggregate_id<A: crate::aggregate::Aggregate>(&self) -> Option<&str> {
        crate::aggregate::aggregate_id::<A>(&self.stream)
    }

    /// This event as a message on `topic`, keyed by its stream.
    pub fn to_message(&self, topic: impl Into<String>) -> Message {
        Message {
            id: self.id,
            name: self.name.clone(),
            topic: topic.into(),
            key: self.stream.clone(),
            payload: self.payload.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// The result of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append (pass as `Exact` to the next append).
    pub next_expected_version: u64,
}

/// A snapshot of a stream's state at a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream.
    pub stream: String,
    /// The version of the last event folded into it.
    pub version: u64,
    /// Encoded state.
    pub payload: Vec<u8>,
}

/// A message waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Its place in the outbox; the relay publishes in this order.
    pub sequence: u64,
    /// The message.
    pub message: Message,
}

/// How far behind the outbox relay is: what [`Store::outbox_stats`] reports. Scheduled messages
/// count only once they are due: one waiting for its time is not a backlog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Messages waiting in the outbox (immediate ones and scheduled ones that are due).
    pub backlog: u64,
    /// When the oldest of them was enqueued, or for a scheduled one when it fell due (or, where
    /// the store does not record that, when it occurred); `None` when nothing is waiting.
    pub oldest: Option<DateTime<Utc>>,
}

/// How many outbox records the default [`Store::outbox_stats`] reads at most: a backlog larger
/// than this is reported as this.
pub const OUTBOX_STATS_SCAN: usize = 10_000;

/// Persisted state of one saga instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaRecord {
    /// The saga definition's name.
    pub name: String,
    /// The instance id (often the id of what it is about, e.g. the order id).
    pub id: String,
    /// Incremented by every save; a save expecting a stale version is a conflict.
    pub version: u64,
    /// Current step index.
    pub step: i64,
    /// Whether the saga is compensating.
    pub compensating: bool,
    /// Whether the saga has ended.
    pub done: bool,
    /// Encoded saga data.
    pub data: Vec<u8>,
    /// When the current step times out (milliseconds since the Unix epoch), if it can.
    pub deadline: Option<u64>,
}

/// One step of a [`Store::append_many`].
#[derive(Clone, Debug)]
pub struct StreamAppend {
    /// The stream.
    pub stream: String,
    /// Its expected version.
    pub expected: ExpectedVersion,
    /// Events to append.
    pub events: Vec<NewEvent>,
}

/// A unit of work. Dropping it without [`commit`](Self::commit) rolls everything back.
#[async_trait]
pub trait Transaction: Send {
    // --- event store ---

    /// Appends events to a stream if `expected` holds.
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Reads up to `limit` events of a stream with version ≥ `from_version`, including this
    /// transaction's own appends.
    async fn read_stream(
        &mut self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Stores a snapshot (replacing an older one of the stream).
    async fn save_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError>;

    /// The stream's latest snapshot.
    async fn load_snapshot(&mut self, stream: &str) -> Result<Option<Snapshot>, StoreError>;

    /// What loading an aggregate reads: the stream's latest snapshot and up to `limit` events
    /// after it (from version 1 without a snapshot), including this transaction's own appends.
    /// The default makes the two calls; a backend may read both at once (PostgreSQL: one round
    /// trip instead of two).
    async fn load_stream(
        &mut self,
        stream: &str,
        limit: usize,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), StoreError> {
        let snapshot = self.load_snapshot(stream).await?;
        let from = snapshot.as_ref().map_or(0, |s| s.version) + 1;
        let events = self.read_stream(stream, from, limit).await?;
        Ok((snapshot, events))
    }

    // --- outbox ---

    /// Queues messages for publication after commit.
    async fn enqueue(&mut self, messages: Vec<Message>) -> Result<(), StoreError>;

    /// Queues messages for publication at `at`: they commit atomically with the rest of the
    /// unit of work (and vanish with it on rollback), and the relay publishes them once at or
    /// after `at` by the store's clock, never before — at least once, like every outbox
    /// message, so a consumer's inbox makes it once. A time in the past means now. They take
    /// their place in the outbox order now, so once due they go out before messages enqueued
    /// after them that are still waiting; until then they hold nothing back. They are durable:
    /// a restarted process (or another relay on the same store) publishes them on time.
    ///
    /// Publication is the [`OutboxRelay`](crate::outbox::OutboxRelay)'s, as for
    /// [`enqueue`](Self::enqueue): a store that skips the relay for immediate messages (SQLite's
    /// `publish_to_sql_broker`) still needs one running for scheduled ones.
    async fn schedule(&mut self, messages: Vec<Message>, at: DateTime<Utc>) -> Result<(), StoreError>;

    // --- inbox ---

    /// Records that `handler` handled `message_id`; `false` if it already had.
    async fn record_handled(&mut self, handler: &str, message_id: MessageId) -> Result<bool, StoreError>;

    // --- checkpoints ---

    /// Saves a projection's or reader's position, unconditionally (a rebuild's reset; it keeps
    /// the stored fencing token).
    async fn save_checkpoint(&mut self, name: &str, position: u64) -> Result<(), StoreError>;

    /// Saves `position` as checkpoint `name` only if the checkpoint is at `expected` (no
    /// checkpoint counts as 0) and, with a fencing `token`, none larger than `token` is stored
    /// with it; stores `token` with it (without one, the stored token stays). Otherwise fails
    /// with [`StoreError::Fenced`]: roll the transaction back.
    ///
    /// The condition holds at commit: of two transactions saving the same checkpoint from the
    /// same `expected` position, at most one commits (the other fails here, or at commit with a
    /// [`StoreError::Conflict`]). A projection batch saving its checkpoint this way is applied
    /// at most once, whatever other runners do; with the token of its
    /// [lease](Store::acquire_lease), a runner that lost the lease cannot commit once the new
    /// holder has saved the checkpoint.
    async fn save_checkpoint_if(
        &mut self,
        name: &str,
        expected: u64,
        position: u64,
        token: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Loads a position saved with [`save_checkpoint`](Self::save_checkpoint).
    async fn load_checkpoint(&mut self, name: &str) -> Result<Option<u64>, StoreError>;

    // --- sagas ---

    /// Saves a saga instance; `record.version` must be one more than the stored version (1 for
    /// a new instance), otherwise [`StoreError::Conflict`].
    async fn save_saga(&mut self, record: &SagaRecord) -> Result<(), StoreError>;

    /// Loads a saga instance.
    async fn load_saga(&mut self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError>;

    // --- the transaction itself ---

    /// Runs `f` after a successful commit (to update in-memory state that must not change
    /// before the data is durable).
    fn on_commit(&mut self, f: Box<dyn FnOnce() + Send>);

    /// The backend's own transaction, for the handler's own tables (e.g. downcast to
    /// `herald_sql::SqliteTransaction`).
    fn as_any_mut(&mut self) -> &mut (dyn Any + Send);

    /// Commits everything, atomically.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A database holding Herald's ports. Cheap to share behind an `Arc`.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Starts a unit of work.
    async fn begin(&self) -> Result<Box<dyn Transaction>, StoreError>;

    /// Up to `limit` events of a stream with version ≥ `from_version`.
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of the global log with position > `after`, in position order.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The latest snapshot of a stream.
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError>;

    /// The stream's latest snapshot and up to `limit` committed events after it (from version
    /// 1 without a snapshot), as [`Transaction::load_stream`] outside a unit of work. Loading
    /// an aggregate needs versions, not positions, so this read never waits for positions: a
    /// backend that assigns them after commit (PostgreSQL) may report 0 for events it has not
    /// numbered yet.
    async fn load_stream(
        &self,
        stream: &str,
        limit: usize,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), StoreError> {
        let snapshot = self.load_snapshot(stream).await?;
        let from = snapshot.as_ref().map_or(0, |s| s.version) + 1;
        let events = self.read_stream(stream, from, limit).await?;
        Ok((snapshot, events))
    }

    /// A saved checkpoint.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError>;

    /// A saga instance.
    async fn load_saga(&self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError>;

    /// Up to `limit` instances of saga `name` that are not done and whose deadline is at or
    /// before `now_millis` (milliseconds since the Unix epoch), earliest deadline first.
    async fn due_sagas(&self, name: &str, now_millis: u64, limit: usize) -> Result<Vec<SagaRecord>, StoreError>;

    /// Up to `limit` outbox messages that are due, oldest first (in outbox order): every
    /// [enqueued](Transaction::enqueue) one and the [scheduled](Transaction::schedule) ones
    /// whose time has come by the store's clock.
    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError>;

    /// Removes published messages from the outbox (immediate or scheduled).
    async fn outbox_remove(&self, sequences: &[u64]) -> Result<(), StoreError>;

    /// How long until the earliest scheduled outbox message falls due, by the store's clock
    /// (zero if one is due already); `None` when none is scheduled. The relay sleeps this long
    /// (or until woken), so it neither polls for scheduled messages nor needs a clock in step
    /// with the database's. Cheap: one look at the due-time index. A store may keep due times
    /// in whole milliseconds (rounded up: never early), so this may exceed the exact wait by
    /// up to two milliseconds.
    async fn next_scheduled(&self) -> Result<Option<Duration>, StoreError>;

    /// Queues messages for publication at `at` in a unit of work of their own (see
    /// [`Transaction::schedule`]).
    async fn schedule(&self, messages: Vec<Message>, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.schedule(messages, at).await?;
        tx.commit().await
    }

    /// The outbox's backlog and the age of its oldest message, for the relay's gauges (due
    /// messages only: see [`OutboxStats`]). The default reads up to [`OUTBOX_STATS_SCAN`]
    /// pending messages and dates them by their `occurred_at`; stores override it with a cheap
    /// count.
    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let pending = self.outbox_pending(OUTBOX_STATS_SCAN).await?;
        Ok(OutboxStats {
            backlog: pending.len() as u64,
            oldest: pending.iter().map(|r| r.message.metadata.occurred_at).min(),
        })
    }

    /// Takes or renews lease `name` for `holder`, valid for `ttl` from now by the store's clock
    /// (the database server's where there is one, so holders on machines with skewed clocks
    /// still agree). Returns the grant if `holder` holds the lease afterwards, `None` if another
    /// holder does.
    ///
    /// * At most one holder at a time: another holder is refused until the current one
    ///   [releases](Self::release_lease) the lease or stops renewing for `ttl`.
    /// * Renewing (acquiring again before the lease ran out) keeps the fencing token; any other
    ///   grant — another holder, or the same one after a release or after the lease ran out —
    ///   has a larger token than every earlier grant of the lease.
    /// * Of several concurrent acquirers of a free lease, exactly one gets it.
    ///
    /// Names are free-form; names starting with `herald:` are Herald's own (see
    /// [`crate::lease`]). Two processes running at the same time must never use the same
    /// holder name for one lease.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<LeaseGrant>, StoreError>;

    /// Gives lease `name` up if `holder` holds it (a clean shutdown), so another holder gets it
    /// at once rather than after the time to live. Does nothing otherwise. The fencing token is
    /// kept: the next grant's is larger.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Notified when events become readable in the global log (after commits in this process,
    /// and where the backend can tell, in others), so log readers wake at once. A backend may
    /// notify more often (every commit); never less.
    fn changes(&self) -> &Notify;

    /// Notified after commits that enqueued outbox messages, so the relay wakes at once. The
    /// default is [`changes`](Self::changes) (for backends that notify it on every commit); a
    /// backend that notifies `changes` only for events must override this.
    fn outbox_changes(&self) -> &Notify {
        self.changes()
    }

    /// Notified after commits that [scheduled](Transaction::schedule) messages (here and, where
    /// the backend can tell, in other processes), so the relay asks
    /// [`next_scheduled`](Self::next_scheduled) again. The default is [`outbox_changes`](Self::outbox_changes):
    /// a store whose `next_scheduled` costs no round trip may let the relay ask after every
    /// outbox commit; one where it does (PostgreSQL) notifies this only for scheduling commits,
    /// so immediate messages pay nothing for scheduled ones.
    fn scheduled_changes(&self) -> &Notify {
        self.outbox_changes()
    }

    /// How often readers poll for commits no notification announced (other processes without
    /// a cross-process signal). A fallback: keep it in seconds, so an idle process costs
    /// nothing.
    fn poll_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Appends to one stream in its own transaction.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let mut tx = self.begin().await?;
        let result = tx.append(stream, expected, events).await?;
        tx.commit().await?;
        Ok(result)
    }

    /// Appends to several streams atomically: all or none.
    async fn append_many(&self, batch: Vec<StreamAppend>) -> Result<Vec<AppendResult>, StoreError> {
        let mut tx = self.begin().await?;
        let mut results = Vec::with_capacity(batch.len());
        for step in batch {
            results.push(tx.append(&step.stream, step.expected, step.events).await?);
        }
        tx.commit().await?;
        Ok(results)
    }
}

/// Follows the global log: yields every committed event after a position, in order, first the
/// history (catch-up) and then new commits as they happen (live).
#[derive(Debug)]
pub struct LogReader {
    store: Arc<dyn Store>,
    after: u64,
    batch: usize,
    buffer: VecDeque<RecordedEvent>,
}

impl LogReader {
    /// A reader yielding events with position > `after`.
    pub fn new(store: Arc<dyn Store>, after: u64) -> Self {
        Self { store, after, batch: 512, buffer: VecDeque::new() }
    }

    /// The position of the last event returned.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next event, waiting for one to be committed if the reader is caught up.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.after = e.position;
                return Ok(e);
            }
            let changed = self.store.changes().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let batch = self.store.read_all(self.after, self.batch).await?;
            if batch.is_empty() {
                tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep(self.store.poll_interval()) => {}
                }
            }
            self.buffer.extend(batch);
        }
    }
}
