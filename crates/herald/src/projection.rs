//! Projections: read models (the query side of CQRS) built from the store's global log.
//!
//! A [`Projection`] turns events into rows of a read model. A [`ProjectionRunner`] feeds it the
//! global log ([`Store::read_all`]) in position order, in batches, and saves the projection's
//! checkpoint in the *same* [`Transaction`] as the read-model changes:
//!
//! ```text
//! global log ──read_all(checkpoint, batch)──► BEGIN
//!                                             ├─ handle_batch(events the filter accepts)
//!                                             │    (by default: handle(event) for each, in order)
//!                                             ├─ save_checkpoint(name, last position)
//!                                             └─ COMMIT ──► wait for changes() / poll ──► …
//! ```
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use herald::memory::MemoryStore;
//! use herald::projection::{EventFilter, Projection, ProjectionError, ProjectionRunner};
//! use herald::{ExpectedVersion, NewEvent, RecordedEvent, Store, Transaction};
//! use tokio_util::sync::CancellationToken;
//!
//! /// Counts orders placed (in memory here; a SQL read model writes its table through `tx`).
//! #[derive(Default)]
//! struct OrdersPlaced(Arc<AtomicU64>);
//!
//! #[async_trait::async_trait]
//! impl Projection for OrdersPlaced {
//!     fn name(&self) -> &str { "orders-placed" }
//!     fn filter(&self) -> EventFilter { EventFilter::all().names(["OrderPlaced.v1"]) }
//!     async fn handle(&self, tx: &mut dyn Transaction, _: &RecordedEvent) -> Result<(), ProjectionError> {
//!         let count = self.0.clone();
//!         tx.on_commit(Box::new(move || { count.fetch_add(1, Ordering::SeqCst); }));
//!         Ok(())
//!     }
//!     async fn reset(&self, tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
//!         let count = self.0.clone();
//!         tx.on_commit(Box::new(move || count.store(0, Ordering::SeqCst)));
//!         Ok(())
//!     }
//! }
//!
//! let store = Arc::new(MemoryStore::new());
//! store.append("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced.v1", b"{}".to_vec())]).await?;
//! let projection = Arc::new(OrdersPlaced::default());
//! let runner = ProjectionRunner::new(store.clone(), projection.clone());
//! let cancel = CancellationToken::new();
//! let task = runner.spawn(cancel.clone());
//! while runner.status().await?.events_behind > 0 {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! assert_eq!(projection.0.load(Ordering::SeqCst), 1);
//! cancel.cancel();
//! task.await??;
//! # Ok(()) }
//! ```
//!
//! # Contracts
//!
//! * **Exactly once per committed checkpoint.** The read-model writes of a batch and the
//!   checkpoint after it commit together or not at all. A crash (even `kill -9`) between two
//!   batches loses nothing; a crash inside one rolls the whole batch back, and the restarted
//!   runner replays it from the saved checkpoint. So every event's effect is in the read model
//!   exactly once, provided the projection writes only through the transaction it is given
//!   (its own tables via [`Transaction::as_any_mut`], e.g. `herald_sql::SqliteTransaction`, or
//!   in-memory state changed in a [`Transaction::on_commit`] hook).
//! * **Order.** Events reach [`Projection::handle`] (or [`Projection::handle_batch`]) in
//!   global-log position order,
//!   never skipping a committed event (store contract 4: the global log never skips). Events the
//!   [`EventFilter`] rejects are not handed to the projection but still move the checkpoint.
//! * **Resume and catch-up.** A runner starts after its saved checkpoint; a projection with no
//!   checkpoint (one added later) starts at the beginning of the log. Once caught up it follows
//!   the log live, woken by [`Store::changes`] (commits in this process) and polling every
//!   [`Store::poll_interval`] as a fallback (commits in other processes).
//! * **One runner per projection.** Each batch saves its checkpoint with
//!   [`Transaction::save_checkpoint_if`], conditional on the position the runner started the
//!   batch from: if another runner of the same projection (or a rebuild) moved it meanwhile,
//!   the save is refused, the batch rolls back, and the runner stops with
//!   [`RunError::CheckpointMoved`] rather than apply events twice. This holds on every store,
//!   also for two runners racing at the same instant.
//! * **Replicas.** Where every replica of a service runs the projection, use
//!   [`ProjectionRunner::run_leased`]: the runner works only while it holds the projection's
//!   lease ([`lease::projection_lease`]) and stands by
//!   otherwise, taking over when the holder stops or dies. Its checkpoint saves carry the
//!   lease's fencing token, so once a new holder has claimed the checkpoint a stale holder's
//!   batch is refused ([`StoreError::Fenced`]) and rolled back (ADR 0015).
//! * **Rebuild.** [`ProjectionRunner::rebuild`] calls [`Projection::reset`] and sets the
//!   checkpoint to 0 in one transaction (the read model is never seen half-cleared), then
//!   replays the log from the beginning up to the head it saw at the start, reporting
//!   [`Progress`]. Readers see the read model empty and then growing while it rebuilds.
//!
//! # Old event shapes
//!
//! Events stay in the log under the name and shape they were written with. Give the runner the
//! application's upcasters ([`RunnerConfig::registry`]) and every event is upcast before the
//! [`EventFilter`] and the projection see it — live, catching up and in a [rebuild](ProjectionRunner::rebuild)
//! alike — so a projection only knows the current names (ADR 0020). Projections read the
//! store's log only; messages from a broker topic reach a read model through a
//! [`Router`](crate::router::Router) route, which upcasts the same way.
//!
//! # Failures
//!
//! * A **transient** error ([`ProjectionError::is_transient`]: a database error, a conflict, or
//!   [`ProjectionError::Transient`]) rolls the batch back and retries it with exponential,
//!   jittered backoff ([`RunnerConfig::retry`]), for ever unless [`RunnerConfig::max_attempts`]
//!   is set; [`ProjectionRunner::status`] shows [`Phase::Retrying`] meanwhile.
//! * A **permanent** error from the projection on one event (an undecodable payload, an
//!   upcaster that refuses it, a bug)
//!   **stops the runner**: the batch is rolled back, replayed one event at a time to find the
//!   failing event, the events before it are committed with their checkpoint, and [`ProjectionRunner::run`] returns [`RunError::Event`] with the
//!   event's position, stream and name; the status shows [`Phase::Failed`]. Nothing is skipped
//!   silently: a read model that quietly missed an event would be wrong for ever. Fix the
//!   projection (or filter the event out) and run again; it resumes at the failing event.
//!
//! # Lag
//!
//! [`ProjectionRunner::status`] reports the projected position, the head of the log, the number
//! of positions behind, and the seconds behind: the `occurred_at` of the newest event minus that
//! of the last projected event (events carry no separate recorded-at time).

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::{CodecError, Registry, UPCAST_FROM};
use crate::lease::{self, Singleton};
use crate::router::RetryPolicy;
use crate::store::{RecordedEvent, Store, StoreError, Transaction};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A projection's failure on one event (or on [`reset`](Projection::reset)).
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The store failed; transient unless it is a codec or validation error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event did not decode: permanent.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Might succeed if the batch is retried (a lock timeout in the read model's table…).
    #[error("{0}")]
    Transient(#[source] BoxError),
    /// Will fail again on the same event: the runner stops.
    #[error("{0}")]
    Permanent(#[source] BoxError),
}

impl ProjectionError {
    /// A retryable error.
    pub fn transient(e: impl Into<BoxError>) -> Self {
        Self::Transient(e.into())
    }

    /// A non-retryable error.
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        Self::Permanent(e.into())
    }

    /// Whether retrying the batch may help: database errors, conflicts and
    /// [`Transient`](Self::Transient) errors.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => matches!(e, StoreError::Backend(_) | StoreError::Conflict { .. }),
            Self::Transient(_) => true,
            Self::Codec(_) | Self::Permanent(_) => false,
        }
    }
}

