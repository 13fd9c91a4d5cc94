//! Redis Pub/Sub: the declared fire-and-forget mode (the book's first message-queue example).
//!
//! `PUBLISH` hands a message to the clients subscribed to its channel at that moment; Redis
//! keeps nothing. A topic is the channel `<key_prefix><topic>`. There are no consumer groups:
//! every subscription receives every message of its topic, whatever its group. Within the
//! process, [`herald::transient`] keeps the delivery contract (nack → redelivery after the
//! delay, up to `max_deliveries`; bounded in-flight); what cannot hold is declared in the
//! capabilities: no durability, groups, replay, ack-wait redelivery, dead letters or per-key
//! order. A subscription whose connection drops reconnects and subscribes again by itself;
//! messages published meanwhile are lost to it.
//!
//! A message travels as one frame: `HRLD1`, a 4-byte big-endian length, that many bytes of JSON
//! (`id`, `name`, `key`, `metadata`), then the payload bytes unchanged.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use herald::message::{Message, MessageId, Metadata};
use herald::pubsub::{Capabilities, PubSubError, Publisher, SubscribeOptions, Subscriber, Subscription};
use herald::transient::{self, TransientFeed};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{check_topic, open};
use crate::config::RedisConfig;
use crate::error::RedisError;

/// How long [`RedisChannels::close`] waits for its subscriptions' tasks to end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between reconnection attempts of a subscription.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The first bytes of a frame.
const MAGIC: &[u8] = b"HRLD1";

/// A [`Publisher`] and [`Subscriber`] on Redis Pub/Sub channels: fire-and-forget. Cheap to
/// clone; clones share the publishing connection and close together. Build it with
/// [`RedisConfig::connect_channels`].
#[derive(Clone)]
pub struct RedisChannels {
    inner: Arc<ChannelsInner>,
}

struct ChannelsInner {
    client: redis::Client,
    conn: ConnectionManager,
    config: RedisConfig,
    closed: AtomicBool,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl fmt::Debug for RedisChannels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisChannels")
            .field("url", &self.inner.config.url)
            .field("key_prefix", &self.inner.config.key_prefix)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisChannels {
    pub(crate) async fn connect(client: redis::Client, config: RedisConfig) -> Result<Self, RedisError> {
        let conn = open(&client, &config).await?;
        Ok(Self {
            inner: Arc::new(ChannelsInner {
                client,
                conn,
                config,
                closed: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// The channel that carries `topic`.
    pub fn channel(&self, topic: &str) -> String {
        format!("{}{}", self.inner.config.key_prefix, topic)
    }

    /// Stops publishing and ends every subscription, waiting (bounded) for their tasks.
    /// Idempotent.
    pub async fn close(&self) -> Result<(), PubSubError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "Redis Pub/Sub subscription tasks did not end in time");
        }
        Ok(())
    }

    fn check_open(&self) -> Result<(), PubSubError> {
        if self.inner.closed.load(Ordering::SeqCst) { Err(PubSubError::Closed) } else { Ok(()) }
    }

    /// A connection subscribed to `channel` (the server has confirmed the subscription).
    async fn subscribed(&self, channel: &str) -> Result<redis::aio::PubSub, RedisError> {
        let mut pubsub = self
            .inner
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| RedisError::Connect { url: self.inner.config.url.clone(), source: e })?;
        pubsub.subscribe(channel).await.map_err(|e| RedisError::command(format!("SUBSCRIBE {channel}"), e))?;
        Ok(pubsub)
    }
}

/// The JSON part of a frame.
#[derive(Serialize, Deserialize)]
struct Header<'a> {
    id: MessageId,
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    metadata: Metadata,
}

fn encode(message: &Message) -> Result<Vec<u8>, PubSubError> {
    let header = Header {
        id: message.id,
        name: message.name.as_str().into(),
        key: message.key.as_str().into(),
        metadata: message.metadata.clone(),
    };
    let json = serde_json::to_vec(&header).map_err(PubSubError::backend)?;
    let len = u32::try_from(json.len()).map_err(|_| PubSubError::Unsupported("a message header over 4 GiB"))?;
    let mut frame = Vec::with_capacity(MAGIC.len() + 4 + json.len() + message.payload.len());
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&json);
    frame.extend_from_slice(&message.payload);
    Ok(frame)
}

