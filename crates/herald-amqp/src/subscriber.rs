//! Subscribing: a group is a quorum queue bound to its topic; each subscription is a consumer
//! on a channel of its own (prefetch = `max_in_flight`) whose task hands [`Delivery`] values
//! through a bounded channel and enforces `ack_wait`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use herald::message::{Message, MessageId, Metadata};
use herald::pubsub::{
    Capabilities, Delivery, PubSubError, Settle, Settlement, StartFrom, SubscribeOptions, Subscriber, Subscription,
};
use herald::queue::{dead_letter_for, expired_reason, last_nack_reason};
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel, Consumer};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::broker::{AmqpBroker, Inner, check_topic, short};
use crate::error::AmqpError;
use crate::publisher::{HEADER_ATTEMPTS, HEADER_KEY, HEADER_METADATA, HEADER_NAME, HEADER_TOPIC, Route};

/// The group whose queue keeps a dead-letter topic's messages until someone reads them: every
/// subscription declares it on its dead-letter topic, so dead letters are not dropped when no
/// other group listens there. Read them by subscribing to the dead-letter topic with this group.
pub const DEAD_LETTER_GROUP: &str = "dead-letters";
/// The queue header in which quorum queues count a message's earlier deliveries.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// What RabbitMQ can and cannot promise through this adapter.
///
/// * `durable`: group queues are durable quorum queues (replicated, on disk), messages are
///   persistent and publishing waits for publisher confirms. A topic with no group yet routes
///   nowhere: subscribe (create the group) before publishing what it must see.
/// * `per_key_order` is **false**: a quorum queue with several consumers hands interleaved
///   messages of one key to different consumers, and a nacked message comes back after later
///   ones. Per-key order on RabbitMQ needs one queue per key partition (a consistent-hash
///   exchange) with a single active consumer (`x-single-active-consumer`) and prefetch 1, which
///   this adapter does not do (yet).
/// * `delayed_nack`: a nack with a delay re-publishes the message to a retry queue
///   (`<group queue>.retry.<ms>`, message TTL = the delay) that dead-letters it back to the
///   group queue when the delay has passed, then acks the original.
/// * `ack_wait_redelivery` is decided by the adapter: RabbitMQ 3.10 has no per-queue consumer
///   timeout, so the subscription's task requeues a delivery not settled within `ack_wait`
///   (or dead-letters it after its last allowed delivery), and a settlement arriving later is
///   refused with `LeaseLost`. A consumer that goes away has its unacknowledged messages
///   requeued by the server at once.
/// * `dead_letters`: the adapter publishes the dead letter to the dead-letter topic, then acks
///   the original; [`DEAD_LETTER_GROUP`]'s queue keeps them for later reading.
/// * `start_from_beginning` and `start_from_position` are **false**: a queue holds only what was
///   routed to it after it was declared, and has no positions. Replay would need RabbitMQ
///   streams (a stream per topic beside the group queues), which this adapter does not use.
///   A new group starting at the beginning (the default) gets every message routed from its
///   creation on, as at latest; a new group asking for a position is refused with
///   `Unsupported`. An existing group ignores `start`, as the contract says.
/// * `return_unseen` re-publishes the message to the group queue with its attempt count kept,
///   then acks the original, so an unseen return does not count towards `max_deliveries`.
///   Dropping a subscription cancels its consumer at once and waits for `cancel-ok` (see
///   [`CancelOnDrop`]), so messages published afterwards go to the group's other
///   subscriptions. One caveat remains: a message already on its way to the consumer when the
///   cancel is confirmed is dropped by lapin unacknowledged and requeued by the server when the
///   channel closes, with that delivery counted.
const CAPABILITIES: Capabilities = Capabilities {
    durable: true,
    groups: true,
    per_key_order: false,
    delayed_nack: true,
    ack_wait_redelivery: true,
    dead_letters: true,
    start_from_beginning: false,
    start_from_position: false,
};

