//! The router: subscriptions in, handlers chosen by message name, middleware around them, and
//! a settlement policy (ack, retry later, dead-letter) out.
//!
//! ```text
//! subscription ──► per-key lanes ──► [middleware …] ──► handler
//!                                          │                 │ (in a Transaction when a store is set:
//!                                          ▼                 │  own state + outbox + inbox, one commit)
//!                         Ok → commit → ack; Err → RetryPolicy: nack(backoff) or dead letter
//! ```
//!
//! * **Per-key order with concurrency.** Deliveries with different keys run concurrently (up to
//!   the subscription's `max_in_flight`); deliveries with the same key run one after another in
//!   arrival order. Brokers with [`Capabilities::per_key_order`](crate::Capabilities) also hold
//!   back later messages of a key while one is being retried, so a failing key never blocks
//!   other keys and is never overtaken by its own later messages.
//! * **Versioned dispatch.** With a [`Registry`] ([`Router::registry`]), a message sent under
//!   an old name (`…v1`: in flight during a deploy, replayed from the dead letters, re-read by a
//!   new group) is upcast to the name a route has a handler for (`…v2`) *before* the handler
//!   is chosen, and remembers its old name in the [`UPCAST_FROM`] header; a failing upcaster
//!   dead-letters it with the reason (ADR 0020).
//! * **Retries** are broker redeliveries: a failed attempt is nacked with an exponential,
//!   jittered delay ([`RetryPolicy`]), so a retrying message holds no worker while it waits. The
//!   subscription's `max_deliveries` is the attempt limit; after it the broker dead-letters the
//!   message with the last error as the reason. Permanent errors (an undecodable payload, an
//!   unknown event) are dead-lettered at once.
//! * **Unit of work.** With a [`Store`], each delivery gets a [`Transaction`]; the handler writes
//!   its state and outgoing messages through it; the [`Inbox`] middleware records the message id
//!   in it; commit happens before ack. A crash before the commit redelivers; after it, the inbox
//!   skips the duplicate.
//! * **Observability.** Every delivery is handled in a `handle` span whose parent is the
//!   producer's span (the message's trace context, see [`observability`]),
//!   and counted by outcome with its duration (`herald_messages_handled_total`, `…_failed_total`,
//!   `…_dead_lettered_total`, `herald_handler_duration_seconds`); failures are logged once, here.
//! * **Graceful shutdown.** [`Router::run`] stops taking deliveries when its token is cancelled,
//!   waits for in-flight handlers up to the shutdown timeout, and releases queued deliveries
//!   for immediate redelivery.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use std::future::Future;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::codec::{CodecError, EventSet, Registry};
use crate::message::{Message, MessageId};
use crate::observability::{self, HandleOutcome, HandlerMetrics};
use crate::parking::{ParkingLot, is_discard_notice, release_message};
use crate::pubsub::{Delivery, PubSubError, SubscribeOptions, Subscriber, Subscription};
use crate::store::{Store, StoreError, Transaction};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A handler's failure, classified by what the router should do about it.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (a database hiccup, a conflict, a timeout): retry with backoff.
    #[error("{0}")]
    Transient(#[source] BoxError),
    /// Will never succeed (bad payload, a bug): dead-letter now.
    #[error("{0}")]
    Permanent(#[source] BoxError),
}

impl HandlerError {
    /// A retryable error.
    pub fn transient(e: impl Into<BoxError>) -> Self {
        Self::Transient(e.into())
    }

    /// A non-retryable error.
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        Self::Permanent(e.into())
    }

    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }

    /// The error the handler failed with.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match self {
            Self::Transient(e) | Self::Permanent(e) => e.as_ref(),
        }
    }

    /// Whether the error, or one in its source chain, is a `T`.
    pub fn source_is<T: std::error::Error + 'static>(&self) -> bool {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self.inner());
        while let Some(e) = next {
            if e.is::<T>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

impl From<CodecError> for HandlerError {
    fn from(e: CodecError) -> Self {
        Self::Permanent(Box::new(e))
    }
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Codec(_) | StoreError::Invalid(_) | StoreError::Fenced { .. } => Self::Permanent(Box::new(e)),
            StoreError::Conflict { .. } | StoreError::Backend(_) => Self::Transient(Box::new(e)),
        }
    }
}

impl From<PubSubError> for HandlerError {
    fn from(e: PubSubError) -> Self {
        Self::Transient(Box::new(e))
    }
}

/// What a handler sees: the message, its attempt, and (with a store) the unit of work.
pub struct HandlerContext {
    message: Message,
    attempt: u32,
    handler: Arc<str>,
    registry: Registry,
    tx: Option<Box<dyn Transaction>>,
    /// Where `tx` came from, so a handler can start over ([`HandlerContext::restart_tx`]).
    store: Option<Arc<dyn Store>>,
}

impl fmt::Debug for HandlerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext")
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .field("handler", &self.handler)
            .field("has_tx", &self.tx.is_some())
            .finish_non_exhaustive()
    }
}

impl HandlerContext {
    /// A context for calling a handler directly (tests, custom dispatch).
    pub fn new(message: Message, attempt: u32, handler: &str, tx: Option<Box<dyn Transaction>>) -> Self {
        Self { message, attempt, handler: handler.into(), registry: Registry::new(), tx, store: None }
    }

    /// Sets the store that [`restart_tx`](Self::restart_tx) begins a new transaction on.
    #[must_use]
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Rolls back everything the transaction holds so far and begins a fresh one, e.g. to
    /// record only a failure reply after a command failed half-way. An error without a store.
    pub async fn restart_tx(&mut self) -> Result<(), HandlerError> {
        let Some(store) = self.store.clone() else {
            return Err(HandlerError::permanent(format!(
                "handler `{}` needs a store to restart its transaction but the router has none",
                self.handler
            )));
        };
        drop(self.tx.take()); // rolls back
        self.tx = Some(store.begin().await?);
        Ok(())
    }

    /// The message being handled.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// 1 on the first delivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The handler's name (the inbox key).
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// The unit of work; an error if the router has no store.
    pub fn tx(&mut self) -> Result<&mut dyn Transaction, HandlerError> {
        match self.tx.as_deref_mut() {
            Some(tx) => Ok(tx),
            None => Err(HandlerError::permanent(format!(
                "handler `{}` needs a transaction but the router has no store",
                self.handler
            ))),
        }
    }

    /// Queues messages in the outbox, marked as caused by the message being handled; they are
    /// published after the transaction commits. Runs in a `publish` span whose trace context
    /// the messages carry (unless they already carry one), so their handlers continue this
    /// trace.
    pub async fn publish(&mut self, mut messages: Vec<Message>) -> Result<(), HandlerError> {
        let span = observability::publish_span(&messages);
        span.in_scope(|| {
            for m in &mut messages {
                observability::fill_current(&mut m.metadata);
                m.metadata.continue_from(&self.message);
            }
        });
        self.tx()?.enqueue(messages).instrument(span).await?;
        Ok(())
    }