/// Why a runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The projection failed permanently on an event. Everything before it is committed; the
    /// checkpoint is `position - 1` (or the previous event's position), so the next run starts
    /// at this event.
    #[error(
        "projection `{projection}` failed on the event at position {position} (`{event}` in stream `{stream}`): {source}"
    )]
    Event {
        /// The projection.
        projection: String,
        /// The failing event's position.
        position: u64,
        /// Its stream.
        stream: String,
        /// Its name.
        event: String,
        /// What the projection said.
        #[source]
        source: Box<ProjectionError>,
    },
    /// The projection failed permanently on a batch, but on none of its events handled one at
    /// a time (its [`Projection::handle_batch`] disagrees with handling events one by one).
    /// Nothing of the batch is committed.
    #[error("projection `{projection}` failed on the batch of positions {first}..={last}: {source}")]
    Batch {
        /// The projection.
        projection: String,
        /// The batch's first position.
        first: u64,
        /// The batch's last position.
        last: u64,
        /// What the projection said.
        #[source]
        source: Box<ProjectionError>,
    },
    /// The store kept failing (past [`RunnerConfig::max_attempts`]) or failed permanently.
    #[error("projection `{projection}` stopped at position {position} after {attempts} attempt(s): {source}")]
    Store {
        /// The projection.
        projection: String,
        /// The checkpoint it had reached.
        position: u64,
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<ProjectionError>,
    },
    /// The checkpoint changed under the runner: another runner of the same projection, or a
    /// rebuild, is writing it.
    #[error("projection `{projection}`: checkpoint moved from {expected} to {found:?} (another runner or a rebuild?)")]
    CheckpointMoved {
        /// The projection.
        projection: String,
        /// Where this runner left it.
        expected: u64,
        /// What the store holds.
        found: Option<u64>,
    },
    /// A newer holder of the projection's lease saved the checkpoint: this runner's lease is
    /// lost ([`ProjectionRunner::run_leased`] stands by again rather than return it).
    #[error("projection `{projection}` was fenced off: {source}")]
    Fenced {
        /// The projection.
        projection: String,
        /// The store's refusal ([`StoreError::Fenced`]).
        #[source]
        source: StoreError,
    },
    /// [`ProjectionRunner::run`] or [`rebuild`](ProjectionRunner::rebuild) is already running
    /// on this runner.
    #[error("projection `{projection}` is already running")]
    AlreadyRunning {
        /// The projection.
        projection: String,
    },
    /// The runner's task panicked or was aborted ([`run_all`]).
    #[error("projection `{projection}` task ended abnormally: {reason}")]
    Aborted {
        /// The projection.
        projection: String,
        /// The join error.
        reason: String,
    },
}

/// Which events a projection wants; the rest are skipped without calling it (their positions
/// still move the checkpoint). The default accepts everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    names: Option<HashSet<String>>,
    stream_prefixes: Vec<String>,
}

impl EventFilter {
    /// Accepts every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Accepts only events with one of these names (adds to earlier names).
    #[must_use]
    pub fn names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.names.get_or_insert_with(HashSet::new).extend(names.into_iter().map(Into::into));
        self
    }

    /// Accepts only events whose stream starts with one of the given prefixes (call again to
    /// add a prefix).
    #[must_use]
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream_prefixes.push(prefix.into());
        self
    }

    /// Accepts only events of aggregate `A` (its streams, `"{TYPE}-…"`; call again, or add
    /// [`stream_prefix`](Self::stream_prefix)es, to accept several).
    #[must_use]
    pub fn aggregate<A: crate::aggregate::Aggregate>(self) -> Self {
        self.stream_prefix(format!("{}-", A::TYPE))
    }

    /// Whether the projection wants `event` (as it is: a runner with a
    /// [`registry`](RunnerConfig::registry) asks with the event upcast).
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.accepts_name(&event.name) && self.accepts_stream(&event.stream)
    }

    fn accepts_name(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|names| names.contains(name))
    }

    fn accepts_stream(&self, stream: &str) -> bool {
        self.stream_prefixes.is_empty() || self.stream_prefixes.iter().any(|p| stream.starts_with(p))
    }

    /// The event as the projection gets it, or `None` if the filter rejects it. With upcasters
    /// for its name, it is upcast first, to the first name of its chain the filter accepts by
    /// name (a filter naming `…v2` gets a `…v1` as `…v2`), or to the chain's last, current
    /// name when the filter names no events. A name the filter accepts as it is stays as it
    /// is. Only the upcasters up to that name run, and only for events the filter wants.
    fn prepare<'e>(
        &self,
        registry: &Registry,
        event: &'e RecordedEvent,
    ) -> Result<Option<Cow<'e, RecordedEvent>>, CodecError> {
        if !self.accepts_stream(&event.stream) {
            return Ok(None);
        }
        let chain = registry.upcast_chain(&event.name);
        let target = match &self.names {
            _ if chain.is_empty() => return Ok(self.accepts_name(&event.name).then_some(Cow::Borrowed(event))),
            Some(names) if names.contains(&event.name) => return Ok(Some(Cow::Borrowed(event))),
            Some(names) => chain.into_iter().find(|name| names.contains(*name)),
            None => chain.last().copied(),
        };
        let Some(target) = target else { return Ok(None) };
        let payload = registry.upcast_to(&event.name, &event.payload, target)?;
        let mut metadata = event.metadata.clone();
        metadata.headers.insert(UPCAST_FROM.to_owned(), event.name.clone());
        Ok(Some(Cow::Owned(RecordedEvent {
            stream: event.stream.clone(),
            version: event.version,
            position: event.position,
            id: event.id,
            name: target.to_owned(),
            payload,
            metadata,
        })))
    }
}

