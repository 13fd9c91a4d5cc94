//! # herald-nats: Herald on NATS JetStream
//!
//! A [`Publisher`](herald::pubsub::Publisher) and [`Subscriber`](herald::pubsub::Subscriber)
//! over [NATS JetStream](https://docs.nats.io/nats-concepts/jetstream), for the distributed
//! deployment: modules in separate processes share work through consumer groups, and messages
//! outlive both the processes and (with file storage) the server.
//!
//! # How Herald maps onto JetStream
//!
//! * A **topic** is a subject, and each topic gets its own stream (named
//!   `<stream_prefix><topic>`, with characters JetStream forbids in names replaced), created on
//!   first publish or subscribe. One stream per topic keeps retention, replay and positions per
//!   topic, as Herald's [`StartFrom::Position`](herald::pubsub::StartFrom) expects.
//! * A **message** travels as the payload plus headers: `Nats-Msg-Id` (the message id, so the
//!   server drops a re-publish within the duplicate window), `herald-name`, `herald-key` and
//!   `herald-metadata` (the [`Metadata`](herald::message::Metadata) as JSON).
//! * A **group** is a durable pull consumer (one per partition with [`NatsConfig::partitions`],
//!   see below) with explicit acks; every subscription of the group
//!   pulls from it (competing consumers), and each group has its own (fan-out). A delivery's
//!   `attempt` is JetStream's delivery count and its `position` the stream sequence.
//! * **Dead letters** are published by the adapter to the dead-letter topic (its own stream),
//!   then the original is terminated (`+TERM`). The consumer allows one delivery more than
//!   `max_deliveries`, so that a message whose last lease expired comes back once more, only to
//!   be dead-lettered by the adapter instead of being handed out.
//! * **Consumer lag** (`herald_consumer_lag{topic,group}`) is sampled every second by each
//!   subscription from the group's consumer info: `num_pending + num_ack_pending` (not yet
//!   delivered plus delivered and not yet acknowledged), summed over the partition consumers of
//!   a partitioned group.
//!
//! # Per-key order: partitioned groups
//!
//! By default a group's subscriptions compete for one consumer and JetStream keeps no per-key
//! order across them (`Capabilities::per_key_order` is false). With
//! [`NatsConfig::partitions`] set to `n > 0` (opt-in: it changes the subjects on the wire), the
//! adapter keeps per-key order across processes:
//!
//! * a message with key `K` goes to subject `<topic subject>.<p>`, `p = fnv1a_64(K) % n`
//!   (messages without a key are spread by their id), and the topic's stream holds
//!   `<topic subject>.*`;
//! * each group has one durable consumer per partition (`<group>-p<p>`); the group's members
//!   (subscriptions, in any process) register and claim partitions in the JetStream key-value
//!   bucket `<stream_prefix>partitions` with revision-checked writes, so one member pulls a
//!   partition at a time. Every member computes the same assignment (live members sorted,
//!   round-robin), so partitions move when a member joins or leaves; `subscribe` returns once the
//!   new member owns its share (bounded wait);
//! * within a partition the owner hands out at most one unsettled message per key; later ones of
//!   the key wait (kept leased), a nacked one comes back before them, other keys go on;
//! * a member that leaves (subscription dropped, broker closed) hands its partitions over at once;
//!   one that dies without leaving loses them when its claims expire
//!   ([`NatsConfig::claim_ttl_ms`], default 10 s), and the next owner restarts the partition's
//!   consumer at its ack floor, so what the dead member held comes back before later messages
//!   of its keys (messages it acked past the floor come again: at least once, the inbox absorbs
//!   them). A member whose claim lapsed has its settlements refused with `LeaseLost`.
//!
//! The design, what it guarantees and what it does not, is ADR 0014
//! (`docs/adr/0014-nats-partitioned-consumers.md`).
//!
//! # Clusters and replicated streams
//!
//! [`NatsConfig::url`] may list the servers of a JetStream cluster, comma-separated; the client
//! connects to one and reconnects to another when it goes away. [`NatsConfig::replicas`]
//! (`1..=5`, default 1) is the `num_replicas` of every stream the adapter creates (topics,
//! dead-letter topics, the partition-claims bucket; consumers inherit it): with 3, a stream
//! keeps accepting writes and deliveries while one of its servers is down. It applies when a
//! stream is created. The conformance binary's `cluster` module runs three private
//! `nats-server` processes, connects with `replicas(3)` and four partitions, SIGKILLs one
//! server mid-stream, and checks that every message published (`publish` returned `Ok`) is
//! acked and that per key the first handlings stay in order (the failover costs redeliveries
//! and some seconds, not messages or order); its `processes` module does the same with two
//! group members in separate processes (the `partitioned_consumer` example), one of them
//! SIGKILLed.
//!
//! **Core NATS** (no JetStream, nothing retained) is available as a declared non-durable mode:
//! [`NatsConfig::connect_core`] gives a [`NatsCoreBroker`] whose groups are queue groups; see
//! its module docs for what it keeps and what it cannot.
//!
//! What the adapter cannot promise is declared in
//! [`Capabilities`](herald::pubsub::Capabilities): see [`NatsBroker`]'s `capabilities`.
//!
//! ```no_run
//! use herald::message::Message;
//! use herald::pubsub::{Publisher, SubscribeOptions, Subscriber};
//! use herald_nats::NatsConfig;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = NatsConfig::new("nats://127.0.0.1:4222").connect().await?;
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
mod core;
pub mod error;
mod partitioned;
mod publisher;
mod subscriber;

pub use broker::NatsBroker;
pub use config::{NatsConfig, Storage};
pub use core::NatsCoreBroker;
pub use error::NatsError;
pub use publisher::{HEADER_KEY, HEADER_METADATA, HEADER_NAME};