    /// Decodes the message as `E`, upcasting old shapes.
    pub fn decode<E: EventSet>(&self) -> Result<E, CodecError> {
        self.registry.decode(&self.message.name, &self.message.payload)
    }

    /// Takes the transaction out (the router commits it after the handler chain succeeds).
    pub fn take_tx(&mut self) -> Option<Box<dyn Transaction>> {
        self.tx.take()
    }
}

/// Handles messages.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Handles the context's message.
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError>;

    /// What the handler needs from the router; [`Router::start`] refuses to start without it.
    fn needs(&self) -> Needs {
        Needs::NOTHING
    }
}

/// What a [`Handler`] or [`Middleware`] needs from the router, checked once by
/// [`Router::start`] so that a set-up mistake fails at start instead of dead-lettering every
/// message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Needs {
    /// A store ([`Router::store`]): the unit of work (inbox, outbox, replies).
    pub store: bool,
}

impl Needs {
    /// Nothing.
    pub const NOTHING: Self = Self { store: false };
    /// A store.
    pub const STORE: Self = Self { store: true };
}

/// The rest of the chain, for a [`Middleware`] to call.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    middleware: &'a [Arc<dyn Middleware>],
    handler: &'a dyn Handler,
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").field("remaining_middleware", &self.middleware.len()).finish()
    }
}

impl Next<'_> {
    /// Runs the next middleware, or the handler.
    pub async fn run(self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        match self.middleware.split_first() {
            Some((first, rest)) => first.call(cx, Next { middleware: rest, handler: self.handler }).await,
            None => self.handler.handle(cx).await,
        }
    }
}

/// Wraps handling: tracing, timeouts, de-duplication, metrics…
#[async_trait]
pub trait Middleware: Send + Sync {
    /// Does its part and (usually) calls `next`.
    async fn call(&self, cx: &mut HandlerContext, next: Next<'_>) -> Result<(), HandlerError>;

    /// What the middleware needs from the router; [`Router::start`] refuses to start without it.
    fn needs(&self) -> Needs {
        Needs::NOTHING
    }

    /// Its name in start-up errors.
    fn name(&self) -> &'static str {
        short_type_name::<Self>()
    }
}

/// `Inbox` for `herald::router::Inbox`: the name a newcomer wrote.
fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    // Generic arguments would hold `::` too; cut before them.
    let head = full.split('<').next().unwrap_or(full);
    head.rsplit("::").next().unwrap_or(head)
}

/// Fails a handler that runs longer than the limit (a transient error: it will be retried).
#[derive(Debug, Clone, Copy)]
pub struct Timeout(pub Duration);

#[async_trait]
impl Middleware for Timeout {
    async fn call(&self, cx: &mut HandlerContext, next: Next<'_>) -> Result<(), HandlerError> {
        match tokio::time::timeout(self.0, next.run(cx)).await {
            Ok(result) => result,
            Err(_) => Err(HandlerError::transient(format!("handler timed out after {:?}", self.0))),
        }
    }
}

/// Idempotent consumer: records `(handler, message id)` in the unit of work and skips a message
/// the handler has already handled. Needs a store on the router.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbox;

#[async_trait]
impl Middleware for Inbox {
    async fn call(&self, cx: &mut HandlerContext, next: Next<'_>) -> Result<(), HandlerError> {
        let (handler, id) = (cx.handler.clone(), cx.message.id);
        if cx.tx()?.record_handled(&handler, id).await? {
            next.run(cx).await
        } else {
            tracing::debug!(%handler, message.id = %id, "duplicate skipped by the inbox");
            Ok(())
        }
    }

    fn needs(&self) -> Needs {
        Needs::STORE
    }
}

/// How long to wait between attempts: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the second attempt.
    pub initial_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Fraction of the delay that is randomised (0 = none, 1 = "full jitter").
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 200 ms, doubling up to 60 s, half of it jittered.
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// Doubling delays from `initial_delay` (capped at 60 s, half jittered).
    pub fn exponential(initial_delay: Duration) -> Self {
        Self { initial_delay, ..Self::default() }
    }

    /// Caps every delay.
    #[must_use]
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Sets the growth per attempt (1 = a fixed delay).
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the randomised fraction of each delay (0..=1).
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        let base = (self.initial_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(base * (1.0 - jitter * fastrand::f64()))
    }
}

type Classifier = Arc<dyn Fn(&HandlerError) -> bool + Send + Sync>;

/// Everything about a route's retries in one place ([`Route::retry`]): the delay between
/// attempts, how many attempts before the message is dead-lettered, and which errors are not
/// worth retrying.
///
/// ```
/// # use std::time::Duration;
/// # use herald::router::{Retry, HandlerError};
/// # #[derive(Debug, thiserror::Error)] #[error("bad input")] struct Rejected;
/// let retry = Retry::exponential(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(5))
///     .attempts(4)
///     // A handler's `Rejected` will never succeed, however it was classified.
///     .permanent_if(|e: &HandlerError| e.source_is::<Rejected>());
/// ```
#[derive(Clone)]
pub struct Retry {
    backoff: RetryPolicy,
    attempts: Option<u32>,
    permanent_if: Option<Classifier>,
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("backoff", &self.backoff)
            .field("attempts", &self.attempts)
            .field("permanent_if", &self.permanent_if.is_some())
            .finish()
    }
}

impl Default for Retry {
    /// [`RetryPolicy::default`]'s delays, the subscription's `max_deliveries` attempts.
    fn default() -> Self {
        Self::with(RetryPolicy::default())
    }
}

impl From<RetryPolicy> for Retry {
    fn from(backoff: RetryPolicy) -> Self {
        Self::with(backoff)
    }
}

impl Retry {
    /// Retries with these delays.
    pub fn with(backoff: RetryPolicy) -> Self {
        Self { backoff, attempts: None, permanent_if: None }
    }

    /// Doubling delays from `initial_delay` (see [`RetryPolicy::exponential`]).
    pub fn exponential(initial_delay: Duration) -> Self {
        Self::with(RetryPolicy::exponential(initial_delay))
    }

    /// Never retries: the first failure dead-letters the message.
    pub fn never() -> Self {
        Self::default().attempts(1)
    }

    /// Caps every delay.
    #[must_use]
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.backoff = self.backoff.max_delay(max_delay);
        self
    }

    /// At most this many attempts (deliveries), then the message is dead-lettered with the
    /// last error. Sets the subscription's `max_deliveries`.
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = Some(attempts.max(1));
        self
    }

    /// Treats the errors for which `f` is true as permanent (dead-lettered at once), whatever
    /// the handler called them.
    #[must_use]
    pub fn permanent_if(mut self, f: impl Fn(&HandlerError) -> bool + Send + Sync + 'static) -> Self {
        self.permanent_if = Some(Arc::new(f));
        self
    }

    /// The delays between attempts.
    pub fn backoff(&self) -> &RetryPolicy {
        &self.backoff
    }

    fn is_permanent(&self, e: &HandlerError) -> bool {
        e.is_permanent() || self.permanent_if.as_ref().is_some_and(|f| f(e))
    }
}