/// A read model built from the global log.
///
/// Write the read model only through the transaction passed in: that is what makes the effect
/// of each event exactly-once (see the [module docs](self)). [`downcast_tx`] reaches the
/// backend's transaction for the projection's own tables.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name; the checkpoint is saved under it. Renaming a projection rebuilds it.
    fn name(&self) -> &str;

    /// Which events to hand to [`handle`](Self::handle); asked once when a runner is made.
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// Applies one event to the read model, inside the batch's transaction.
    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError>;

    /// Applies a batch of events (those the filter accepts, in log order) inside one
    /// transaction. The default calls [`handle`](Self::handle) for each.
    ///
    /// Override it to write the read model in fewer statements — fold the batch in memory,
    /// then one statement per table (`UNNEST` arrays on PostgreSQL, `json_each` on SQLite):
    /// on a database across a network that is the difference between one round trip per
    /// event and one per batch. It must have the same effect as handling the events one by
    /// one: when it fails permanently, the runner rolls back and replays the batch one event at
    /// a time through this method (slices of one) to find the failing event.
    async fn handle_batch(&self, tx: &mut dyn Transaction, events: &[&RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            self.handle(tx, event).await?;
        }
        Ok(())
    }

    /// Clears the read model (for a rebuild), inside the transaction that also resets the
    /// checkpoint.
    async fn reset(&self, tx: &mut dyn Transaction) -> Result<(), ProjectionError>;
}

/// The backend's own transaction, e.g. `downcast_tx::<herald_sql::SqliteTransaction>(tx)`; a
/// permanent error if the store is a different backend.
pub fn downcast_tx<T: Any + Send>(tx: &mut dyn Transaction) -> Result<&mut T, ProjectionError> {
    tx.as_any_mut()
        .downcast_mut::<T>()
        .ok_or_else(|| ProjectionError::permanent(format!("the transaction is not a {}", std::any::type_name::<T>())))
}

/// How a runner batches, retries and upcasts.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Events per transaction (at most). Bigger batches amortise the commit; smaller ones hold
    /// the write lock for less time and show changes sooner. Default 500.
    pub batch_size: usize,
    /// Backoff between attempts after a transient error.
    pub retry: RetryPolicy,
    /// Give up after this many consecutive failed attempts (`None`: retry for ever).
    pub max_attempts: Option<u32>,
    /// Log progress (`tracing::info!`) every this many events while catching up or rebuilding.
    pub log_every: u64,
    /// Upcasters applied to every event read from the log — live, catching up and rebuilding —
    /// *before* the [`EventFilter`] and the projection see it, so a projection written for
    /// `…v2` (filtering on it, matching on the name, decoding it) also projects the `…v1`
    /// events still in the log. The event keeps its stream, version, position and id, and names
    /// its stored name in the [`UPCAST_FROM`] header. An upcaster that fails is a permanent
    /// error on that event: the runner stops there (see the module docs). Default: none.
    pub registry: Registry,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            retry: RetryPolicy {
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(10),
                multiplier: 2.0,
                jitter: 0.5,
            },
            max_attempts: None,
            log_every: 10_000,
            registry: Registry::new(),
        }
    }
}

impl RunnerConfig {
    /// Sets [`batch_size`](Self::batch_size) (at least 1).
    #[must_use]
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets the [`retry`](Self::retry) backoff.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets [`max_attempts`](Self::max_attempts).
    #[must_use]
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets [`log_every`](Self::log_every) (at least 1).
    #[must_use]
    pub fn log_every(mut self, n: u64) -> Self {
        self.log_every = n.max(1);
        self
    }

    /// Sets the upcasters applied to events before the projection sees them
    /// ([`registry`](Self::registry)).
    #[must_use]
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }
}

/// What a runner is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not started.
    Idle,
    /// Reading history.
    CatchingUp,
    /// Caught up, waiting for new commits.
    Live,
    /// Replaying from the beginning after a reset.
    Rebuilding,
    /// Waiting for the projection's lease, which another process holds
    /// ([`ProjectionRunner::run_leased`]).
    Standby,
    /// Waiting to retry after a transient error.
    Retrying {
        /// Consecutive failed attempts.
        attempt: u32,
        /// The last error.
        error: String,
    },
    /// Stopped by an error (see [`RunError`]).
    Failed {
        /// The error.
        error: String,
    },
    /// Stopped by its cancellation token (or a finished rebuild).
    Stopped,
}

/// A projection's lag behind the log.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionStatus {
    /// The projection.
    pub name: String,
    /// What the runner is doing.
    pub phase: Phase,
    /// The committed checkpoint: the last projected position.
    pub position: u64,
    /// The newest position in the log.
    pub head: u64,
    /// `head - position`: the events still to project (an upper bound where the backend's
    /// positions have holes, e.g. rolled-back PostgreSQL sequence values).
    pub events_behind: u64,
    /// `occurred_at` of the newest event minus that of the last projected one, in seconds
    /// (0 when caught up).
    pub seconds_behind: f64,
}

/// Progress of a catch-up or rebuild, published after every committed batch
/// ([`ProjectionRunner::progress`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Whether this is a [`rebuild`](ProjectionRunner::rebuild).
    pub rebuilding: bool,
    /// The committed checkpoint.
    pub position: u64,
    /// The head of the log when the run or rebuild started: `position / target` is how far it is.
    pub target: u64,
    /// Events read (handled or filtered out) since the start.
    pub events: u64,
    /// Events per second since the start.
    pub rate: f64,
    /// Time since the start.
    pub elapsed: Duration,
}