/// What a subscription keeps across sessions (reconnections).
struct Group {
    broker: Arc<Inner>,
    topic: String,
    queue: String,
    group: String,
    dead_letter_topic: String,
    max_deliveries: u32,
    ack_wait: Duration,
    prefetch: u16,
    /// Deliveries of the group queue this process holds unacknowledged (shared with the
    /// group's other subscriptions in this process), for the consumer lag.
    unacked: Arc<AtomicU64>,
}

/// What a session's deliveries need to settle themselves.
struct Shared {
    sub: Arc<Group>,
    /// The session's channel: deliveries are acked on the channel they came on, and the
    /// channel closes (requeueing what is unacked) when the last holder drops it.
    channel: Channel,
    /// The consumer's tag, for `basic.cancel`.
    tag: lapin::types::ShortString,
    /// Set once `basic.cancel` was sent, by [`CancelOnDrop`] or the task.
    cancel_sent: AtomicBool,
}

impl std::ops::Deref for Shared {
    type Target = Group;
    fn deref(&self) -> &Group {
        &self.sub
    }
}

/// A delivery's lease, shared by its [`AmqpSettle`] and the subscription's task: whoever moves
/// it out of `PENDING` first decides what happens to the message.
struct Lease {
    acker: Acker,
    state: AtomicU8,
    attempt: u32,
    message: Message,
    /// The group's count of unacknowledged deliveries in this process: one while this lease
    /// is pending (counted in [`Lease::new`], uncounted by the [`take`](Lease::take) that
    /// ends it).
    unacked: Arc<AtomicU64>,
}

const PENDING: u8 = 0;
const SETTLED: u8 = 1;
const EXPIRED: u8 = 2;

impl Lease {
    /// A pending lease on a delivery of the group's queue.
    fn new(acker: Acker, attempt: u32, message: Message, unacked: &Arc<AtomicU64>) -> Self {
        unacked.fetch_add(1, Ordering::AcqRel);
        Self { acker, state: AtomicU8::new(PENDING), attempt, message, unacked: unacked.clone() }
    }

    /// Takes the lease for `to`; false if it was settled or expired already.
    fn take(&self, to: u8) -> bool {
        let taken = self.state.compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if taken {
            self.unacked.fetch_sub(1, Ordering::AcqRel);
        }
        taken
    }

    fn is_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) == PENDING
    }
}

#[async_trait]
impl Subscriber for AmqpBroker {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, PubSubError> {
        options.validate()?;
        check_topic(&options.topic)?;
        let dead_letter_topic = options.effective_dead_letter_topic();
        check_topic(&dead_letter_topic)?;
        if self.is_closed() {
            return Err(PubSubError::Closed);
        }
        let inner = &self.inner;
        // `Beginning` (the default) and `Latest` both mean "from now on" for a new queue, which
        // holds no history; a position cannot be honoured.
        if matches!(options.start, StartFrom::Position(_))
            && !inner.queue_exists(&inner.group_queue(&options.topic, &options.group)).await?
        {
            return Err(PubSubError::Unsupported(
                "starting a new group from a position (RabbitMQ queues keep no history)",
            ));
        }
        let queue = inner.declare_group_queue(&options.topic, &options.group).await?;
        inner.declare_group_queue(&dead_letter_topic, DEAD_LETTER_GROUP).await?;

        let group = Group {
            broker: inner.clone(),
            topic: options.topic.clone(),
            unacked: inner.unacked(&queue),
            queue,
            group: options.group.clone(),
            dead_letter_topic,
            max_deliveries: options.max_deliveries,
            ack_wait: options.ack_wait,
            prefetch: u16::try_from(options.max_in_flight).unwrap_or(u16::MAX),
        };
        let session = Session::open(Arc::new(group)).await?;
        let (tx, rx) = mpsc::channel(options.max_in_flight);
        let stop = inner.shutdown.child_token();
        // Registered before the subscription is handed out, so even a drop before the task
        // first runs cancels the consumer at once.
        let registration = cancel_on_drop(&session.shared, &stop);
        sample_lag(inner, &options.topic, &options.group, &session.shared.queue, stop.child_token());
        inner.tasks.spawn(run(session, registration, tx, stop.clone()));
        Ok(Subscription::new(rx, Some(stop.drop_guard())))
    }