/// An async function or closure that handles one typed input `In` (an event set, a command)
/// and answers `Out`: `async fn f(cx: &mut HandlerContext, event: E) -> Result<Out, HandlerError>`
/// or `async |cx: &mut HandlerContext, event: E| { … }`. Implemented for every such function;
/// a handler that needs state of its own is a struct implementing [`Handler`] instead (an
/// async closure that captures cannot yet promise a `Send` future on stable Rust).
pub trait HandlerFn<'a, In, Out>: Send + Sync + 'static {
    /// The future the call returns.
    type Future: Future<Output = Result<Out, HandlerError>> + Send + 'a;
    /// Calls the function.
    fn call(&'a self, cx: &'a mut HandlerContext, input: In) -> Self::Future;
}

impl<'a, In, Out, F, Fut> HandlerFn<'a, In, Out> for F
where
    In: 'a,
    F: Fn(&'a mut HandlerContext, In) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Out, HandlerError>> + Send + 'a,
{
    type Future = Fut;

    fn call(&'a self, cx: &'a mut HandlerContext, input: In) -> Fut {
        self(cx, input)
    }
}

/// Decodes the message as `E` for a typed handler, naming the route and the type on failure.
pub(crate) fn decode_for<E: EventSet>(cx: &HandlerContext) -> Result<E, HandlerError> {
    cx.decode::<E>().map_err(|e| {
        HandlerError::permanent(format!(
            "route `{}`: message `{}` does not decode as `{}`: {e}",
            cx.handler,
            cx.message.name,
            short_type_name::<E>()
        ))
    })
}

/// [`HandlerFn`] with state: an async function or closure taking `(&mut HandlerContext, In, &S)`,
/// where `S` is the state given to [`Route::on_with`] (a pool, a client, a counter…). The
/// closure gets the state as an argument instead of capturing it, so it stays a plain
/// `async |cx: &mut HandlerContext, event: E, state: &S| { … }`.
pub trait HandlerFnWith<'a, S, In, Out>: Send + Sync + 'static {
    /// The future the call returns.
    type Future: Future<Output = Result<Out, HandlerError>> + Send + 'a;
    /// Calls the function.
    fn call(&'a self, cx: &'a mut HandlerContext, input: In, state: &'a S) -> Self::Future;
}

impl<'a, S, In, Out, F, Fut> HandlerFnWith<'a, S, In, Out> for F
where
    S: 'a,
    In: 'a,
    F: Fn(&'a mut HandlerContext, In, &'a S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Out, HandlerError>> + Send + 'a,
{
    type Future = Fut;

    fn call(&'a self, cx: &'a mut HandlerContext, input: In, state: &'a S) -> Fut {
        self(cx, input, state)
    }
}

/// A [`HandlerFnWith`] and its state, as a [`HandlerFn`].
pub(crate) struct WithState<S, F> {
    pub(crate) state: S,
    pub(crate) f: F,
}

impl<'a, S, In, Out, F> HandlerFn<'a, In, Out> for WithState<S, F>
where
    S: Send + Sync + 'static,
    F: HandlerFnWith<'a, S, In, Out>,
{
    type Future = F::Future;

    fn call(&'a self, cx: &'a mut HandlerContext, input: In) -> F::Future {
        self.f.call(cx, input, &self.state)
    }
}

/// A typed function as a [`Handler`]: decodes `E`, calls it.
struct OnEvent<E, F>(F, std::marker::PhantomData<fn() -> E>);

#[async_trait]
impl<E, F> Handler for OnEvent<E, F>
where
    E: EventSet,
    F: for<'a> HandlerFn<'a, E, ()>,
{
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let event = decode_for::<E>(cx)?;
        self.0.call(cx, event).await
    }
}

/// The handlers of one subscription, chosen by message name.
pub struct Route {
    name: Arc<str>,
    options: SubscribeOptions,
    handlers: HashMap<String, Registered>,
    fallback: Option<Arc<dyn Handler>>,
    ignore_unknown: bool,
    retry: Option<Retry>,
    /// Whether a dead letter parks its key's later messages ([`Route::park_behind_dead_letters`]).
    parks: bool,
    /// Set-up mistakes found while building (two handlers for one name…), reported by
    /// [`Router::start`].
    problems: Vec<String>,
}

/// A handler and the Rust type it was registered for (for error messages).
#[derive(Clone)]
struct Registered {
    handler: Arc<dyn Handler>,
    for_type: &'static str,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("retry", &self.retry)
            .field("parks", &self.parks)
            .finish()
    }
}

impl Route {
    /// A route named after the group (the name is the inbox key, so keep it stable).
    pub fn new(options: SubscribeOptions) -> Self {
        Self {
            name: options.group.as_str().into(),
            options,
            handlers: HashMap::new(),
            fallback: None,
            ignore_unknown: true,
            retry: None,
            parks: false,
            problems: Vec::new(),
        }
    }

    /// Renames the route (and so its inbox key).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// The route's name (its inbox key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the route subscribes.
    pub fn options(&self) -> &SubscribeOptions {
        &self.options
    }

    /// Changes where a new group of this route starts (see
    /// [`StartFrom`](crate::pubsub::StartFrom)).
    #[must_use]
    pub fn start_from(mut self, start: crate::pubsub::StartFrom) -> Self {
        self.options.start = start;
        self
    }

    /// Retries of this route's failed messages: delays, attempts (the subscription's
    /// `max_deliveries`), and which errors are permanent. Without it, the router's
    /// [`Router::retry`] delays and the subscription's `max_deliveries` apply.
    #[must_use]
    pub fn retry(mut self, retry: impl Into<Retry>) -> Self {
        let retry = retry.into();
        if let Some(attempts) = retry.attempts {
            self.options.max_deliveries = attempts;
        }
        self.retry = Some(retry);
        self
    }

    /// Handles every event of `E` — one event type, or an [`event_set!`](crate::event_set) of
    /// several — with `f`, an async function or closure taking `(&mut HandlerContext, E)`:
    ///
    /// ```
    /// # use herald::router::{HandlerContext, HandlerError, Route};
    /// # use herald::SubscribeOptions;
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Deposited { cents: i64 }
    /// # impl herald::Event for Deposited { const NAME: &'static str = "bank.Deposited.v1"; }
    /// let route = Route::new(SubscribeOptions::new("bank.accounts", "mailer"))
    ///     .on(async |cx: &mut HandlerContext, e: Deposited| {
    ///         println!("{} cents in {}", e.cents, cx.message().key);
    ///         Ok::<_, HandlerError>(())
    ///     });
    /// ```
    ///
    /// The type is written once, so the names routed and the type decoded cannot disagree; a
    /// name that already has a handler on this route is a start-up error.
    #[must_use]
    pub fn on<E, F>(self, f: F) -> Self
    where
        E: EventSet,
        F: for<'a> HandlerFn<'a, E, ()>,
    {
        self.register::<E>(Arc::new(OnEvent(f, std::marker::PhantomData)))
    }

    /// Like [`on`](Self::on), for a handler that needs state: `f` gets `&state` as its third
    /// argument.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::sync::atomic::{AtomicU64, Ordering};
    /// # use herald::router::{HandlerContext, HandlerError, Route};
    /// # use herald::SubscribeOptions;
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize)] struct Deposited { cents: i64 }
    /// # impl herald::Event for Deposited { const NAME: &'static str = "bank.Deposited.v1"; }
    /// let total = Arc::new(AtomicU64::new(0));
    /// let route = Route::new(SubscribeOptions::new("bank.accounts", "totals"))
    ///     .on_with(total.clone(), async |_cx: &mut HandlerContext, e: Deposited, total: &Arc<AtomicU64>| {
    ///         total.fetch_add(e.cents as u64, Ordering::Relaxed);
    ///         Ok::<_, HandlerError>(())
    ///     });
    /// ```
    #[must_use]
    pub fn on_with<E, S, F>(self, state: S, f: F) -> Self
    where
        E: EventSet,
        S: Send + Sync + 'static,
        F: for<'a> HandlerFnWith<'a, S, E, ()>,
    {
        self.on(WithState { state, f })
    }

    /// Handles every event name of `E` with a [`Handler`] that decodes `E` itself (e.g. a
    /// struct with state of its own).
    #[must_use]
    pub fn on_handler<E: EventSet>(self, handler: impl Handler + 'static) -> Self {
        self.register::<E>(Arc::new(handler))
    }

    pub(crate) fn register<E: EventSet>(mut self, handler: Arc<dyn Handler>) -> Self {
        let for_type = short_type_name::<E>();
        for name in E::names() {
            let registered = Registered { handler: handler.clone(), for_type };
            if let Some(earlier) = self.handlers.insert((*name).to_owned(), registered) {
                self.problems.push(format!(
                    "`{name}` has two handlers (for `{}` and for `{for_type}`); register each event once",
                    earlier.for_type
                ));
            }
        }
        self
    }

    /// Handles messages named `name` with an untyped handler.
    #[must_use]
    pub fn on_name(mut self, name: impl Into<String>, handler: impl Handler + 'static) -> Self {
        let name = name.into();
        let registered = Registered { handler: Arc::new(handler), for_type: "(untyped)" };
        if self.handlers.insert(name.clone(), registered).is_some() {
            self.problems.push(format!("`{name}` has two handlers; register each name once"));
        }
        self
    }

    /// Handles every message whose name has no handler of its own, nor an upcast chain that
    /// reaches one (e.g. a saga's replies, whatever their names). The fallback gets the message
    /// as sent, never upcast (it takes any name, so which shape it wants is its own call:
    /// [`HandlerContext::decode`] upcasts). Replaces [`ignore_unknown`](Self::ignore_unknown).
    #[must_use]
    pub fn fallback(mut self, handler: impl Handler + 'static) -> Self {
        self.fallback = Some(Arc::new(handler));
        self
    }

    /// By default a message no handler knows — not under its own name, nor under a later name
    /// the router's [`Registry`] upcasts it to — is acknowledged and skipped (topics carry
    /// events for many consumers). With `false`, it is dead-lettered as unknown instead.
    #[must_use]
    pub fn ignore_unknown(mut self, ignore: bool) -> Self {
        self.ignore_unknown = ignore;
        self
    }

    /// Sequence-aware parking: once a message of a key is dead-lettered, this route's later
    /// messages of that key are parked (acknowledged and kept in the router's
    /// [`ParkingLot`]) until the dead letter is replayed or discarded, then handled in their
    /// order (see [`crate::parking`]). Needs a store and a lot in it ([`Router::parking`]).
    /// For handlers that must see a key's messages in order, on brokers with per-key order.
    #[must_use]
    pub fn park_behind_dead_letters(mut self) -> Self {
        self.parks = true;
        self
    }

    /// Chooses the handler for `message` and the message as that handler gets it:
    ///
    /// 1. a handler registered for the message's own name gets it as sent;
    /// 2. otherwise, if `registry` upcasts the name, the first name along its chain
    ///    ([`Registry::upcast_chain`]) that has a handler here wins: the message is upcast to
    ///    that name (name and payload; the upcasters run only now, and only that far) and
    ///    carries the name it was sent under in the [`UPCAST_FROM`] header;
    /// 3. otherwise the fallback gets it as sent (a fallback takes any name, so the router
    ///    cannot know which shape it wants: it decodes through
    ///    [`HandlerContext::decode`], which upcasts);
    /// 4. otherwise it is unknown, as before upcasting existed.
    fn select<'m>(&self, registry: &Registry, message: &'m Message) -> Selection<'m> {
        if let Some(registered) = self.handlers.get(&message.name) {
            return Selection::Handle(registered.handler.clone(), Cow::Borrowed(message));
        }
        let target = registry.upcast_chain(&message.name).into_iter().find(|name| self.handlers.contains_key(*name));
        if let Some((target, registered)) = target.and_then(|t| self.handlers.get_key_value(t)) {
            return match registry.upcast_to(&message.name, &message.payload, target) {
                Ok(payload) => {
                    Selection::Handle(registered.handler.clone(), Cow::Owned(upcast(message, target, payload)))
                }
                Err(e) => Selection::UpcastFailed(format!(
                    "route `{}`: upcasting message `{}` to `{target}` (the name its handler is registered for) failed: {e}",
                    self.name, message.name
                )),
            };
        }
        match &self.fallback {
            Some(fallback) => Selection::Handle(fallback.clone(), Cow::Borrowed(message)),
            None => Selection::Unknown,
        }
    }

    fn all_handlers(&self) -> impl Iterator<Item = &Arc<dyn Handler>> {
        self.handlers.values().map(|r| &r.handler).chain(self.fallback.as_ref())
    }
}

