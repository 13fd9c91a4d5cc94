//! [`RedisBroker`]: one multiplexed Redis connection and the subscriptions' tasks.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald::pubsub::PubSubError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RedisConfig;
use crate::error::RedisError;

/// How long [`RedisBroker::close`] waits for its subscriptions' tasks to end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Publisher`](herald::pubsub::Publisher) and [`Subscriber`](herald::pubsub::Subscriber) on
/// Redis Streams. Cheap to clone; clones share the connection and close together. Build it with
/// [`RedisConfig::connect`].
#[derive(Clone)]
pub struct RedisBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Opens the subscriptions' own connections.
    client: redis::Client,
    /// Publishing and settling (multiplexed: cheap to clone, pipelines concurrent commands;
    /// re-opened after the server went away, see [`open`]).
    pub(crate) conn: ConnectionManager,
    pub(crate) config: RedisConfig,
    /// Set by `close`: publishing and subscribing are refused from then on.
    closed: AtomicBool,
    /// Cancelled by `close`; every subscription's token is a child of it.
    pub(crate) shutdown: CancellationToken,
    /// The subscriptions' read tasks and the "return unseen" claims, so `close` can wait.
    pub(crate) tasks: TaskTracker,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.inner.config.url)
            .field("key_prefix", &self.inner.config.key_prefix)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    pub(crate) async fn connect(client: redis::Client, config: RedisConfig) -> Result<Self, RedisError> {
        let conn = open(&client, &config).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                config,
                closed: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// The key of the stream that holds `topic`.
    pub fn stream_key(&self, topic: &str) -> String {
        self.inner.stream_key(topic)
    }

    /// Stops publishing and ends every subscription, waiting (bounded) for their tasks.
    /// Idempotent.
    pub async fn close(&self) -> Result<(), PubSubError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "Redis subscription tasks did not end in time");
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }
}

impl Inner {
    pub(crate) fn stream_key(&self, topic: &str) -> String {
        format!("{}{}", self.config.key_prefix, topic)
    }

    /// The hash holding "not before" times of nacked messages of `group` on `topic`.
    pub(crate) fn delays_key(&self, topic: &str, group: &str) -> String {
        format!("{}{}\u{0}nack-delays\u{0}{}", self.config.key_prefix, topic, group)
    }

    /// A new connection of its own (a subscription's blocking reads must not hold up others).
    pub(crate) async fn own_connection(&self) -> Result<ConnectionManager, RedisError> {
        open(&self.client, &self.config).await
    }
}

/// Opens a connection to the server.
///
/// A [`ConnectionManager`], not a bare `MultiplexedConnection`: a multiplexed connection whose
/// server went away (a restart, a failover, a network cut) stays broken for good, so every later
/// publish, settlement and read would fail until the process restarts. The manager fails the
/// commands in flight and re-opens the connection in the background (exponential backoff,
/// [`RECONNECT_MAX_DELAY`] at most between attempts; a failed round of attempts starts again
/// on the next command), so the callers' own retries (the subscription's read loop, the
/// application's publish retry, the router's redelivery) find a working connection once the
/// server is back.
pub(crate) async fn open(client: &redis::Client, config: &RedisConfig) -> Result<ConnectionManager, RedisError> {
    let settings = ConnectionManagerConfig::new()
        .set_response_timeout(Some(config.response_timeout()))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(RECONNECT_MAX_DELAY);
    ConnectionManager::new_with_config(client.clone(), settings)
        .await
        .map_err(|e| RedisError::Connect { url: config.url.clone(), source: e })
}

/// The longest pause between two attempts to re-open a lost connection.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// Checks that `topic` is usable: not empty, no whitespace.
pub(crate) fn check_topic(topic: &str) -> Result<(), PubSubError> {
    if topic.trim().is_empty() || topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PubSubError::InvalidOptions(format!("topic {topic:?} is empty or holds whitespace")));
    }
    Ok(())
}
