//! Subscriptions over transports that keep nothing: Redis Pub/Sub, core NATS. The server hands
//! each message to the subscribers connected at that moment and forgets it.
//!
//! Herald's delivery contract still holds *within the process*, so handlers and the
//! [`Router`](crate::router::Router) work unchanged: a nack redelivers the message to the same
//! subscription after its delay (from memory), with the attempt counted, up to
//! `max_deliveries`; a delivery dropped unsettled comes back at once as the next attempt; at most
//! `max_in_flight` deliveries are unsettled at a time (the transport's reader waits, and the
//! server's own buffering or slow-consumer policy takes over). What cannot hold is declared
//! by the adapter in its [`Capabilities`] (see [`CAPABILITIES`]):
//! nothing survives a crash, a disconnect or a subscription being dropped; there is no
//! redelivery by ack wait, no replay, and no dead letters (a message that fails
//! `max_deliveries` times is dropped with an `error!` log, since there is nowhere durable to put
//! it). Use these transports for notifications whose loss is acceptable, as the book's first
//! Redis example does.
//!
//! An adapter calls [`transient_subscription`] when subscribing, spawns a reader that passes
//! each message from the transport to [`TransientFeed::deliver`], and stops the reader when
//! [`TransientFeed::closed`] resolves (the subscription was dropped).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::DropGuard;

use crate::message::Message;
use crate::pubsub::{Capabilities, Delivery, PubSubError, Settle, Settlement, SubscribeOptions, Subscription};

/// What a transient transport can promise (an adapter with queue groups sets `groups`).
pub const CAPABILITIES: Capabilities = Capabilities {
    durable: false,
    groups: false,
    per_key_order: false,
    delayed_nack: true,
    ack_wait_redelivery: false,
    dead_letters: false,
    start_from_beginning: false,
    start_from_position: false,
};

/// The adapter's end of a transient subscription.
#[derive(Debug, Clone)]
pub struct TransientFeed {
    shared: Arc<Feed>,
}

#[derive(Debug)]
struct Feed {
    tx: mpsc::Sender<Delivery>,
    in_flight: Arc<Semaphore>,
    max_deliveries: u32,
    topic: String,
    group: String,
}

/// A subscription fed by the returned [`TransientFeed`]; dropping the subscription cancels
/// `stop` (the adapter's reader task) and makes [`TransientFeed::deliver`] fail with `Closed`.
pub fn transient_subscription(options: &SubscribeOptions, stop: Option<DropGuard>) -> (TransientFeed, Subscription) {
    let (tx, rx) = mpsc::channel(options.max_in_flight.max(1));
    let feed = Feed {
        tx,
        in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
        max_deliveries: options.max_deliveries,
        topic: options.topic.clone(),
        group: options.group.clone(),
    };
    (TransientFeed { shared: Arc::new(feed) }, Subscription::new(rx, stop))
}

impl TransientFeed {
    /// Hands a message that just arrived to the subscription (attempt 1), waiting while
    /// `max_in_flight` deliveries are unsettled. Fails with [`PubSubError::Closed`] once the
    /// subscription is gone: the reader should stop.
    pub async fn deliver(&self, message: Message) -> Result<(), PubSubError> {
        self.shared.send(message, 1).await
    }

    /// Resolves when the subscription has been dropped or closed.
    pub async fn closed(&self) {
        self.shared.tx.closed().await;
    }
}

impl Feed {
    async fn send(self: &Arc<Self>, message: Message, attempt: u32) -> Result<(), PubSubError> {
        let permit = tokio::select! {
            permit = self.in_flight.clone().acquire_owned() => permit.map_err(|_| PubSubError::Closed)?,
            () = self.tx.closed() => return Err(PubSubError::Closed),
        };
        let settle = LocalSettle { feed: self.clone(), message: Some(message.clone()), attempt, _permit: permit };
        let delivery = Delivery::new(message, attempt, None, Box::new(settle));
        self.tx.send(delivery).await.map_err(|_| PubSubError::Closed)
    }

