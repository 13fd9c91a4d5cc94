//! Event-sourced aggregates: [`Aggregate::handle`] decides (returns events, changes nothing),
//! [`Aggregate::apply`] evolves (changes state, decides nothing). A [`Repository`] loads an
//! aggregate from its latest snapshot plus the events after it, and saves new events with the
//! version it loaded as the expected version, so concurrent writers cannot both win.
//!
//! Old shapes on the way in: events stored under an old name are upcast through the
//! repository's [`Registry`] as the stream loads, and a snapshot carries its aggregate's
//! [`Aggregate::SNAPSHOT_VERSION`] (in a small envelope inside the payload), so a snapshot of an
//! older state shape is ignored and the stream replayed from the start (ADR 0020).
//!
//! [`testing::AggregateTest`] checks domain rules in the given/when/then style without any store.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{CodecError, EventSet, Registry, decode_json, encode_json};
use tracing::Instrument;

use crate::message::Message;
use crate::observability;
use crate::store::{ExpectedVersion, NewEvent, RecordedEvent, Snapshot, Store, StoreError, Transaction};

/// A consistency boundary whose state is the fold of its events.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type name; streams are named `"{TYPE}-{id}"`.
    const TYPE: &'static str;
    /// The version of the aggregate's snapshot shape (its serialised state). Bump it when the
    /// snapshot shape changes — a field added, removed, renamed or re-typed in the state —
    /// so that old snapshots are ignored instead of misread: a [`Repository`] loading a
    /// snapshot of another version replays the stream from its first event (through the
    /// upcasters), and the next save that crosses the snapshot interval writes a snapshot of
    /// the current version. Default 1; snapshots written before versions existed count as 1.
    const SNAPSHOT_VERSION: u32 = 1;
    /// What can be asked of it.
    type Command: Send;
    /// What it records.
    type Event: EventSet + Clone;
    /// Why a command is refused (a rule of the domain).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides: the events a command results in, or why it is refused. Pure.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event. Must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);
}

/// The stream of aggregate `A` with this id.
pub fn stream_name<A: Aggregate>(id: &str) -> String {
    format!("{}-{id}", A::TYPE)
}

/// The id of aggregate `A` in one of its streams, the inverse of [`stream_name`]: `None` for a
/// stream that is not `A`'s. (A stream name is `"{TYPE}-{id}"`, so with types `order` and
/// `order-line`, `"order-line-7"` reads as order `line-7` too: keep types from prefixing one
/// another.)
pub fn aggregate_id<A: Aggregate>(stream: &str) -> Option<&str> {
    stream.strip_prefix(A::TYPE)?.strip_prefix('-')
}

/// An aggregate as loaded, with the version to expect when saving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<A> {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: A,
    /// The version of its last event (0 = it does not exist yet).
    pub version: u64,
}

/// What a command did ([`Repository::execute_in`]): the events it recorded (none when it
/// changed nothing) and the aggregate after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed<A: Aggregate> {
    /// The events recorded, in order.
    pub events: Vec<A::Event>,
    /// The aggregate after them; `version` is its stream's.
    pub aggregate: Loaded<A>,
}

impl<A: Aggregate> Executed<A> {
    /// The recorded events as messages on `topic`, keyed by the aggregate's id (so consumers
    /// get each aggregate's events in order): enqueue them in the same unit of work to publish
    /// them through the outbox (`tx.enqueue(done.messages("bank.accounts")?)`), or pass them
    /// to [`HandlerContext::publish`](crate::router::HandlerContext::publish) in a handler.
    pub fn messages(&self, topic: &str) -> Result<Vec<Message>, CodecError> {
        self.events.iter().map(|e| Ok(Message::encode(topic, e)?.with_key(self.aggregate.id.clone()))).collect()
    }
}

/// Failure of a repository operation.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError<E: std::error::Error + 'static> {
    /// The command was refused by the aggregate.
    #[error(transparent)]
    Rejected(E),
    /// Loading or saving failed (including a conflict that outlasted the retries).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Loads and saves aggregates of type `A`.
pub struct Repository<A> {
    registry: Registry,
    snapshot_every: Option<u64>,
    conflict_retries: u32,
    /// The topic every recorded event is also enqueued on (in the same unit of work), if any.
    publish_to: Option<std::sync::Arc<str>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("snapshot_every", &self.snapshot_every)
            .field("conflict_retries", &self.conflict_retries)
            .finish_non_exhaustive()
    }
}

