//! # herald-kafka: Herald on Kafka
//!
//! A [`Publisher`](herald::pubsub::Publisher) and [`Subscriber`](herald::pubsub::Subscriber)
//! over Kafka, or any broker that speaks its protocol (the tests run against
//! [tansu](https://github.com/tansu-io/tansu)), through [librdkafka](https://github.com/confluentinc/librdkafka)
//! (the `rdkafka` crate, built from its bundled source; ADR 0019 says why).
//!
//! # How Herald maps onto Kafka
//!
//! * A **topic** is a Kafka topic named `<topic_prefix><topic>`, created on first publish or
//!   subscribe with [`KafkaConfig::partitions`] partitions.
//! * A **message** is a record: the key is the message key (none when it is empty), the value
//!   the payload, and headers carry the rest: `herald-id`, `herald-name` and `herald-metadata`
//!   (the [`Metadata`](herald::message::Metadata) as JSON: correlation, causation, trace
//!   context, time, content type, headers). The key picks the partition with Kafka's own
//!   murmur2 partitioner, so other Kafka clients agree on it; keyless messages are spread.
//! * A **group** is a Kafka consumer group, `<kafka topic>/<group>`; every subscription is a
//!   member, and Kafka shares the topic's partitions among them (competing consumers), while
//!   each group reads every partition (fan-out).
//! * **Acknowledgements** are kept by the member owning the partition: it commits, per
//!   partition, the lowest offset not yet settled, never past an unsettled message, so a
//!   restarted or new member resumes after what was settled and before what was not.
//! * **Per-key order**: the owner of a partition hands out at most one unsettled message per
//!   key; a nacked one comes back (after its delay) before later messages of its key, while
//!   other keys of the partition go on.
//! * **Nacks, ack waits and dead letters** are the owner's: a nacked or expired delivery is
//!   handed out again by it; after `max_deliveries` (or on `dead_letter`) the adapter publishes
//!   the dead letter (same shape as every adapter: see
//!   [`dead_letter_for`](herald::queue::dead_letter_for)) and lets the original go.
//! * **Consumer lag** (`herald_consumer_lag{topic,group}`, sampled every second by each open
//!   subscription): over the topic's partitions, the high watermark less the group's committed
//!   offset (less the low watermark where it has committed none), summed. The committed offset
//!   is the owner's lowest unsettled offset, committed every
//!   [`commit_interval_ms`](KafkaConfig::commit_interval_ms): messages acked after an unsettled
//!   one of their partition still count until it is settled, and an ack counts once committed.
//!   On tansu 0.6, whose end offsets fall short when a partition's last record batch holds
//!   several records, a member counts its own partitions up to what it has fetched; partitions
//!   that other members own may be counted short.
//!
//! What the adapter promises and what it cannot is declared in
//! [`CAPABILITIES`](subscriber::CAPABILITIES).
//!
//! ```no_run
//! use herald::message::Message;
//! use herald::pubsub::{Publisher, SubscribeOptions, Subscriber};
//! use herald_kafka::KafkaConfig;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = KafkaConfig::new("127.0.0.1:9092").connect().await?;
//! let mut orders = broker.subscribe(SubscribeOptions::new("ordering.orders", "billing")).await?;
//! broker.publish(&[Message::new("ordering.orders", "ordering.OrderCreated.v1", b"{}".to_vec())]).await?;
//! if let Some(delivery) = orders.next().await {
//!     delivery.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod broker;
pub mod config;
pub mod error;
mod publisher;
pub mod subscriber;

pub use broker::KafkaBroker;
pub use config::KafkaConfig;
pub use error::KafkaError;
pub use publisher::{HEADER_ID, HEADER_METADATA, HEADER_NAME};
