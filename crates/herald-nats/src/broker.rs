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
    /// The partition-ownership bucket, opened on first use (partitioned mode only).
    pub(crate) claims: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
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
                claims: tokio::sync::OnceCell::new(),
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

    /// Whether topics are partitioned (see [`NatsConfig::partitions`]).
    pub(crate) fn partitioned(&self) -> bool {
        self.config.partitions > 0
    }

    /// The subject a message of `topic` is published to: the topic's subject, or with
    /// partitions `<subject>.<partition>`.
    pub(crate) fn publish_subject(&self, message: &herald::message::Message) -> String {
        if self.partitioned() {
            let partition = partition_of(&message.key, &message.id.to_string(), self.config.partitions);
            format!("{}.{partition}", self.subject(&message.topic))
        } else {
            self.subject(&message.topic)
        }
    }

    /// The topic of a message received on `subject`: the subject prefix and, with partitions,
    /// the partition token taken off.
    pub(crate) fn topic_of<'a>(&self, subject: &'a str) -> &'a str {
        let topic = subject.strip_prefix(self.config.subject_prefix.as_str()).unwrap_or(subject);
        if self.partitioned() { topic.rsplit_once('.').map_or(topic, |(topic, _)| topic) } else { topic }
    }

    /// The bucket where the members of partitioned groups register and claim partitions:
    /// `<stream_prefix>partitions`, every entry living `claim_ttl` without a refresh. When it
    /// exists already, its own max age is the TTL every member goes by.
    pub(crate) async fn claims(&self) -> Result<&async_nats::jetstream::kv::Store, NatsError> {
        self.claims
            .get_or_try_init(|| async {
                let bucket = format!("{}partitions", self.config.stream_prefix);
                if let Ok(store) = self.js.get_key_value(&bucket).await {
                    return Ok(store);
                }
                // The bucket's stream, as `create_key_value` makes it (which asks for the
                // account info first, a request older servers answer in a form it cannot read).
                let config = stream::Config {
                    name: format!("KV_{bucket}"),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    max_age: self.config.claim_ttl_duration(),
                    storage: match self.config.storage {
                        Storage::File => stream::StorageType::File,
                        Storage::Memory => stream::StorageType::Memory,
                    },
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    num_replicas: self.config.replicas,
                    ..Default::default()
                };
                let what = || format!("creating the partition bucket {bucket}");
                if let Err(first) = self.js.get_or_create_stream(config).await {
                    // Another member created it in between.
                    if self.js.get_stream(format!("KV_{bucket}")).await.is_err() {
                        return Err(NatsError::jetstream(what(), first));
                    }
                }
                self.js.get_key_value(&bucket).await.map_err(|e| NatsError::jetstream(what(), e))
            })
            .await
    }

    /// The stream of `topic`, created if it does not exist yet.
    pub(crate) async fn stream(&self, topic: &str) -> Result<stream::Stream, NatsError> {
        let name = self.stream_name(topic);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![if self.partitioned() { format!("{}.*", self.subject(topic)) } else { self.subject(topic) }],
            storage: match self.config.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            max_age: self.config.max_age_duration(),
            duplicate_window: self.config.duplicate_window(),
            num_replicas: self.config.replicas,
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
    if clean == name { clean } else { format!("{clean}_{:08x}", fnv1a_64(name.as_bytes()) as u32) }
}

/// FNV-1a, 64 bits: stable across processes, platforms and versions, unlike `DefaultHasher`.
pub(crate) fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The partition of a message: `fnv1a_64(key) % partitions`, or for a message without a key
/// the same hash of its id (spreading keyless messages over the partitions). Part of the wire
/// format: publishers and subscribers in every process must compute the same.
pub(crate) fn partition_of(key: &str, id: &str, partitions: u32) -> u32 {
    let hashed = if key.is_empty() { id } else { key };
    (fnv1a_64(hashed.as_bytes()) % u64::from(partitions.max(1))) as u32
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
    fn partitions_are_a_stable_hash_of_the_key() {
        // Fixed values: the partition of a key is part of the wire format.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(partition_of("order-1", "ignored", 8), partition_of("order-1", "other id", 8));
        assert_eq!(partition_of("order-1", "x", 8), (fnv1a_64(b"order-1") % 8) as u32);
        let spread: std::collections::HashSet<u32> = (0..64).map(|i| partition_of("", &i.to_string(), 8)).collect();
        assert!(spread.len() > 4, "messages without a key are spread: {spread:?}");
    }

    #[test]
    fn topics_must_be_plain_subjects() {
        assert!(check_topic("ordering.orders").is_ok());
        for bad in ["", "a b", "a.*", "a.>", "a..b", ".a", "a."] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
    }
}
