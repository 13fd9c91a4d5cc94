//! Subscribing: a group is a durable pull consumer; each subscription runs one task that pulls
//! from it and hands [`Delivery`] values through a bounded channel.
//!
//! This is the default, unpartitioned mode: the subscriptions of a group compete for one
//! consumer, so there is no per-key order across them (see [`CAPABILITIES`]). With
//! [`NatsConfig::partitions`](crate::NatsConfig::partitions) set, `subscribe` hands over to the
//! `partitioned` module instead: one consumer per partition, each pulled by one member of the
//! group at a time, with per-key order (ADR 0014).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::message::AckKind;
use async_trait::async_trait;
use futures::StreamExt;
use herald::message::{Message, MessageId, Metadata};
use herald::observability::EarlierMessages;
use herald::pubsub::{
    Capabilities, Delivery, PubSubError, Settle, Settlement, StartFrom, SubscribeOptions, Subscriber, Subscription,
};
use herald::queue::{dead_letter_for, expired_reason};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::broker::{Inner, NatsBroker, check_topic, sanitise};
use crate::error::NatsError;
use crate::publisher::{HEADER_KEY, HEADER_METADATA, HEADER_NAME};

/// The most messages one pull asks for.
const MAX_BATCH: usize = 256;

/// What JetStream can and cannot promise through this adapter, unpartitioned (the default).
///
/// * `per_key_order` is **false** here: JetStream delivers a consumer's messages in stream
///   order, but a nacked message is redelivered after later ones (of its key too), and the
///   subscriptions of a group pull interleaved messages of one key and handle them concurrently.
///   Set [`NatsConfig::partitions`](crate::NatsConfig::partitions) for per-key order: subjects
///   `<topic>.<partition>` (the partition a stable hash of the key), one consumer per partition
///   and group, owned by one member at a time through a JetStream key-value bucket, and per-key
///   sequencing within the owner; that mode declares [`Capabilities::FULL`] (see the
///   `partitioned` module and `docs/adr/0014-nats-partitioned-consumers.md`).
/// * A settlement after the delivery's lease ran out is refused with `LeaseLost` by the adapter
///   itself: JetStream does not tell a client that its ack came too late, so a settlement made
///   after `ack_wait` (counted from when the delivery reached this process, less a margin of a
///   tenth of it, at most 250 ms, for the time the message took to get here) is refused, the
///   server having redelivered the message or being about to.
/// * `return_unseen` naks the message at once, so it is redelivered at once, but JetStream counts
///   that delivery: an unseen return still counts towards `max_deliveries`.
const CAPABILITIES: Capabilities = Capabilities {
    durable: true,
    groups: true,
    per_key_order: false,
    delayed_nack: true,
    ack_wait_redelivery: true,
    dead_letters: true,
    start_from_beginning: true,
    start_from_position: true,
};

/// What a subscription's deliveries need to settle themselves.
struct Shared {
    broker: Arc<Inner>,
    group: String,
    dead_letter_topic: String,
    max_deliveries: u32,
    ack_wait: Duration,
}

