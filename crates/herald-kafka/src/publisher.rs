//! Publishing: a [`Message`] becomes a Kafka record (key = the message key, value = the payload,
//! Herald's metadata in headers); every record of a batch is sent before any acknowledgement is
//! awaited.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use herald::message::Message;
use herald::pubsub::{PubSubError, Publisher};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::broker::{Inner, KafkaBroker};
use crate::error::KafkaError;

/// Header carrying [`Message::id`].
pub const HEADER_ID: &str = "herald-id";
/// Header carrying [`Message::name`].
pub const HEADER_NAME: &str = "herald-name";
/// Header carrying [`Message::metadata`] as JSON (correlation, causation, trace context, time,
/// content type, headers).
pub const HEADER_METADATA: &str = "herald-metadata";

/// How long a publish keeps retrying while the producer's local queue is full.
const QUEUE_FULL_PATIENCE: Duration = Duration::from_secs(30);

/// Herald's headers for `message`.
pub(crate) fn encode_headers(message: &Message) -> Result<OwnedHeaders, PubSubError> {
    let metadata = serde_json::to_string(&message.metadata).map_err(PubSubError::backend)?;
    let id = message.id.to_string();
    Ok(OwnedHeaders::new_with_capacity(3)
        .insert(Header { key: HEADER_ID, value: Some(id.as_str()) })
        .insert(Header { key: HEADER_NAME, value: Some(message.name.as_str()) })
        .insert(Header { key: HEADER_METADATA, value: Some(metadata.as_str()) }))
}

impl Inner {
    /// Publishes `messages`, whatever the closed flag says (dead letters still go out while a
    /// subscription winds down).
    pub(crate) async fn publish_all(&self, messages: &[Message]) -> Result<(), PubSubError> {
        let topics: BTreeSet<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        for &topic in &topics {
            if topic.trim().is_empty() {
                return Err(PubSubError::InvalidOptions("a message without a topic".to_owned()));
            }
            self.ensure_topic(topic).await?;
        }
        let sent = self.send_all(messages).await;
        if sent.is_err() {
            for &topic in &topics {
                self.forget_topic(topic);
            }
        }
        sent
    }

    /// Hands every record to the producer first (in order: records of one partition keep it),
    /// then waits for the brokers' acknowledgements of all of them.
    async fn send_all(&self, messages: &[Message]) -> Result<(), PubSubError> {
        let mut pending: Vec<(DeliveryFuture, &Message)> = Vec::with_capacity(messages.len());
        for m in messages {
            let topic = self.kafka_topic(&m.topic);
            let headers = encode_headers(m)?;
            let mut record = FutureRecord::to(&topic).payload(m.payload.as_slice()).headers(headers);
            if !m.key.is_empty() {
                record = record.key(m.key.as_str());
            }
            let started = tokio::time::Instant::now();
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((delivery, m));
                        break;
                    }
                    // The local queue is full: wait for room (earlier sends drain it).
                    Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if started.elapsed() < QUEUE_FULL_PATIENCE =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => {
                        return Err(KafkaError::request(format!("publishing {} to {}", m.id, m.topic), e).into());
                    }
                }
            }
        }
        for (delivery, m) in pending {
            let what = || format!("publishing {} to {}", m.id, m.topic);
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(KafkaError::request(what(), e).into()),
                Err(_) => return Err(KafkaError::request(what(), rdkafka::error::KafkaError::Canceled).into()),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Publisher for KafkaBroker {
    /// Returns once the brokers have stored every message (acks from all in-sync replicas).
    /// Records are handed to one idempotent producer in the slice's order, so messages of one
    /// key (one partition) keep it.
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        if self.is_closed() {
            return Err(PubSubError::Closed);
        }
        self.inner.publish_all(messages).await?;
        herald::observability::record_published(messages);
        Ok(())
    }

    async fn close(&self) -> Result<(), PubSubError> {
        KafkaBroker::close(self).await
    }
}
