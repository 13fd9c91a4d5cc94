//! [`KafkaBroker`]: one producer, one admin client, and the topics known to exist.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use herald::pubsub::PubSubError;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::KafkaConfig;
use crate::error::KafkaError;

/// How long [`KafkaBroker::close`] waits for its subscriptions' tasks to end (each commits its
/// offsets and leaves its group).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// The most records the producer puts in one record batch. A member resuming a partition
/// starts fetching this many records before its committed offset and skips to the offset: a
/// broker that answers a fetch from the middle of a batch with the *next* batch (tansu 0.6
/// does) would otherwise skip the rest of that batch.
pub(crate) const MAX_BATCH_RECORDS: i64 = 500;

/// The longest a Kafka topic name may be.
const MAX_TOPIC_NAME: usize = 249;

/// A [`Publisher`](herald::pubsub::Publisher) and [`Subscriber`](herald::pubsub::Subscriber) on
/// Kafka. Cheap to clone; clones share the producer and close together. Build it with
/// [`KafkaConfig::connect`].
#[derive(Clone)]
pub struct KafkaBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Servers, prefix, partitions: how topics and groups are named and made.
    pub(crate) config: KafkaConfig,
    /// Every publish of this broker (and its dead letters) goes through this one producer.
    pub(crate) producer: FutureProducer,
    /// Creates topics on first use.
    admin: AdminClient<DefaultClientContext>,
    /// Kafka topics known to exist, so a publish does not ask the cluster every time.
    known_topics: Mutex<HashSet<String>>,
    /// Set by `close`: publishing and subscribing are refused from then on.
    closed: AtomicBool,
    /// Cancelled by `close`; every subscription's token is a child of it.
    pub(crate) shutdown: CancellationToken,
    /// The subscriptions' tasks and dead-letter publishes, so `close` can wait for them.
    pub(crate) tasks: TaskTracker,
}

impl fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("bootstrap_servers", &self.inner.config.bootstrap_servers)
            .field("topic_prefix", &self.inner.config.topic_prefix)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// Connects with a checked `config` (see [`KafkaConfig::connect`]).
    pub(crate) async fn connect(config: KafkaConfig) -> Result<Self, KafkaError> {
        let servers = config.servers().join(",");
        let connect_error = |source| KafkaError::Connect { servers: servers.clone(), source };
        let producer: FutureProducer = config
            .client_config()
            .set("linger.ms", config.linger_ms.to_string())
            // Kafka's own partitioner (as the Java client): murmur2 of the key, so every client
            // puts a key in the same partition; messages without a key are spread at random.
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "30000")
            .set("batch.num.messages", MAX_BATCH_RECORDS.to_string())
            // No reordering of one key's messages when a send is retried.
            .set("enable.idempotence", "true")
            .create()
            .map_err(connect_error)?;
        let admin: AdminClient<DefaultClientContext> = config.client_config().create().map_err(connect_error)?;
        // librdkafka connects lazily: ask for the cluster's metadata now, so a wrong address
        // fails here rather than at the first publish.
        let client = producer.clone();
        let timeout = config.request_timeout();
        tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, timeout).map(drop))
            .await
            .map_err(|_| connect_error(rdkafka::error::KafkaError::Canceled))?
            .map_err(connect_error)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                known_topics: Mutex::new(HashSet::new()),
                closed: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// The Kafka topic that holds `topic` (the prefix, then the topic).
    pub fn kafka_topic(&self, topic: &str) -> String {
        self.inner.kafka_topic(topic)
    }

    /// Creates the Kafka topic of `topic` with the configured partitions and replication,
    /// unless it exists; returns its name. (Publishing and subscribing do this by themselves.)
    pub async fn create_topic(&self, topic: &str) -> Result<String, KafkaError> {
        self.inner.ensure_topic(topic).await
    }

    /// The Kafka consumer group id of Herald group `group` on `topic`.
    pub fn group_id(&self, topic: &str, group: &str) -> String {
        self.inner.group_id(topic, group)
    }

    /// Stops publishing and ends every subscription (each commits its offsets and leaves its
    /// group), waiting for their tasks (bounded), then flushes the producer. Idempotent.
    pub async fn close(&self) -> Result<(), PubSubError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "Kafka subscription tasks did not end in time");
        }
        let producer = self.inner.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        if let Ok(Err(e)) = flushed {
            tracing::debug!(error = %e, "flushing the Kafka producer on close");
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }
}

