//! Dead letters you can work with: an archive that keeps every dead letter with its error,
//! attempts and original message, and an API ([`DeadLetters`]) to list, inspect, replay and
//! discard them — the library a CLI or an admin UI calls.
//!
//! ```text
//! handler fails ──► broker ──► <topic>.<group>.dead-letters ──► archive route ──► DeadLetterArchive
//!                                                                                    │ list / get
//!      original topic ◄── outbox relay ◄── outbox ◄── replay(id) (one transaction) ◄─┘ replay / discard
//! ```
//!
//! # Why an archive
//!
//! Dead letters are messages on dead-letter topics, on whatever broker runs (the SQL broker,
//! NATS, Redis, RabbitMQ). Browsing a broker topic without consuming it is not portable, and a
//! consumed message cannot be "looked at again" later. So a small consumer
//! ([`DeadLetters::archive_route`]) reads the dead-letter topics and keeps each dead letter in a
//! [`DeadLetterArchive`], durable where the store is (SQLite, PostgreSQL). Archiving is
//! idempotent by the dead letter's id, so redeliveries are harmless.
//!
//! # Replay reaches only the group that failed
//!
//! A replay is the *original* message published again to its *original* topic through the
//! store's outbox, in the same transaction that marks the dead letter replayed (a crash can
//! neither lose the replay nor mark it twice). It gets a **new transport id** — brokers
//! de-duplicate on the id (the SQL broker keeps one message id once per topic, NATS JetStream
//! drops a repeated `Nats-Msg-Id` within its window), so republishing the same id would be
//! silently swallowed — and three headers:
//!
//! * [`REPLAY_OF`]: the original message id;
//! * [`REPLAY_FOR_GROUP`]: the group that failed it;
//! * [`REPLAYED_DEAD_LETTER`]: the archived dead letter it replays.
//!
//! Every group subscribed to the topic receives the replay, but the [`Router`](crate::router::Router)
//! acknowledges and skips it in every group except the named one
//! ([`is_replay_for_another_group`]), and hands it to that group's handlers **under the
//! original id** ([`as_handled`]): the [`Inbox`](crate::router::Inbox) therefore still
//! de-duplicates (a replay of a message the group did handle after all is skipped, and a late
//! duplicate of the original after a successful replay is skipped too). The original metadata
//! is kept unchanged — correlation, causation, `traceparent` — so the replay stays in the
//! original trace. Consumers that do not use the router must apply the same two rules.
//!
//! # Contract of [`DeadLetterArchive`] (checked by `herald-conformance`'s `dead_letter_suite!`)
//!
//! * **Transactional.** [`archive`](DeadLetterArchive::archive) and
//!   [`resolve`](DeadLetterArchive::resolve) are part of the caller's [`Transaction`] (of the
//!   store the archive lives in): visible after commit, gone on rollback.
//! * **Idempotent archiving.** Archiving a dead letter whose id is already archived changes
//!   nothing and returns `false`.
//! * **Pending → resolved, once.** `resolve` moves a *pending* dead letter to replayed or
//!   discarded; anything else is refused ([`Resolution::NotFound`], [`Resolution::NotPending`]),
//!   and of two concurrent resolutions of one dead letter at most one commits.
//! * **Listing** returns the dead letters matching a [`DeadLetterFilter`] in archive order (by
//!   dead-letter id, which is time-ordered), a [`Page`] at a time.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::message::{Message, MessageId, now_millis};
use crate::pubsub::{DLQ_ATTEMPTS, DLQ_GROUP, DLQ_ORIGINAL_ID, DLQ_ORIGINAL_TOPIC, DLQ_REASON, SubscribeOptions};
use crate::router::{Handler, HandlerContext, HandlerError, Route};
use crate::store::{Store, StoreError, Transaction};

mod pending;
pub use pending::PendingCount;

