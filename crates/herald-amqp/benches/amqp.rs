//! RabbitMQ benchmarks: Herald's adapter beside raw lapin doing the same work, in one run.
//!
//! `cargo bench -p herald-amqp --bench amqp` (needs the server on 127.0.0.1:5672) prints a
//! Markdown table. Both sides publish in batches of 100 on a confirm channel (waiting for every
//! confirm), to a topic exchange bound to one quorum queue, and consume with prefetch 256 and
//! one ack per message, so the ratio is the cost of Herald itself (headers and metadata JSON,
//! the channel to the handler, leases).

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use herald::message::Message;
use herald::pubsub::{Publisher, SubscribeOptions, Subscriber};
use herald_amqp::AmqpConfig;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const MESSAGES: usize = 20_000;
const BATCH: usize = 100;
const IN_FLIGHT: u16 = 256;
const PACED: usize = 3_000;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn stamp(epoch: Instant) -> Vec<u8> {
    epoch.elapsed().as_micros().to_string().into_bytes()
}

fn since(epoch: Instant, payload: &[u8]) -> Result<u64> {
    let sent: u64 = String::from_utf8_lossy(payload).parse()?;
    Ok((epoch.elapsed().as_micros() as u64).saturating_sub(sent))
}

/// Herald: publish `total` in batches (optionally one batch of 10 every 10 ms) while one
/// subscription acks; returns msgs/s from first publish to last ack and the publish → ack
/// latency.
async fn herald(prefix: &str, total: usize, paced: bool) -> Result<(f64, Histogram<u64>)> {
    let config = AmqpConfig::new(URL).prefix(prefix).queue_expires(Duration::from_secs(60)).auto_delete_exchange(true);
    let broker = config.connect().await?;
    let options = SubscribeOptions::new("bench.orders", "bench").max_in_flight(usize::from(IN_FLIGHT));
    let mut sub = broker.subscribe(options).await?;
    let epoch = Instant::now();
    let publisher = broker.clone();
    let producer = tokio::spawn(async move {
        let (batch, mut tick) =
            if paced { (10, Some(tokio::time::interval(Duration::from_millis(10)))) } else { (BATCH, None) };
        for _ in 0..total / batch {
            if let Some(tick) = tick.as_mut() {
                tick.tick().await;
            }
            let messages: Vec<Message> =
                (0..batch).map(|_| Message::new("bench.orders", "bench.Event.v1", stamp(epoch))).collect();
            publisher.publish(&messages).await?;
        }
        Ok::<_, herald::pubsub::PubSubError>(())
    });
    let mut latency = Histogram::<u64>::new(3)?;
    for _ in 0..total {
        let d = tokio::time::timeout(Duration::from_secs(60), sub.next()).await?.ok_or("subscription ended")?;
        let waited = since(epoch, &d.message.payload)?;
        d.ack().await?;
        latency.record(waited)?;
    }
    let rate = total as f64 / epoch.elapsed().as_secs_f64();
    producer.await??;
    drop(sub);
    broker.close().await?;
    Ok((rate, latency))
}

/// Raw lapin, the same work: a topic exchange, a quorum queue bound to it, confirms awaited per
/// batch, a consumer with the same prefetch acking each message.
async fn raw(prefix: &str, total: usize) -> Result<(f64, Histogram<u64>)> {
    let conn = Connection::connect(URL, ConnectionProperties::default()).await?;
    let (exchange, queue) = (format!("{prefix}raw"), format!("{prefix}raw.bench"));
    let admin = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    admin.exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    admin.queue_declare(queue.as_str().into(), options, args).await?;
    let bind = QueueBindOptions::default();
    admin
        .queue_bind(queue.as_str().into(), exchange.as_str().into(), "bench.orders".into(), bind, FieldTable::default())
        .await?;

    let consuming = conn.create_channel().await?;
    consuming.basic_qos(IN_FLIGHT, BasicQosOptions::default()).await?;
    let mut consumer = consuming
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let publishing = conn.create_channel().await?;
    publishing.confirm_select(ConfirmSelectOptions::default()).await?;

    let epoch = Instant::now();
    let producer = {
        let exchange = exchange.clone();
        tokio::spawn(async move {
            for _ in 0..total / BATCH {
                let mut confirms = Vec::with_capacity(BATCH);
                for _ in 0..BATCH {
                    let properties = BasicProperties::default().with_delivery_mode(2);
                    let confirm = publishing
                        .basic_publish(
                            exchange.as_str().into(),
                            "bench.orders".into(),
                            BasicPublishOptions::default(),
                            &stamp(epoch),
                            properties,
                        )
                        .await?;
                    confirms.push(confirm);
                }
                for confirm in futures::future::join_all(confirms).await {
                    if !confirm?.is_ack() {
                        return Err(lapin::Error::from(std::io::Error::other("nacked")));
                    }
                }
            }
            Ok(())
        })
    };
    let mut latency = Histogram::<u64>::new(3)?;
    for _ in 0..total {
        let d = tokio::time::timeout(Duration::from_secs(60), consumer.next()).await?.ok_or("consumer ended")??;
        let waited = since(epoch, &d.data)?;
        d.acker.ack(BasicAckOptions::default()).await?;
        latency.record(waited)?;
    }
    let rate = total as f64 / epoch.elapsed().as_secs_f64();
    producer.await??;
    admin.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    admin.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    conn.close(200, "done".into()).await?;
    Ok((rate, latency))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let prefix = format!("bench{:08x}.", fastrand::u32(..));
    // Warm-up (connections, queue creation paths, the server's JIT-less first writes).
    herald(&format!("{prefix}warm."), 2_000, false).await?;
    raw(&format!("{prefix}warm."), 2_000).await?;

    let (raw_rate, raw_lat) = raw(&prefix, MESSAGES).await?;
    let (rate, lat) = herald(&prefix, MESSAGES, false).await?;
    let (_, paced) = herald(&format!("{prefix}paced."), PACED, true).await?;

    println!("| benchmark | Herald | raw lapin, same work (same run) | ratio | notes |");
    println!("|---|---|---|---|---|");
    println!(
        "| RabbitMQ publish → consume → ack | {rate:.0} msgs/s, p50 {:.1} ms, p99 {:.1} ms | {raw_rate:.0} msgs/s, p50 {:.1} ms, p99 {:.1} ms | {:.2}× | {MESSAGES} msgs, batches of {BATCH} with confirms, prefetch {IN_FLIGHT}, one quorum queue |",
        ms(&lat, 0.5),
        ms(&lat, 0.99),
        ms(&raw_lat, 0.5),
        ms(&raw_lat, 0.99),
        rate / raw_rate
    );
    println!(
        "| RabbitMQ latency at a steady 1,000 msgs/s | publish → ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | — | — | {PACED} msgs, batches of 10 every 10 ms |",
        ms(&paced, 0.5),
        ms(&paced, 0.99),
        paced.max() as f64 / 1000.0
    );
    Ok(())
}