    async fn close(&self) -> Result<(), PubSubError> {
        AmqpBroker::close(self).await
    }
}

/// Samples the consumer lag of `group` on `topic`, whose queue is `queue` (see
/// [`Inner::group_lag`] for what it counts), into `herald_consumer_lag` once per
/// [`CONSUMER_LAG_INTERVAL`](herald::observability::CONSUMER_LAG_INTERVAL), in a task that ends
/// when `stop` is cancelled.
fn sample_lag(broker: &Arc<Inner>, topic: &str, group: &str, queue: &str, stop: CancellationToken) {
    let (sampler, lag_queue) = (broker.clone(), queue.to_owned());
    let sample = move || {
        let (broker, queue) = (sampler.clone(), lag_queue.clone());
        async move { broker.group_lag(&queue).await }
    };
    broker.tasks.spawn(herald::observability::sample_consumer_lag(topic.to_owned(), group.to_owned(), stop, sample));
}

/// One consumer on one channel: what a subscription runs on until the connection is lost.
struct Session {
    shared: Arc<Shared>,
    consumer: Consumer,
}

impl Session {
    /// Opens a channel with the group's prefetch and starts consuming the group queue.
    async fn open(group: Arc<Group>) -> Result<Self, AmqpError> {
        let broker = &group.broker;
        let queue = &group.queue;
        let channel = broker.open_channel().await?;
        let qos = channel.basic_qos(group.prefetch, BasicQosOptions::default());
        broker.op(|| format!("setting prefetch on {queue}"), qos).await?;
        let consume =
            channel.basic_consume(short(queue)?, "".into(), BasicConsumeOptions::default(), FieldTable::default());
        let consumer = broker.op(|| format!("consuming from {queue}"), consume).await?;
        let shared = Shared { tag: consumer.tag(), cancel_sent: AtomicBool::new(false), channel, sub: group.clone() };
        Ok(Self { shared: Arc::new(shared), consumer })
    }
}

/// How a session ended.
enum Ended {
    /// The subscription was dropped or the broker closed: the subscription is over.
    Stopped,
    /// The consumer ended on its own (the connection was lost, the queue deleted): reconnect.
    Lost,
}