impl<A> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            snapshot_every: self.snapshot_every,
            conflict_retries: self.conflict_retries,
            publish_to: self.publish_to.clone(),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Default for Repository<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository without snapshots that retries a conflicting command 3 times.
    pub fn new() -> Self {
        Self {
            registry: Registry::new(),
            snapshot_every: None,
            conflict_retries: 3,
            publish_to: None,
            _aggregate: PhantomData,
        }
    }

    /// Publishes every recorded event on `topic` through the outbox: [`execute`](Self::execute)
    /// and [`execute_in`](Self::execute_in) enqueue them (as [`Executed::messages`], caused by
    /// the command's cause) in the unit of work that records them, so they are published if
    /// and only if the events commit (event notification / event-carried state transfer).
    #[must_use]
    pub fn publish_to(mut self, topic: &str) -> Self {
        self.publish_to = Some(topic.into());
        self
    }

    /// Upcasters for old event shapes.
    #[must_use]
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Saves a snapshot whenever a save crosses a multiple of `n` events.
    #[must_use]
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = (n > 0).then_some(n);
        self
    }

    /// How often [`execute`](Self::execute) and [`execute_in`](Self::execute_in) retry after a
    /// conflict.
    #[must_use]
    pub fn conflict_retries(mut self, n: u32) -> Self {
        self.conflict_retries = n;
        self
    }

    /// Loads the aggregate inside a unit of work (to decide and save): latest snapshot, then
    /// the events after it.
    pub async fn load(&self, tx: &mut dyn Transaction, id: &str) -> Result<Loaded<A>, StoreError> {
        self.load_via(StreamSource::Transaction(tx), id).await
    }

    /// Loads the aggregate to read it, outside any unit of work: no write transaction, no
    /// lock, so readers never queue behind writers (on SQLite, `begin` takes the one write
    /// lock). What it returns may be stale by the time it is used; to decide, use
    /// [`load`](Self::load) in a transaction.
    pub async fn load_from(&self, store: &dyn Store, id: &str) -> Result<Loaded<A>, StoreError> {
        self.load_via(StreamSource::Store(store), id).await
    }

    async fn load_via(&self, mut source: StreamSource<'_>, id: &str) -> Result<Loaded<A>, StoreError> {
        const BATCH: usize = 1000;
        let stream = stream_name::<A>(id);
        // The snapshot and the first batch of events after it in one read.
        let (snapshot, mut events) = source.load_stream(&stream, BATCH).await?;
        let (mut state, mut version) = match snapshot {
            None => (A::default(), 0),
            Some(s) => match decode_snapshot::<A>(&stream, &s)? {
                Some(state) => (state, s.version),
                None => {
                    // A snapshot of another shape version: the events after it are not enough,
                    // replay the whole stream.
                    events = source.read_stream(&stream, 1, BATCH).await?;
                    (A::default(), 0)
                }
            },
        };
        loop {
            let n = events.len();
            for e in events {
                let event: A::Event = self.registry.decode(&e.name, &e.payload)?;
                state.apply(&event);
                version = e.version;
            }
            if n < BATCH {
                return Ok(Loaded { id: id.to_owned(), state, version });
            }
            events = source.read_stream(&stream, version + 1, BATCH).await?;
        }
    }

    /// Appends `events` expecting the loaded version, applies them to `loaded`, and snapshots
    /// if due. `cause`, when given, becomes the events' causation (and correlation). Runs in an
    /// `append` span whose trace context the events carry (see
    /// [`observability`]), so whoever handles them continues this trace.
    pub async fn save(
        &self,
        tx: &mut dyn Transaction,
        loaded: &mut Loaded<A>,
        events: &[A::Event],
        cause: Option<&Message>,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let (stream, new_events, span) = self.encode(loaded, events, cause)?;
        let before = loaded.version;
        let result = tx.append(&stream, ExpectedVersion::Exact(before), new_events).instrument(span).await?;
        for e in events {
            loaded.state.apply(e);
        }
        loaded.version = result.next_expected_version;
        if self.snapshot_due(before, loaded.version) {
            let payload = encode_snapshot(&loaded.state)?;
            tx.save_snapshot(Snapshot { stream, version: loaded.version, payload }).await?;
        }
        Ok(())
    }

    /// The stream, the events to append (with this `append` span's trace context and `cause`)
    /// and the span to append them in.
    fn encode(
        &self,
        loaded: &Loaded<A>,
        events: &[A::Event],
        cause: Option<&Message>,
    ) -> Result<(String, Vec<NewEvent>, tracing::Span), StoreError> {
        let stream = stream_name::<A>(&loaded.id);
        let span =
            tracing::info_span!("append", stream = %stream, events = events.len(), expected_version = loaded.version);
        let mut new_events = Vec::with_capacity(events.len());
        for e in events {
            let mut n = NewEvent::encode(e)?;
            span.in_scope(|| observability::inject_current(&mut n.metadata));
            if let Some(cause) = cause {
                n = n.caused_by(cause);
            }
            new_events.push(n);
        }
        Ok((stream, new_events, span))
    }

    /// Whether going from version `before` to `after` passes a multiple of the snapshot
    /// interval.
    fn snapshot_due(&self, before: u64, after: u64) -> bool {
        self.snapshot_every.is_some_and(|every| before / every != after / every)
    }

    /// Handles `command` in the caller's unit of work: loads the aggregate (seeing the unit's
    /// own writes), decides, and [`save`](Self::save)s the events with `cause`, if given, as
    /// their causation. Returns the events and the aggregate after them, so the caller can
    /// enqueue the integration messages they imply in the same unit of work: they commit with
    /// the events, or not at all (the outbox).
    ///
    /// A version conflict at the append (another writer appended in between, possible on
    /// PostgreSQL) is retried from the load inside the same unit of work, up to
    /// [`conflict_retries`](Self::conflict_retries) times. A store that finds conflicts only at
    /// commit (the in-memory one) reports them from `commit`: retry the unit of work then. A
    /// refused command is [`RepositoryError::Rejected`] and writes nothing.
    ///
    /// ```
    /// # use herald::aggregate::Repository;
    /// # async fn example<A: herald::aggregate::Aggregate>(store: &dyn herald::Store, command: A::Command)
    /// # -> Result<(), Box<dyn std::error::Error>> where A::Command: Clone {
    /// let mut tx = store.begin().await?;
    /// let done = Repository::<A>::new().execute_in(tx.as_mut(), "42", command, None).await?;
    /// // … tx.enqueue(messages made from done.events) …
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_in(
        &self,
        tx: &mut dyn Transaction,
        id: &str,
        command: A::Command,
        cause: Option<&Message>,
    ) -> Result<Executed<A>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        let span = command_span::<A>(id);
        let result = async {
            let mut attempt = 0;
            loop {
                let mut aggregate = self.load(tx, id).await?;
                let events = aggregate.state.handle(command.clone()).map_err(RepositoryError::Rejected)?;
                match self.save(tx, &mut aggregate, &events, cause).await {
                    Ok(()) => {
                        let executed = Executed { events, aggregate };
                        self.enqueue_published(tx, &executed, cause).await?;
                        return Ok(executed);
                    }
                    Err(e) if e.is_conflict() && attempt < self.conflict_retries => {
                        attempt += 1;
                        tracing::debug!(attempt, error = %e, "conflict; retrying");
                        wait_before_conflict_retry(attempt).await;
                    }
                    Err(e) => return Err(RepositoryError::Store(e)),
                }
            }
        }
        .instrument(span.clone())
        .await;
        if matches!(result, Err(RepositoryError::Store(_))) {
            observability::mark_error(&span);
        }
        result
    }

    /// Loads (outside any transaction), handles `command` and appends its events expecting the
    /// version loaded, retrying from the load when another writer got there first. The append
    /// is [`Store::append`] (one statement on PostgreSQL), or a transaction with the snapshot
    /// when one is due. Returns the recorded events.
    pub async fn execute(
        &self,
        store: &dyn Store,
        id: &str,
        command: A::Command,
    ) -> Result<Vec<A::Event>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        let span = command_span::<A>(id);
        let result = retry_on_conflict(self.conflict_retries, || async {
            // Read without a transaction: the append below expects the version read, so a
            // decision on a state that moved on conflicts and is retried from here.
            let mut loaded = self.load_from(store, id).await?;
            let events = match loaded.state.handle(command.clone()) {
                Ok(events) => events,
                Err(e) => return Ok(Err(e)),
            };
            if events.is_empty() {
                return Ok(Ok(events));
            }
            let after = loaded.version + events.len() as u64;
            if self.snapshot_due(loaded.version, after) || self.publish_to.is_some() {
                let mut tx = store.begin().await?;
                self.save(tx.as_mut(), &mut loaded, &events, None).await?;
                let executed = Executed { events, aggregate: loaded };
                self.enqueue_published(tx.as_mut(), &executed, None).await?;
                tx.commit().await?;
                return Ok(Ok(executed.events));
            } else {
                let (stream, new_events, append_span) = self.encode(&loaded, &events, None)?;
                let expected = ExpectedVersion::Exact(loaded.version);
                store.append(&stream, expected, new_events).instrument(append_span).await?;
            }
            Ok(Ok(events))
        })
        .instrument(span.clone())
        .await;
        match result {
            Ok(Ok(events)) => Ok(events),
            Ok(Err(rejected)) => Err(RepositoryError::Rejected(rejected)),
            Err(e) => {
                observability::mark_error(&span);
                Err(e.into())
            }
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// Enqueues the executed events on the [`publish_to`](Self::publish_to) topic, if any.
    async fn enqueue_published(
        &self,
        tx: &mut dyn Transaction,
        executed: &Executed<A>,
        cause: Option<&Message>,
    ) -> Result<(), StoreError> {
        let Some(topic) = &self.publish_to else { return Ok(()) };
        let mut messages = executed.messages(topic)?;
        if let Some(cause) = cause {
            messages = messages.into_iter().map(|m| m.caused_by(cause)).collect();
        }
        tx.enqueue(messages).await
    }
}

