//! The universal pub/sub suite against a real Redis server (`redis://127.0.0.1:6379`). Skips
//! loudly when the server is not running, fails under `CI`.

use std::sync::Arc;

use herald_conformance::PubSubFixture;
use herald_redis::RedisConfig;

const URL: &str = "redis://127.0.0.1:6379";

/// Two brokers, two connections ("two processes"): the publisher and `subscriber` share one,
/// `other_subscriber` has its own. A random key prefix per fixture keeps scenarios apart.
async fn redis() -> PubSubFixture {
    let config = RedisConfig::new(URL).key_prefix(format!("hc{:08x}:", fastrand::u32(..)));
    let broker = config.connect().await.expect("connecting to Redis");
    let other = config.connect().await.expect("connecting to Redis a second time");
    PubSubFixture::new(Arc::new(broker.clone()), Arc::new(broker), Arc::new(other), Box::new(()))
}

herald_conformance::pubsub_suite!(redis, requires: ("Redis", "127.0.0.1:6379"));

/// `herald_consumer_lag` on Redis Streams: `XINFO GROUPS` `lag + pending` of the group.
#[test]
fn consumer_lag_counts_messages_the_group_has_not_settled() {
    if herald_conformance::support::server_available(("Redis", "127.0.0.1:6379")) {
        herald_conformance::lag::consumer_lag_counts_messages_the_group_has_not_settled(redis);
    }
}
