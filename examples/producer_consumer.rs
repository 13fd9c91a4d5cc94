//! **Producer / consumer over a broker, with consumer groups.** A producer publishes keyed
//! events; every consumer *group* gets every event (fan-out between groups), and the consumers
//! of *one* group share the work (each event goes to one of them).
//!
//! Look at: `subscribe` with a group name (`analytics` has one consumer, `billing` two), the
//! key on each message, `ack` after the work. The same code runs on every broker; only the
//! lines that build it change ([`connect`]). What differs is declared, not hidden: a broker with
//! `per_key_order` (in memory, SQL) hands one order's events to a group one at a time, in
//! order; the others (NATS without partitions, Redis, RabbitMQ) may spread them across the
//! group's consumers.
//!
//! ```sh
//! cargo run --example producer_consumer                         # in memory, no server
//! cargo run --example producer_consumer -- sqlite:///tmp/shop.db # the SQL broker on SQLite
//! cargo run --example producer_consumer -- nats://127.0.0.1:4222 # or postgres://…, redis://…, amqp://…
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use herald::memory::MemoryBroker;
use herald::prelude::*;
use herald::pubsub::Subscription;
use herald_sql::any::AnyDatabase;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

events! {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    enum OrderEvent {
        Placed = "shop.OrderPlaced.v1" { total_cents: i64 },
        Shipped = "shop.OrderShipped.v1" { carrier: String },
    }
}

/// What a consumer reports after acknowledging a delivery.
#[derive(Debug)]
struct Handled {
    consumer: &'static str,
    message: herald::MessageId,
    line: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    // `cargo test` passes its own flags to examples: only an argument that is a URL is a broker.
    let url = std::env::args().skip(1).find(|a| a.contains("://"));
    let (broker, topic, database) = connect(url.as_deref()).await?;
    let per_key_order = broker.capabilities().per_key_order;
    println!(
        "broker: {} (per-key order in a group: {per_key_order}); topic: {topic}",
        url.as_deref().unwrap_or("in memory")
    );

    // Subscribe first: on a broker without history (RabbitMQ) a group gets what is published
    // after it exists. `max_in_flight(1)`: a consumer holds one message at a time, so the two
    // billing consumers visibly take turns.
    let (handled_tx, mut handled_rx) = mpsc::channel::<Handled>(64);
    let stop = CancellationToken::new();
    let mut consumers = JoinSet::new();
    for (consumer, group) in [("analytics", "analytics"), ("billing-1", "billing"), ("billing-2", "billing")] {
        let options = SubscribeOptions::new(&topic, group).max_in_flight(1);
        let subscription = broker.subscribe(options).await.with_context(|| format!("subscribing {consumer}"))?;
        consumers.spawn(consume(consumer, subscription, handled_tx.clone(), stop.clone()));
    }
    drop(handled_tx);

    // The producer: three orders, each placed then shipped, keyed by the order id.
    let mut messages = Vec::new();
    for order in ["order-1", "order-2", "order-3"] {
        for event in [OrderEvent::from(Placed { total_cents: 1999 }), Shipped { carrier: "owl".into() }.into()] {
            messages.push(Message::encode(&topic, &event)?.with_key(order));
        }
    }
    broker.publish(&messages).await?;
    println!("published {} events for 3 orders", messages.len());

    // Each group gets every event once: 6 for analytics, 6 shared by the billing consumers.
    let mut by_consumer: BTreeMap<&str, Vec<Handled>> = BTreeMap::new();
    let expected = 2 * messages.len();
    let collect = async {
        for _ in 0..expected {
            let Some(handled) = handled_rx.recv().await else { break };
            by_consumer.entry(handled.consumer).or_default().push(handled);
        }
    };
    let timed_out = tokio::time::timeout(Duration::from_secs(20), collect).await.is_err();
    stop.cancel();
    while let Some(result) = consumers.join_next().await {
        result??;
    }
    for (consumer, handled) in &by_consumer {
        let lines: Vec<&str> = handled.iter().map(|h| h.line.as_str()).collect();
        println!("{consumer:<9} handled {}: {}", handled.len(), lines.join(", "));
    }
    broker.shutdown().await?;
    if let Some(db) = database {
        db.close().await;
    }