#[async_trait]
impl Subscriber for NatsBroker {
    fn capabilities(&self) -> Capabilities {
        if self.inner.partitioned() { crate::partitioned::CAPABILITIES } else { CAPABILITIES }
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, PubSubError> {
        options.validate()?;
        check_topic(&options.topic)?;
        let dead_letter_topic = options.effective_dead_letter_topic();
        check_topic(&dead_letter_topic)?;
        if self.is_closed() {
            return Err(PubSubError::Closed);
        }
        if self.inner.partitioned() {
            return crate::partitioned::subscribe(self, options, dead_letter_topic).await;
        }
        let inner = &self.inner;
        let durable = sanitise(&options.group);
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            deliver_policy: match options.start {
                StartFrom::Beginning => DeliverPolicy::All,
                StartFrom::Latest => DeliverPolicy::New,
                StartFrom::Position(p) => DeliverPolicy::ByStartSequence { start_sequence: p.max(1) },
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            // One more than allowed: a message whose last lease expired comes back once more, and
            // the adapter dead-letters it instead of handing it out.
            max_deliver: i64::from(options.max_deliveries) + 1,
            max_ack_pending: i64::try_from(options.max_in_flight).unwrap_or(i64::MAX),
            ..Default::default()
        };
        // A new group at Latest skips what the topic's stream holds: say so once (see
        // `StartFrom`). Asked only for `Latest`, so the default start costs no extra request.
        let skipping = match options.start {
            StartFrom::Latest => earlier_if_new(inner, &options.topic, &durable).await?,
            _ => None,
        };
        let source =
            Source { topic: options.topic.clone(), durable, config, batch: options.max_in_flight.clamp(1, MAX_BATCH) };
        let messages = source.open(inner).await?;
        if let Some(earlier) = skipping {
            herald::observability::warn_new_group_skips_earlier_messages(&options.topic, &options.group, earlier);
        }

        let shared = Arc::new(Shared {
            broker: inner.clone(),
            group: options.group.clone(),
            dead_letter_topic,
            max_deliveries: options.max_deliveries,
            ack_wait: options.ack_wait,
        });
        let (tx, rx) = mpsc::channel(options.max_in_flight);
        let stop = inner.shutdown.child_token();
        // Registered before the subscription is handed out, so even a drop before the pull task
        // first runs unsubscribes at once.
        let slot: StreamSlot = Arc::new(Mutex::new(Some(messages)));
        let registration = unsubscribe_on_cancel(&slot, &stop, inner);
        // The lag sampler ends with the subscription, or with the pull loop if it ends first.
        let sampling = stop.child_token();
        sample_lag(inner, &options.topic, &options.group, vec![source.durable.clone()], sampling.clone());
        let pulling = stop.clone();
        inner.tasks.spawn(async move {
            let _sampling = sampling.drop_guard();
            pull_loop(slot, registration, source, tx, shared, pulling).await;
        });
        Ok(Subscription::new(rx, Some(stop.drop_guard())))
    }

    async fn close(&self) -> Result<(), PubSubError> {
        NatsBroker::close(self).await
    }
}

/// When the group's durable consumer does not exist yet: how many messages the topic's stream
/// holds (which a new consumer at `DeliverPolicy::New` will not deliver). `None` when the group
/// exists. Another client may create the consumer in between; the warning is then a false alarm.
pub(crate) async fn earlier_if_new(
    broker: &Inner,
    topic: &str,
    durable: &str,
) -> Result<Option<EarlierMessages>, NatsError> {
    // Fetched with its state just now (`get_or_create_stream` asks the server).
    let stream = broker.stream(topic).await?;
    match stream.consumer_info(durable).await {
        Ok(_) => Ok(None),
        Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {
            Ok(Some(EarlierMessages::Exactly(stream.cached_info().state.messages)))
        }
        Err(e) => Err(NatsError::jetstream(format!("looking up consumer {durable}"), e)),
    }
}

/// The consumer lag of the group whose durable consumers on the stream of `topic` are
/// `consumers` (one, or one per partition): the sum of each consumer's `num_pending` (messages
/// of its subject not delivered yet) and `num_ack_pending` (delivered, not acknowledged yet) —
/// what the SQL broker counts too (the group's cursor and pending rows). A message waiting out a
/// nack delay is still unacknowledged, so it counts; a terminated (dead-lettered) one does not.
/// `None` when a consumer is missing: the server lost it and the subscription re-creates it.
pub(crate) async fn group_lag(broker: &Inner, topic: &str, consumers: &[String]) -> Result<Option<u64>, NatsError> {
    let name = broker.stream_name(topic);
    // No request: a handle that names the stream, for the consumer-info requests below.
    let stream = broker
        .js
        .get_stream_no_info(&name)
        .await
        .map_err(|e| NatsError::jetstream(format!("naming stream {name}"), e))?;
    let mut lag = 0u64;
    for consumer in consumers {
        match stream.consumer_info(consumer).await {
            Ok(info) => {
                let unacked = u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
                lag = lag.saturating_add(info.num_pending).saturating_add(unacked);
            }
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => return Ok(None),
            Err(e) => return Err(NatsError::jetstream(format!("reading consumer {consumer} of {name}"), e)),
        }
    }
    Ok(Some(lag))
}

/// Samples the consumer lag of `group` on `topic` (see [`group_lag`]) into
/// `herald_consumer_lag` once per [`CONSUMER_LAG_INTERVAL`](herald::observability::CONSUMER_LAG_INTERVAL),
/// in a task of the broker's that ends when `stop` is cancelled.
pub(crate) fn sample_lag(
    broker: &Arc<Inner>,
    topic: &str,
    group: &str,
    consumers: Vec<String>,
    stop: CancellationToken,
) {
    let (sampler, lag_topic) = (broker.clone(), topic.to_owned());
    let sample = move || {
        let (broker, topic, consumers) = (sampler.clone(), lag_topic.clone(), consumers.clone());
        async move { group_lag(&broker, &topic, &consumers).await }
    };
    broker.tasks.spawn(herald::observability::sample_consumer_lag(topic.to_owned(), group.to_owned(), stop, sample));
}

/// What a subscription pulls from, so that its pull stream can be opened again.
struct Source {
    topic: String,
    durable: String,
    config: pull::Config,
    /// Messages per pull request.
    batch: usize,
}

impl Source {
    /// Opens a pull stream on the group's durable consumer, creating the topic's stream and the
    /// consumer if they do not exist (first subscription, or lost by the server).
    async fn open(&self, broker: &Inner) -> Result<pull::Stream, PubSubError> {
        let stream = broker.stream(&self.topic).await?;
        let durable = &self.durable;
        let consumer = ensure_consumer(broker, &stream, &self.topic, durable, &self.config).await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .messages()
            .await
            .map_err(|e| NatsError::jetstream(format!("pulling from consumer {durable}"), e))?;
        Ok(messages)
    }
}

/// The durable consumer `durable` on `stream` (of `topic`), created with `config` if it does not
/// exist. An existing consumer keeps the settings it was created with; the ones a subscription
/// may change (ack wait, max deliveries, max in flight) are brought up to date, its start
/// position stays.
pub(crate) async fn ensure_consumer(
    broker: &Inner,
    stream: &async_nats::jetstream::stream::Stream,
    topic: &str,
    durable: &str,
    config: &pull::Config,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::Config>, NatsError> {
    let what = || format!("creating consumer {durable} on {}", broker.stream_name(topic));
    let mut consumer: async_nats::jetstream::consumer::Consumer<pull::Config> =
        stream.get_or_create_consumer(durable, config.clone()).await.map_err(|e| NatsError::jetstream(what(), e))?;
    let existing = &consumer.cached_info().config;
    if (existing.ack_wait, existing.max_deliver, existing.max_ack_pending)
        != (config.ack_wait, config.max_deliver, config.max_ack_pending)
    {
        let updated = pull::Config {
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            max_ack_pending: config.max_ack_pending,
            deliver_policy: existing.deliver_policy,
            ..config.clone()
        };
        match stream.create_consumer(updated).await {
            Ok(fresh) => consumer = fresh,
            Err(e) => tracing::warn!(
                error = %e,
                consumer = %durable,
                "could not update the consumer's ack wait / max deliveries / max in flight; it keeps its old ones"
            ),
        }
    }
    Ok(consumer)
}

/// The first pause before re-opening a failed pull stream; it doubles with each failure in a
/// row, up to [`REOPEN_MAX_DELAY`].
const REOPEN_MIN_DELAY: Duration = Duration::from_millis(100);
/// The longest pause before re-opening a failed pull stream.
const REOPEN_MAX_DELAY: Duration = Duration::from_secs(5);

/// Replaces the failed pull stream in `slot` with a new one, retrying with backoff until it
/// works or the subscription is stopped (then returns `false`). `failures` counts the re-opens
/// since the last message, so a stream that fails again at once is not re-opened in a busy
/// loop.
async fn reopen(
    slot: &StreamSlot,
    source: &Source,
    shared: &Shared,
    stop: &CancellationToken,
    failures: &mut u32,
) -> bool {
    drop(lock(slot).take());
    loop {
        let delay = REOPEN_MIN_DELAY.saturating_mul(1 << (*failures).min(6)).min(REOPEN_MAX_DELAY);
        *failures = failures.saturating_add(1);
        let opened = tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            opened = async {
                tokio::time::sleep(delay).await;
                source.open(&shared.broker).await
            } => opened,
        };
        match opened {
            Ok(stream) => {
                *lock(slot) = Some(stream);
                // Cancelled meanwhile: `UnsubscribeOnCancel` may have run before the new stream
                // was in the slot, so drop it here.
                if stop.is_cancelled() {
                    drop(lock(slot).take());
                    return false;
                }
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, group = %shared.group, failures = *failures, "re-opening the NATS pull stream failed; retrying");
            }
        }
    }
}