/// The header naming what an upcast message was sent as (defined with the codec, where the
/// projections find it too).
pub use crate::codec::UPCAST_FROM;

/// What a route does with a message ([`Route::select`]).
// Lives for one dispatch on the stack; boxing the big variant would cost an allocation per
// delivery to save a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
enum Selection<'m> {
    /// Run this handler on this message: as sent, or upcast to the handler's name.
    Handle(Arc<dyn Handler>, Cow<'m, Message>),
    /// No handler, no upcast chain that reaches one, no fallback: skipped or dead-lettered, as
    /// [`Route::ignore_unknown`] says.
    Unknown,
    /// A handler waits under a later name, but an upcaster refused the message (the reason):
    /// a permanent error, dead-lettered at once.
    UpcastFailed(String),
}

/// `message` renamed to `name` with the upcast `payload`, remembering its old name in
/// [`UPCAST_FROM`]; id, topic, key and the rest of the metadata unchanged.
fn upcast(message: &Message, name: &str, payload: Vec<u8>) -> Message {
    let mut metadata = message.metadata.clone();
    metadata.headers.insert(UPCAST_FROM.to_owned(), message.name.clone());
    Message {
        id: message.id,
        name: name.to_owned(),
        topic: message.topic.clone(),
        key: message.key.clone(),
        payload,
        metadata,
    }
}