/// Header on a replay: the id of the original message (the replay has its own transport id).
pub const REPLAY_OF: &str = "herald-replay-of";
/// Header on a replay: the only consumer group that should handle it.
pub const REPLAY_FOR_GROUP: &str = "herald-replay-for-group";
/// Header on a replay: the id of the archived dead letter it replays.
pub const REPLAYED_DEAD_LETTER: &str = "herald-replayed-dead-letter";

/// Where a dead letter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterStatus {
    /// Waiting for someone to replay or discard it.
    Pending,
    /// Published again to its group.
    Replayed,
    /// Given up on, on purpose.
    Discarded,
}

impl DeadLetterStatus {
    /// The stored (and displayed) form: `pending`, `replayed`, `discarded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Replayed => "replayed",
            Self::Discarded => "discarded",
        }
    }
}

impl fmt::Display for DeadLetterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeadLetterStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "replayed" => Ok(Self::Replayed),
            "discarded" => Ok(Self::Discarded),
            other => Err(format!("unknown dead-letter status `{other}` (pending, replayed, discarded)")),
        }
    }
}

/// An archived dead letter: the original message, who failed it, why, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The dead letter's own id (the id of the message on the dead-letter topic); the archive's
    /// key. Time-ordered.
    pub id: MessageId,
    /// The dead-letter topic it arrived on.
    pub dead_letter_topic: String,
    /// The consumer group that failed to handle the message.
    pub group: String,
    /// Why: the last error, or the reason given to `dead_letter`.
    pub reason: String,
    /// How many deliveries were made before giving up.
    pub attempts: u32,
    /// When the broker dead-lettered it (from the dead letter's UUIDv7 id).
    pub dead_lettered_at: DateTime<Utc>,
    /// The original message as it was delivered: id, name, topic, key, payload and metadata
    /// (the dead-letter headers removed).
    pub message: Message,
    /// Pending, replayed or discarded.
    pub status: DeadLetterStatus,
    /// When it was replayed or discarded.
    pub resolved_at: Option<DateTime<Utc>>,
    /// The transport id of the replay, once replayed.
    pub replay_id: Option<MessageId>,
}

impl DeadLetter {
    /// Reads a dead letter as the brokers publish it (see the `DLQ_*` headers in
    /// [`pubsub`](crate::pubsub)). Lenient: a missing header gives an empty group, reason
    /// `unknown`, zero attempts, the dead letter's own id and topic — a dead letter is never
    /// refused (an archive that refused some would lose them).
    pub fn from_message(dead: &Message) -> Self {
        let header = |name: &str| dead.header(name).map(str::to_owned);
        let mut message = dead.clone();
        for h in [DLQ_REASON, DLQ_ATTEMPTS, DLQ_GROUP, DLQ_ORIGINAL_TOPIC, DLQ_ORIGINAL_ID] {
            message.metadata.headers.remove(h);
        }
        message.id = header(DLQ_ORIGINAL_ID).and_then(|s| MessageId::parse(&s).ok()).unwrap_or(dead.id);
        message.topic = header(DLQ_ORIGINAL_TOPIC).unwrap_or_else(|| dead.topic.clone());
        Self {
            id: dead.id,
            dead_letter_topic: dead.topic.clone(),
            group: header(DLQ_GROUP).unwrap_or_default(),
            reason: header(DLQ_REASON).unwrap_or_else(|| "unknown".to_owned()),
            attempts: header(DLQ_ATTEMPTS).and_then(|s| s.parse().ok()).unwrap_or(0),
            dead_lettered_at: time_of(dead.id),
            message,
            status: DeadLetterStatus::Pending,
            resolved_at: None,
            replay_id: None,
        }
    }

    /// The id of the message as its handlers know it: the original id of a replayed message
    /// that failed again, otherwise the message's id.
    pub fn original_id(&self) -> MessageId {
        self.message.header(REPLAY_OF).and_then(|s| MessageId::parse(s).ok()).unwrap_or(self.message.id)
    }

