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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::codec::{CodecError, EventSet, Registry};
use crate::message::Message;
use crate::observability::{self, HandleOutcome, HandlerMetrics};
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
}

impl From<CodecError> for HandlerError {
    fn from(e: CodecError) -> Self {
        Self::Permanent(Box::new(e))
    }
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Codec(_) | StoreError::Invalid(_) => Self::Permanent(Box::new(e)),
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
}

/// Kept for compatibility: the router now opens the `handle` span itself (with the message's
/// name, id, topic, key, attempt, handler, correlation and causation ids, and the producer's
/// span as parent) and logs failures, for every delivery. This middleware only passes through.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing;

#[async_trait]
impl Middleware for Tracing {
    async fn call(&self, cx: &mut HandlerContext, next: Next<'_>) -> Result<(), HandlerError> {
        next.run(cx).await
    }
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
}

/// How failed attempts are retried: exponential backoff with jitter.
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
    /// The delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        let base = (self.initial_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(base * (1.0 - jitter * fastrand::f64()))
    }
}

/// Wraps a closure as a [`Handler`] of typed events `E`:
/// `on(|cx, event: MyEvent| Box::pin(async move { … }))`.
pub fn handler_fn<E, F>(f: F) -> impl Handler
where
    E: EventSet,
    F: for<'a> Fn(&'a mut HandlerContext, E) -> BoxFuture<'a, Result<(), HandlerError>> + Send + Sync + 'static,
{
    struct Typed<E, F>(F, std::marker::PhantomData<fn() -> E>);

    #[async_trait]
    impl<E, F> Handler for Typed<E, F>
    where
        E: EventSet,
        F: for<'a> Fn(&'a mut HandlerContext, E) -> BoxFuture<'a, Result<(), HandlerError>> + Send + Sync + 'static,
    {
        async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
            let event = cx.decode::<E>()?;
            (self.0)(cx, event).await
        }
    }
    Typed(f, std::marker::PhantomData)
}

/// The handlers of one subscription, chosen by message name.
pub struct Route {
    name: Arc<str>,
    options: SubscribeOptions,
    handlers: HashMap<String, Arc<dyn Handler>>,
    fallback: Option<Arc<dyn Handler>>,
    ignore_unknown: bool,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
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

    /// Changes where a new group of this route starts, e.g. from the latest message on a
    /// broker whose [`Capabilities`](crate::pubsub::Capabilities) say it keeps no history.
    #[must_use]
    pub fn start_from(mut self, start: crate::pubsub::StartFrom) -> Self {
        self.options.start = start;
        self
    }

