//! Core NATS (no JetStream): the declared non-durable mode.
//!
//! The server forwards each message to the subscriptions connected at that moment and keeps
//! nothing. A topic is a subject and a group is a NATS *queue group*: each group gets every
//! message, and the subscriptions of one group share them. Messages carry the same headers as
//! in JetStream mode. Within the process, [`herald::transient`] keeps the delivery contract
//! (nack → redelivery after the delay, up to `max_deliveries`; bounded in-flight); what cannot
//! hold is declared in the capabilities: no durability, replay, ack-wait redelivery, dead letters
//! or per-key order. The client reconnects by itself and re-subscribes; messages published while
//! a subscriber was disconnected are lost to it.
//!
//! Use it for notifications whose loss is acceptable (cache invalidation, live dashboards). Do
//! not use the same subject in both modes: a JetStream stream on the subject would also store
//! the core publishes.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use herald::message::Message;
use herald::pubsub::{Capabilities, PubSubError, Publisher, SubscribeOptions, Subscriber, Subscription};
use herald::transient::{self, TransientFeed};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::check_topic;
use crate::error::NatsError;
use crate::publisher::encode_headers;
use crate::subscriber::decode;

/// How long [`NatsCoreBroker::close`] waits for its subscriptions' tasks to end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Publisher`] and [`Subscriber`] on core NATS: fire-and-forget, with queue groups. Cheap
/// to clone; clones share the connection and close together. Build it with
/// [`NatsConfig::connect_core`](crate::NatsConfig::connect_core).
#[derive(Clone)]
pub struct NatsCoreBroker {
    inner: Arc<CoreInner>,
}

struct CoreInner {
    client: async_nats::Client,
    closed: AtomicBool,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl fmt::Debug for NatsCoreBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCoreBroker")
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl NatsCoreBroker {
    /// A broker over an existing connection.
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            inner: Arc::new(CoreInner {
                client,
                closed: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Stops publishing and ends every subscription (unsubscribing), waiting (bounded) for their
    /// tasks. Idempotent.
    pub async fn close(&self) -> Result<(), PubSubError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "core NATS subscription tasks did not end in time");
        }
        Ok(())
    }

    fn check_open(&self) -> Result<(), PubSubError> {
        if self.inner.closed.load(Ordering::SeqCst) { Err(PubSubError::Closed) } else { Ok(()) }
    }

    /// Waits until the server has processed everything sent so far on the connection.
    async fn flush(&self, what: &str) -> Result<(), PubSubError> {
        self.inner.client.flush().await.map_err(|e| NatsError::jetstream(what.to_owned(), e).into())
    }
}

#[async_trait]
impl Publisher for NatsCoreBroker {
    /// Returns once the server has received every message (a flush round trip); it delivers
    /// them to the subscriptions connected now and keeps nothing.
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        self.check_open()?;
        for m in messages {
            check_topic(&m.topic)?;
            let headers = encode_headers(m)?;
            self.inner
                .client
                .publish_with_headers(m.topic.clone(), headers, Bytes::copy_from_slice(&m.payload))
                .await
                .map_err(|e| {
                    PubSubError::from(NatsError::jetstream(format!("publishing {} to {}", m.id, m.topic), e))
                })?;
        }
        self.flush("flushing core publishes").await?;
        herald::observability::record_published(messages);
        Ok(())
    }

    async fn close(&self) -> Result<(), PubSubError> {
        NatsCoreBroker::close(self).await
    }
}

#[async_trait]
impl Subscriber for NatsCoreBroker {
    /// Transient (see [`herald::transient`]), with queue groups.
    fn capabilities(&self) -> Capabilities {
        Capabilities { groups: true, ..transient::CAPABILITIES }
    }

    /// Subscribes the group's queue subscription; returns once the server has registered it,
    /// so a message published after this returns reaches it. `start`, `ack_wait` and the dead
    /// letter topic do not apply (nothing is retained).
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, PubSubError> {
        options.validate()?;
        self.check_open()?;
        check_topic(&options.topic)?;
        let mut nats_sub = self
            .inner
            .client
            .queue_subscribe(options.topic.clone(), options.group.clone())
            .await
            .map_err(|e| PubSubError::from(NatsError::jetstream(format!("subscribing to {}", options.topic), e)))?;
        self.flush("registering a subscription").await?;

        let stop = self.inner.shutdown.child_token();
        let (feed, subscription) = transient::transient_subscription(&options, Some(stop.clone().drop_guard()));
        self.inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = feed.closed() => break,
                    next = nats_sub.next() => match next {
                        Some(message) => {
                            if forward(&feed, &message).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            if let Err(e) = nats_sub.unsubscribe().await {
                tracing::debug!(error = %e, "unsubscribing from core NATS failed (the connection is going away)");
            }
        });
        Ok(subscription)
    }

    async fn close(&self) -> Result<(), PubSubError> {
        NatsCoreBroker::close(self).await
    }
}

/// Hands one NATS message to the subscription; a message that is not Herald's is logged and
/// skipped (there is nowhere to dead-letter it). `Err` means the subscription is gone.
async fn forward(feed: &TransientFeed, message: &async_nats::Message) -> Result<(), PubSubError> {
    match decode(message, "") {
        Ok(decoded) => feed.deliver(decoded).await,
        Err(why) => {
            tracing::warn!(subject = %message.subject, %why, "skipping a core NATS message that is not a Herald message");
            Ok(())
        }
    }
}
