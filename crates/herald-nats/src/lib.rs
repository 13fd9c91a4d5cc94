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
//! * A **group** is a durable pull consumer with explicit acks; every subscription of the group
//!   pulls from it (competing consumers), and each group has its own (fan-out). A delivery's
//!   `attempt` is JetStream's delivery count and its `position` the stream sequence.
//! * **Dead letters** are published by the adapter to the dead-letter topic (its own stream),
//!   then the original is terminated (`+TERM`). The consumer allows one delivery more than
//!   `max_deliveries`, so that a message whose last lease expired comes back once more, only to
//!   be dead-lettered by the adapter instead of being handed out.
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
