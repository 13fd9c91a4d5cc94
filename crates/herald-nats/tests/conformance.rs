//! The universal pub/sub suite against a real NATS server with JetStream
//! (`nats://127.0.0.1:4222`). Skips loudly when the server is not running, fails under `CI`.

use std::sync::Arc;
use std::time::Duration;

use herald_conformance::PubSubFixture;
use herald_nats::{NatsConfig, Storage};

const URL: &str = "nats://127.0.0.1:4222";

/// Two brokers, two connections ("two processes"): the publisher and `subscriber` share one,
/// `other_subscriber` has its own. A random stream prefix per fixture keeps scenarios apart;
/// memory storage and a short max age keep the shared server from filling up across runs.
async fn nats() -> PubSubFixture {
    let config = NatsConfig::new(URL)
        .stream_prefix(format!("hc{:08x}-", fastrand::u32(..)))
        .storage(Storage::Memory)
        .max_age(Duration::from_secs(600));
    let broker = config.connect().await.expect("connecting to NATS");
    let other = config.connect().await.expect("connecting to NATS a second time");
    PubSubFixture::new(Arc::new(broker.clone()), Arc::new(broker), Arc::new(other), Box::new(()))
}

herald_conformance::pubsub_suite!(nats, requires: ("NATS", "127.0.0.1:4222"));