/// What a [`rebuild`](ProjectionRunner::rebuild) did.
#[derive(Clone, Debug, PartialEq)]
pub struct RebuildReport {
    /// The checkpoint reached.
    pub position: u64,
    /// The head it rebuilt up to (the log's head when the rebuild started).
    pub target: u64,
    /// Events replayed.
    pub events: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// Whether it reached the target (`false`: cancelled first).
    pub completed: bool,
}

#[derive(Debug)]
struct State {
    /// The committed checkpoint, once known.
    position: Option<u64>,
    /// `occurred_at` of the event at `position`, if known.
    position_time: Option<DateTime<Utc>>,
    phase: Phase,
    /// A position known to exist, where the head search starts.
    head_hint: u64,
}

struct Inner {
    store: Arc<dyn Store>,
    projection: Arc<dyn Projection>,
    name: String,
    filter: EventFilter,
    config: RunnerConfig,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
    active: AtomicBool,
    /// Wakes an idle leased runner of this process after a rebuild here reset the checkpoint,
    /// so it finds the reset at once rather than at its next poll (other processes' runners
    /// find it at theirs).
    reset_here: tokio::sync::Notify,
}

/// Runs one [`Projection`] against a store: catch up from its checkpoint, then follow live.
/// Cheap to clone (clones share the runner); [`status`](Self::status) and
/// [`progress`](Self::progress) work from any clone while [`run`](Self::run) is going.
#[derive(Clone)]
pub struct ProjectionRunner {
    inner: Arc<Inner>,
}

impl fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .field("state", &*self.state())
            .finish_non_exhaustive()
    }
}

/// Clears the `active` flag when a run or rebuild ends, however it ends.
struct Active<'a>(&'a AtomicBool);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How a batch attempt failed.
enum BatchFailure {
    /// Roll back, back off, retry the batch.
    Retry(ProjectionError),
    /// The projection failed permanently somewhere in the batch.
    Projection(ProjectionError),
    /// A non-retryable store error.
    Fatal(ProjectionError),
    /// Someone else moved the checkpoint.
    Moved(Option<u64>),
    /// A newer lease holder saved the checkpoint.
    Fenced(StoreError),
}

impl BatchFailure {
    fn store(e: StoreError) -> Self {
        match e {
            StoreError::Fenced { .. } if e.is_stale_lease() => return Self::Fenced(e),
            StoreError::Fenced { found, .. } => return Self::Moved(found),
            _ => {}
        }
        let e = ProjectionError::Store(e);
        if e.is_transient() { Self::Retry(e) } else { Self::Fatal(e) }
    }
}

impl ProjectionRunner {
    /// A runner with the default [`RunnerConfig`].
    pub fn new(store: Arc<dyn Store>, projection: Arc<dyn Projection>) -> Self {
        Self::with_config(store, projection, RunnerConfig::default())
    }

