//! [`NatsBroker`]: one NATS connection, its JetStream context and the streams it made.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use herald::pubsub::PubSubError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{NatsConfig, Storage};
use crate::error::NatsError;

/// How long [`NatsBroker::close`] waits for its subscriptions' tasks to end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Publisher`](herald::pubsub::Publisher) and [`Subscriber`](herald::pubsub::Subscriber) on
/// NATS JetStream. Cheap to clone; clones share the connection and close together. Build it with
/// [`NatsConfig::connect`].
#[derive(Clone)]
pub struct NatsBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The JetStream context over the broker's one connection.
    pub(crate) js: jetstream::Context,
    /// Stream prefix, storage and limits for the streams this broker creates.
    pub(crate) config: NatsConfig,
    /// Streams known to exist, so a publish does not ask the server every time.
    known_streams: Mutex<HashSet<String>>,
    /// Set by `close`: publishing and subscribing are refused from then on.
    closed: AtomicBool,
    /// Cancelled by `close`; every subscription's token is a child of it.
    pub(crate) shutdown: CancellationToken,
    /// The subscriptions' pull tasks and the "return unseen" naks, so `close` can wait for them.
    pub(crate) tasks: TaskTracker,
}

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("url", &self.inner.config.url)
            .field("stream_prefix", &self.inner.config.stream_prefix)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// A broker over an existing connection (use [`NatsConfig::connect`] to open one).
    pub fn new(client: async_nats::Client, config: NatsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                js: jetstream::new(client),
                config,
                known_streams: Mutex::new(HashSet::new()),
                closed: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The name of the stream that holds `topic`.
    pub fn stream_name(&self, topic: &str) -> String {
        self.inner.stream_name(topic)
    }

    /// Stops publishing and ends every subscription, waiting (bounded) for their tasks.
    /// Idempotent.
    pub async fn close(&self) -> Result<(), PubSubError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "NATS subscription tasks did not end in time");
        }
        // Whatever is still buffered on the connection (acks, naks) goes out before we return.
        if let Err(e) = self.inner.js.client().flush().await {
            tracing::debug!(error = %e, "flushing the NATS connection on close");
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }
}

impl Inner {
    pub(crate) fn stream_name(&self, topic: &str) -> String {
        format!("{}{}", self.config.stream_prefix, sanitise(topic))
    }

    /// The subject of `topic` (the subject prefix, then the topic).
    pub(crate) fn subject(&self, topic: &str) -> String {
        format!("{}{}", self.config.subject_prefix, topic)
    }

    /// The stream of `topic`, created if it does not exist yet.
    pub(crate) async fn stream(&self, topic: &str) -> Result<stream::Stream, NatsError> {
        let name = self.stream_name(topic);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![self.subject(topic)],
            storage: match self.config.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            max_age: self.config.max_age_duration(),
            duplicate_window: self.config.duplicate_window(),
            ..Default::default()
        };
        let created = match self.js.get_or_create_stream(config).await {
            Ok(stream) => Ok(stream),
            // Another client created it between our "get" and our "create": it is there now.
            Err(first) => self.js.get_stream(&name).await.map_err(|_| first),
        };
        let stream = created.map_err(|e| NatsError::jetstream(format!("creating stream {name} for {topic:?}"), e))?;
        self.known_streams.lock().unwrap_or_else(PoisonError::into_inner).insert(name);
        Ok(stream)
    }

    /// Forgets that the stream of `topic` exists, so the next publish asks the server (and
    /// re-creates it if needed). Called after a failed publish: a stream can disappear while the
    /// broker runs (a server restarted with memory storage, an operator deleting it), and a
    /// stale entry here would make every later publish to the topic fail.
    pub(crate) fn forget_stream(&self, topic: &str) {
        let name = self.stream_name(topic);
        self.known_streams.lock().unwrap_or_else(PoisonError::into_inner).remove(&name);
    }

    /// Makes sure the stream of `topic` exists, asking the server only the first time.
    pub(crate) async fn ensure_stream(&self, topic: &str) -> Result<(), NatsError> {
        let name = self.stream_name(topic);
        if self.known_streams.lock().unwrap_or_else(PoisonError::into_inner).contains(&name) {
            return Ok(());
        }
        self.stream(topic).await.map(drop)
    }
}

/// Checks that `topic` can be a NATS subject: not empty, no whitespace, no wildcards, no empty
/// tokens.
pub(crate) fn check_topic(topic: &str) -> Result<(), PubSubError> {
    let valid = !topic.is_empty()
        && !topic.chars().any(|c| c.is_whitespace() || c == '*' || c == '>')
        && topic.split('.').all(|token| !token.is_empty());
    if valid {
        Ok(())
    } else {
        Err(PubSubError::InvalidOptions(format!(
            "topic {topic:?} is not a valid NATS subject (no spaces, '*', '>' or empty '.' tokens)"
        )))
    }
}

/// A JetStream-safe name for `name` (stream and consumer names cannot hold `.`, `*`, `>`,
/// whitespace or path separators). When anything had to be replaced, a hash of the original is
/// appended so that `a.b` and `a_b` do not collide.
pub(crate) fn sanitise(name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if clean == name {
        clean
    } else {
        // FNV-1a: stable across processes and versions, unlike `DefaultHasher`.
        let hash =
            name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{clean}_{:08x}", hash as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_without_collisions() {
        assert_eq!(sanitise("orders-1_a"), "orders-1_a");
        let dotted = sanitise("orders.billing.dead-letters");
        assert!(dotted.starts_with("orders_billing_dead-letters_"), "{dotted}");
        assert_ne!(sanitise("a.b"), sanitise("a_b"));
        assert_eq!(sanitise("a.b"), sanitise("a.b"));
    }

    #[test]
    fn topics_must_be_plain_subjects() {
        assert!(check_topic("ordering.orders").is_ok());
        for bad in ["", "a b", "a.*", "a.>", "a..b", ".a", "a."] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
    }
}