    ensure!(!timed_out, "not every delivery arrived within 20 s");
    let ids = |consumers: &[&str]| -> HashSet<herald::MessageId> {
        consumers.iter().flat_map(|c| by_consumer.get(c).into_iter().flatten()).map(|h| h.message).collect()
    };
    let published: HashSet<_> = messages.iter().map(|m| m.id).collect();
    ensure!(ids(&["analytics"]) == published, "the analytics group did not get every event");
    ensure!(ids(&["billing-1", "billing-2"]) == published, "the billing group did not get every event");
    let share = |c: &str| by_consumer.get(c).map_or(0, Vec::len);
    ensure!(share("billing-1") + share("billing-2") == messages.len(), "an event went to both billing consumers");
    ensure!(share("billing-1") > 0 && share("billing-2") > 0, "one billing consumer did all the work");
    println!("every group got every event; the billing consumers shared theirs");
    Ok(())
}

/// One consumer: handles its subscription's deliveries until `stop`, reporting each one.
async fn consume(
    consumer: &'static str,
    mut subscription: Subscription,
    handled: mpsc::Sender<Handled>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            delivery = subscription.next() => match delivery {
                Some(delivery) => delivery,
                None => return Ok(()),
            },
        };
        let line = match OrderEvent::decode(&delivery.message.name, &delivery.message.payload)? {
            OrderEvent::Placed(e) => format!("{} placed ({} cents)", delivery.message.key, e.total_cents),
            OrderEvent::Shipped(e) => format!("{} shipped by {}", delivery.message.key, e.carrier),
        };
        tokio::time::sleep(Duration::from_millis(20)).await; // the work
        let message = delivery.message.id;
        delivery.ack().await?;
        if handled.send(Handled { consumer, message, line }).await.is_err() {
            return Ok(()); // nobody is counting any more
        }
    }
}

/// The broker `url` names (in memory without one), the topic to use on it, and the database
/// to close at the end when the broker is the SQL broker. On a server the names carry this
/// run's time, so runs do not see each other's messages.
async fn connect(url: Option<&str>) -> anyhow::Result<(Arc<dyn Broker>, String, Option<AnyDatabase>)> {
    let Some(url) = url else {
        return Ok((Arc::new(MemoryBroker::in_memory()), "shop.orders".into(), None));
    };
    let run = format!("run{}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis());
    let topic = format!("shop.orders.{run}");
    let namespace = format!("herald-examples-{run}");
    let broker: Arc<dyn Broker> = match url.split_once("://").map_or("", |(scheme, _)| scheme) {
        "sqlite" | "postgres" | "postgresql" => {
            let db = AnyDatabase::open(url).await?;
            return Ok((db.broker(), topic, Some(db)));
        }
        "nats" => {
            let config = herald_nats::NatsConfig::new(url)
                .stream_prefix(format!("{namespace}-"))
                .subject_prefix(format!("{namespace}."))
                .storage(herald_nats::Storage::Memory)
                .max_age(Duration::from_secs(600));
            Arc::new(config.connect().await?)
        }
        "redis" | "rediss" => {
            Arc::new(herald_redis::RedisConfig::new(url).key_prefix(format!("{namespace}:")).connect().await?)
        }
        "amqp" | "amqps" => {
            let config = herald_amqp::AmqpConfig::new(url)
                .prefix(format!("{namespace}."))
                .queue_expires(Duration::from_secs(120))
                .auto_delete_exchange(true);
            Arc::new(config.connect().await?)
        }
        other => anyhow::bail!("unknown broker {other:?}: use sqlite://, postgres://, nats://, redis:// or amqp://"),
    };
    Ok((broker, topic, None))
}
