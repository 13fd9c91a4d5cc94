//! Publishing and subscribing: the contract every broker adapter implements.
//!
//! # The contract (checked by `herald-conformance`)
//!
//! * **At least once.** A message handed to a subscription is delivered again until it is
//!   settled: after a [`nack`](Delivery::nack) (once its delay has passed), after its `ack_wait`
//!   expires without a settlement, or when the consumer holding it goes away.
//! * **Groups.** Every group subscribed to a topic gets every message (fan-out); the
//!   subscriptions of one group share the group's messages (competing consumers).
//! * **Where a group starts.** A *new* group starts where its [`StartFrom`] says, by default
//!   at the beginning: every retained message, or on a broker that keeps no history
//!   ([`Capabilities::start_from_beginning`] false) every message published from now on, never
//!   an error. A group that already exists resumes where it was and ignores `start`.
//! * **Per-key order** (when [`Capabilities::per_key_order`]): within a group, a message is not
//!   delivered while an older message with the same non-empty key is unsettled. A message that
//!   keeps failing therefore holds back later messages of *its* key, never those of other keys.
//! * **Dead letters.** After `max_deliveries` deliveries, or on
//!   [`dead_letter`](Delivery::dead_letter), the message is published to the dead-letter topic
//!   with its reason, attempt count, group and original topic in headers (see the `DLQ_*`
//!   constants) and leaves the group's queue.
//! * **Settling is final.** The first settlement counts; a settlement made after the lease
//!   expired and the message went to someone else is refused with [`PubSubError::LeaseLost`].
//! * **Close** is idempotent. After `close`, publishing fails with [`PubSubError::Closed`] and
//!   subscriptions end.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::DropGuard;

use crate::message::Message;

/// Header on a dead letter: why it was dead-lettered.
pub const DLQ_REASON: &str = "herald-dead-letter-reason";
/// Header on a dead letter: how many times it had been delivered.
pub const DLQ_ATTEMPTS: &str = "herald-dead-letter-attempts";
/// Header on a dead letter: the topic it was first published to.
pub const DLQ_ORIGINAL_TOPIC: &str = "herald-original-topic";
/// Header on a dead letter: the group that failed to handle it.
pub const DLQ_GROUP: &str = "herald-dead-letter-group";
/// Header on a dead letter: the original message id (the dead letter has its own id).
pub const DLQ_ORIGINAL_ID: &str = "herald-original-id";

/// Errors from publishing and subscribing.
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    /// The publisher or subscriber was closed.
    #[error("closed")]
    Closed,
    /// The delivery's lease expired and the message was handed to another consumer; this
    /// settlement was ignored.
    #[error("lease lost: the message was redelivered before it was settled")]
    LeaseLost,
    /// The options make no sense (empty topic, zero in-flight…).
    #[error("invalid subscription options: {0}")]
    InvalidOptions(String),
    /// The implementation does not support what was asked (see [`Capabilities`]).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The broker or database failed; usually worth retrying.
    #[error("broker error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl PubSubError {
    /// Wraps a backend error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }

    /// This error again, for each of several operations that failed together (a backend
    /// error's source chain becomes its text).
    pub fn for_each_of_many(&self) -> Self {
        match self {
            Self::Closed => Self::Closed,
            Self::LeaseLost => Self::LeaseLost,
            Self::InvalidOptions(s) => Self::InvalidOptions(s.clone()),
            Self::Unsupported(s) => Self::Unsupported(s),
            Self::Backend(e) => {
                let mut text = e.to_string();
                let mut source = e.source();
                while let Some(cause) = source {
                    text = format!("{text}: {cause}");
                    source = cause.source();
                }
                Self::Backend(text.into())
            }
        }
    }
}

/// What an implementation supports, so a suite can check exactly what is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Messages survive a restart of the broker and of the consumers.
    pub durable: bool,
    /// Consumer groups (competing consumers, fan-out between groups).
    pub groups: bool,
    /// Within a group, messages with one key are handled one at a time, in order.
    pub per_key_order: bool,
    /// `nack(delay)` redelivers only after the delay.
    pub delayed_nack: bool,
    /// An unsettled delivery is redelivered after `ack_wait`.
    pub ack_wait_redelivery: bool,
    /// Dead letters after `max_deliveries`, with the reason.
    pub dead_letters: bool,
    /// [`StartFrom::Beginning`] replays retained history. Without it the broker keeps no
    /// history (RabbitMQ queues, Redis Pub/Sub channels, core NATS) and a new group asking for
    /// `Beginning` is accepted and gets everything published from then on, never an error.
    pub start_from_beginning: bool,
    /// [`StartFrom::Position`] is supported.
    pub start_from_position: bool,
}