    /// A runner with `config`.
    pub fn with_config(store: Arc<dyn Store>, projection: Arc<dyn Projection>, config: RunnerConfig) -> Self {
        let name = projection.name().to_owned();
        let filter = projection.filter();
        let state = State { position: None, position_time: None, phase: Phase::Idle, head_hint: 0 };
        Self {
            inner: Arc::new(Inner {
                store,
                projection,
                name,
                filter,
                config,
                state: Mutex::new(state),
                progress: watch::Sender::new(Progress::default()),
                active: AtomicBool::new(false),
                reset_here: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Progress updates, one per committed batch (a `watch`: a slow reader sees the latest).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.inner.progress.subscribe()
    }

    /// What the runner is doing now (no store access; [`status`](Self::status) adds the lag).
    pub fn phase(&self) -> Phase {
        self.state().phase.clone()
    }

    /// [`run`](Self::run) on a new task.
    pub fn spawn(&self, cancel: CancellationToken) -> tokio::task::JoinHandle<Result<(), RunError>> {
        let runner = self.clone();
        tokio::spawn(async move { runner.run(cancel).await })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_phase(&self, phase: Phase) {
        self.state().phase = phase;
    }

    fn claim(&self) -> Result<Active<'_>, RunError> {
        if self.inner.active.swap(true, Ordering::AcqRel) {
            return Err(RunError::AlreadyRunning { projection: self.inner.name.clone() });
        }
        Ok(Active(&self.inner.active))
    }

    /// Projects the log from the saved checkpoint until `cancel` is cancelled: catch up, then
    /// follow live. Returns `Ok` when cancelled (after committing the batch in hand), or the
    /// error that stopped it (see the [module docs](self) for the failure policy).
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), RunError> {
        let _active = self.claim()?;
        let result = self.drive(&cancel, false, None, None).await;
        self.finish(&result);
        result.map(|_| ())
    }

    /// [`run`](Self::run) in one process at a time: runs only while holding the projection's
    /// lease ([`lease::projection_lease`]) as `holder` (unique among the running processes),
    /// renewing it every third of `ttl`, and stands by ([`Phase::Standby`]) while another
    /// process holds it, taking over when that one releases it or lets it run out. See
    /// [`Singleton`] for the hand-over.
    ///
    /// On taking the lease, the runner reloads the checkpoint and claims it with the grant's
    /// fencing token (a save of the same position), then saves every batch's checkpoint with
    /// that token: once claimed, a stale holder still running a batch cannot commit it
    /// ([`StoreError::Fenced`]). Returns `Ok` when `cancel` is cancelled (after the batch in
    /// hand; the lease is then released), or the error that stopped it, as `run` does.
    pub async fn run_leased(
        &self,
        holder: impl Into<String>,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> Result<(), RunError> {
        let _active = self.claim()?;
        self.set_phase(Phase::Standby);
        let singleton = Singleton::new(self.inner.store.clone(), self.lease_name(), holder, ttl);
        let result = singleton.run(cancel, |grant, cancel| self.lead(grant.token, cancel)).await;
        self.finish(&result);
        result
    }

    /// The name of this projection's lease in [`run_leased`](Self::run_leased).
    pub fn lease_name(&self) -> String {
        lease::projection_lease(&self.inner.name)
    }

    /// One tenure under the lease: claim the checkpoint with `token`, then project until
    /// `cancel`.
    async fn lead(&self, token: u64, cancel: CancellationToken) -> Result<(), RunError> {
        let result = self.lead_inner(token, &cancel).await;
        // Back to standby (the singleton either stands by or returns, and `finish` says which).
        let mut state = self.state();
        state.position = None;
        state.position_time = None;
        state.phase = Phase::Standby;
        result
    }

    async fn lead_inner(&self, token: u64, cancel: &CancellationToken) -> Result<(), RunError> {
        tracing::info!(projection = %self.inner.name, token, "projection lease taken; claiming the checkpoint");
        loop {
            match self.lead_from_checkpoint(token, cancel).await {
                // Under a lease nobody else saves the checkpoint, but a rebuild resets it
                // (`rebuild_leased`, maybe from another process): replay from where it is now.
                Err(RunError::CheckpointMoved { expected, found, .. }) => tracing::info!(
                    projection = %self.inner.name, expected, found,
                    "the checkpoint moved under the lease (a rebuild reset it): projecting from the stored checkpoint"
                ),
                other => return other,
            }
        }
    }

    /// Claims the checkpoint with `token` and projects from it until `cancel`.
    async fn lead_from_checkpoint(&self, token: u64, cancel: &CancellationToken) -> Result<(), RunError> {
        let mut attempt = 0;
        let position = loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            match self.claim_checkpoint(token).await {
                Ok(position) => break position,
                Err(BatchFailure::Moved(_)) => {} // a stale holder's batch landed first: read again
                Err(BatchFailure::Fenced(source)) => {
                    return Err(RunError::Fenced { projection: self.inner.name.clone(), source });
                }
                Err(BatchFailure::Retry(e) | BatchFailure::Fatal(e) | BatchFailure::Projection(e)) => {
                    attempt += 1;
                    if !self.backoff(cancel, attempt, 0, e).await? {
                        return Ok(());
                    }
                }
            }
        };
        {
            let mut state = self.state();
            state.position = Some(position);
            state.position_time = None;
        }
        self.drive(cancel, false, None, Some(token)).await.map(|_| ())
    }

    /// Saves the checkpoint where it is, with fencing token `token`: from then on, saves with an
    /// older token are refused. Returns the position.
    async fn claim_checkpoint(&self, token: u64) -> Result<u64, BatchFailure> {
        let name = &self.inner.name;
        let mut tx = self.inner.store.begin().await.map_err(BatchFailure::store)?;
        let position = tx.load_checkpoint(name).await.map_err(BatchFailure::store)?.unwrap_or(0);
        tx.save_checkpoint_if(name, position, position, Some(token)).await.map_err(BatchFailure::store)?;
        tx.commit().await.map_err(BatchFailure::store)?;
        Ok(position)
    }

    /// Projects what is in the log now, from the checkpoint up to the head at the call, then
    /// returns the checkpoint reached (a batch job, a command-line tool, a test). Like
    /// [`run`](Self::run), it refuses to run twice at once.
    pub async fn catch_up(&self, cancel: CancellationToken) -> Result<u64, RunError> {
        let _active = self.claim()?;
        let from = self.load_position(&cancel).await?.unwrap_or(0);
        let target = self.head_position(&cancel, from).await?;
        let result = self.drive(&cancel, false, Some(target), None).await;
        self.finish(&result);
        result.map(|(position, _)| position)
    }

    /// Rebuilds the read model from scratch: [`Projection::reset`] and checkpoint 0 in one
    /// transaction, then a replay up to the log's head at the start, publishing [`Progress`]
    /// (and logging every [`RunnerConfig::log_every`] events). Run it while [`run`](Self::run)
    /// is not running (it returns [`RunError::AlreadyRunning`] otherwise); call `run` after it
    /// to follow the log live again.
    pub async fn rebuild(&self, cancel: CancellationToken) -> Result<RebuildReport, RunError> {
        let _active = self.claim()?;
        self.set_phase(Phase::Rebuilding);
        let started = Instant::now();
        let result = self.rebuild_inner(&cancel, started).await;
        self.finish(&result);
        result
    }

    async fn rebuild_inner(&self, cancel: &CancellationToken, started: Instant) -> Result<RebuildReport, RunError> {
        let name = self.inner.name.clone();
        if !self.reset_retrying(cancel).await? {
            return Ok(RebuildReport {
                position: self.state().position.unwrap_or(0),
                target: 0,
                events: 0,
                elapsed: started.elapsed(),
                completed: false,
            });
        }
        {
            let mut state = self.state();
            state.position = Some(0);
            state.position_time = None;
        }
        let target = self.head_position(cancel, 0).await?;
        let (position, events) = self.drive(cancel, true, Some(target), None).await?;
        let elapsed = started.elapsed();
        let completed = position >= target;
        tracing::info!(
            projection = %name, position, target, events, elapsed_ms = elapsed.as_millis() as u64,
            rate = rate(events, elapsed), completed, "projection rebuild finished"
        );
        Ok(RebuildReport { position, target, events, elapsed, completed })
    }

    /// Resets the read model and the checkpoint (retrying transient errors); `false` if
    /// `cancel` fired first.
    async fn reset_retrying(&self, cancel: &CancellationToken) -> Result<bool, RunError> {
        tracing::info!(projection = %self.inner.name, "projection rebuild: resetting the read model");
        let mut attempt = 0;
        loop {
            match self.reset_once().await {
                Ok(()) => return Ok(true),
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    if !self.backoff(cancel, attempt, 0, e).await? {
                        return Ok(false);
                    }
                }
                Err(e) => {
                    return Err(RunError::Store {
                        projection: self.inner.name.clone(),
                        position: 0,
                        attempts: attempt + 1,
                        source: Box::new(e),
                    });
                }
            }
        }
    }

    /// Rebuilds a projection whose runners run under [`run_leased`](Self::run_leased), in this
    /// process or others, without stopping them: resets the read model and the checkpoint to 0
    /// in one transaction, and the lease holder — whichever process it is — finds its
    /// checkpoint moved under its lease and replays the log from there. Returns once the
    /// checkpoint has reached the log's head as it was at the reset, or when `cancel` fires
    /// (`completed: false`). The report's `events` counts the events this process replayed
    /// (0 when another process holds the lease). Needs a holder: while no runner of the
    /// projection is alive, it waits.
    pub async fn rebuild_leased(&self, cancel: CancellationToken) -> Result<RebuildReport, RunError> {
        let started = Instant::now();
        let mut progress = self.inner.progress.subscribe();
        let not_done =
            |position| RebuildReport { position, target: 0, events: 0, elapsed: started.elapsed(), completed: false };
        if !self.reset_retrying(&cancel).await? {
            return Ok(not_done(0));
        }
        // A permit if the runner is busy: its next idle wait then checks at once.
        self.inner.reset_here.notify_one();
        // No `mark_unchanged` here: the lease holder may replay the whole log between the
        // reset and this point (a small log on SQLite), and its progress must still count.
        // What was published before the reset was seen at `subscribe`.
        let target = self.head_position(&cancel, 0).await?;
        let store = &*self.inner.store;
        let mut attempt = 0;
        // `here`: this process's runner published progress since the reset, so it is the one
        // replaying (its first report, at position 0, may come before any event is counted).
        let (mut events, mut seen, mut here) = (0, 0, false);
        loop {
            let position = match store.load_checkpoint(&self.inner.name).await {
                Ok(position) => position.unwrap_or(0),
                Err(e) => {
                    attempt += 1;
                    if !self.backoff(&cancel, attempt, 0, e.into()).await? {
                        return Ok(not_done(0));
                    }
                    continue;
                }
            };
            if progress.has_changed().unwrap_or(false) {
                let p = progress.borrow_and_update();
                (events, seen, here) = (p.events, p.position, true);
            }
            if position >= target && seen < target && here {
                // This process replays, and publishes its progress just after each commit:
                // give the last one a moment so the report counts the whole replay.
                let last =
                    tokio::time::timeout(Duration::from_millis(200), progress.wait_for(|p| p.position >= target));
                if let Ok(Ok(p)) = last.await {
                    events = p.events;
                }
            }
            if position >= target {
                let elapsed = started.elapsed();
                tracing::info!(
                    projection = %self.inner.name, position, target, events_here = events,
                    elapsed_ms = elapsed.as_millis() as u64, "projection rebuild (by the lease holder) finished"
                );
                return Ok(RebuildReport { position, target, events, elapsed, completed: true });
            }
            // This process's runner publishes its progress after each commit; another
            // process's is seen at the poll.
            tokio::select! {
                () = tokio::time::sleep(store.poll_interval()) => {}
                Ok(()) = progress.changed() => {
                    let p = progress.borrow_and_update();
                    (events, seen, here) = (p.events, p.position, true);
                }
                () = cancel.cancelled() => return Ok(RebuildReport { target, ..not_done(position) }),
            }
        }
    }

    async fn reset_once(&self) -> Result<(), ProjectionError> {
        let mut tx = self.inner.store.begin().await?;
        // The checkpoint first: it locks the row a runner's batch saves last, so a batch in
        // flight either committed before this reset (and its writes are reset too) or is
        // refused after it (its checkpoint moved) and rolls back.
        tx.save_checkpoint(&self.inner.name, 0).await?;
        self.inner.projection.reset(tx.as_mut()).await?;
        tx.commit().await?;
        Ok(())
    }

    fn finish<T>(&self, result: &Result<T, RunError>) {
        match result {
            Ok(_) => self.set_phase(Phase::Stopped),
            Err(e) => {
                tracing::error!(projection = %self.inner.name, error = %e, "projection stopped");
                let mut state = self.state();
                state.phase = Phase::Failed { error: e.to_string() };
                if matches!(e, RunError::CheckpointMoved { .. } | RunError::Fenced { .. }) {
                    // Someone else owns the checkpoint now: a later run starts from the store's.
                    state.position = None;
                    state.position_time = None;
                }
            }
        }
    }

    /// Waits until the projection has projected every event that is in the log now (its
    /// committed checkpoint reached the head), e.g. before a test reads the read model.
    /// Returns the checkpoint. Waits as long as it takes: the runner must be running (wrap in
    /// a timeout); an error only if the store fails.
    pub async fn wait_caught_up(&self) -> Result<u64, StoreError> {
        let store = &*self.inner.store;
        let hint = self.state().head_hint;
        let head = find_head(store, hint).await?.map_or(0, |e| e.position);
        let mut progress = self.inner.progress.subscribe();
        loop {
            // The checkpoint as committed (a runner that resumes at the head publishes no
            // progress, so the store has the last word).
            let position = store.load_checkpoint(&self.inner.name).await?.unwrap_or(0);
            if position >= head {
                return Ok(position);
            }
            // Woken by the next committed batch; the timeout re-reads the checkpoint in case
            // another runner of this projection (another process) moves it.
            let _ = tokio::time::timeout(Duration::from_millis(200), progress.changed()).await;
        }
    }

    /// The lag: checkpoint, head of the log, events and seconds behind. Reads the store (the
    /// head is found with a few indexed `read_all` look-ups from the last known head).
    pub async fn status(&self) -> Result<ProjectionStatus, StoreError> {
        let (phase, known, mut position_time, hint) = {
            let s = self.state();
            (s.phase.clone(), s.position, s.position_time, s.head_hint)
        };
        let store = &*self.inner.store;
        let position = match known {
            Some(p) => p,
            None => store.load_checkpoint(&self.inner.name).await?.unwrap_or(0),
        };
        let head_event = find_head(store, hint.max(position)).await?;
        let head = head_event.as_ref().map_or(0, |e| e.position).max(position);
        self.state().head_hint = head;
        let events_behind = head - position;
        let mut seconds_behind = 0.0;
        if let (Some(newest), true) = (&head_event, events_behind > 0) {
            if position_time.is_none() {
                // The projected event's time, or (nothing projected yet) the oldest event's.
                let after = position.saturating_sub(1);
                position_time = store.read_all(after, 1).await?.first().map(|e| e.metadata.occurred_at);
            }
            if let Some(t) = position_time {
                seconds_behind = ((newest.metadata.occurred_at - t).num_milliseconds().max(0) as f64) / 1000.0;
            }
        }
        crate::observability::record_projection_lag(&self.inner.name, events_behind, seconds_behind);
        Ok(ProjectionStatus { name: self.inner.name.clone(), phase, position, head, events_behind, seconds_behind })
    }

    /// The log's head position, retrying transient errors.
    async fn head_position(&self, cancel: &CancellationToken, from: u64) -> Result<u64, RunError> {
        let mut attempt = 0;
        loop {
            match find_head(&*self.inner.store, from).await {
                Ok(e) => {
                    let head = e.map_or(from, |e| e.position).max(from);
                    let mut state = self.state();
                    state.head_hint = state.head_hint.max(head);
                    return Ok(head);
                }
                Err(e) => {
                    attempt += 1;
                    if !self.backoff(cancel, attempt, from, e.into()).await? {
                        return Ok(from);
                    }
                }
            }
        }
    }

    /// The saved checkpoint (or the one this runner already knows), retrying transient errors.
    async fn load_position(&self, cancel: &CancellationToken) -> Result<Option<u64>, RunError> {
        if let Some(p) = self.state().position {
            return Ok(Some(p));
        }
        let mut attempt = 0;
        loop {
            match self.inner.store.load_checkpoint(&self.inner.name).await {
                Ok(p) => {
                    let p = p.unwrap_or(0);
                    self.state().position = Some(p);
                    return Ok(Some(p));
                }
                Err(e) => {
                    attempt += 1;
                    if !self.backoff(cancel, attempt, 0, e.into()).await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// After a failed attempt: gives up (`Err`) on a permanent error or past `max_attempts`,
    /// otherwise waits the backoff delay; `Ok(false)` if cancelled meanwhile.
    async fn backoff(
        &self,
        cancel: &CancellationToken,
        attempt: u32,
        position: u64,
        error: ProjectionError,
    ) -> Result<bool, RunError> {
        let config = &self.inner.config;
        if !error.is_transient() || config.max_attempts.is_some_and(|max| attempt >= max) {
            return Err(RunError::Store {
                projection: self.inner.name.clone(),
                position,
                attempts: attempt,
                source: Box::new(error),
            });
        }
        let delay = config.retry.delay(attempt);
        tracing::warn!(
            projection = %self.inner.name, position, attempt, error = %error,
            delay_ms = delay.as_millis() as u64, "projection batch failed; retrying"
        );
        let previous =
            std::mem::replace(&mut self.state().phase, Phase::Retrying { attempt, error: error.to_string() });
        let go_on = tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = cancel.cancelled() => false,
        };
        let mut state = self.state();
        if matches!(state.phase, Phase::Retrying { .. }) {
            state.phase = match previous {
                Phase::Retrying { .. } => Phase::CatchingUp,
                other => other,
            };
        }
        Ok(go_on)
    }

    /// The loop shared by `run` (`until: None`: follow for ever) and `rebuild` (stop at
    /// `until`); `fence` is the lease's fencing token under `run_leased`. Returns the position
    /// reached and the number of events read.
    async fn drive(
        &self,
        cancel: &CancellationToken,
        rebuilding: bool,
        until: Option<u64>,
        fence: Option<u64>,
    ) -> Result<(u64, u64), RunError> {
        let Some(mut position) = self.load_position(cancel).await? else {
            return Ok((0, 0));
        };
        if !rebuilding {
            self.set_phase(Phase::CatchingUp);
        }
        let target = match until {
            Some(t) => t,
            None => self.head_position(cancel, position).await?,
        };
        let started = Instant::now();
        let mut events = 0u64;
        let mut next_log = self.inner.config.log_every;
        self.inner.progress.send_replace(Progress {
            rebuilding,
            position,
            target,
            events: 0,
            rate: 0.0,
            elapsed: Duration::ZERO,
        });
        let store = &*self.inner.store;
        let batch_size = self.inner.config.batch_size;
        let mut attempt = 0u32;
        // The next batch, read while the previous one was being committed.
        let mut prefetched: Option<Vec<RecordedEvent>> = None;
        loop {
            if cancel.is_cancelled() || until.is_some_and(|t| position >= t) {
                return Ok((position, events));
            }
            let changed = store.changes().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let read = match prefetched.take() {
                Some(batch) => Ok(batch),
                None => store.read_all(position, batch_size).await,
            };
            let batch = match read {
                Ok(batch) => batch,
                Err(e) => {
                    attempt += 1;
                    if !self.backoff(cancel, attempt, position, e.into()).await? {
                        return Ok((position, events));
                    }
                    continue;
                }
            };
            let Some(last) = batch.last() else {
                if until.is_some() {
                    return Ok((position, events)); // the target was a hole; nothing more to do
                }
                self.set_phase(Phase::Live);
                tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep(store.poll_interval()) => {}
                    () = self.inner.reset_here.notified(), if fence.is_some() => {}
                    () = cancel.cancelled() => {}
                }
                if fence.is_some() && !cancel.is_cancelled() {
                    // Idle under a lease: a rebuild may have reset the checkpoint meanwhile
                    // (a batch would find out; with no new events none comes).
                    if let Ok(found) = store.load_checkpoint(&self.inner.name).await
                        && found.unwrap_or(0) != position
                    {
                        return Err(RunError::CheckpointMoved {
                            projection: self.inner.name.clone(),
                            expected: position,
                            found,
                        });
                    }
                }
                continue;
            };
            let (last_position, last_time) = (last.position, last.metadata.occurred_at);
            if !rebuilding && batch.len() == batch_size {
                self.set_phase(Phase::CatchingUp); // a full batch: probably behind
            }
            // A full batch means more is probably waiting: read it (another connection) while
            // this batch commits, so reading and writing overlap.
            let more = batch.len() == batch_size && until.is_none_or(|t| last_position < t);
            let (committed, next) = if more {
                tokio::join!(self.commit_batch(position, &batch, fence), store.read_all(last_position, batch_size))
            } else {
                (self.commit_batch(position, &batch, fence).await, Ok(Vec::new()))
            };
            match committed {
                Ok(()) => {
                    attempt = 0;
                    // An empty or failed read is simply redone (after arming the wake-up).
                    prefetched = next.ok().filter(|next| !next.is_empty());
                }
                Err(BatchFailure::Retry(e)) => {
                    attempt += 1;
                    if !self.backoff(cancel, attempt, position, e).await? {
                        return Ok((position, events));
                    }
                    continue;
                }
                Err(BatchFailure::Fatal(e)) => {
                    return Err(RunError::Store {
                        projection: self.inner.name.clone(),
                        position,
                        attempts: attempt + 1,
                        source: Box::new(e),
                    });
                }
                Err(BatchFailure::Moved(found)) => {
                    return Err(RunError::CheckpointMoved {
                        projection: self.inner.name.clone(),
                        expected: position,
                        found,
                    });
                }
                Err(BatchFailure::Fenced(source)) => {
                    return Err(RunError::Fenced { projection: self.inner.name.clone(), source });
                }
                Err(BatchFailure::Projection(error)) => {
                    return Err(self.fail_in_batch(position, &batch, error, fence).await);
                }
            }
            position = last_position;
            events += batch.len() as u64;
            {
                let mut state = self.state();
                state.position = Some(position);
                state.position_time = Some(last_time);
                state.head_hint = state.head_hint.max(position);
            }
            let elapsed = started.elapsed();
            let rate = rate(events, elapsed);
            self.inner.progress.send_replace(Progress {
                rebuilding,
                position,
                target: target.max(position),
                events,
                rate,
                elapsed,
            });
            if events >= next_log {
                next_log = events + self.inner.config.log_every;
                tracing::info!(
                    projection = %self.inner.name, position, target, events, rate = rate as u64,
                    rebuilding, "projection progress"
                );
            }
        }
    }

    /// One batch in one transaction: hand the events the filter accepts to the projection,
    /// save the checkpoint if it is still at `expected` (and, with a `fence`, no newer lease
    /// holder saved it), commit.
    async fn commit_batch(
        &self,
        expected: u64,
        batch: &[RecordedEvent],
        fence: Option<u64>,
    ) -> Result<(), BatchFailure> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let name = &self.inner.name;
        let mut tx = self.inner.store.begin().await.map_err(BatchFailure::store)?;
        let prepared: Vec<Cow<'_, RecordedEvent>> =
            batch.iter().filter_map(|e| self.prepare(e).transpose()).collect::<Result<_, _>>().map_err(|e| {
                // An upcaster refused an event: permanent; `fail_in_batch` finds which one.
                BatchFailure::Projection(ProjectionError::Codec(e))
            })?;
        let accepted: Vec<&RecordedEvent> = prepared.iter().map(AsRef::as_ref).collect();
        if !accepted.is_empty() {
            self.inner.projection.handle_batch(tx.as_mut(), &accepted).await.map_err(|error| {
                if error.is_transient() { BatchFailure::Retry(error) } else { BatchFailure::Projection(error) }
            })?;
        }
        tx.save_checkpoint_if(name, expected, last.position, fence).await.map_err(BatchFailure::store)?;
        tx.commit().await.map_err(BatchFailure::store)
    }

    /// `event` as the projection gets it (upcast), or `None` if its filter rejects it.
    fn prepare<'e>(&self, event: &'e RecordedEvent) -> Result<Option<Cow<'e, RecordedEvent>>, CodecError> {
        self.inner.filter.prepare(&self.inner.config.registry, event)
    }

