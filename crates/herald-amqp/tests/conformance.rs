//! The universal pub/sub suite against a real RabbitMQ server (`127.0.0.1:5672`, guest/guest).
//! Skips loudly when the server is not running, fails under `CI`.

use std::sync::Arc;
use std::time::Duration;

use herald_amqp::AmqpConfig;
use herald_conformance::PubSubFixture;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Two brokers, two connections ("two processes"): the publisher and `subscriber` share one,
/// `other_subscriber` has its own. A random prefix per fixture keeps scenarios apart; queues
/// expire (and the exchange goes with them) so the shared server does not fill up across runs.
async fn rabbitmq() -> PubSubFixture {
    let config = AmqpConfig::new(URL)
        .prefix(format!("hc{:08x}.", fastrand::u32(..)))
        .queue_expires(Duration::from_secs(120))
        .auto_delete_exchange(true);
    let broker = config.connect().await.expect("connecting to RabbitMQ");
    let other = config.connect().await.expect("connecting to RabbitMQ a second time");
    PubSubFixture::new(Arc::new(broker.clone()), Arc::new(broker), Arc::new(other), Box::new(()))
}

herald_conformance::pubsub_suite!(rabbitmq, requires: ("RabbitMQ", "127.0.0.1:5672"));

/// `herald_consumer_lag` on RabbitMQ: the group queue's ready messages plus the deliveries this
/// process holds unacknowledged.
#[test]
fn consumer_lag_counts_messages_the_group_has_not_settled() {
    if herald_conformance::support::server_available(("RabbitMQ", "127.0.0.1:5672")) {
        herald_conformance::lag::consumer_lag_counts_messages_the_group_has_not_settled(rabbitmq);
    }
}
