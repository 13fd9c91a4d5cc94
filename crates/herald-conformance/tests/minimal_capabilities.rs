//! The pub/sub suite against a subscriber that declares no optional capability (the in-memory
//! broker behind a wrapper that hides them): checks the suite itself, that every gated scenario
//! skips loudly and the universal ones (round trip, isolation, redelivery after nack, latest,
//! close, 10,000 messages with one subscription, invalid options) still run and pass.

use std::sync::Arc;

use async_trait::async_trait;
use herald::memory::MemoryBroker;
use herald::pubsub::{Capabilities, PubSubError, SubscribeOptions, Subscriber, Subscription};
use herald_conformance::PubSubFixture;

/// A subscriber like Redis Pub/Sub or NATS core would declare: no durability, groups, order,
/// delays, redelivery by ack wait, dead letters or replay.
#[derive(Debug)]
struct Minimal(MemoryBroker);

#[async_trait]
impl Subscriber for Minimal {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            groups: false,
            per_key_order: false,
            delayed_nack: false,
            ack_wait_redelivery: false,
            dead_letters: false,
            start_from_beginning: false,
            start_from_position: false,
        }
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, PubSubError> {
        self.0.subscribe(options).await
    }

    async fn close(&self) -> Result<(), PubSubError> {
        Subscriber::close(&self.0).await
    }
}

async fn minimal_broker() -> PubSubFixture {
    let broker = MemoryBroker::in_memory();
    PubSubFixture::new(
        Arc::new(broker.clone()),
        Arc::new(Minimal(broker.clone())),
        Arc::new(Minimal(broker)),
        Box::new(()),
    )
}

herald_conformance::pubsub_suite!(minimal_broker);