    /// Handles every event name of `E` with `handler` (which decodes `E` itself, e.g. one made
    /// by [`handler_fn`]).
    #[must_use]
    pub fn on<E: EventSet>(mut self, handler: impl Handler + 'static) -> Self {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        for name in E::names() {
            self.handlers.insert(name.to_owned(), handler.clone());
        }
        self
    }

    /// Handles messages named `name` with an untyped handler.
    #[must_use]
    pub fn on_name(mut self, name: impl Into<String>, handler: impl Handler + 'static) -> Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// Handles every message whose name has no handler of its own (e.g. a saga's replies,
    /// whatever their names). Replaces [`ignore_unknown`](Self::ignore_unknown).
    #[must_use]
    pub fn fallback(mut self, handler: impl Handler + 'static) -> Self {
        self.fallback = Some(Arc::new(handler));
        self
    }

    /// By default a message no handler knows is acknowledged and skipped (topics carry events
    /// for many consumers). With `false`, it is dead-lettered as unknown instead.
    #[must_use]
    pub fn ignore_unknown(mut self, ignore: bool) -> Self {
        self.ignore_unknown = ignore;
        self
    }
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
        }
    }

    /// Runs every delivery in a transaction of `store`, committed before the ack.
    #[must_use]
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Upcasters used when decoding.
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

    /// Sets the retry policy.
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

    /// Subscribes every route and handles deliveries until `shutdown` is cancelled, then drains
    /// (see the module docs). Fails only if a subscription cannot be opened.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PubSubError> {
        self.start(shutdown).await?.wait().await;
        Ok(())
    }

    /// Subscribes every route, then handles deliveries in the background until `shutdown` is
    /// cancelled. When this returns, every subscription exists: on a broker whose groups only
    /// receive what is published after they subscribe (RabbitMQ queues), start the router
    /// before the outbox relay and the producers. Fails if a subscription cannot be opened.
    pub async fn start(self, shutdown: CancellationToken) -> Result<RunningRouter, PubSubError> {
        let tasks = TaskTracker::new();
        let mut subscriptions = Vec::new();
        for route in self.routes {
            let subscription = self.subscriber.subscribe(route.options.clone()).await?;
            let dispatcher = Arc::new(Dispatcher {
                metrics: HandlerMetrics::new(&route.options.topic, &route.name),
                route,
                store: self.store.clone(),
                registry: self.registry.clone(),
                middleware: self.middleware.clone(),
                retry: self.retry,
                lanes: Mutex::new(HashMap::new()),
                draining: CancellationToken::new(),
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
        Ok(RunningRouter { drained })
    }
}

/// A router whose routes are all subscribed and handling deliveries (see [`Router::start`]).
#[derive(Debug)]
#[must_use = "dropping it does not stop the router; cancel its shutdown token and wait"]
pub struct RunningRouter {
    drained: tokio::task::JoinHandle<()>,
}

impl RunningRouter {
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
    retry: RetryPolicy,
    /// Keys with a delivery in progress, and the deliveries of that key waiting behind it.
    lanes: Mutex<HashMap<String, VecDeque<Delivery>>>,
    /// Cancelled at shutdown: queued deliveries are released instead of started.
    draining: CancellationToken,
    /// The route's metrics, labelled with its subscription's topic and its name.
    metrics: HandlerMetrics,
}

impl Dispatcher {
    fn dispatch(self: Arc<Self>, delivery: Delivery, tasks: &TaskTracker) {
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
            log_settle_error(delivery.ack().await);
            return;
        }
        let handler = self.route.handlers.get(&delivery.message.name).or(self.route.fallback.as_ref()).cloned();
        let Some(handler) = handler else {
            let name = delivery.message.name.clone();
            let result = if self.route.ignore_unknown {
                delivery.ack().await
            } else {
                self.metrics.record_unhandled_dead_letter();
                delivery.dead_letter(format!("no handler for message `{name}`")).await
            };
            log_settle_error(result);
            return;
        };
        let span = observability::handle_span(&delivery.message, &self.route.name, delivery.attempt);
        self.handle(delivery, handler).instrument(span).await;
    }

    /// Runs the chain for one delivery (inside its `handle` span), commits, settles, records.
    async fn handle(&self, delivery: Delivery, handler: Arc<dyn Handler>) {
        let started = Instant::now();
        let tx = match &self.store {
            Some(store) => match store.begin().await {
                Ok(tx) => Some(tx),
                Err(e) => {
                    let e = HandlerError::from(e);
                    self.record(&delivery, &e, started);
                    let delay = self.retry.delay(delivery.attempt);
                    log_settle_error(delivery.nack_with_reason(delay, format!("begin transaction: {e}")).await);
                    return;
                }
            },
            None => None,
        };
        let mut cx = HandlerContext {
            message: crate::dead_letters::as_handled(&delivery.message),
            attempt: delivery.attempt,
            handler: self.route.name.clone(),
            registry: self.registry.clone(),
            tx,
            store: self.store.clone(),
        };
        let chain = Next { middleware: &self.middleware, handler: handler.as_ref() };
        let mut result = chain.run(&mut cx).await;
        if result.is_ok()
            && let Some(tx) = cx.tx.take()
        {
            result = tx.commit().await.map_err(HandlerError::from);
        }
        drop(cx); // rolls back an uncommitted transaction before settling
        match &result {
            Ok(()) => {
                self.metrics.record(HandleOutcome::Handled, started.elapsed());
            }
            Err(e) => self.record(&delivery, e, started),
        }
        let settled = match result {
            Ok(()) => delivery.ack().await,
            Err(e) if e.is_permanent() => delivery.dead_letter(e.to_string()).await,
            Err(e) => {
                let attempt = delivery.attempt;
                delivery.nack_with_reason(self.retry.delay(attempt), format!("attempt {attempt}: {e}")).await
            }
        };
        log_settle_error(settled);
    }
}

impl Dispatcher {
    /// Logs a failed attempt (once, here) and records its metrics.
    fn record(&self, delivery: &Delivery, e: &HandlerError, started: Instant) {
        let last = delivery.attempt >= self.route.options.max_deliveries;
        let outcome = match (e.is_permanent(), last) {
            (true, _) => HandleOutcome::DeadLettered,
            (false, true) => HandleOutcome::Exhausted,
            (false, false) => HandleOutcome::Retried,
        };
        let dead = outcome != HandleOutcome::Retried;
        tracing::warn!(error = %e, permanent = e.is_permanent(), dead_lettered = dead, "handler failed");
        observability::mark_error(&tracing::Span::current());
        self.metrics.record(outcome, started.elapsed());
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