impl Capabilities {
    /// Everything: an event-stream broker with groups, per-key order and dead letters.
    pub const FULL: Self = Self {
        durable: true,
        groups: true,
        per_key_order: true,
        delayed_nack: true,
        ack_wait_redelivery: true,
        dead_letters: true,
        start_from_beginning: true,
        start_from_position: true,
    };
}

/// Where a *new* group starts reading. A group that already exists resumes where it was.
///
/// A new group starts at the [`Beginning`](Self::Beginning) by default, so that nothing
/// published before its first subscription is lost without a word (a relay started a moment
/// before the router must not make the router's groups skip what it published). On a broker
/// that keeps no history ([`Capabilities::start_from_beginning`] false) `Beginning` simply means
/// "everything from now on"; it is never an error. Brokers that keep history log a warning when
/// a new group starts at [`Latest`](Self::Latest) over earlier messages it will not receive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// Every retained message (the default); on a broker without history, every message
    /// published from now on.
    #[default]
    Beginning,
    /// Only messages published after the group was created: earlier ones are skipped for good.
    Latest,
    /// Messages at this position and after (positions come from [`Delivery::position`]).
    Position(u64),
}

/// How to subscribe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The topic to read.
    pub topic: String,
    /// The consumer group; subscriptions with the same group share its messages.
    pub group: String,
    /// Where a new group starts (the beginning unless set; ignored by an existing group).
    pub start: StartFrom,
    /// At most this many unsettled deliveries at once for this subscription (backpressure).
    pub max_in_flight: usize,
    /// A delivery not settled within this time is redelivered.
    pub ack_wait: Duration,
    /// After this many deliveries a message goes to the dead-letter topic.
    pub max_deliveries: u32,
    /// Where dead letters go; `None` means [`SubscribeOptions::default_dead_letter_topic`].
    pub dead_letter_topic: Option<String>,
}

impl SubscribeOptions {
    /// Options with the defaults: a new group starts at the [beginning](StartFrom::Beginning)
    /// (on a broker without history: with the next message published), 64 in flight, 30 s ack
    /// wait, 5 deliveries.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            start: StartFrom::Beginning,
            max_in_flight: 64,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            dead_letter_topic: None,
        }
    }

    /// Sets where a new group starts.
    #[must_use]
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Sets the in-flight limit.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Sets the ack wait.
    #[must_use]
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// Sets the delivery limit.
    #[must_use]
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// Sets the dead-letter topic.
    #[must_use]
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// `<topic>.<group>.dead-letters`: dead letters belong to the group that failed them.
    pub fn default_dead_letter_topic(&self) -> String {
        format!("{}.{}.dead-letters", self.topic, self.group)
    }

    /// The dead-letter topic in effect.
    pub fn effective_dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| self.default_dead_letter_topic())
    }

    /// Checks the options, so a mistake is an error rather than a subscription that never
    /// delivers.
    pub fn validate(&self) -> Result<(), PubSubError> {
        let bad = |why: &str| Err(PubSubError::InvalidOptions(why.to_owned()));
        if self.topic.trim().is_empty() {
            return bad("topic is empty");
        }
        if self.group.trim().is_empty() {
            return bad("group is empty");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1");
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries must be at least 1");
        }
        if self.ack_wait.is_zero() {
            return bad("ack_wait must be positive");
        }
        Ok(())
    }
}

/// How a delivery ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Handled; never deliver it again to this group.
    Ack,
    /// Not handled; deliver it again after `delay` (dead-letter it if that was the last try).
    Nack {
        /// How long to wait before redelivery.
        delay: Duration,
        /// Why, kept as the dead-letter reason if no delivery is left.
        reason: Option<String>,
    },
    /// Cannot ever be handled; move it to the dead-letter topic now.
    DeadLetter {
        /// Why, carried in the dead letter's headers.
        reason: String,
    },
}

/// The adapter's side of a delivery: settles it with the broker.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Settles the delivery. Called at most once.
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), PubSubError>;

    /// The delivery never reached a consumer (its subscription was dropped with it still
    /// buffered): hand it back without counting the attempt. By default it is just dropped, and
    /// the broker redelivers it when its ack wait expires.
    fn return_unseen(self: Box<Self>) {}
}