/// A router that cannot start: a set-up mistake, or a subscription the broker refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The routes, middleware and store do not fit together (found before subscribing).
    #[error("route `{route}`: {problem}")]
    Setup {
        /// The route's name.
        route: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The broker refused a route's subscription.
    #[error("route `{route}`: subscribing to `{topic}` failed: {source}")]
    Subscribe {
        /// The route's name.
        route: String,
        /// Its topic.
        topic: String,
        /// The broker's error.
        #[source]
        source: PubSubError,
    },
}

/// Runs routes until shut down. Build with [`Router::new`], then [`Router::run`].
pub struct Router {
    subscriber: Arc<dyn Subscriber>,
    store: Option<Arc<dyn Store>>,
    registry: Registry,
    middleware: Vec<Arc<dyn Middleware>>,
    retry: RetryPolicy,
    shutdown_timeout: Duration,
    routes: Vec<Route>,
    parking: Option<Arc<dyn ParkingLot>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("subscriber", &self.subscriber)
            .field("store", &self.store)
            .field("routes", &self.routes)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router reading from `subscriber`.
    pub fn new(subscriber: Arc<dyn Subscriber>) -> Self {
        Self {
            subscriber,
            store: None,
            registry: Registry::new(),
            middleware: Vec::new(),
            retry: RetryPolicy::default(),
            shutdown_timeout: Duration::from_secs(10),
            routes: Vec::new(),
            parking: None,
        }
    }

    /// Runs every delivery in a transaction of `store`, committed before the ack.
    ///
    /// On SQLite, the transaction takes the database's single write lock at its first
    /// statement (not before the handler runs) and holds it until the commit: a handler that
    /// does slow work that is not the database's (an HTTP call…) should do it before its first
    /// statement, or publish a message and let another route do it.
    #[must_use]
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Where routes that [park behind dead letters](Route::park_behind_dead_letters) keep a
    /// key's held-back messages: a lot that lives in the router's [`store`](Self::store) (its
    /// changes join the handler's transaction), e.g. the SQL store itself or a
    /// [`MemoryParkingLot`](crate::memory::MemoryParkingLot) beside a memory store.
    #[must_use]
    pub fn parking(mut self, lot: Arc<dyn ParkingLot>) -> Self {
        self.parking = Some(lot);
        self
    }

    /// Upcasters, used twice: *before* a route chooses its handler — a message whose name has
    /// no handler but an upcast chain that reaches one is upcast (name and payload) and handled
    /// by the handler of its current name (see [`UPCAST_FROM`]; an upcaster that fails
    /// dead-letters the message with the reason) — and when a handler decodes
    /// ([`HandlerContext::decode`]). Without it (an empty registry) messages are dispatched by
    /// the name they were sent under.
    #[must_use]
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Adds a middleware; the first added is the outermost.
    #[must_use]
    pub fn middleware(mut self, m: impl Middleware + 'static) -> Self {
        self.middleware.push(Arc::new(m));
        self
    }

    /// The delays between attempts for routes without a [`Route::retry`] of their own.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long shutdown waits for in-flight handlers.
    #[must_use]
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Adds a route.
    #[must_use]
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Adds routes (e.g. a module's `routes()`).
    #[must_use]
    pub fn routes(mut self, routes: impl IntoIterator<Item = Route>) -> Self {
        self.routes.extend(routes);
        self
    }

    /// Subscribes every route and handles deliveries until `shutdown` is cancelled, then drains
    /// (see the module docs). Fails only at start (see [`Router::start`]).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        self.start(shutdown).await?.wait().await;
        Ok(())
    }

    /// Checks the set-up, subscribes every route, then handles deliveries in the background
    /// until `shutdown` is cancelled. When this returns, every subscription exists: on a broker
    /// whose groups only receive what is published after they subscribe (RabbitMQ queues),
    /// start the router before the outbox relay and the producers.
    ///
    /// # Errors
    /// [`StartError::Setup`] before subscribing anything if a route or middleware is
    /// mis-configured: a middleware or handler that needs a store (the [`Inbox`], command
    /// handlers, the dead-letter archive) on a router without one, an event registered twice,
    /// a route without handlers; [`StartError::Subscribe`] if the broker refuses a
    /// subscription.
    pub async fn start(self, shutdown: CancellationToken) -> Result<RunningRouter, StartError> {
        self.check()?;
        let tasks = TaskTracker::new();
        let activity = Arc::new(Activity::default());
        let mut subscriptions = Vec::new();
        for route in self.routes {
            let subscription = self.subscriber.subscribe(route.options.clone()).await.map_err(|source| {
                StartError::Subscribe { route: route.name.to_string(), topic: route.options.topic.clone(), source }
            })?;
            let dispatcher = Arc::new(Dispatcher {
                metrics: HandlerMetrics::new(&route.options.topic, &route.name),
                retry: route.retry.clone().unwrap_or_else(|| Retry::with(self.retry)),
                parking: if route.parks { self.parking.clone() } else { None },
                route,
                store: self.store.clone(),
                registry: self.registry.clone(),
                middleware: self.middleware.clone(),
                lanes: Mutex::new(HashMap::new()),
                draining: CancellationToken::new(),
                activity: activity.clone(),
            });
            subscriptions.push((subscription, dispatcher));
        }
        let dispatchers: Vec<_> = subscriptions.iter().map(|(_, d)| d.clone()).collect();
        for (mut subscription, dispatcher) in subscriptions {
            let shutdown = shutdown.clone();
            let workers = tasks.clone();
            let subscriber = self.subscriber.clone();
            tasks.spawn(async move {
                loop {
                    let delivery = tokio::select! {
                        () = shutdown.cancelled() => break,
                        d = subscription.next() => d,
                    };
                    match delivery {
                        Some(delivery) => dispatcher.clone().dispatch(delivery, &workers),
                        // The subscription ended without a shutdown (its subscriber closed, or an
                        // adapter gave up): never leave the route silently dead.
                        None => match resubscribe(&*subscriber, &dispatcher.route, &shutdown).await {
                            Some(fresh) => subscription = fresh,
                            None => break,
                        },
                    }
                }
                // Fetched but not started: hand back for immediate redelivery elsewhere.
                for d in subscription.close_and_drain() {
                    release(d);
                }
            });
        }
        let shutdown_timeout = self.shutdown_timeout;
        let drained = tokio::spawn(async move {
            shutdown.cancelled().await;
            for d in &dispatchers {
                d.draining.cancel();
            }
            tasks.close();
            if tokio::time::timeout(shutdown_timeout, tasks.wait()).await.is_err() {
                tracing::warn!(timeout = ?shutdown_timeout, "shutdown timed out; unsettled messages will be redelivered");
            }
        });
        Ok(RunningRouter { drained, activity })
    }

