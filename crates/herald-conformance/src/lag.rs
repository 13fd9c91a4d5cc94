//! The consumer-lag scenario, for the brokers that report `herald_consumer_lag{topic,group}`
//! (every broker with consumer groups: the queue broker, NATS JetStream, Redis Streams,
//! RabbitMQ, Kafka). Not part of [`pubsub_suite!`](crate::pubsub_suite): the gauge is optional
//! in the pub/sub contract. An adapter's `tests/conformance.rs` calls it from a test of the
//! same name.

use std::future::Future;

use herald::message::Message;
use herald::observability::names;
use herald::pubsub::{StartFrom, SubscribeOptions};

use crate::support::{Gauges, WAIT, ack_all, collect, eventually_that, unique};
use crate::{PubSubFixture, SCENARIO_TIMEOUT};

/// How many messages the scenario leaves unsettled.
const MESSAGES: usize = 5;

/// `herald_consumer_lag{topic,group}` counts the messages of the topic the group has not
/// settled — published and not delivered yet, or delivered and not acknowledged yet — under the
/// bare topic and group names: with a subscription open that holds every delivery without
/// acking, it reaches the number published; once they are all acked it comes back to 0.
///
/// Runs on a current-thread runtime of its own with a local recorder ([`Gauges`]): brokers
/// record the gauge from tasks they spawn, and a local recorder sees only what runs on its
/// thread.
pub fn consumer_lag_counts_messages_the_group_has_not_settled<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let gauges = Gauges::new();
    let _local = metrics::set_default_local_recorder(&gauges);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime for the scenario");
    runtime.block_on(async {
        match tokio::time::timeout(SCENARIO_TIMEOUT, lag_scenario(setup, &gauges)).await {
            Ok(()) => {}
            Err(_) => panic!("scenario did not finish within {SCENARIO_TIMEOUT:?}"),
        }
    });
}

async fn lag_scenario<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F, gauges: &Gauges) {
    let fx = setup().await;
    let (topic, group) = (unique("lag"), unique("billing"));
    let lag = || gauges.get(names::CONSUMER_LAG, &topic, &group);
    let mut options = SubscribeOptions::new(&topic, &group).start(StartFrom::Beginning).max_in_flight(2 * MESSAGES);
    // Held unacked for the whole scenario: no redelivery may muddle the count.
    options.ack_wait = SCENARIO_TIMEOUT;
    let mut subscription = fx.subscriber.subscribe(options).await.expect("subscribe");

    let messages: Vec<Message> = (0..MESSAGES)
        .map(|i| Message::new(&topic, "Lagged.v1", format!("{i}").into_bytes()).with_key(format!("k{i}")))
        .collect();
    fx.publisher.publish(&messages).await.expect("publish");
    let held = collect(&mut subscription, MESSAGES, WAIT).await;
    eventually_that(WAIT, &format!("a lag of {MESSAGES} (the deliveries held unacked)"), || {
        let seen = lag();
        async move { seen == Some(MESSAGES as f64) }
    })
    .await;

    ack_all(held).await;
    eventually_that(WAIT, "a lag of 0 once every delivery is acked", || {
        let seen = lag();
        async move { seen == Some(0.0) }
    })
    .await;
    drop(subscription);
    fx.publisher.close().await.expect("close");
}