/// Where a subscription's pull stream lives, so that cancelling the subscription can drop it
/// synchronously (see [`UnsubscribeOnCancel`]).
type StreamSlot = Arc<Mutex<Option<pull::Stream>>>;

fn lock(slot: &StreamSlot) -> MutexGuard<'_, Option<pull::Stream>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops the pull stream the moment the subscription's token is cancelled, inside
/// `Subscription`'s drop (or `close`), rather than whenever the pull task next runs.
///
/// Why: the server keeps an outstanding pull request and hands the next message to it. If the
/// inbox were unsubscribed only when the pull task gets scheduled, a message published right
/// after the subscription was dropped could still go to that request and sit leased (its
/// delivery counted) until its ack wait ran out. Dropping the stream sends the `UNSUB` at once
/// (a synchronous `try_send` on the connection's command channel), and the server skips pull
/// requests whose inbox has no interest left.
///
/// That alone orders the `UNSUB` before whatever the caller publishes next *on the same
/// connection*; another connection (another process) could still get its publish to the server
/// first. So, on a multi-thread runtime, the drop also waits (bounded by
/// [`UNSUBSCRIBE_CONFIRM_TIMEOUT`], normally one round trip) for a reply to a request sent after
/// the `UNSUB` on the same connection: the server handles a connection's operations in order, so
/// by then the interest is gone. Subscriptions end rarely (shutdown, rebalancing), so blocking
/// for one round trip there is a fair price for "dropping a subscription stops fetching".
struct UnsubscribeOnCancel {
    slot: StreamSlot,
    stop: CancellationToken,
    broker: Arc<Inner>,
}