    /// The projection failed permanently on the batch: find the failing event by replaying the
    /// batch one event at a time (then rolling that back), commit the events before it with
    /// their checkpoint (so the next run starts at the failing event), and report it.
    async fn fail_in_batch(
        &self,
        position: u64,
        batch: &[RecordedEvent],
        error: ProjectionError,
        fence: Option<u64>,
    ) -> RunError {
        let name = &self.inner.name;
        let Some((index, error)) = self.locate_failure(batch).await else {
            // Not reproducible event by event (or the store failed meanwhile): report the batch.
            let (first, last) = (batch.first().map_or(0, |e| e.position), batch.last().map_or(0, |e| e.position));
            return RunError::Batch { projection: name.clone(), first, last, source: Box::new(error) };
        };
        let before = &batch[..index];
        if let Some(last) = before.last() {
            match self.commit_batch(position, before, fence).await {
                Ok(()) => {
                    let mut state = self.state();
                    state.position = Some(last.position);
                    state.position_time = Some(last.metadata.occurred_at);
                }
                Err(_) => tracing::warn!(
                    projection = %name, position,
                    "could not commit the events before the failing one; the checkpoint stays"
                ),
            }
        }
        let event = &batch[index];
        RunError::Event {
            projection: name.clone(),
            position: event.position,
            stream: event.stream.clone(),
            event: event.name.clone(),
            source: Box::new(error),
        }
    }

