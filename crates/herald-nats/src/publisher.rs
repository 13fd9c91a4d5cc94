//! Publishing: a [`Message`] becomes a JetStream publish with Herald's headers; every publish
//! of a batch is sent before any acknowledgement is awaited.

use std::collections::BTreeSet;
use std::future::IntoFuture;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use bytes::Bytes;
use herald::message::Message;
use herald::pubsub::{PubSubError, Publisher};

use crate::broker::{Inner, NatsBroker, check_topic};
use crate::error::NatsError;

/// Header carrying [`Message::name`].
pub const HEADER_NAME: &str = "herald-name";
/// Header carrying [`Message::key`] (absent when the key is empty).
pub const HEADER_KEY: &str = "herald-key";
/// Header carrying [`Message::metadata`] as JSON.
pub const HEADER_METADATA: &str = "herald-metadata";

/// Herald's headers for `message`: the id in `Nats-Msg-Id` (so JetStream de-duplicates
/// re-publishes), name, key and metadata. Shared by the JetStream and core modes.
pub(crate) fn encode_headers(message: &Message) -> Result<HeaderMap, PubSubError> {
    // NATS headers are lines: a CR or LF in a value would end the header early.
    let single_line = |s: &str| !s.contains(['\r', '\n']);
    if !single_line(&message.name) || !single_line(&message.key) {
        return Err(PubSubError::Unsupported("a message name or key containing CR or LF (NATS headers are lines)"));
    }
    let metadata = serde_json::to_string(&message.metadata).map_err(PubSubError::backend)?;
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message.id.to_string().as_str());
    headers.insert(HEADER_NAME, message.name.as_str());
    if !message.key.is_empty() {
        headers.insert(HEADER_KEY, message.key.as_str());
    }
    headers.insert(HEADER_METADATA, metadata.as_str());
    Ok(headers)
}

/// The JetStream publish for `message`: payload unchanged, Herald's headers.
fn encode(message: &Message) -> Result<PublishMessage, PubSubError> {
    Ok(PublishMessage::build().payload(Bytes::copy_from_slice(&message.payload)).headers(encode_headers(message)?))
}

impl Inner {
    /// Publishes `messages`, whatever the closed flag says (dead letters still go out while a
    /// subscription winds down).
    pub(crate) async fn publish_all(&self, messages: &[Message]) -> Result<(), PubSubError> {
        let topics: BTreeSet<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        for &topic in &topics {
            check_topic(topic)?;
            self.ensure_stream(topic).await?;
        }
        let sent = self.send_all(messages).await;
        if sent.is_err() {
            for &topic in &topics {
                self.forget_stream(topic);
            }
        }
        sent
    }

    /// Sends everything first (in order, on one connection), then waits for the acks: one round
    /// trip for the batch instead of one per message.
    async fn send_all(&self, messages: &[Message]) -> Result<(), PubSubError> {
        let mut pending: Vec<PublishAckFuture> = Vec::with_capacity(messages.len());
        for m in messages {
            let publish = encode(m)?;
            let ack = self
                .js
                .send_publish(self.publish_subject(m), publish)
                .await
                .map_err(|e| NatsError::jetstream(format!("publishing {} to {}", m.id, m.topic), e))?;
            pending.push(ack);
        }
        futures::future::try_join_all(pending.into_iter().map(IntoFuture::into_future))
            .await
            .map_err(|e| NatsError::jetstream("waiting for publish acknowledgements", e))?;
        Ok(())
    }
}

#[async_trait]
impl Publisher for NatsBroker {
    /// Returns once JetStream has stored every message (each publish acknowledged). Messages are
    /// sent in order on one connection, so their order in each topic's stream is the slice's.
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        if self.is_closed() {
            return Err(PubSubError::Closed);
        }
        self.inner.publish_all(messages).await?;
        herald::observability::record_published(messages);
        Ok(())
    }

    async fn close(&self) -> Result<(), PubSubError> {
        NatsBroker::close(self).await
    }
}