/// The longest a subscription's drop waits for the server to confirm its unsubscription.
const UNSUBSCRIBE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits (bounded) until the server has handled everything sent before on the broker's
/// connection, when the runtime allows blocking this thread; otherwise returns at once (best
/// effort).
///
/// The request runs as a task and this thread waits on a std channel with an OS-clock timeout,
/// never on the runtime's own timer: the drop may happen while the runtime shuts down, when its
/// I/O and timer drivers are gone (the task is then dropped and the wait ends at once).
pub(crate) fn confirm_unsubscribed(broker: &Inner) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return;
    }
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    let js = broker.js.clone();
    broker.tasks.spawn_on(
        async move {
            // Any request answered by the server will do; this one is cheap.
            let answered = js.query_account().await;
            if let Err(e) = &answered {
                tracing::debug!(error = %e, "confirming an unsubscription");
            }
            // The waiter may have given up already.
            let _ = done_tx.send(());
        },
        &handle,
    );
    tokio::task::block_in_place(|| {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(UNSUBSCRIBE_CONFIRM_TIMEOUT) {
            tracing::debug!(timeout = ?UNSUBSCRIBE_CONFIRM_TIMEOUT, "confirming an unsubscription timed out");
        }
    });
}

impl Wake for UnsubscribeOnCancel {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.stop.is_cancelled() {
            return;
        }
        let stream = lock(&self.slot).take();
        if let Some(stream) = stream {
            drop(stream);
            confirm_unsubscribed(&self.broker);
        }
    }
}