    /// The replay of this dead letter, with transport id `replay_id` (see the module docs).
    pub fn replay_message(&self, replay_id: MessageId) -> Message {
        let mut m = self.message.clone();
        m.id = replay_id;
        let original = self.original_id().to_string();
        let headers = &mut m.metadata.headers;
        headers.insert(REPLAY_OF.to_owned(), original);
        headers.insert(REPLAY_FOR_GROUP.to_owned(), self.group.clone());
        headers.insert(REPLAYED_DEAD_LETTER.to_owned(), self.id.to_string());
        m
    }
}

/// The creation time of a UUIDv7 (millisecond precision), or now for other ids.
fn time_of(id: MessageId) -> DateTime<Utc> {
    id.0.get_timestamp()
        .and_then(|t| {
            let (secs, nanos) = t.to_unix();
            DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos - nanos % 1_000_000)
        })
        .unwrap_or_else(now_millis)
}

/// Whether `message` is a dead letter (carries the dead-letter headers).
pub fn is_dead_letter(message: &Message) -> bool {
    message.header(DLQ_ORIGINAL_ID).is_some()
}

/// Whether `message` is a replay meant for a group other than `group` (and so must be
/// acknowledged and skipped by `group`). Dead letters are never skipped: the dead letter of a
/// replay that failed again still carries the replay headers.
pub fn is_replay_for_another_group(message: &Message, group: &str) -> bool {
    !is_dead_letter(message) && message.header(REPLAY_FOR_GROUP).is_some_and(|g| g != group)
}

/// The message as its group's handlers should see it: a replay under the original message's id
/// (so the inbox de-duplicates across the original and its replays), anything else unchanged.
pub fn as_handled(message: &Message) -> Message {
    let mut m = message.clone();
    if !is_dead_letter(message)
        && let Some(original) = message.header(REPLAY_OF).and_then(|s| MessageId::parse(s).ok())
    {
        m.id = original;
    }
    m
}

/// Which dead letters to list or replay. Empty: all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterFilter {
    /// Only those of this original topic.
    pub topic: Option<String>,
    /// Only those failed by this group.
    pub group: Option<String>,
    /// Only those with this status.
    pub status: Option<DeadLetterStatus>,
}

impl DeadLetterFilter {
    /// Every dead letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// The pending ones.
    pub fn pending() -> Self {
        Self { status: Some(DeadLetterStatus::Pending), ..Self::default() }
    }

    /// Only those of this original topic.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Only those failed by this group.
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Only those with this status.
    #[must_use]
    pub fn status(mut self, status: DeadLetterStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Whether `letter` matches (for in-memory implementations).
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.topic.as_ref().is_none_or(|t| *t == letter.message.topic)
            && self.group.as_ref().is_none_or(|g| *g == letter.group)
            && self.status.is_none_or(|s| s == letter.status)
    }
}

/// One page of a listing: up to `limit` dead letters with an id after `after`. The next page
/// starts after the last id of this one (keyset paging: stable while new ones arrive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Start after this dead-letter id; `None` from the oldest.
    pub after: Option<MessageId>,
    /// At most this many.
    pub limit: usize,
}

impl Default for Page {
    fn default() -> Self {
        Self { after: None, limit: 100 }
    }
}

impl Page {
    /// The first `limit` dead letters.
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }

    /// The `limit` dead letters after `id`.
    pub fn after(id: MessageId, limit: usize) -> Self {
        Self { after: Some(id), limit }
    }
}

/// What [`DeadLetterArchive::resolve`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The dead letter was pending and now has the new status (at commit).
    Resolved(Box<DeadLetter>),
    /// No dead letter has this id.
    NotFound,
    /// The dead letter is not pending any more.
    NotPending(DeadLetterStatus),
}

