//! # herald-redis: Herald on Redis Streams
//!
//! A [`Publisher`](herald::pubsub::Publisher) and [`Subscriber`](herald::pubsub::Subscriber)
//! over [Redis Streams](https://redis.io/docs/latest/develop/data-types/streams/) with consumer
//! groups (Redis 6.2 or later: the adapter uses `XPENDING … IDLE` and `XCLAIM … IDLE`).
//!
//! # How Herald maps onto Redis Streams
//!
//! * A **topic** is a stream under the key `<key_prefix><topic>`, created on first publish or
//!   subscribe.
//! * A **message** is an entry with the fields `id`, `topic`, `name`, `key`, `payload` (bytes)
//!   and `metadata` (the [`Metadata`](herald::message::Metadata) as JSON). A batch is published
//!   in one `MULTI`/`EXEC`: all of it or none.
//! * A **group** is a consumer group (`XGROUP CREATE … MKSTREAM`, at `0`, `$` or the id before a
//!   position); each subscription is a consumer with a fresh name that reads with
//!   `XREADGROUP … >` and claims entries idle for `ack_wait` with `XCLAIM`. A delivery's `attempt`
//!   is Redis's delivery count, its `position` the entry id packed as `ms << 20 | seq`.
//! * **Nacks** hand the entry back at once (`XCLAIM … IDLE`), with the nack delay kept in a
//!   per-group hash that claims honour.
//! * **Dead letters** are an `XADD` to the dead-letter topic's stream and an `XACK` of the
//!   original, in one transaction.
//! * **Consumer lag** (`herald_consumer_lag{topic,group}`) is sampled every second by each
//!   subscription with `XINFO GROUPS`: the group's `lag` (entries not delivered to it yet) plus
//!   its `pending` (delivered, not acknowledged yet). Redis reports no lag after entries were
//!   deleted or trimmed past the group's last delivered one; the gauge then keeps its last value.
//!
//! **Redis Pub/Sub** is available as a declared fire-and-forget mode:
//! [`RedisConfig::connect_channels`] gives a [`RedisChannels`] (no groups, nothing retained);
//! see its module docs.
//!
//! What the adapter cannot promise is declared in
//! [`Capabilities`](herald::pubsub::Capabilities): see [`RedisBroker`]'s `capabilities`.
//!
//! ```no_run
//! use herald::message::Message;
//! use herald::pubsub::{Publisher, SubscribeOptions, Subscriber};
//! use herald_redis::RedisConfig;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = RedisConfig::new("redis://127.0.0.1:6379").connect().await?;
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
mod channels;
pub mod config;
pub mod error;
mod publisher;
mod subscriber;

pub use broker::RedisBroker;
pub use channels::RedisChannels;
pub use config::RedisConfig;
pub use error::RedisError;
pub use publisher::{FIELD_ID, FIELD_KEY, FIELD_METADATA, FIELD_NAME, FIELD_PAYLOAD, FIELD_TOPIC};
