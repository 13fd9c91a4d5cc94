//! The universal pub/sub suite against a real NATS server with JetStream
//! (`nats://127.0.0.1:4222`). Skips loudly when the server is not running, fails under `CI`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

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

/// Two applications with the same topic names on one server, apart by their subject prefixes
/// (a JetStream subject belongs to one stream only, so without them the second one's stream
/// could not be created): each sees only its own messages, under the bare topic name.
#[tokio::test]
async fn subject_prefixes_keep_applications_with_the_same_topics_apart() {
    use herald::Message;
    use herald::pubsub::{Publisher, StartFrom, SubscribeOptions, Subscriber};
    if !herald_conformance::support::server_available(("NATS", "127.0.0.1:4222")) {
        return;
    }
    let run = fastrand::u32(..);
    let app = |name: &str| {
        NatsConfig::new(URL)
            .stream_prefix(format!("hp{run:08x}-{name}-"))
            .subject_prefix(format!("hp{run:08x}.{name}."))
            .storage(Storage::Memory)
            .max_age(Duration::from_secs(600))
    };
    let (shop1, shop2) = (app("shop1").connect().await.unwrap(), app("shop2").connect().await.unwrap());
    let options = || SubscribeOptions::new("orders.events", "billing").start(StartFrom::Beginning);
    let mut sub1 = shop1.subscribe(options()).await.unwrap();
    let mut sub2 = shop2.subscribe(options()).await.unwrap();
    shop1.publish(&[Message::new("orders.events", "Placed.v1", b"one".to_vec())]).await.unwrap();
    shop2.publish(&[Message::new("orders.events", "Placed.v1", b"two".to_vec())]).await.unwrap();
    for (sub, payload) in [(&mut sub1, b"one"), (&mut sub2, b"two")] {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
        assert_eq!((d.message.topic.as_str(), d.message.payload.as_slice()), ("orders.events", &payload[..]));
        d.ack().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), sub.next()).await.is_err(),
            "saw the other app's message"
        );
    }
    assert!(NatsConfig::new(URL).subject_prefix("no-dot").validate().is_err());
    assert!(NatsConfig::new(URL).subject_prefix("a..").validate().is_err());
    assert!(NatsConfig::new(URL).subject_prefix("a.b.").validate().is_ok());
}

/// A group subscribed again with other settings gets them: the durable consumer's ack wait,
/// delivery limit and in-flight limit are updated (they used to stay as first created).
#[tokio::test]
async fn subscribing_again_updates_the_group_s_consumer() {
    use herald::pubsub::{StartFrom, SubscribeOptions, Subscriber};
    if !herald_conformance::support::server_available(("NATS", "127.0.0.1:4222")) {
        return;
    }
    let run = fastrand::u32(..);
    let config = NatsConfig::new(URL)
        .stream_prefix(format!("hu{run:08x}-"))
        .subject_prefix(format!("hu{run:08x}."))
        .storage(Storage::Memory)
        .max_age(Duration::from_secs(600));
    let broker = config.connect().await.unwrap();
    let options = |ack_wait: u64, max_deliveries: u32, max_in_flight: usize| {
        let mut o = SubscribeOptions::new("updates.events", "billing").start(StartFrom::Beginning);
        o.ack_wait = Duration::from_secs(ack_wait);
        o.max_deliveries = max_deliveries;
        o.max_in_flight = max_in_flight;
        o
    };
    drop(broker.subscribe(options(30, 5, 10)).await.unwrap());
    drop(broker.subscribe(options(2, 3, 4)).await.unwrap());

    let js = async_nats::jetstream::new(async_nats::connect(URL).await.unwrap());
    let stream = js.get_stream(broker.stream_name("updates.events")).await.unwrap();
    let info = stream.consumer_info("billing").await.unwrap();
    assert_eq!(
        (info.config.ack_wait, info.config.max_deliver, info.config.max_ack_pending),
        (Duration::from_secs(2), 4, 4),
        "max_deliver is one more than max_deliveries (the adapter dead-letters the last)"
    );
    js.delete_stream(broker.stream_name("updates.events")).await.unwrap();
}

/// `herald_consumer_lag` on JetStream: `num_pending + num_ack_pending` of the group's consumer.
#[test]
fn consumer_lag_counts_messages_the_group_has_not_settled() {
    if herald_conformance::support::server_available(("NATS", "127.0.0.1:4222")) {
        herald_conformance::lag::consumer_lag_counts_messages_the_group_has_not_settled(nats);
    }
}

/// The same suite with partitioned subjects and consumers (`NatsConfig::partitions`), where the
/// adapter declares per-key order across processes.
mod partitioned {
    use super::*;

    /// As [`nats`](super::nats), with 8 partitions and a short claim TTL.
    pub(crate) fn config() -> NatsConfig {
        let run = fastrand::u32(..);
        NatsConfig::new(URL)
            .stream_prefix(format!("hq{run:08x}-"))
            .subject_prefix(format!("hq{run:08x}."))
            .storage(Storage::Memory)
            .max_age(Duration::from_secs(600))
            .partitions(8)
            .claim_ttl(Duration::from_secs(3))
    }

    async fn nats_partitioned() -> PubSubFixture {
        let config = config();
        let broker = config.connect().await.expect("connecting to NATS");
        let other = config.connect().await.expect("connecting to NATS a second time");
        assert!(broker.capabilities().per_key_order, "a partitioned broker declares per-key order");
        PubSubFixture::new(Arc::new(broker.clone()), Arc::new(broker), Arc::new(other), Box::new(()))
    }

    use herald::pubsub::Subscriber as _;
    herald_conformance::pubsub_suite!(nats_partitioned, requires: ("NATS", "127.0.0.1:4222"));

    /// The lag of a partitioned group is the sum over its partition consumers.
    #[test]
    fn consumer_lag_counts_messages_the_group_has_not_settled() {
        if herald_conformance::support::server_available(("NATS", "127.0.0.1:4222")) {
            herald_conformance::lag::consumer_lag_counts_messages_the_group_has_not_settled(nats_partitioned);
        }
    }
}

mod cluster;
mod partitions;
mod processes;
mod support;

/// The failover tests (partition take-overs, a killed server, killed processes) wait on claim
/// and ack timers with bounds of a few TTLs; they take this lock so they run one at a time on a
/// 2-core machine (the rest of the suite still runs beside them). `NO_FAILOVER_LOCK=1` runs them
/// side by side, as a stress run (with `TEST_LOG=herald_nats=debug` for the adapter's logs).
static FAILOVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The lock, unless `NO_FAILOVER_LOCK` is set.
async fn one_at_a_time() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    if std::env::var_os("NO_FAILOVER_LOCK").is_some() { None } else { Some(FAILOVER.lock().await) }
}