/// Runs sessions until the subscription is dropped or the broker closed, re-subscribing (with
/// back-off) when the connection is lost, so a server restart does not end the subscription.
async fn run(
    mut session: Session,
    mut registration: Pin<Box<WaitForCancellationFutureOwned>>,
    tx: mpsc::Sender<Delivery>,
    stop: CancellationToken,
) {
    let group = session.shared.sub.clone();
    loop {
        if let Ended::Stopped = consume(session, &tx, &stop).await {
            return;
        }
        drop(registration);
        tracing::warn!(queue = %group.queue, "the RabbitMQ consumer ended; re-subscribing");
        let mut backoff = RECONNECT_MIN;
        session = loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            let reopened = async {
                group.broker.declare_group_queue(&group.topic, group.group.as_str()).await?;
                Session::open(group.clone()).await
            };
            match reopened.await {
                Ok(session) => break session,
                Err(e) => {
                    tracing::warn!(error = %e, queue = %group.queue, "re-subscribing to RabbitMQ");
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        };
        tracing::info!(queue = %group.queue, "re-subscribed to RabbitMQ");
        registration = cancel_on_drop(&session.shared, &stop);
    }
}

/// The first and the longest wait between attempts to re-subscribe.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Receives until the subscription is dropped, the broker closed or the consumer lost, and
/// expires leases.
///
/// When the subscription is dropped the consumer is cancelled, and whatever still arrives is
/// handed back; the session then keeps enforcing `ack_wait` on the deliveries still out, and
/// ends when they are all settled or expired. When the broker closes, it ends at once (the
/// server requeues what is unacknowledged when the connection closes). When the consumer is
/// lost, its deliveries are too: the server requeues them, and late settlements are refused.
async fn consume(session: Session, tx: &mpsc::Sender<Delivery>, stop: &CancellationToken) -> Ended {
    let Session { shared, mut consumer } = session;
    let group = &shared.sub;
    let mut tx = Some(tx);
    let mut leases: VecDeque<(Instant, Arc<Lease>)> = VecDeque::new();
    let mut consuming = true;
    loop {
        while leases.front().is_some_and(|(_, lease)| !lease.is_pending()) {
            leases.pop_front();
        }
        if tx.is_none() && (!consuming || !shared.channel.status().connected()) && leases.is_empty() {
            return Ended::Stopped;
        }
        let deadline = leases.front().map(|(at, _)| *at);
        tokio::select! {
            biased;
            () = group.broker.shutdown.cancelled() => return Ended::Stopped,
            () = stop.cancelled(), if tx.is_some() => {
                tx = None;
                cancel(&shared).await;
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                let now = Instant::now();
                while let Some((at, lease)) = leases.front() {
                    if *at > now {
                        break;
                    }
                    if lease.take(EXPIRED) {
                        expire(lease, &shared).await;
                    }
                    leases.pop_front();
                }
            }
            next = consumer.next(), if consuming => match next {
                Some(Ok(delivery)) => {
                    let Some((lease, delivery)) = to_delivery(delivery, &shared).await else { continue };
                    leases.push_back((Instant::now() + group.ack_wait, lease));
                    forward(delivery, tx, stop).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, queue = %group.queue, "consuming from RabbitMQ");
                }
                None => {
                    consuming = false;
                    if tx.is_some() {
                        return Ended::Lost;
                    }
                }
            },
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hands `delivery` to the subscription, waiting for room (backpressure); gives it back unseen
/// if the subscription is gone.
async fn forward(delivery: Delivery, tx: Option<&mpsc::Sender<Delivery>>, stop: &CancellationToken) {
    let Some(tx) = tx else {
        delivery.return_unseen();
        return;
    };
    match tx.try_send(delivery) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(delivery)) => {
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => None,
                permit = tx.reserve() => permit.ok(),
            };
            match permit {
                Some(permit) => permit.send(delivery),
                None => delivery.return_unseen(),
            }
        }
        Err(mpsc::error::TrySendError::Closed(delivery)) => delivery.return_unseen(),
    }
}

/// Cancels the consumer so the server stops sending (unless [`CancelOnDrop`] did); what was
/// already sent still arrives and is handed back by the loop.
async fn cancel(shared: &Shared) {
    if shared.cancel_sent.swap(true, Ordering::AcqRel) {
        return;
    }
    let cancelled = shared.broker.op(
        || format!("cancelling the consumer of {}", shared.queue),
        shared.channel.basic_cancel(shared.tag.clone(), BasicCancelOptions::default()),
    );
    if let Err(e) = cancelled.await {
        tracing::debug!(error = %e, "cancelling a consumer; its channel closes when its deliveries are done");
    }
}

