//! The universal pub/sub suite against core NATS (the non-durable mode) on the local server
//! (`nats://127.0.0.1:4222`). The scenarios that need retention, replay, ack-wait redelivery,
//! dead letters or per-key order print `SKIPPED (not supported: …)`: the mode declares them
//! unsupported. Skips loudly when the server is not running, fails under `CI`.

use std::sync::Arc;

use herald_conformance::PubSubFixture;
use herald_nats::NatsConfig;

const URL: &str = "nats://127.0.0.1:4222";

/// The publisher and `subscriber` share one connection, `other_subscriber` has its own. Topics
/// are unique per scenario, so scenarios do not see each other's messages.
async fn core_nats() -> PubSubFixture {
    let config = NatsConfig::new(URL);
    let broker = config.connect_core().await.expect("connecting to NATS");
    let other = config.connect_core().await.expect("connecting to NATS a second time");
    PubSubFixture::new(Arc::new(broker.clone()), Arc::new(broker), Arc::new(other), Box::new(()))
}

herald_conformance::pubsub_suite!(core_nats, requires: ("NATS", "127.0.0.1:4222"));
