//! Publishing: a [`Message`] becomes a persistent AMQP message on the topic exchange, routed by
//! its topic; every message of a batch is sent before any publisher confirm is awaited.

use async_trait::async_trait;
use herald::message::Message;
use herald::pubsub::{PubSubError, Publisher};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, PublisherConfirm};

use crate::broker::{AmqpBroker, Inner, check_topic, short};
use crate::error::AmqpError;

/// Header carrying [`Message::name`].
pub const HEADER_NAME: &str = "herald-name";
/// Header carrying [`Message::key`] (absent when the key is empty).
pub const HEADER_KEY: &str = "herald-key";
/// Header carrying [`Message::topic`] (the routing key is not enough: a retried message comes
/// back routed by its group queue's name).
pub const HEADER_TOPIC: &str = "herald-topic";
/// Header carrying [`Message::metadata`] as JSON.
pub const HEADER_METADATA: &str = "herald-metadata";
/// Header counting the deliveries a message had before the adapter re-published it (a delayed
/// nack or a hand-back); absent on a first publish. The delivery's `attempt` is this plus the
/// quorum queue's `x-delivery-count` plus one.
pub const HEADER_ATTEMPTS: &str = "herald-attempts";
/// AMQP delivery mode 2: the server writes the message to disk.
const PERSISTENT: u8 = 2;

/// The AMQP properties of `message`: id in `message_id`, name, key, topic and metadata in
/// Herald's headers, persistent; `prior_attempts` deliveries already made (0 on a first publish).
pub(crate) fn properties(message: &Message, prior_attempts: u32) -> Result<BasicProperties, PubSubError> {
    let metadata = serde_json::to_string(&message.metadata).map_err(PubSubError::backend)?;
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    let mut headers = FieldTable::default();
    headers.insert(HEADER_NAME.into(), text(&message.name));
    if !message.key.is_empty() {
        headers.insert(HEADER_KEY.into(), text(&message.key));
    }
    headers.insert(HEADER_TOPIC.into(), text(&message.topic));
    headers.insert(HEADER_METADATA.into(), text(&metadata));
    if prior_attempts > 0 {
        headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(prior_attempts)));
    }
    Ok(BasicProperties::default()
        .with_message_id(message.id.to_string().into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers))
}

/// Where a message goes: the topic exchange, or straight to one of the adapter's queues.
pub(crate) enum Route<'a> {
    /// The topic exchange, routed by the message's topic: every group gets it.
    Topic,
    /// One queue through the default exchange (a retry queue, a group queue), with the count of
    /// deliveries already made; it must exist (the publish is mandatory).
    Queue { queue: &'a str, prior_attempts: u32 },
}

impl Inner {
    /// Publishes `messages` along `route` and waits for every confirm, whatever the closed flag
    /// says (dead letters and hand-backs still go out while a subscription winds down).
    pub(crate) async fn publish_routed(&self, messages: &[Message], route: Route<'_>) -> Result<(), PubSubError> {
        if messages.is_empty() {
            return Ok(());
        }
        let channel = self.publish_channel().await?;
        // Send everything first (in order, on one channel), then wait for the confirms: one
        // round trip for the batch instead of one per message.
        let mut pending: Vec<(String, PublisherConfirm)> = Vec::with_capacity(messages.len());
        for m in messages {
            let (exchange, routing_key, prior, mandatory) = match route {
                Route::Topic => {
                    check_topic(&m.topic)?;
                    (self.exchange.as_str(), m.topic.as_str(), 0, false)
                }
                Route::Queue { queue, prior_attempts } => ("", queue, prior_attempts, true),
            };
            let what = || format!("publishing {} to {routing_key}", m.id);
            let options = BasicPublishOptions { mandatory, ..BasicPublishOptions::default() };
            let confirm = self
                .op(
                    what,
                    channel.basic_publish(
                        short(exchange)?,
                        short(routing_key)?,
                        options,
                        &m.payload,
                        properties(m, prior)?,
                    ),
                )
                .await?;
            pending.push((what(), confirm));
        }
        let timeout = self.config.confirm_timeout_duration();
        let confirms = futures::future::join_all(pending.into_iter().map(|(what, confirm)| async move {
            match tokio::time::timeout(timeout, confirm).await {
                Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(_)))) => Err(AmqpError::Unroutable { what }),
                Ok(Ok(Confirmation::Nack(_))) => Err(AmqpError::Nacked { what }),
                Ok(Err(e)) => Err(AmqpError::amqp(what, e)),
                Err(_) => Err(AmqpError::Timeout { what, timeout }),
            }
        }));
        for confirmed in confirms.await {
            confirmed?;
        }
        Ok(())
    }
}

#[async_trait]
impl Publisher for AmqpBroker {
    /// Returns once RabbitMQ has confirmed every message (publisher confirms: each one routed to
    /// and stored in every group queue bound to its topic). Messages are sent in order on one
    /// channel, so each queue receives them in the slice's order. A topic that no group has
    /// subscribed to yet routes nowhere: the message is confirmed and dropped.
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        if self.is_closed() {
            return Err(PubSubError::Closed);
        }
        self.inner.publish_routed(messages, Route::Topic).await?;
        herald::observability::record_published(messages);
        Ok(())
    }

    async fn close(&self) -> Result<(), PubSubError> {
        AmqpBroker::close(self).await
    }
}