    /// Delivers `message` again as `attempt` after `delay`, unless that exceeds `max_deliveries`.
    fn redeliver(self: &Arc<Self>, message: Message, attempt: u32, delay: Duration, reason: Option<&str>) {
        if attempt > self.max_deliveries {
            tracing::error!(
                message_id = %message.id, topic = %self.topic, group = %self.group, attempts = attempt - 1,
                reason = reason.unwrap_or("nacked"),
                "message dropped after max deliveries: a transient transport keeps no dead letters"
            );
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(message_id = %message.id, "no runtime to redeliver on; the message is dropped");
            return;
        };
        let feed = self.clone();
        runtime.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if feed.send(message, attempt).await.is_err() {
                tracing::debug!(topic = %feed.topic, "subscription gone before a redelivery; the message is dropped");
            }
        });
    }
}

/// Settles a transient delivery in the process.
struct LocalSettle {
    feed: Arc<Feed>,
    /// `None` once settled.
    message: Option<Message>,
    attempt: u32,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for LocalSettle {
    async fn settle(mut self: Box<Self>, settlement: Settlement) -> Result<(), PubSubError> {
        let Some(message) = self.message.take() else { return Ok(()) };
        match settlement {
            Settlement::Ack => Ok(()),
            Settlement::Nack { delay, reason } => {
                self.feed.redeliver(message, self.attempt + 1, delay, reason.as_deref());
                Ok(())
            }
            Settlement::DeadLetter { reason } => {
                tracing::error!(
                    message_id = %message.id, topic = %self.feed.topic, group = %self.feed.group, %reason,
                    "message dropped: a transient transport keeps no dead letters"
                );
                Err(PubSubError::Unsupported("dead letters (the transport is transient; the message was dropped)"))
            }
        }
    }

    fn return_unseen(mut self: Box<Self>) {
        if let Some(message) = self.message.take() {
            self.feed.redeliver(message, self.attempt, Duration::ZERO, None);
        }
    }
}

impl Drop for LocalSettle {
    /// Dropped unsettled: delivered again at once, as the next attempt.
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.feed.redeliver(message, self.attempt + 1, Duration::ZERO, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(max_deliveries: u32) -> SubscribeOptions {
        SubscribeOptions::new("t", "g").max_deliveries(max_deliveries).max_in_flight(2)
    }

    #[tokio::test]
    async fn nacks_redeliver_until_max_deliveries_then_the_message_is_dropped() {
        let (feed, mut sub) = transient_subscription(&options(3), None);
        feed.deliver(Message::new("t", "N", b"x".to_vec())).await.unwrap();
        for attempt in 1..=3 {
            let d = sub.next().await.unwrap();
            assert_eq!(d.attempt, attempt);
            d.nack(Duration::from_millis(5)).await.unwrap();
        }
        let late = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
        assert!(late.is_err(), "no fourth delivery");
    }

    #[tokio::test]
    async fn a_dropped_delivery_comes_back_and_in_flight_is_bounded() {
        let (feed, mut sub) = transient_subscription(&options(5), None);
        for i in 0..3u8 {
            let feed = feed.clone();
            tokio::spawn(async move { feed.deliver(Message::new("t", "N", vec![i])).await });
        }
        let a = sub.next().await.unwrap();
        let b = sub.next().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
        assert!(third.is_err(), "max_in_flight = 2 unsettled at a time");
        let payload = a.message.payload.clone();
        drop(a);
        b.ack().await.unwrap();
        let (x, y) = (sub.next().await.unwrap(), sub.next().await.unwrap());
        let again = if x.message.payload == payload { &x } else { &y };
        assert_eq!(again.message.payload, payload, "the dropped delivery came back");
        assert_eq!(again.attempt, 2, "a dropped delivery counts as an attempt");
    }

    #[tokio::test]
    async fn deliver_fails_once_the_subscription_is_gone() {
        let (feed, sub) = transient_subscription(&options(1), None);
        drop(sub);
        feed.closed().await;
        assert!(matches!(feed.deliver(Message::new("t", "N", vec![])).await, Err(PubSubError::Closed)));
    }
}