/// Keeps dead letters for inspection and replay. See the [module docs](self) for the contract.
#[async_trait]
pub trait DeadLetterArchive: Send + Sync + fmt::Debug + 'static {
    /// Archives `letter` as pending, in `tx` (a transaction of the store the archive lives
    /// in); `false` if a dead letter with its id is already archived. The status, resolution
    /// time and replay id of `letter` are ignored.
    async fn archive(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<bool, StoreError>;

    /// The dead letter with this id.
    async fn get(&self, id: MessageId) -> Result<Option<DeadLetter>, StoreError>;

    /// The dead letters matching `filter`, oldest first, one `page` at a time.
    async fn list(&self, filter: &DeadLetterFilter, page: &Page) -> Result<Vec<DeadLetter>, StoreError>;

    /// How many dead letters match `filter`.
    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError>;

    /// How many dead letters are pending, per original topic and group (pairs with none left
    /// out): what the `herald_dead_letters_pending` gauge reports. The default pages through
    /// [`list`](Self::list); an archive that can count in one grouped query should.
    async fn pending_counts(&self) -> Result<Vec<PendingCount>, StoreError> {
        pending::count_by_listing(self).await
    }

    /// In `tx`: moves the pending dead letter `id` to `status` (replayed or discarded),
    /// recording now as its resolution time and `replay_id`. A `status` of pending is refused
    /// with [`StoreError::Invalid`].
    async fn resolve(
        &self,
        tx: &mut dyn Transaction,
        id: MessageId,
        status: DeadLetterStatus,
        replay_id: Option<MessageId>,
    ) -> Result<Resolution, StoreError>;
}

/// Errors of the [`DeadLetters`] API: bad input is a typed error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// No dead letter has this id.
    #[error("no dead letter with id {0}")]
    NotFound(MessageId),
    /// The dead letter was already replayed or discarded.
    #[error("dead letter {id} is already {status}")]
    NotPending {
        /// The dead letter.
        id: MessageId,
        /// What it is now.
        status: DeadLetterStatus,
    },
    /// The dead letter cannot be replayed (e.g. it names no group, so a replay would reach
    /// every group of the topic).
    #[error("dead letter {id} cannot be replayed: {reason}")]
    NotReplayable {
        /// The dead letter.
        id: MessageId,
        /// Why.
        reason: String,
    },
    /// The store failed; usually worth retrying.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Rejects a status that is not a resolution (for implementations of
/// [`DeadLetterArchive::resolve`]).
pub fn check_resolution(status: DeadLetterStatus) -> Result<(), StoreError> {
    if status == DeadLetterStatus::Pending {
        return Err(StoreError::Invalid("a dead letter can only be resolved as replayed or discarded".into()));
    }
    Ok(())
}