/// A message handed to a consumer, to be settled with [`ack`](Self::ack), [`nack`](Self::nack)
/// or [`dead_letter`](Self::dead_letter). Dropping it unsettled is allowed: the message is
/// redelivered when its `ack_wait` expires.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// 1 on the first delivery, then 2, 3…
    pub attempt: u32,
    /// The message's position in its topic, where the broker has one.
    pub position: Option<u64>,
    settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// For adapters: a delivery whose settlement goes to `settle`.
    pub fn new(message: Message, attempt: u32, position: Option<u64>, settle: Box<dyn Settle>) -> Self {
        Self { message, attempt, position, settle }
    }

    /// Settles the delivery.
    pub async fn settle(self, settlement: Settlement) -> Result<(), PubSubError> {
        self.settle.settle(settlement).await
    }

    /// Handled: do not deliver again.
    pub async fn ack(self) -> Result<(), PubSubError> {
        self.settle(Settlement::Ack).await
    }

    /// Deliver again after `delay`.
    pub async fn nack(self, delay: Duration) -> Result<(), PubSubError> {
        self.settle(Settlement::Nack { delay, reason: None }).await
    }

    /// Deliver again after `delay`; `reason` becomes the dead-letter reason if this was the last
    /// delivery.
    pub async fn nack_with_reason(self, delay: Duration, reason: impl Into<String>) -> Result<(), PubSubError> {
        self.settle(Settlement::Nack { delay, reason: Some(reason.into()) }).await
    }

    /// Move to the dead-letter topic now.
    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<(), PubSubError> {
        self.settle(Settlement::DeadLetter { reason: reason.into() }).await
    }

    /// Hands back a delivery that no handler has seen (e.g. one still queued at shutdown): it
    /// is redelivered at once and the attempt does not count towards `max_deliveries`.
    pub fn return_unseen(self) {
        self.settle.return_unseen();
    }
}

/// Publishes messages to their topics.
#[async_trait]
pub trait Publisher: Send + Sync + fmt::Debug {
    /// Publishes `messages` (each to its own `topic`). When this returns `Ok`, a durable
    /// implementation has stored every one of them; messages with the same key keep their order.
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError>;

    /// Stops publishing; later calls fail with [`PubSubError::Closed`]. Idempotent.
    async fn close(&self) -> Result<(), PubSubError>;
}

/// Opens subscriptions.
#[async_trait]
pub trait Subscriber: Send + Sync + fmt::Debug {
    /// What this implementation supports.
    fn capabilities(&self) -> Capabilities;

    /// Subscribes; the returned [`Subscription`] yields deliveries until it is dropped or the
    /// subscriber is closed.
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, PubSubError>;

    /// Ends every subscription. Idempotent.
    async fn close(&self) -> Result<(), PubSubError>;
}

/// Both halves of a broker, for code that publishes and subscribes through one value
/// (`Arc<dyn Broker>` coerces to `Arc<dyn Publisher>` and `Arc<dyn Subscriber>`).
/// Implemented for every type that is both.
pub trait Broker: Publisher + Subscriber {}

impl<T: Publisher + Subscriber> Broker for T {}

impl dyn Broker {
    /// Closes both halves: publishing, then every subscription (on a `dyn Broker`, `close`
    /// is ambiguous between [`Publisher::close`] and [`Subscriber::close`]). Idempotent; the
    /// first error is returned after both halves were asked to close.
    pub async fn shutdown(&self) -> Result<(), PubSubError> {
        let published = Publisher::close(self).await;
        let subscribed = Subscriber::close(self).await;
        published.and(subscribed)
    }
}

/// A stream of deliveries. Dropping it stops fetching; its unsettled deliveries are redelivered
/// (to another subscription of the group) when their ack wait expires.
pub struct Subscription {
    rx: mpsc::Receiver<Delivery>,
    _stop: Option<DropGuard>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// For adapters: a subscription fed by `rx`; dropping it cancels `stop`'s token.
    pub fn new(rx: mpsc::Receiver<Delivery>, stop: Option<DropGuard>) -> Self {
        Self { rx, _stop: stop }
    }

    /// The next delivery, or `None` when the subscription has ended.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Stops accepting deliveries and returns those already fetched but not yet taken.
    pub fn close_and_drain(&mut self) -> Vec<Delivery> {
        self.rx.close();
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

impl Drop for Subscription {
    /// Deliveries fetched but never taken are handed back at once, uncounted.
    fn drop(&mut self) {
        for d in self.close_and_drain() {
            d.return_unseen();
        }
    }
}

impl Stream for Subscription {
    type Item = Delivery;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_options_are_refused_with_the_reason() {
        let err = SubscribeOptions::new("", "g").validate().unwrap_err();
        assert!(err.to_string().contains("topic is empty"));
        let err = SubscribeOptions::new("t", "g").max_in_flight(0).validate().unwrap_err();
        assert!(err.to_string().contains("max_in_flight"));
        assert!(SubscribeOptions::new("t", "g").validate().is_ok());
    }

    #[test]
    fn a_new_group_starts_at_the_beginning_by_default() {
        assert_eq!(SubscribeOptions::new("t", "g").start, StartFrom::Beginning);
        assert_eq!(StartFrom::default(), StartFrom::Beginning);
    }

    #[test]
    fn dead_letters_default_to_a_topic_per_group() {
        let o = SubscribeOptions::new("orders", "billing");
        assert_eq!(o.effective_dead_letter_topic(), "orders.billing.dead-letters");
        assert_eq!(o.dead_letter_topic("dlq").effective_dead_letter_topic(), "dlq");
    }
}