/// A snapshot's payload as written: the state in a small JSON envelope with its shape's version,
/// `{"heraldSnapshotVersion":2,"state":{…}}`, so that the version travels inside the payload
/// and no store needs a schema change. The key is one no aggregate state has by accident.
#[derive(Serialize)]
struct SnapshotEnvelope<'a, A> {
    #[serde(rename = "heraldSnapshotVersion")]
    version: u32,
    state: &'a A,
}

/// A snapshot payload read back in its envelope (whose version was checked first).
#[derive(serde::Deserialize)]
struct StoredSnapshot<A> {
    state: A,
}

/// Only the version of a snapshot payload (the state is skipped, not built): `None` for a
/// payload written before snapshots had versions (the bare state, which has no such key).
#[derive(serde::Deserialize)]
struct SnapshotVersion {
    #[serde(rename = "heraldSnapshotVersion", default)]
    version: Option<u32>,
}

fn encode_snapshot<A: Aggregate>(state: &A) -> Result<Vec<u8>, CodecError> {
    encode_json(A::TYPE, &SnapshotEnvelope { version: A::SNAPSHOT_VERSION, state })
}

/// The state in a snapshot of `stream`, or `None` when the snapshot is of another
/// [`Aggregate::SNAPSHOT_VERSION`] (the caller replays the stream from the start). A payload
/// without an envelope (written before snapshots had versions) is version 1.
fn decode_snapshot<A: Aggregate>(stream: &str, snapshot: &Snapshot) -> Result<Option<A>, CodecError> {
    let payload = snapshot.payload.as_slice();
    // Only an object can be an envelope (a struct also decodes from an array, field by field).
    let is_object = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let version = if is_object { decode_json::<SnapshotVersion>(A::TYPE, payload)?.version } else { None };
    let found = version.unwrap_or(1);
    if found != A::SNAPSHOT_VERSION {
        tracing::info!(
            stream,
            snapshot.version = snapshot.version,
            found,
            current = A::SNAPSHOT_VERSION,
            "ignoring a snapshot of another shape version; replaying the stream from the start"
        );
        return Ok(None);
    }
    match version {
        Some(_) => Ok(Some(decode_json::<StoredSnapshot<A>>(A::TYPE, payload)?.state)),
        None => Ok(Some(decode_json::<A>(A::TYPE, payload)?)),
    }
}