/// What to do as dead letters come and go (an alert, a row for a dashboard's live feed, a
/// notice to another service), in the same unit of work, so it commits with the change or not
/// at all. Both methods do nothing by default.
#[async_trait]
pub trait DeadLetterHook: Send + Sync {
    /// `letter` was just archived in `tx`, for the first time (the [archive
    /// routes](DeadLetters::archive_route) call it; a redelivered dead letter, already archived,
    /// does not). An error rolls the archiving back (the archive route's delivery is retried
    /// like any handler's).
    async fn archived(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<(), StoreError> {
        let _ = (tx, letter);
        Ok(())
    }

    /// `letter` was just resolved in `tx` (its status is now replayed or discarded; a replay's
    /// message is enqueued in `tx` too): by [`DeadLetters::replay`], [`replay_all`]
    /// (DeadLetters::replay_all) or [`discard`](DeadLetters::discard). An error rolls the
    /// resolution back and is the caller's.
    async fn resolved(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<(), StoreError> {
        let _ = (tx, letter);
        Ok(())
    }
}

/// The dead-letter API over an archive and the store it lives in (whose outbox carries the
/// replays: run an [`OutboxRelay`](crate::outbox::OutboxRelay) to the broker). Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    store: Arc<dyn Store>,
    archive: Arc<dyn DeadLetterArchive>,
    hook: Option<Arc<dyn DeadLetterHook>>,
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("store", &self.store)
            .field("archive", &self.archive)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl DeadLetters {
    /// The API over `archive`, which lives in `store` (its transactions are `store`'s).
    pub fn new(store: Arc<dyn Store>, archive: Arc<dyn DeadLetterArchive>) -> Self {
        Self { store, archive, hook: None }
    }

    /// The API over a store that is its own archive (the SQL stores).
    pub fn on<S: Store + DeadLetterArchive>(store: Arc<S>) -> Self {
        Self { store: store.clone(), archive: store, hook: None }
    }

    /// Runs `hook` in the unit of work of every dead letter archived by the [archive
    /// routes](Self::archive_route) made from here on, and of every resolution through this
    /// API (see [`DeadLetterHook`]).
    pub fn hook(mut self, hook: impl DeadLetterHook + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The archive.
    pub fn archive(&self) -> &Arc<dyn DeadLetterArchive> {
        &self.archive
    }

    /// The dead letters matching `filter`, oldest first, a page at a time.
    pub async fn list(&self, filter: &DeadLetterFilter, page: &Page) -> Result<Vec<DeadLetter>, DeadLetterError> {
        Ok(self.archive.list(filter, page).await?)
    }

    /// How many dead letters match `filter`.
    pub async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, DeadLetterError> {
        Ok(self.archive.count(filter).await?)
    }

    /// One dead letter, to inspect: reason, attempts, group, the original message and metadata.
    pub async fn get(&self, id: MessageId) -> Result<DeadLetter, DeadLetterError> {
        self.archive.get(id).await?.ok_or(DeadLetterError::NotFound(id))
    }

    /// Archives a dead-letter message received by other means than
    /// [`archive_route`](Self::archive_route); `false` if it was already archived. (The
    /// [hook](Self::hook)'s `archived` is the archive routes': call it yourself here.)
    pub async fn archive_message(&self, dead: &Message) -> Result<bool, DeadLetterError> {
        let letter = DeadLetter::from_message(dead);
        let mut tx = self.store.begin().await?;
        let added = self.archive.archive(&mut *tx, &letter).await?;
        tx.commit().await?;
        if added {
            pending::record_pending_of(&*self.archive, &letter.message.topic, &letter.group).await;
        }
        Ok(added)
    }

    /// Replays a pending dead letter to the group that failed it (see the module docs): marks
    /// it replayed and enqueues the replay in the outbox, in one transaction. Returns the
    /// replay message.
    pub async fn replay(&self, id: MessageId) -> Result<Message, DeadLetterError> {
        let mut tx = self.store.begin().await?;
        let replay = self.replay_in(&mut *tx, id).await?;
        tx.commit().await?;
        self.record_pending_of_letter(id).await;
        Ok(replay)
    }

    async fn replay_in(&self, tx: &mut dyn Transaction, id: MessageId) -> Result<Message, DeadLetterError> {
        if let Some(letter) = self.archive.get(id).await?
            && letter.group.is_empty()
        {
            return Err(DeadLetterError::NotReplayable {
                id,
                reason: "it names no consumer group, so a replay would reach every group of its topic".into(),
            });
        }
        let replay_id = MessageId::new();
        let letter = self.resolve(tx, id, DeadLetterStatus::Replayed, Some(replay_id)).await?;
        let replay = letter.replay_message(replay_id);
        tx.enqueue(vec![replay.clone()]).await?;
        Ok(replay)
    }

    /// Replays every pending dead letter matching `filter` (its status is ignored), a batch per
    /// transaction; returns how many were replayed. Dead letters resolved meanwhile by someone
    /// else, and those that cannot be replayed, are skipped.
    pub async fn replay_all(&self, filter: &DeadLetterFilter) -> Result<usize, DeadLetterError> {
        const BATCH: usize = 100;
        let filter = DeadLetterFilter { status: Some(DeadLetterStatus::Pending), ..filter.clone() };
        let mut page = Page::first(BATCH);
        let mut replayed = 0;
        loop {
            let batch = self.archive.list(&filter, &page).await?;
            let Some(last) = batch.last() else {
                self.record_pending_after_many().await;
                return Ok(replayed);
            };
            page = Page::after(last.id, BATCH);
            let mut tx = self.store.begin().await?;
            let mut in_batch = 0;
            for letter in &batch {
                match self.replay_in(&mut *tx, letter.id).await {
                    Ok(_) => in_batch += 1,
                    Err(DeadLetterError::NotPending { .. } | DeadLetterError::NotFound(_)) => {}
                    Err(e @ DeadLetterError::NotReplayable { .. }) => {
                        tracing::warn!(error = %e, "skipping a dead letter that cannot be replayed");
                    }
                    Err(e) => return Err(e),
                }
            }
            tx.commit().await?;
            replayed += in_batch;
        }
    }

    /// Discards a pending dead letter: it stays in the archive, marked discarded, and leaves
    /// the pending list. A dead letter of a keyed message also sends, in the same transaction, a
    /// [discard notice](crate::parking::DISCARD_NOTICE) to the group that failed it, so that a
    /// [parking route](crate::parking) lets the key's later messages flow.
    pub async fn discard(&self, id: MessageId) -> Result<DeadLetter, DeadLetterError> {
        let mut tx = self.store.begin().await?;
        let letter = self.resolve(&mut *tx, id, DeadLetterStatus::Discarded, None).await?;
        if !letter.group.is_empty() && !letter.message.key.is_empty() {
            tx.enqueue(vec![crate::parking::discard_notice(&letter.message, &letter.group, letter.id)]).await?;
        }
        tx.commit().await?;
        pending::record_pending_of(&*self.archive, &letter.message.topic, &letter.group).await;
        Ok(letter)
    }

    async fn resolve(
        &self,
        tx: &mut dyn Transaction,
        id: MessageId,
        status: DeadLetterStatus,
        replay_id: Option<MessageId>,
    ) -> Result<DeadLetter, DeadLetterError> {
        match self.archive.resolve(tx, id, status, replay_id).await? {
            Resolution::Resolved(letter) => {
                if let Some(hook) = &self.hook {
                    hook.resolved(tx, &letter).await?;
                }
                Ok(*letter)
            }
            Resolution::NotFound => Err(DeadLetterError::NotFound(id)),
            Resolution::NotPending(status) => Err(DeadLetterError::NotPending { id, status }),
        }
    }

    /// A route that archives every message of one dead-letter topic (`options.topic`, e.g.
    /// [`SubscribeOptions::effective_dead_letter_topic`] of the failing route; give it a group
    /// of its own such as `dead-letter-archive`). Add it to a router whose store is this
    /// archive's store, or that has none. Archiving is idempotent, so redeliveries are harmless.
    pub fn archive_route(&self, options: SubscribeOptions) -> Route {
        Route::new(options).fallback(Archiver {
            store: self.store.clone(),
            archive: self.archive.clone(),
            hook: self.hook.clone(),
        })
    }

    /// [`archive_route`](Self::archive_route)s for the dead-letter topics of `failing` (the
    /// options of the routes whose dead letters should be archived), in group `group`, reading
    /// each dead-letter topic from its beginning.
    pub fn archive_routes_for(&self, failing: &[&SubscribeOptions], group: &str) -> Vec<Route> {
        pending::watch(failing);
        let mut topics: Vec<String> = failing.iter().map(|o| o.effective_dead_letter_topic()).collect();
        topics.sort();
        topics.dedup();
        topics
            .into_iter()
            .map(|t| self.archive_route(SubscribeOptions::new(t, group).start(crate::pubsub::StartFrom::Beginning)))
            .collect()
    }
}

/// The handler behind [`DeadLetters::archive_route`].
struct Archiver {
    store: Arc<dyn Store>,
    archive: Arc<dyn DeadLetterArchive>,
    hook: Option<Arc<dyn DeadLetterHook>>,
}

#[async_trait]
impl Handler for Archiver {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let letter = DeadLetter::from_message(cx.message());
        // Join the router's unit of work when there is one (its inbox record commits with the
        // archived letter); otherwise start one.
        let mut tx = match cx.take_tx() {
            Some(tx) => tx,
            None => self.store.begin().await?,
        };
        let added = self.archive.archive(&mut *tx, &letter).await?;
        if let (true, Some(hook)) = (added, &self.hook) {
            hook.archived(&mut *tx, &letter).await?;
        }
        tx.commit().await?;
        if added {
            pending::record_pending_of(&*self.archive, &letter.message.topic, &letter.group).await;
            tracing::info!(
                dead_letter.id = %letter.id,
                message.id = %letter.message.id,
                message.topic = %letter.message.topic,
                group = %letter.group,
                attempts = letter.attempts,
                reason = %letter.reason,
                "dead letter archived"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::dead_letter_for;

    #[test]
    fn a_dead_letter_message_reads_back_as_the_original_with_reason_and_attempts() {
        let original = Message::new("orders", "OrderPlaced.v1", b"{}".to_vec()).with_key("o-1").with_header("x", "y");
        let dead = dead_letter_for(&original, "billing", 3, "boom", "orders.billing.dead-letters");
        let letter = DeadLetter::from_message(&dead);
        assert_eq!(letter.id, dead.id);
        assert_eq!(letter.message, original, "the original message, dead-letter headers removed");
        assert_eq!((letter.group.as_str(), letter.reason.as_str(), letter.attempts), ("billing", "boom", 3));
        assert_eq!(letter.dead_letter_topic, "orders.billing.dead-letters");
        assert_eq!(letter.status, DeadLetterStatus::Pending);
        assert!((Utc::now() - letter.dead_lettered_at).num_seconds() < 5);
    }

    #[test]
    fn a_replay_has_a_new_id_names_its_group_and_is_handled_under_the_original_id() {
        let original = Message::new("orders", "OrderPlaced.v1", b"{}".to_vec());
        let letter = DeadLetter::from_message(&dead_letter_for(&original, "billing", 1, "boom", "dlt"));
        let replay = letter.replay_message(MessageId::new());
        assert_ne!(replay.id, original.id);
        assert_eq!(replay.topic, "orders");
        assert_eq!(replay.metadata.correlation_id, original.metadata.correlation_id);
        assert!(is_replay_for_another_group(&replay, "shipping"));
        assert!(!is_replay_for_another_group(&replay, "billing"));
        assert!(!is_replay_for_another_group(&original, "shipping"));
        assert_eq!(as_handled(&replay).id, original.id);

        // It fails again: its dead letter is not skipped, keeps its own id, and its replay still
        // points at the first original.
        let again = dead_letter_for(&replay, "billing", 2, "boom", "dlt");
        assert!(!is_replay_for_another_group(&again, "archive"));
        assert_eq!(as_handled(&again).id, again.id);
        let letter2 = DeadLetter::from_message(&again);
        assert_eq!(letter2.original_id(), original.id);
        assert_eq!(letter2.replay_message(MessageId::new()).header(REPLAY_OF), Some(original.id.to_string().as_str()));
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in [DeadLetterStatus::Pending, DeadLetterStatus::Replayed, DeadLetterStatus::Discarded] {
            assert_eq!(s.as_str().parse::<DeadLetterStatus>(), Ok(s));
        }
        assert!("lost".parse::<DeadLetterStatus>().is_err());
    }
}