/// Registers [`UnsubscribeOnCancel`] on `stop`; the returned future must be kept alive for as
/// long as the registration should last.
fn unsubscribe_on_cancel(
    slot: &StreamSlot,
    stop: &CancellationToken,
    broker: &Arc<Inner>,
) -> Pin<Box<WaitForCancellationFutureOwned>> {
    let mut cancelled = Box::pin(stop.clone().cancelled_owned());
    let waker =
        Waker::from(Arc::new(UnsubscribeOnCancel { slot: slot.clone(), stop: stop.clone(), broker: broker.clone() }));
    if cancelled.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
        drop(lock(slot).take());
    }
    cancelled
}

/// Pulls until `stop` (the subscription was dropped or the broker closed) and forwards each
/// message as a [`Delivery`]. `_registration` keeps the [`UnsubscribeOnCancel`] waker registered while the loop runs.
async fn pull_loop(
    slot: StreamSlot,
    _registration: Pin<Box<WaitForCancellationFutureOwned>>,
    source: Source,
    tx: mpsc::Sender<Delivery>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    // Re-opens of the pull stream since the last message (for the backoff).
    let mut reopen_failures = 0u32;
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = poll_fn(|cx| match lock(&slot).as_mut() {
                Some(stream) => stream.poll_next_unpin(cx),
                None => Poll::Ready(None),
            }) => next,
        };
        let message = match next {
            None => break,
            Some(Ok(message)) => {
                reopen_failures = 0;
                message
            }
            Some(Err(e)) => {
                use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
                match e.kind() {
                    Kind::PushBasedConsumer => {
                        tracing::error!(error = %e, group = %shared.group, "NATS consumer is push based; subscription ends");
                        break;
                    }
                    // A pull stream does not come back from these by itself: after a failed
                    // pull request (e.g. the consumer not found right after a reconnect, when
                    // the server restarted and lost it or has not restored it yet) it stops
                    // pulling for good, and a deleted consumer ends it. Open a new one, which
                    // re-creates the consumer if the server lost it, so the subscription
                    // survives a server restart instead of going silent.
                    Kind::Pull | Kind::ConsumerDeleted | Kind::NoResponders => {
                        tracing::warn!(error = %e, group = %shared.group, "NATS pull stream failed; re-opening it");
                        if reopen(&slot, &source, &shared, &stop, &mut reopen_failures).await {
                            continue;
                        }
                        break;
                    }
                    _ => {
                        tracing::warn!(error = %e, group = %shared.group, "pulling from NATS");
                        continue;
                    }
                }
            }
        };
        let Some(delivery) = to_delivery(message, &shared).await else { continue };
        // Wait for room in the channel (backpressure), giving the delivery back if the
        // subscription goes away meanwhile.
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => None,
            permit = tx.reserve() => permit.ok(),
        };
        match permit {
            Some(permit) => permit.send(delivery),
            None => {
                delivery.return_unseen();
                break;
            }
        }
    }
    drop(lock(&slot).take());
}

/// Turns a JetStream message into a delivery, or settles it here: a message over its delivery
/// limit is dead-lettered, one that is not a Herald message is terminated.
async fn to_delivery(message: async_nats::jetstream::Message, shared: &Arc<Shared>) -> Option<Delivery> {
    let (attempt, position) = match message.info() {
        Ok(info) => (u32::try_from(info.delivered).unwrap_or(u32::MAX), info.stream_sequence),
        Err(e) => {
            tracing::error!(error = %e, subject = %message.subject, "a JetStream message without delivery info");
            return None;
        }
    };
    let decoded = match decode(&message, &shared.broker.config.subject_prefix) {
        Ok(decoded) => decoded,
        Err(why) => {
            tracing::error!(subject = %message.subject, position, %why, "not a Herald message; terminated");
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "terminating a foreign message");
            }
            return None;
        }
    };
    let settle = NatsSettle { message, shared: shared.clone(), attempt, received_at: Instant::now() };
    if attempt > shared.max_deliveries {
        // The last allowed lease expired: this extra delivery exists only to dead-letter it.
        let reason = expired_reason(shared.max_deliveries);
        if let Err(e) = settle.dead_letter(&decoded, shared.max_deliveries, &reason).await {
            tracing::error!(error = %e, id = %decoded.id, group = %shared.group, "dead-lettering an expired message");
        }
        return None;
    }
    Some(Delivery::new(decoded, attempt, Some(position), Box::new(settle)))
}