/// Where [`Repository`] reads a stream from: a unit of work (sees its own writes) or the store
/// (committed data, no transaction).
enum StreamSource<'a> {
    Transaction(&'a mut dyn Transaction),
    Store(&'a dyn Store),
}

impl StreamSource<'_> {
    async fn load_stream(
        &mut self,
        stream: &str,
        limit: usize,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), StoreError> {
        match self {
            Self::Transaction(tx) => tx.load_stream(stream, limit).await,
            Self::Store(store) => store.load_stream(stream, limit).await,
        }
    }

    async fn read_stream(&mut self, stream: &str, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        match self {
            Self::Transaction(tx) => tx.read_stream(stream, from, limit).await,
            Self::Store(store) => store.read_stream(stream, from, limit).await,
        }
    }
}

/// Runs `op` again (up to `retries` more times) while it fails with a conflict.
///
/// The first retry is immediate (the usual conflict: one other writer got in first, a fresh read
/// wins). Later ones wait a random time up to an exponentially growing cap (full jitter), so
/// writers that keep colliding on one hot stream spread out instead of one of them losing every
/// round while the others proceed.
pub async fn retry_on_conflict<T, F, Fut>(retries: u32, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if e.is_conflict() && attempt < retries => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "conflict; retrying");
                wait_before_conflict_retry(attempt).await;
            }
            other => return other,
        }
    }
}

