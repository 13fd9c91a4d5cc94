//! The conformance suites against Herald's in-memory broker and store: the reference that every
//! other implementation is held to.

use std::sync::Arc;

use herald::memory::{MemoryBroker, MemoryDeadLetterArchive, MemoryParkingLot, MemoryStore};
use herald_conformance::{DeadLetterFixture, ParkingFixture, PubSubFixture, StoreFixture};

/// One broker; the publisher and both subscribers are clones sharing its topics, as two
/// processes would share one broker server.
async fn memory_broker() -> PubSubFixture {
    let broker = MemoryBroker::in_memory();
    PubSubFixture::new(Arc::new(broker.clone()), Arc::new(broker.clone()), Arc::new(broker), Box::new(()))
}

async fn memory_store() -> StoreFixture {
    StoreFixture::new(Arc::new(MemoryStore::new()), Box::new(()))
}

herald_conformance::pubsub_suite!(memory_broker);
herald_conformance::store_suite!(memory_store);

/// The in-memory broker with an in-memory store (the saga's state and outbox).
async fn memory_broker_and_store() -> PubSubFixture {
    memory_broker().await.with_store(Arc::new(MemoryStore::new()))
}

herald_conformance::saga_suite!(memory_broker_and_store);

async fn memory_dead_letters() -> DeadLetterFixture {
    DeadLetterFixture::new(Arc::new(MemoryStore::new()), Arc::new(MemoryDeadLetterArchive::new()), Box::new(()))
}

herald_conformance::dead_letter_suite!(memory_dead_letters);

async fn memory_parking() -> ParkingFixture {
    ParkingFixture::new(Arc::new(MemoryStore::new()), Arc::new(MemoryParkingLot::new()), Box::new(()))
}

herald_conformance::parking_suite!(memory_parking);

/// The reference for the gauge every broker reports (`herald_consumer_lag`).
#[test]
fn consumer_lag_counts_messages_the_group_has_not_settled() {
    herald_conformance::lag::consumer_lag_counts_messages_the_group_has_not_settled(memory_broker);
}

#[tokio::test]
async fn a_forgotten_subject_s_fields_read_as_forgotten_never_an_error() {
    let keys = Arc::new(herald::shredding::MemoryKeyStore::default());
    herald_conformance::shredding::a_forgotten_subject_s_fields_read_as_forgotten_never_an_error(keys).await;
}