    /// Replays `batch` event by event in a transaction that is rolled back; the index (in
    /// `batch`) and error of the first event that fails permanently.
    async fn locate_failure(&self, batch: &[RecordedEvent]) -> Option<(usize, ProjectionError)> {
        let mut tx = self.inner.store.begin().await.ok()?;
        for (index, event) in batch.iter().enumerate() {
            let event = match self.prepare(event) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(e) => return Some((index, ProjectionError::Codec(e))),
            };
            if let Err(error) = self.inner.projection.handle_batch(tx.as_mut(), &[event.as_ref()]).await {
                return (!error.is_transient()).then_some((index, error));
            }
        }
        None // dropping `tx` rolls the replay back
    }
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { events as f64 / secs } else { 0.0 }
}

/// The newest event of the log, found from `from` (a position known to exist, or 0) with a
/// galloping search over [`Store::read_all`] (each look-up reads one event by index), so it is
/// cheap when `from` is near the head. Concurrent appends may make it return an event a little
/// older than the newest, never a position that does not exist.
pub async fn find_head(store: &dyn Store, from: u64) -> Result<Option<RecordedEvent>, StoreError> {
    async fn after(store: &dyn Store, position: u64) -> Result<Option<RecordedEvent>, StoreError> {
        Ok(store.read_all(position, 1).await?.into_iter().next())
    }
    let Some(mut last) = after(store, from).await? else {
        // Nothing after `from`: `from` itself is the head (if it is a position at all).
        return if from == 0 { Ok(None) } else { after(store, from - 1).await };
    };
    // Gallop: probe ever further past the newest event seen until a probe finds nothing.
    let mut step = 1u64;
    let mut high = loop {
        let probe = last.position.saturating_add(step);
        match after(store, probe).await? {
            Some(e) => {
                last = e;
                step = step.saturating_mul(2);
            }
            None => break probe,
        }
    };
    // Nothing lies after `high`; the head is in (last.position, high]. Bisect.
    loop {
        let low = last.position;
        if high <= low {
            return Ok(Some(last));
        }
        let mid = low + (high - low) / 2;
        match after(store, mid).await? {
            Some(e) => last = e,
            None if mid == low => return Ok(Some(last)),
            None => high = mid,
        }
    }
}

/// Runs several projections, each with its own runner (independently: one failing does not stop
/// the others), until `cancel` is cancelled. Returns each runner's outcome, by name, in the
/// order given, once all have stopped.
pub async fn run_all(
    runners: impl IntoIterator<Item = ProjectionRunner>,
    cancel: CancellationToken,
) -> Vec<(String, Result<(), RunError>)> {
    let handles: Vec<_> =
        runners.into_iter().map(|runner| (runner.name().to_owned(), runner.spawn(cancel.clone()))).collect();
    let mut results = Vec::with_capacity(handles.len());
    for (name, handle) in handles {
        let result = match handle.await {
            Ok(r) => r,
            Err(e) => Err(RunError::Aborted { projection: name.clone(), reason: e.to_string() }),
        };
        results.push((name, result));
    }
    results
}