    /// Finds the set-up mistakes that would otherwise dead-letter every message.
    fn check(&self) -> Result<(), StartError> {
        let setup = |route: &Route, problem: String| StartError::Setup { route: route.name.to_string(), problem };
        for route in &self.routes {
            if let Some(problem) = route.problems.first() {
                return Err(setup(route, problem.clone()));
            }
            if route.handlers.is_empty() && route.fallback.is_none() {
                return Err(setup(route, "has no handler; add one with `.on(…)`".into()));
            }
            if route.parks && (self.store.is_none() || self.parking.is_none()) {
                let problem = "parks behind dead letters, which needs a store and a parking lot in it: add `.store(…)` and `.parking(…)`".into();
                return Err(setup(route, problem));
            }
            if self.store.is_none() {
                if let Some(m) = self.middleware.iter().find(|m| m.needs().store) {
                    let problem = format!(
                        "middleware `{}` needs a store (the unit of work it records in), and the router has none: add `.store(…)`",
                        m.name()
                    );
                    return Err(setup(route, problem));
                }
                if route.all_handlers().any(|h| h.needs().store) {
                    let problem = "a handler needs a store (it writes through the unit of work: a reply, an archive…), and the router has none: add `.store(…)`".into();
                    return Err(setup(route, problem));
                }
            }
        }
        Ok(())
    }

    /// Runs one message through the route named `route` as a delivery would — middleware,
    /// handler, the unit of work committed on success — without a broker: for tests of a
    /// route's whole chain. Returns the handler's error (after retry classification) instead
    /// of settling anything.
    ///
    /// # Errors
    /// A permanent error if no route has that name or the route has no handler for the
    /// message; otherwise what the chain returned, or the commit's error.
    pub async fn handle_now(&self, route: &str, message: Message) -> Result<(), HandlerError> {
        let Some(r) = self.routes.iter().find(|r| &*r.name == route) else {
            return Err(HandlerError::permanent(format!("no route named `{route}`")));
        };
        let (handler, handled) = match r.select(&self.registry, &message) {
            Selection::Handle(handler, handled) => (handler, crate::dead_letters::as_handled(&handled)),
            Selection::Unknown => {
                return Err(HandlerError::permanent(format!("route `{route}` has no handler for `{}`", message.name)));
            }
            Selection::UpcastFailed(reason) => return Err(HandlerError::permanent(reason)),
        };
        let tx = match &self.store {
            Some(store) => Some(store.begin().await?),
            None => None,
        };
        let mut cx = HandlerContext {
            message: handled,
            attempt: 1,
            handler: r.name.clone(),
            registry: self.registry.clone(),
            tx,
            store: self.store.clone(),
        };
        run_chain(&self.middleware, handler.as_ref(), &mut cx).await
    }
}

/// Runs middleware and handler, then commits the unit of work if they succeeded.
async fn run_chain(
    middleware: &[Arc<dyn Middleware>],
    handler: &dyn Handler,
    cx: &mut HandlerContext,
) -> Result<(), HandlerError> {
    Next { middleware, handler }.run(cx).await?;
    if let Some(tx) = cx.tx.take() {
        tx.commit().await?;
    }
    Ok(())
}

/// What a running router has done so far (see [`RunningRouter::wait_until`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterStats {
    /// Deliveries taken and not yet settled (running, or queued behind their key).
    pub in_flight: u64,
    /// Messages handled and acknowledged.
    pub handled: u64,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Messages dead-lettered (permanent errors, attempts exhausted, unknown names).
    pub dead_lettered: u64,
    /// Messages acknowledged without a handler (names this route does not handle, discard
    /// notices, replays for other groups).
    pub skipped: u64,
    /// Messages parked behind a dead letter of their key (acknowledged; handled when released).
    pub parked: u64,
}

impl RouterStats {
    /// Nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0
    }

    /// Deliveries settled for good: handled, dead-lettered, skipped or parked.
    pub fn settled(&self) -> u64 {
        self.handled + self.dead_lettered + self.skipped + self.parked
    }
}

/// The counters behind [`RouterStats`], shared by a router's dispatchers.
#[derive(Debug)]
struct Activity {
    stats: tokio::sync::watch::Sender<RouterStats>,
}

impl Default for Activity {
    fn default() -> Self {
        Self { stats: tokio::sync::watch::Sender::new(RouterStats::default()) }
    }
}

impl Activity {
    fn update(&self, f: impl FnOnce(&mut RouterStats)) {
        self.stats.send_modify(f);
    }
}

/// A router whose routes are all subscribed and handling deliveries (see [`Router::start`]).
#[derive(Debug)]
#[must_use = "dropping it does not stop the router; cancel its shutdown token and wait"]
pub struct RunningRouter {
    drained: tokio::task::JoinHandle<()>,
    activity: Arc<Activity>,
}

impl RunningRouter {
    /// What the router has done so far.
    pub fn stats(&self) -> RouterStats {
        *self.activity.stats.borrow()
    }

    /// Waits until `condition` holds for the router's stats, e.g. in a test
    /// `router.wait_until(|s| s.settled() >= 6 && s.is_idle()).await` — all six messages
    /// settled and nothing else in flight. Wrap it in a timeout: it waits as long as it takes.
    pub async fn wait_until(&self, mut condition: impl FnMut(&RouterStats) -> bool) -> RouterStats {
        let mut rx = self.activity.stats.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let stats = rx.wait_for(|s| condition(s)).await.map(|s| *s);
        stats.unwrap_or_else(|_| self.stats())
    }

