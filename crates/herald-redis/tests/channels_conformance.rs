//! The universal pub/sub suite against Redis Pub/Sub (the fire-and-forget mode) on the local
//! server (`redis://127.0.0.1:6379`). The scenarios that need groups, retention, replay,
//! ack-wait redelivery, dead letters or per-key order print `SKIPPED (not supported: …)`: the
//! mode declares them unsupported. Skips loudly when the server is not running, fails under `CI`.

use std::sync::Arc;

use herald_conformance::PubSubFixture;
use herald_redis::RedisConfig;

const URL: &str = "redis://127.0.0.1:6379";

/// The publisher and `subscriber` share one broker, `other_subscriber` is a second one. A
/// random channel prefix per fixture keeps scenarios apart.
async fn redis_channels() -> PubSubFixture {
    let config = RedisConfig::new(URL).key_prefix(format!("hc{:08x}:", fastrand::u32(..)));
    let broker = config.connect_channels().await.expect("connecting to Redis");
    let other = config.connect_channels().await.expect("connecting to Redis a second time");
    PubSubFixture::new(Arc::new(broker.clone()), Arc::new(broker), Arc::new(other), Box::new(()))
}

herald_conformance::pubsub_suite!(redis_channels, requires: ("Redis", "127.0.0.1:6379"));
