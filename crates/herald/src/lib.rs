//! # Herald
//!
//! Building blocks for event-driven systems: messages with correlation, causation and trace
//! context; publishers and subscribers with consumer groups, per-key order, retries and dead
//! letters; an event store with an ordered global log; aggregates; a transactional outbox and
//! inbox (the unit of work); a router with middleware; spans, W3C trace context and metrics
//! ([`observability`]).
//!
//! Every port is a trait with a written contract ([`pubsub`], [`store`]), an in-memory
//! implementation ([`memory`]) and a conformance suite (`herald-conformance`) that every
//! implementation — in memory, SQLite, PostgreSQL, NATS, RabbitMQ, Redis — must pass.
//!
//! **Start with the tutorial** (`docs/tutorial.md` in the repository): a small bank — an
//! event-sourced account, the outbox, a consumer group with the inbox and retries, dead
//! letters, a projection and its rebuild — in one runnable file,
//! `cargo run -p herald-sql --example bank`. [`prelude`] imports the common path. Herald reports
//! through [`tracing`](https://docs.rs/tracing): install a subscriber
//! (`tracing_subscriber::fmt().init()`) to see its warnings, retries and dead letters.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald::{Message, memory::MemoryBroker, pubsub::{Publisher, Subscriber, SubscribeOptions, StartFrom}};
//!
//! let broker = MemoryBroker::in_memory();
//! let mut sub = broker.subscribe(SubscribeOptions::new("greetings", "printer").start(StartFrom::Beginning)).await?;
//! broker.publish(&[Message::new("greetings", "Hello.v1", br#"{"to":"world"}"#.to_vec())]).await?;
//! let delivery = sub.next().await.expect("a delivery");
//! assert_eq!(delivery.message.name, "Hello.v1");
//! delivery.ack().await?;
//! # Ok(()) }
//! ```

pub mod aggregate;
#[cfg(feature = "asyncapi")]
pub mod asyncapi;
pub mod codec;
pub mod command;
pub mod dead_letters;
pub mod lease;
pub mod memory;
pub mod message;
pub mod observability;
pub mod outbox;
pub mod parking;
pub mod prelude;
pub mod projection;
pub mod pubsub;
pub mod queue;
pub mod router;
pub mod saga;
#[cfg(feature = "shredding")]
pub mod shredding;
pub mod store;
pub mod transient;

/// Re-exported so that implementing Herald's async traits (`Handler`, `Middleware`, the ports)
/// needs no dependency of its own.
pub use async_trait::async_trait;
pub use codec::{CodecError, Event, EventSet, Registry};
pub use message::{Message, MessageId, Metadata};
pub use pubsub::{Capabilities, Delivery, Publisher, StartFrom, SubscribeOptions, Subscriber, Subscription};
pub use store::{ExpectedVersion, NewEvent, RecordedEvent, Store, StoreError, Transaction};
/// Re-exported: the shutdown signal that routers, relays and projections take.
pub use tokio_util::sync::CancellationToken;