    /// Waits until the router has shut down and drained (its shutdown token was cancelled).
    pub async fn wait(self) {
        if let Err(e) = self.drained.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Subscribes a route again after its subscription ended, with backoff (100 ms doubling to
/// 30 s) until it works, the router shuts down (`None`), or the subscriber is closed (`None`,
/// logged as an error: the route stops).
async fn resubscribe(subscriber: &dyn Subscriber, route: &Route, shutdown: &CancellationToken) -> Option<Subscription> {
    let mut backoff = Duration::from_millis(100);
    loop {
        tracing::warn!(route = %route.name, topic = %route.options.topic, ?backoff, "subscription ended; subscribing again");
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        match subscriber.subscribe(route.options.clone()).await {
            Ok(subscription) => return Some(subscription),
            Err(PubSubError::Closed) => {
                tracing::error!(route = %route.name, "the subscriber is closed; this route stops");
                return None;
            }
            Err(e) => {
                tracing::warn!(route = %route.name, error = %e, "subscribing again failed");
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Dispatches one route's deliveries: lanes per key, the chain, the settlement.
struct Dispatcher {
    route: Route,
    store: Option<Arc<dyn Store>>,
    registry: Registry,
    middleware: Vec<Arc<dyn Middleware>>,
    /// The route's retries, or the router's delays.
    retry: Retry,
    /// The lot, when the route parks behind dead letters.
    parking: Option<Arc<dyn ParkingLot>>,
    /// Keys with a delivery in progress, and the deliveries of that key waiting behind it.
    lanes: Mutex<HashMap<String, VecDeque<Delivery>>>,
    /// Cancelled at shutdown: queued deliveries are released instead of started.
    draining: CancellationToken,
    /// The route's metrics, labelled with its subscription's topic and its name.
    metrics: HandlerMetrics,
    /// The router's stats, shared by its routes.
    activity: Arc<Activity>,
}

impl Dispatcher {
    fn dispatch(self: Arc<Self>, delivery: Delivery, tasks: &TaskTracker) {
        self.activity.update(|s| s.in_flight += 1);
        let key = delivery.message.key.clone();
        if !key.is_empty() {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(queue) = lanes.get_mut(&key) {
                queue.push_back(delivery);
                return;
            }
            lanes.insert(key.clone(), VecDeque::new());
        }
        tasks.spawn(async move {
            let mut next = Some(delivery);
            while let Some(d) = next.take() {
                self.process(d).await;
                self.activity.update(|s| s.in_flight -= 1);
                if key.is_empty() {
                    break;
                }
                let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
                next = lanes.get_mut(&key).and_then(VecDeque::pop_front);
                if next.is_none() {
                    lanes.remove(&key);
                }
            }
        });
    }

    async fn process(&self, delivery: Delivery) {
        if self.draining.is_cancelled() {
            release(delivery);
            return;
        }
        // A replay of a dead letter is for the group that failed it only (see `dead_letters`).
        if crate::dead_letters::is_replay_for_another_group(&delivery.message, &self.route.options.group) {
            self.activity.update(|s| s.skipped += 1);
            log_settle_error(delivery.ack().await);
            return;
        }
        if is_discard_notice(&delivery.message) {
            self.on_discard_notice(delivery).await;
            return;
        }
        let (handler, span, message) = match self.route.select(&self.registry, &delivery.message) {
            Selection::Handle(handler, handled) => {
                // The span names the message as the handler gets it (its transport id, its
                // current name); an upcast one also says what it was sent as.
                let span = observability::handle_span(&handled, &self.route.name, delivery.attempt);
                if let Cow::Owned(upcast) = &handled {
                    tracing::debug!(
                        parent: &span, message.upcast_from = %delivery.message.name, message.name = %upcast.name,
                        "message upcast to the name its handler is registered for"
                    );
                }
                (handler, span, crate::dead_letters::as_handled(&handled))
            }
            Selection::Unknown => {
                let name = delivery.message.name.clone();
                let result = if self.route.ignore_unknown {
                    self.activity.update(|s| s.skipped += 1);
                    delivery.ack().await
                } else {
                    self.metrics.record_unhandled_dead_letter();
                    self.activity.update(|s| s.dead_lettered += 1);
                    let reason = format!("route `{}` has no handler for message `{name}`", self.route.name);
                    self.dead_letter(delivery, reason).await
                };
                log_settle_error(result);
                return;
            }
            Selection::UpcastFailed(reason) => {
                // Permanent: the same bytes through the same upcaster fail the same way. The
                // dead letter keeps the message as sent, so a replay after the upcaster is
                // fixed goes through it again.
                let span = observability::handle_span(&delivery.message, &self.route.name, delivery.attempt);
                span.in_scope(|| self.record(&delivery, &HandlerError::permanent(reason.clone()), Instant::now()));
                log_settle_error(self.dead_letter(delivery, reason).instrument(span).await);
                return;
            }
        };
        self.handle(delivery, handler, message).instrument(span).await;
    }

    /// Runs the chain for one delivery (inside its `handle` span) on `message` (the delivered
    /// message as its handler sees it: upcast, under its original id if it is a replay),
    /// commits, settles, records.
    async fn handle(&self, delivery: Delivery, handler: Arc<dyn Handler>, message: Message) {
        let started = Instant::now();
        let mut tx = match &self.store {
            Some(store) => match store.begin().await {
                Ok(tx) => Some(tx),
                Err(e) => {
                    let e = HandlerError::from(e);
                    self.record(&delivery, &e, started);
                    let delay = self.retry.backoff.delay(delivery.attempt);
                    log_settle_error(delivery.nack_with_reason(delay, format!("begin transaction: {e}")).await);
                    return;
                }
            },
            None => None,
        };
        // A parking route: is the key waiting behind a dead letter, and is this what it waits for?
        let handled_id = message.id;
        let mut is_head = false;
        if let (Some(lot), Some(t)) = (self.parking_for(&message), tx.as_mut()) {
            let group = &self.route.options.group;
            match lot.head(&mut **t, group, &message.key).await {
                Ok(Some(head)) if head != handled_id => {
                    let tx = tx.take().expect("checked above");
                    self.park(delivery, tx, lot, handled_id).await;
                    return;
                }
                Ok(head) => is_head = head.is_some(),
                Err(e) => {
                    let e = HandlerError::from(e);
                    self.record(&delivery, &e, started);
                    let delay = self.retry.backoff.delay(delivery.attempt);
                    log_settle_error(
                        delivery.nack_with_reason(delay, format!("reading the parked sequence: {e}")).await,
                    );
                    return;
                }
            }
        }
        let mut cx = HandlerContext {
            message,
            attempt: delivery.attempt,
            handler: self.route.name.clone(),
            registry: self.registry.clone(),
            tx,
            store: self.store.clone(),
        };
        let result = if is_head {
            // The key's head: handled, it leaves the sequence and the next parked message is
            // released, in the handler's unit of work.
            self.run_head(handler.as_ref(), &mut cx, handled_id).await
        } else {
            run_chain(&self.middleware, handler.as_ref(), &mut cx).await
        };
        drop(cx); // rolls back an uncommitted transaction before settling
        match &result {
            Ok(()) => {
                self.metrics.record(HandleOutcome::Handled, started.elapsed());
                self.activity.update(|s| s.handled += 1);
            }
            Err(e) => self.record(&delivery, e, started),
        }
        let settled = match result {
            Ok(()) => delivery.ack().await,
            Err(e) if self.retry.is_permanent(&e) => self.dead_letter(delivery, e.to_string()).await,
            Err(e) => {
                let attempt = delivery.attempt;
                let reason = format!("attempt {attempt}: {e}");
                if attempt >= self.route.options.max_deliveries {
                    // The last attempt: the broker dead-letters on this nack.
                    self.hold_key(&delivery.message).await;
                }
                delivery.nack_with_reason(self.retry.backoff.delay(attempt), reason).await
            }
        };
        log_settle_error(settled);
    }

    /// The lot, if this route parks and `message` has a key.
    fn parking_for(&self, message: &Message) -> Option<&Arc<dyn ParkingLot>> {
        self.parking.as_ref().filter(|_| !message.key.is_empty())
    }

    /// [`run_chain`] for the head of a parked sequence: after the handler, the head leaves the
    /// sequence and the next message is released, before the commit.
    async fn run_head(
        &self,
        handler: &dyn Handler,
        cx: &mut HandlerContext,
        head: MessageId,
    ) -> Result<(), HandlerError> {
        Next { middleware: &self.middleware, handler }.run(cx).await?;
        let key = cx.message.key.clone();
        match cx.tx.take() {
            Some(mut tx) => {
                self.advance(&mut *tx, &key, head).await?;
                tx.commit().await?;
            }
            // The handler committed its own unit of work: advance in one of ours (a crash
            // between the two redelivers the head; the inbox skips its handler, then it advances).
            None => self.advance_alone(&key, head).await?,
        }
        Ok(())
    }

    /// In `tx`: removes `head` from `key`'s sequence and releases the next parked message.
    async fn advance(&self, tx: &mut dyn Transaction, key: &str, head: MessageId) -> Result<(), StoreError> {
        let Some(lot) = &self.parking else { return Ok(()) };
        let group = &self.route.options.group;
        if let Some(next) = lot.advance(tx, group, key, head).await? {
            let released = release_message(&next, group);
            tracing::info!(message.id = %next.id, key, group, "releasing a parked message: its key's dead letter was resolved");
            tx.enqueue(vec![released]).await?;
        }
        Ok(())
    }

    /// [`advance`](Self::advance) in a unit of work of its own.
    async fn advance_alone(&self, key: &str, head: MessageId) -> Result<(), StoreError> {
        let Some(store) = &self.store else { return Ok(()) };
        let mut tx = store.begin().await?;
        self.advance(&mut *tx, key, head).await?;
        tx.commit().await
    }

    /// Parks `delivery` (whose key waits behind a dead letter) in `tx`, commits, acknowledges.
    async fn park(&self, delivery: Delivery, mut tx: Box<dyn Transaction>, lot: &Arc<dyn ParkingLot>, id: MessageId) {
        let group = &self.route.options.group;
        let message = &delivery.message;
        let parked = async {
            lot.park(&mut *tx, group, &message.key, id, Some(message)).await?;
            tx.commit().await
        }
        .await;
        match parked {
            Ok(()) => {
                tracing::info!(message.id = %id, key = %message.key, group, "message parked behind a dead letter of its key");
                self.activity.update(|s| s.parked += 1);
                log_settle_error(delivery.ack().await);
            }
            Err(e) => {
                let e = HandlerError::from(e);
                self.record(&delivery, &e, Instant::now());
                let delay = self.retry.backoff.delay(delivery.attempt);
                log_settle_error(delivery.nack_with_reason(delay, format!("parking: {e}")).await);
            }
        }
    }

    /// Dead-letters `delivery`; on a parking route, its key's sequence starts first.
    async fn dead_letter(&self, delivery: Delivery, reason: String) -> Result<(), PubSubError> {
        if !self.hold_key(&delivery.message).await && delivery.attempt < self.route.options.max_deliveries {
            // Not recorded: try again later rather than let the key's next message pass.
            let delay = self.retry.backoff.delay(delivery.attempt);
            return delivery.nack_with_reason(delay, reason).await;
        }
        delivery.dead_letter(reason).await
    }

    /// On a parking route, starts (commits) the sequence of `message`'s key with `message` as its
    /// head, before the broker is told to dead-letter it; `false` if that failed (three tries).
    async fn hold_key(&self, message: &Message) -> bool {
        let (Some(lot), Some(store)) = (self.parking_for(message), &self.store) else { return true };
        let id = crate::dead_letters::as_handled(message).id;
        let group = &self.route.options.group;
        let mut error = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100) * attempt).await;
            }
            let held = async {
                let mut tx = store.begin().await?;
                lot.park(&mut *tx, group, &message.key, id, None).await?;
                tx.commit().await
            }
            .await;
            match held {
                Ok(()) => {
                    tracing::info!(message.id = %id, key = %message.key, group, "dead letter: its key's later messages will be parked");
                    return true;
                }
                Err(e) => error = Some(e),
            }
        }
        if let Some(e) = error {
            tracing::error!(message.id = %id, key = %message.key, group, error = %e, "could not park the key of a dead-lettered message");
        }
        false
    }

    /// A discard notice: on a parking route of its group, the discarded message leaves its key's
    /// sequence and the next is released; otherwise (and then) it is acknowledged and skipped.
    async fn on_discard_notice(&self, delivery: Delivery) {
        let message = &delivery.message;
        if let (Some(lot), Some(store)) = (self.parking_for(message), &self.store) {
            let head = crate::dead_letters::as_handled(message).id;
            let group = &self.route.options.group;
            let advanced = async {
                let mut tx = store.begin().await?;
                if lot.head(&mut *tx, group, &message.key).await? == Some(head) {
                    self.advance(&mut *tx, &message.key, head).await?;
                    tx.commit().await?;
                }
                Ok::<_, StoreError>(())
            }
            .await;
            if let Err(e) = advanced {
                let delay = self.retry.backoff.delay(delivery.attempt);
                log_settle_error(delivery.nack_with_reason(delay, format!("discard notice: {e}")).await);
                return;
            }
        }
        self.activity.update(|s| s.skipped += 1);
        log_settle_error(delivery.ack().await);
    }

    /// Logs a failed attempt (once, here) and records its metrics.
    fn record(&self, delivery: &Delivery, e: &HandlerError, started: Instant) {
        let permanent = self.retry.is_permanent(e);
        let last = delivery.attempt >= self.route.options.max_deliveries;
        let outcome = match (permanent, last) {
            (true, _) => HandleOutcome::DeadLettered,
            (false, true) => HandleOutcome::Exhausted,
            (false, false) => HandleOutcome::Retried,
        };
        let dead = outcome != HandleOutcome::Retried;
        tracing::warn!(error = %e, permanent, dead_lettered = dead, "handler failed");
        observability::mark_error(&tracing::Span::current());
        self.metrics.record(outcome, started.elapsed());
        self.activity.update(|s| if dead { s.dead_lettered += 1 } else { s.retried += 1 });
    }
}

/// Hands a delivery no handler has seen back for immediate redelivery (at shutdown).
fn release(delivery: Delivery) {
    delivery.return_unseen();
}

fn log_settle_error(result: Result<(), PubSubError>) {
    match result {
        Ok(()) => {}
        Err(PubSubError::LeaseLost) => {
            tracing::warn!("settled after the lease expired; the message was redelivered elsewhere")
        }
        Err(e) => tracing::warn!(error = %e, "settling a delivery failed; it will be redelivered"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let p = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(2), Duration::from_millis(400));
        assert_eq!(p.delay(4), Duration::from_millis(1600));
        assert_eq!(p.delay(40), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = RetryPolicy::default();
        for attempt in 1..10 {
            let full = RetryPolicy { jitter: 0.0, ..p }.delay(attempt);
            let d = p.delay(attempt);
            assert!(d <= full && d >= full.mul_f64(0.5), "{d:?} vs {full:?}");
        }
    }
}