fn decode(topic: &str, frame: &[u8]) -> Result<Message, String> {
    let rest = frame.strip_prefix(MAGIC).ok_or("not a Herald frame")?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or("truncated frame")?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|e| e.to_string())?;
    if rest.len() < len {
        return Err("truncated frame".to_owned());
    }
    let (json, payload) = rest.split_at(len);
    let header: Header<'_> = serde_json::from_slice(json).map_err(|e| format!("frame header: {e}"))?;
    Ok(Message {
        id: header.id,
        name: header.name.into_owned(),
        topic: topic.to_owned(),
        key: header.key.into_owned(),
        payload: payload.to_vec(),
        metadata: header.metadata,
    })
}

#[async_trait]
impl Publisher for RedisChannels {
    /// Returns once Redis has run every `PUBLISH` (pipelined, in order): it has handed the
    /// messages to the subscriptions connected now and kept nothing.
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        self.check_open()?;
        if messages.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for m in messages {
            check_topic(&m.topic)?;
            pipe.cmd("PUBLISH").arg(self.channel(&m.topic)).arg(encode(m)?).ignore();
        }
        let mut conn = self.inner.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(|e| {
            PubSubError::from(RedisError::command(format!("publishing {} messages", messages.len()), e))
        })?;
        herald::observability::record_published(messages);
        Ok(())
    }

    async fn close(&self) -> Result<(), PubSubError> {
        RedisChannels::close(self).await
    }
}

#[async_trait]
impl Subscriber for RedisChannels {
    /// Transient (see [`herald::transient`]), without groups.
    fn capabilities(&self) -> Capabilities {
        transient::CAPABILITIES
    }

    /// Subscribes on a connection of its own; returns once Redis has confirmed, so a message
    /// published after this returns reaches it. The group, `start`, `ack_wait` and the dead
    /// letter topic do not apply.
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, PubSubError> {
        options.validate()?;
        self.check_open()?;
        check_topic(&options.topic)?;
        let channel = self.channel(&options.topic);
        let first = self.subscribed(&channel).await?;
        let stop = self.inner.shutdown.child_token();
        let (feed, subscription) = transient::transient_subscription(&options, Some(stop.clone().drop_guard()));
        let this = self.clone();
        self.inner.tasks.spawn(async move { this.read_loop(first, channel, options.topic, feed, stop).await });
        Ok(subscription)
    }

    async fn close(&self) -> Result<(), PubSubError> {
        RedisChannels::close(self).await
    }
}

impl RedisChannels {
    /// Forwards the channel's messages until the subscription is dropped or the broker closed;
    /// a lost connection is re-established (with backoff) and subscribed again.
    async fn read_loop(
        &self,
        first: redis::aio::PubSub,
        channel: String,
        topic: String,
        feed: TransientFeed,
        stop: CancellationToken,
    ) {
        let mut pubsub = Some(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            let connection = match pubsub.take() {
                Some(connection) => connection,
                None => {
                    let again = tokio::select! {
                        () = stop.cancelled() => return,
                        () = feed.closed() => return,
                        again = self.subscribed(&channel) => again,
                    };
                    match again {
                        Ok(connection) => {
                            tracing::info!(%channel, "Redis Pub/Sub subscription re-established");
                            connection
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, %channel, ?backoff, "Redis Pub/Sub reconnect failed; retrying");
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue;
                        }
                    }
                }
            };
            backoff = Duration::from_millis(50);
            let mut messages = connection.into_on_message();
            loop {
                let msg = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = feed.closed() => return,
                    msg = messages.next() => msg,
                };
                let Some(msg) = msg else {
                    tracing::warn!(%channel, "Redis Pub/Sub connection lost; messages published until it is back are missed");
                    break;
                };
                match decode(&topic, msg.get_payload_bytes()) {
                    Ok(message) => {
                        if feed.deliver(message).await.is_err() {
                            return;
                        }
                    }
                    Err(why) => tracing::warn!(%channel, %why, "skipping a Redis Pub/Sub message that is not Herald's"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_garbage_is_refused() {
        let mut m = Message::new("t", "N.v1", vec![0, 159, 146, 150, 255]).with_key("k");
        m.metadata.headers.insert("h".into(), "v".into());
        let frame = encode(&m).expect("encode");
        assert_eq!(decode("t", &frame).expect("decode"), m);
        assert!(decode("t", b"hello").is_err());
        assert!(decode("t", &frame[..8]).is_err());
    }
}