/// Cancels the consumer the moment the subscription's token is cancelled, inside
/// `Subscription`'s drop, and waits (bounded by [`CANCEL_CONFIRM_TIMEOUT`], normally one round
/// trip) for the server's `cancel-ok`, rather than whenever the task next runs.
///
/// Why: a quorum queue hands a message to whichever consumer it has. If the cancel went out only
/// when the task got scheduled, a message published right after the subscription was dropped
/// could still go to the dropped consumer, and one that reaches the channel after `cancel-ok` is
/// discarded by the client library unacknowledged: the server requeues it when the channel
/// closes, counting a delivery no handler saw. Once `cancel-ok` is back, the queue has removed
/// the consumer and later messages go to the group's other subscriptions. Only on a multi-thread
/// runtime (blocking the dropping thread needs `block_in_place`); otherwise the task cancels.
struct CancelOnDrop {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

/// The longest a subscription's drop waits for the server to confirm its cancel.
const CANCEL_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

impl CancelOnDrop {
    fn cancel_now(&self) {
        // On close the connection goes anyway; nothing to wait for.
        if self.shared.broker.shutdown.is_cancelled() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        if self.shared.cancel_sent.swap(true, Ordering::AcqRel) {
            return;
        }
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let shared = self.shared.clone();
        // The wait is on a std channel with an OS-clock timeout, never on the runtime's timer:
        // the drop may happen while the runtime shuts down.
        self.shared.broker.tasks.spawn_on(
            async move {
                let options = BasicCancelOptions::default();
                if let Err(e) = shared.channel.basic_cancel(shared.tag.clone(), options).await {
                    tracing::debug!(error = %e, "cancelling a dropped subscription's consumer");
                }
                // The waiter may have given up already.
                let _ = done_tx.send(());
            },
            &handle,
        );
        tokio::task::block_in_place(|| {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(CANCEL_CONFIRM_TIMEOUT) {
                tracing::debug!(timeout = ?CANCEL_CONFIRM_TIMEOUT, "confirming a consumer's cancel timed out");
            }
        });
    }
}

impl Wake for CancelOnDrop {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.stop.is_cancelled() {
            self.cancel_now();
        }
    }
}

/// Registers [`CancelOnDrop`] on `stop`; the returned future must be kept alive for as long as
/// the registration should last.
fn cancel_on_drop(shared: &Arc<Shared>, stop: &CancellationToken) -> Pin<Box<WaitForCancellationFutureOwned>> {
    let mut cancelled = Box::pin(stop.clone().cancelled_owned());
    let waker = Arc::new(CancelOnDrop { shared: shared.clone(), stop: stop.clone() });
    if cancelled.as_mut().poll(&mut Context::from_waker(&Waker::from(waker.clone()))).is_ready() {
        waker.cancel_now();
    }
    cancelled
}

/// A number in a header, whatever integer type the sender chose.
fn header_u32(headers: Option<&FieldTable>, name: &str) -> u32 {
    let value = headers.and_then(|h| h.inner().get(name));
    let n: Option<i64> = match value {
        Some(AMQPValue::ShortShortInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::ShortShortUInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::ShortInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::ShortUInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::LongInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::LongUInt(v)) => Some(i64::from(*v)),
        Some(AMQPValue::LongLongInt(v)) => Some(*v),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// A text header.
fn header_text(headers: &FieldTable, name: &str) -> Option<Result<String, String>> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => {
            Some(String::from_utf8(s.as_bytes().to_vec()).map_err(|e| format!("{name} is not UTF-8: {e}")))
        }
        AMQPValue::ShortString(s) => Some(Ok(s.as_str().to_owned())),
        _ => Some(Err(format!("{name} is not a string"))),
    }
}

/// A Herald message from an AMQP delivery's properties and body.
fn decode(delivery: &lapin::message::Delivery) -> Result<Message, String> {
    let properties = &delivery.properties;
    let headers = properties.headers().as_ref().ok_or("no headers")?;
    let id = properties.message_id().as_ref().ok_or("no message_id")?;
    let id = MessageId::parse(id.as_str()).map_err(|e| format!("message_id {id:?} is not a UUID: {e}"))?;
    let metadata: Metadata = match header_text(headers, HEADER_METADATA) {
        Some(json) => serde_json::from_str(&json?).map_err(|e| format!("{HEADER_METADATA}: {e}"))?,
        None => return Err(format!("no {HEADER_METADATA}")),
    };
    let topic = match header_text(headers, HEADER_TOPIC) {
        Some(topic) => topic?,
        None => delivery.routing_key.as_str().to_owned(),
    };
    Ok(Message {
        id,
        name: header_text(headers, HEADER_NAME).transpose()?.unwrap_or_default(),
        topic,
        key: header_text(headers, HEADER_KEY).transpose()?.unwrap_or_default(),
        payload: delivery.data.clone(),
        metadata,
    })
}