/// The span a command runs in (marked as an error when the store fails, not on a refusal).
fn command_span<A: Aggregate>(id: &str) -> tracing::Span {
    tracing::info_span!("command", aggregate = A::TYPE, aggregate.id = %id, otel.status_code = tracing::field::Empty)
}

async fn wait_before_conflict_retry(attempt: u32) {
    if let Some(cap) = conflict_backoff_cap(attempt) {
        tokio::time::sleep(cap.mul_f64(fastrand::f64())).await;
    }
}

/// The longest wait before conflict retry `attempt` (1-based): none for the first, then 200 µs
/// doubling up to 50 ms.
fn conflict_backoff_cap(attempt: u32) -> Option<std::time::Duration> {
    const FIRST: std::time::Duration = std::time::Duration::from_micros(200);
    const MAX: std::time::Duration = std::time::Duration::from_millis(50);
    (attempt > 1).then(|| FIRST.saturating_mul(1 << (attempt - 2).min(16)).min(MAX))
}

/// Given/when/then tests for aggregates.
pub mod testing {
    use std::fmt::Debug;

    use super::Aggregate;

    /// `AggregateTest::<Order>::given([..]).when(cmd).then_events([..])`.
    #[derive(Debug)]
    pub struct AggregateTest<A> {
        state: A,
    }

    impl<A: Aggregate> AggregateTest<A> {
        /// The aggregate after these past events.
        pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
            let mut state = A::default();
            for e in events {
                state.apply(&e);
            }
            Self { state }
        }

        /// An aggregate that does not exist yet.
        pub fn given_nothing() -> Self {
            Self { state: A::default() }
        }

        /// Handles a command.
        pub fn when(self, command: A::Command) -> Outcome<A> {
            let result = self.state.handle(command);
            Outcome { result }
        }
    }

    /// What a command produced.
    #[derive(Debug)]
    pub struct Outcome<A: Aggregate> {
        result: Result<Vec<A::Event>, A::Error>,
    }

    impl<A: Aggregate> Outcome<A>
    where
        A::Event: PartialEq + Debug,
        A::Error: Debug,
    {
        /// Asserts exactly these events were decided.
        #[track_caller]
        pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>) {
            let expected: Vec<_> = expected.into_iter().collect();
            match self.result {
                Ok(events) => assert_eq!(events, expected, "unexpected events"),
                Err(e) => panic!("expected events {expected:?}, got error {e:?}"),
            }
        }

        /// Asserts the command was refused with an error whose message contains `text`.
        #[track_caller]
        pub fn then_error_contains(self, text: &str) {
            match self.result {
                Ok(events) => panic!("expected an error containing {text:?}, got events {events:?}"),
                Err(e) => assert!(e.to_string().contains(text), "error {e} does not contain {text:?}"),
            }
        }

        /// Asserts the command was refused with this error (by value, not by text).
        #[track_caller]
        pub fn then_error(self, expected: A::Error)
        where
            A::Error: PartialEq,
        {
            match self.result {
                Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
                Err(e) => assert_eq!(e, expected, "the command was refused with another error"),
            }
        }

        /// Asserts the command was refused with an error for which `check` is true, e.g.
        /// `then_error_matches(|e| matches!(e, AccountError::Overdrawn { .. }))`.
        #[track_caller]
        pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool) {
            match self.result {
                Ok(events) => panic!("expected an error, got events {events:?}"),
                Err(e) => assert!(check(&e), "the command was refused with another error: {e:?}"),
            }
        }

        /// The raw result, for custom checks.
        pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
            self.result
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::conflict_backoff_cap;

    #[test]
    fn conflict_backoff_starts_immediate_then_doubles_up_to_its_ceiling() {
        assert_eq!(conflict_backoff_cap(1), None);
        assert_eq!(conflict_backoff_cap(2), Some(Duration::from_micros(200)));
        assert_eq!(conflict_backoff_cap(3), Some(Duration::from_micros(400)));
        assert_eq!(conflict_backoff_cap(10), Some(Duration::from_millis(50)));
        assert_eq!(conflict_backoff_cap(u32::MAX), Some(Duration::from_millis(50)));
    }
}