impl KafkaConfig {
    /// The client settings every client of the adapter shares.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.servers().join(","))
            .set("client.id", "herald")
            .set("socket.timeout.ms", self.request_timeout_ms.max(10).to_string())
            // librdkafka logs through `log`, which nothing here listens to: errors reach us as
            // results instead.
            .set("log_level", "3");
        config
    }
}

impl Inner {
    pub(crate) fn kafka_topic(&self, topic: &str) -> String {
        kafka_name(&format!("{}{}", self.config.topic_prefix, topic))
    }

    /// `<kafka topic>/<group>`: a Herald group belongs to one topic, so the same group name on
    /// two topics is two Kafka groups (Kafka topics cannot hold `/`, so they cannot collide).
    pub(crate) fn group_id(&self, topic: &str, group: &str) -> String {
        format!("{}/{group}", self.kafka_topic(topic))
    }

    /// Creates the Kafka topic of `topic` with the configured partitions unless it is known to
    /// exist; returns its name.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<String, KafkaError> {
        let name = self.kafka_topic(topic);
        if self.known_topics.lock().unwrap_or_else(PoisonError::into_inner).contains(&name) {
            return Ok(name);
        }
        let partitions = i32::try_from(self.config.partitions).unwrap_or(i32::MAX);
        let replication = TopicReplication::Fixed(i32::from(self.config.replication_factor));
        let new_topic = NewTopic::new(&name, partitions, replication);
        let options = AdminOptions::new().operation_timeout(Some(self.config.request_timeout()));
        let what = || format!("creating topic {name} for {topic:?}");
        let results =
            self.admin.create_topics([&new_topic], &options).await.map_err(|e| KafkaError::request(what(), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(KafkaError::request(what(), rdkafka::error::KafkaError::AdminOp(code))),
            }
        }
        self.known_topics.lock().unwrap_or_else(PoisonError::into_inner).insert(name.clone());
        Ok(name)
    }

    /// Forgets that the topic of `topic` exists (after a failed publish: the cluster may have
    /// lost it), so the next publish creates it again if needed.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.known_topics.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.kafka_topic(topic));
    }
}

/// A legal Kafka topic name for `name`: letters, digits, `.`, `_` and `-`, at most 249
/// characters. When anything had to change, a hash of the original is appended so that `a b`
/// and `a_b` do not collide.
pub(crate) fn kafka_name(name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if clean == name && name.len() <= MAX_TOPIC_NAME && name != "." && name != ".." {
        return clean;
    }
    let hash = format!("_{:016x}", fnv1a_64(name.as_bytes()));
    let keep = clean.chars().take(MAX_TOPIC_NAME - hash.len()).collect::<String>();
    format!("{keep}{hash}")
}

/// FNV-1a, 64 bits: stable across processes and versions, unlike `DefaultHasher`.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// A delivery's position: the partition in the top 16 bits, the offset in the other 48, so
/// positions of one partition sort in its order and two partitions never share one.
pub(crate) fn position(partition: i32, offset: i64) -> u64 {
    (u64::from(partition.max(0) as u16) << 48) | (offset.max(0) as u64 & POSITION_OFFSET_MASK)
}

/// The offset bits of a [`position`].
pub(crate) const POSITION_OFFSET_MASK: u64 = (1 << 48) - 1;

/// The partition and offset of a [`position`].
pub(crate) fn partition_and_offset(position: u64) -> (i32, i64) {
    (i32::from((position >> 48) as u16), (position & POSITION_OFFSET_MASK) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_made_legal_without_collisions() {
        assert_eq!(kafka_name("ordering.orders-1_a"), "ordering.orders-1_a");
        let spaced = kafka_name("a b");
        assert!(spaced.starts_with("a_b_"), "{spaced}");
        assert_ne!(kafka_name("a b"), kafka_name("a_b"));
        assert!(kafka_name(&"x".repeat(400)).len() <= MAX_TOPIC_NAME);
    }

    #[test]
    fn positions_carry_the_partition_and_the_offset() {
        assert_eq!(partition_and_offset(position(3, 42)), (3, 42));
        assert!(position(0, 5) < position(0, 6), "positions of a partition sort in its order");
        assert_ne!(position(1, 0), position(0, 0));
    }
}
