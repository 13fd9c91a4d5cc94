//! Publishing: a [`Message`] becomes the fields of a stream entry; a batch is one `MULTI`/`EXEC`
//! of `XADD`s, so it is stored all together or not at all.

use async_trait::async_trait;
use herald::message::Message;
use herald::pubsub::{PubSubError, Publisher};

use crate::broker::{Inner, RedisBroker, check_topic};
use crate::error::RedisError;

/// Entry field carrying [`Message::id`].
pub const FIELD_ID: &str = "id";
/// Entry field carrying [`Message::topic`].
pub const FIELD_TOPIC: &str = "topic";
/// Entry field carrying [`Message::name`].
pub const FIELD_NAME: &str = "name";
/// Entry field carrying [`Message::key`].
pub const FIELD_KEY: &str = "key";
/// Entry field carrying [`Message::payload`] (bytes, unchanged).
pub const FIELD_PAYLOAD: &str = "payload";
/// Entry field carrying [`Message::metadata`] as JSON.
pub const FIELD_METADATA: &str = "metadata";

impl Inner {
    /// Adds the `XADD` of `message` to `pipe`.
    pub(crate) fn add_xadd(&self, pipe: &mut redis::Pipeline, message: &Message) -> Result<(), PubSubError> {
        let metadata = serde_json::to_string(&message.metadata).map_err(PubSubError::backend)?;
        let xadd = pipe.cmd("XADD").arg(self.stream_key(&message.topic));
        if let Some(n) = self.config.max_len {
            xadd.arg("MAXLEN").arg("~").arg(n);
        }
        xadd.arg("*")
            .arg(FIELD_ID)
            .arg(message.id.to_string())
            .arg(FIELD_TOPIC)
            .arg(&message.topic)
            .arg(FIELD_NAME)
            .arg(&message.name)
            .arg(FIELD_KEY)
            .arg(&message.key)
            .arg(FIELD_PAYLOAD)
            .arg(&message.payload[..])
            .arg(FIELD_METADATA)
            .arg(metadata)
            .ignore();
        Ok(())
    }

    /// Publishes `messages`, whatever the closed flag says (dead letters still go out while a
    /// subscription winds down).
    pub(crate) async fn publish_all(&self, messages: &[Message]) -> Result<(), PubSubError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for m in messages {
            check_topic(&m.topic)?;
            self.add_xadd(&mut pipe, m)?;
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| RedisError::command(format!("publishing {} messages", messages.len()), e))?;
        Ok(())
    }
}

#[async_trait]
impl Publisher for RedisBroker {
    /// Returns once Redis has applied every `XADD` (one transaction). Whether that survives a
    /// server restart depends on the server's persistence (AOF/RDB), not on this adapter.
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        if self.is_closed() {
            return Err(PubSubError::Closed);
        }
        self.inner.publish_all(messages).await?;
        herald::observability::record_published(messages);
        Ok(())
    }

    async fn close(&self) -> Result<(), PubSubError> {
        RedisBroker::close(self).await
    }
}
