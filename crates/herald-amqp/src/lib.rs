//! # herald-amqp: Herald on RabbitMQ
//!
//! A [`Publisher`](herald::pubsub::Publisher) and [`Subscriber`](herald::pubsub::Subscriber)
//! over [RabbitMQ](https://www.rabbitmq.com/) (AMQP 0-9-1, through `lapin`), for the
//! distributed deployment: modules in separate processes share work through consumer groups,
//! and messages wait in durable quorum queues until a group's consumers have handled them.
//! Checked against RabbitMQ 3.10.
//!
//! # How Herald maps onto RabbitMQ
//!
//! * **Topics** share one durable *topic* exchange, `<prefix>topics`, declared on connect; a
//!   message's routing key is its topic. One shared exchange rather than one per topic: a
//!   publish needs no declaration round trip for a new topic, the broker holds one object instead
//!   of one per topic, and operators can still bind a queue of their own with a wildcard
//!   (`ordering.#`) to tap a family of topics. Topics therefore may not hold `*` or `#` (they
//!   would be wildcards in the group queues' bindings) and are at most 255 bytes.
//! * A **group** is a durable quorum queue, `<prefix><topic>.<group>` (a hash is appended when
//!   the group holds a `.`, so `a.b`+`c` and `a`+`b.c` stay apart, or when the name is too
//!   long), bound to the exchange with the topic. Every group bound to a topic gets each message
//!   (fan-out); the subscriptions of a group consume from its one queue (competing consumers).
//!   A topic routes only to groups that exist when the message is published: a queue is not a
//!   log, so subscribe (create the group) before publishing what it must see.
//! * A **message** is the payload as the body plus properties: `message_id` (the Herald id),
//!   delivery mode 2 (persistent) and the headers `herald-name`, `herald-key`, `herald-topic` and
//!   `herald-metadata` (the [`Metadata`](herald::message::Metadata) as JSON).
//! * **Publishing** uses publisher confirms: a batch is sent in order on one confirm-mode
//!   channel, then every confirm is awaited; `publish` returns once RabbitMQ has stored each
//!   message in every bound queue.
//! * **Subscribing** opens a channel per subscription with prefetch = `max_in_flight` and
//!   manual acks. A delivery's `attempt` is the `herald-attempts` header (deliveries made before
//!   the adapter last re-published the message) plus the quorum queue's `x-delivery-count` plus
//!   one; deliveries have no `position`.
//! * **Nack with a delay** re-publishes the message (with its attempt count) to a retry queue
//!   `<group queue>.retry.<ms>` whose message TTL is the delay and whose dead-letter target is
//!   the group queue, then acks the original; retry queues expire a minute after their last use.
//!   Delays are rounded up to two significant digits so that jittered back-offs share queues. A
//!   nack without delay is a `basic.nack` with requeue.
//! * **`ack_wait`** is enforced by the adapter (RabbitMQ 3.10 has no per-queue consumer
//!   timeout): a delivery not settled in time is requeued by the subscription's task, and a
//!   settlement arriving later is refused with `LeaseLost`.
//! * **Dead letters** (after `max_deliveries`, or on `dead_letter`) are Herald dead letters
//!   ([`dead_letter_for`](herald::queue::dead_letter_for)) published to the dead-letter topic,
//!   after which the original is acked. Each subscription also declares the
//!   [`DEAD_LETTER_GROUP`] queue on its dead-letter topic, so dead letters are kept even when
//!   nobody listens there yet.
//! * **A lost connection** (a server restart, a network failure) fails the operations under way
//!   with an [`AmqpError`] (as [`PubSubError::Backend`](herald::pubsub::PubSubError::Backend)),
//!   never a hang: every AMQP call is bounded by `confirm_timeout_ms`. The next publish or
//!   subscribe reconnects, and a subscription re-subscribes by itself, with back-off, until it
//!   is dropped. Settling a delivery that came over the lost connection fails with `LeaseLost`:
//!   the server redelivers the message. `tests/restart.rs` restarts a private node mid-stream
//!   and checks that no confirmed message is lost.
//! * **Consumer lag** (`herald_consumer_lag{topic,group}`, sampled every second by each
//!   subscription with a passive declare of its group queue) counts the queue's *ready*
//!   messages plus the deliveries *this process* holds unacknowledged. AMQP 0-9-1 reports only
//!   a queue's ready messages (unacknowledged ones are in RabbitMQ's management API, which the
//!   adapter does not use), so the deliveries held by other processes, and messages waiting out
//!   a nack delay in a retry queue, are not counted: with a group's consumers in one process the
//!   gauge means what it means on the other brokers (not delivered plus not acknowledged); with
//!   several, each process reports the ready messages plus its own share.
//!
//! What the adapter cannot promise is declared in
//! [`Capabilities`](herald::pubsub::Capabilities): see [`AmqpBroker`]'s `capabilities`. In
//! short: no per-key order (use one queue per key partition behind a consistent-hash exchange,
//! each with a single active consumer), and no replay from the beginning or a position (queues
//! keep no history; that would take RabbitMQ streams): a new group starting at the beginning,
//! the default, gets what is published from then on.
//!
//! ```no_run
//! use herald::message::Message;
//! use herald::pubsub::{Publisher, SubscribeOptions, Subscriber};
//! use herald_amqp::AmqpConfig;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f").connect().await?;
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
mod subscriber;

pub use broker::AmqpBroker;
pub use config::AmqpConfig;
pub use error::AmqpError;
pub use publisher::{HEADER_ATTEMPTS, HEADER_KEY, HEADER_METADATA, HEADER_NAME, HEADER_TOPIC};
pub use subscriber::DEAD_LETTER_GROUP;