/// A Herald message from a NATS message's subject, headers and payload (JetStream messages
/// deref to one). Shared by the JetStream and core modes.
/// `subject_prefix` is taken off the subject to give the topic.
pub(crate) fn decode(message: &async_nats::Message, subject_prefix: &str) -> Result<Message, String> {
    let headers = message.headers.as_ref().ok_or("no headers")?;
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    let id = header(async_nats::header::NATS_MESSAGE_ID.as_ref()).ok_or("no Nats-Msg-Id")?;
    let id = MessageId::parse(&id).map_err(|e| format!("Nats-Msg-Id {id:?} is not a UUID: {e}"))?;
    let metadata: Metadata = match header(HEADER_METADATA) {
        Some(json) => serde_json::from_str(&json).map_err(|e| format!("{HEADER_METADATA}: {e}"))?,
        None => return Err(format!("no {HEADER_METADATA}")),
    };
    Ok(Message {
        id,
        name: header(HEADER_NAME).unwrap_or_default(),
        topic: message.subject.strip_prefix(subject_prefix).unwrap_or(&message.subject).to_owned(),
        key: header(HEADER_KEY).unwrap_or_default(),
        payload: message.payload.to_vec(),
        metadata,
    })
}

/// Settles one delivery with the server.
struct NatsSettle {
    message: async_nats::jetstream::Message,
    shared: Arc<Shared>,
    attempt: u32,
    /// When the delivery reached this process: its lease ends `ack_wait` later.
    received_at: Instant,
}

impl NatsSettle {
    async fn ack_with(&self, kind: AckKind) -> Result<(), PubSubError> {
        self.message.ack_with(kind).await.map_err(|e| NatsError::jetstream(format!("{kind:?} of a delivery"), e).into())
    }

    /// Publishes the dead letter of `original`, then terminates the original.
    async fn dead_letter(&self, original: &Message, attempts: u32, reason: &str) -> Result<(), PubSubError> {
        let s = &self.shared;
        let dead = dead_letter_for(original, &s.group, attempts, reason, &s.dead_letter_topic);
        s.broker.publish_all(std::slice::from_ref(&dead)).await?;
        self.ack_with(AckKind::Term).await
    }

    async fn dead_letter_now(&self, reason: &str) -> Result<(), PubSubError> {
        let original = decode(&self.message, &self.shared.broker.config.subject_prefix)
            .map_err(|why| NatsError::jetstream("decoding a delivery", why))?;
        self.dead_letter(&original, self.attempt, reason).await
    }
}

#[async_trait]
impl Settle for NatsSettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), PubSubError> {
        // The server counts the lease from when it sent the message, a little before it reached
        // us (more on a busy machine): the last tenth of it (at most 250 ms) counts as lost, so
        // a settlement the server may already have overtaken with a redelivery is refused.
        let margin = (self.shared.ack_wait / 10).min(Duration::from_millis(250));
        if self.received_at.elapsed() >= self.shared.ack_wait.saturating_sub(margin) {
            return Err(PubSubError::LeaseLost);
        }
        match settlement {
            Settlement::Ack => self.ack_with(AckKind::Ack).await,
            Settlement::Nack { reason, .. } if self.attempt >= self.shared.max_deliveries => {
                let reason = herald::queue::last_nack_reason(reason, self.shared.max_deliveries);
                self.dead_letter_now(&reason).await
            }
            Settlement::Nack { delay, .. } => self.ack_with(AckKind::Nak((!delay.is_zero()).then_some(delay))).await,
            Settlement::DeadLetter { reason } => self.dead_letter_now(&reason).await,
        }
    }

    fn return_unseen(self: Box<Self>) {
        let tasks = self.shared.broker.tasks.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            tasks.spawn(async move {
                if let Err(e) = self.ack_with(AckKind::Nak(None)).await {
                    tracing::debug!(error = %e, "returning an unseen delivery; it comes back after its ack wait");
                }
            });
        }
    }
}