/// Turns an AMQP delivery into a Herald delivery and its lease, or settles it here: a message
/// over its delivery limit is dead-lettered, one that is not a Herald message is acked away.
async fn to_delivery(delivery: lapin::message::Delivery, shared: &Arc<Shared>) -> Option<(Arc<Lease>, Delivery)> {
    let headers = delivery.properties.headers().as_ref();
    let attempt =
        header_u32(headers, HEADER_ATTEMPTS).saturating_add(header_u32(headers, DELIVERY_COUNT)).saturating_add(1);
    let message = match decode(&delivery) {
        Ok(message) => message,
        Err(why) => {
            tracing::error!(queue = %shared.queue, %why, "not a Herald message; acknowledged and dropped");
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %e, "acknowledging a foreign message");
            }
            return None;
        }
    };
    let lease = Arc::new(Lease::new(delivery.acker, attempt, message, &shared.unacked));
    if attempt > shared.max_deliveries {
        // Requeued by the server after its last allowed delivery (its consumer went away):
        // this delivery exists only to dead-letter it.
        lease.take(EXPIRED);
        let max = shared.max_deliveries;
        if let Err(e) = dead_letter(&lease, shared, max, &expired_reason(max)).await {
            tracing::error!(error = %e, id = %lease.message.id, group = %shared.group, "dead-lettering an expired message");
        }
        return None;
    }
    let settle = AmqpSettle { lease: lease.clone(), shared: shared.clone(), received_at: Instant::now() };
    let delivery = Delivery::new(lease.message.clone(), attempt, None, Box::new(settle));
    Some((lease, delivery))
}

/// A lease ran out: requeue the message (the server counts the delivery), or dead-letter it
/// after its last allowed delivery.
async fn expire(lease: &Lease, shared: &Shared) {
    let result = if lease.attempt >= shared.max_deliveries {
        dead_letter(lease, shared, lease.attempt, &expired_reason(lease.attempt)).await
    } else {
        nack_requeue(lease, shared).await
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, id = %lease.message.id, group = %shared.group, "expiring a delivery");
    }
}

async fn ack(lease: &Lease, shared: &Shared) -> Result<(), PubSubError> {
    let acked = shared.broker.op(|| format!("ack on {}", shared.queue), lease.acker.ack(BasicAckOptions::default()));
    // `false`: the channel is gone (connection lost), and with it the delivery; the server
    // redelivers the message.
    if acked.await? { Ok(()) } else { Err(PubSubError::LeaseLost) }
}

async fn nack_requeue(lease: &Lease, shared: &Shared) -> Result<(), PubSubError> {
    let options = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
    let nacked = shared.broker.op(|| format!("nack on {}", shared.queue), lease.acker.nack(options)).await?;
    if nacked { Ok(()) } else { Err(PubSubError::LeaseLost) }
}

/// Publishes the dead letter of the lease's message, then acks the original.
async fn dead_letter(lease: &Lease, shared: &Shared, attempts: u32, reason: &str) -> Result<(), PubSubError> {
    let dead = dead_letter_for(&lease.message, &shared.group, attempts, reason, &shared.dead_letter_topic);
    shared.broker.publish_routed(std::slice::from_ref(&dead), Route::Topic).await?;
    ack(lease, shared).await
}

/// Re-publishes the lease's message straight to `queue` (counting `prior_attempts`
/// deliveries), then acks the original.
async fn republish(lease: &Lease, shared: &Shared, queue: &str, prior_attempts: u32) -> Result<(), PubSubError> {
    let route = Route::Queue { queue, prior_attempts };
    shared.broker.publish_routed(std::slice::from_ref(&lease.message), route).await?;
    ack(lease, shared).await
}

/// The retry queues' delays are rounded up to two significant digits (1234 ms waits 1300 ms),
/// so that jittered back-offs share a few queues instead of making one each.
fn retry_delay_ms(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut unit = 1;
    while ms / unit >= 100 {
        unit = unit.saturating_mul(10);
    }
    ms.div_ceil(unit).saturating_mul(unit)
}

/// Settles one delivery with the server.
struct AmqpSettle {
    lease: Arc<Lease>,
    shared: Arc<Shared>,
    /// When the delivery reached this process: its lease ends `ack_wait` later.
    received_at: Instant,
}

impl AmqpSettle {
    async fn nack_later(&self, delay: Duration) -> Result<(), PubSubError> {
        let (broker, lease) = (&self.shared.broker, &self.lease);
        let queue = broker.declare_retry_queue(&self.shared.queue, retry_delay_ms(delay)).await?;
        republish(lease, &self.shared, &queue, lease.attempt).await
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), PubSubError> {
        // Past `ack_wait` the subscription's task requeues it (if it has not yet): too late.
        if self.received_at.elapsed() >= self.shared.ack_wait || !self.lease.take(SETTLED) {
            return Err(PubSubError::LeaseLost);
        }
        let (lease, shared) = (&*self.lease, &*self.shared);
        match settlement {
            Settlement::Ack => ack(lease, shared).await,
            Settlement::Nack { reason, .. } if lease.attempt >= shared.max_deliveries => {
                let reason = last_nack_reason(reason, shared.max_deliveries);
                dead_letter(lease, shared, lease.attempt, &reason).await
            }
            Settlement::Nack { delay, .. } if delay.is_zero() => nack_requeue(lease, shared).await,
            Settlement::Nack { delay, .. } => self.nack_later(delay).await,
            Settlement::DeadLetter { reason } => dead_letter(lease, shared, lease.attempt, &reason).await,
        }
    }

    fn return_unseen(self: Box<Self>) {
        if !self.lease.take(SETTLED) {
            return;
        }
        let tasks = self.shared.broker.tasks.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            tasks.spawn(async move {
                let (lease, shared) = (&*self.lease, &*self.shared);
                let prior = lease.attempt.saturating_sub(1);
                if let Err(e) = republish(lease, shared, &shared.queue, prior).await {
                    tracing::debug!(error = %e, "handing back an unseen delivery; requeueing it (counted)");
                    if let Err(e) = nack_requeue(lease, shared).await {
                        tracing::debug!(error = %e, "requeueing an unseen delivery; the server does when its channel closes");
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_round_up_to_two_significant_digits() {
        assert_eq!(retry_delay_ms(Duration::ZERO), 1);
        assert_eq!(retry_delay_ms(Duration::from_millis(10)), 10);
        assert_eq!(retry_delay_ms(Duration::from_millis(300)), 300);
        assert_eq!(retry_delay_ms(Duration::from_millis(1234)), 1300);
        assert_eq!(retry_delay_ms(Duration::from_millis(99_001)), 100_000);
    }

    #[test]
    fn attempts_read_any_integer_header() {
        let mut h = FieldTable::default();
        h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(2));
        h.insert(HEADER_ATTEMPTS.into(), AMQPValue::ShortUInt(3));
        assert_eq!(header_u32(Some(&h), DELIVERY_COUNT), 2);
        assert_eq!(header_u32(Some(&h), HEADER_ATTEMPTS), 3);
        assert_eq!(header_u32(Some(&h), "absent"), 0);
        assert_eq!(header_u32(None, DELIVERY_COUNT), 0);
    }
}
