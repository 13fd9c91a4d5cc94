//! Kafka benchmarks: `herald-kafka` beside the raw `rdkafka` client doing the same work, in the
//! same run, in interleaved rounds, against the broker at `HERALD_KAFKA_SERVERS` (default
//! `127.0.0.1:9092`, tansu in the tests); the binary says so and exits cleanly when nothing
//! listens there.
//!
//! ```sh
//! cargo bench -p herald-kafka --bench kafka            # defaults: 20,000 msgs, 5 rounds
//! HERALD_BENCH_MESSAGES=50000 HERALD_BENCH_ROUNDS=7 cargo bench -p herald-kafka --bench kafka
//! ```
//!
//! Every round uses topics and groups of its own. The raw side: a `FutureProducer` (idempotent,
//! linger 1 ms, the same batch cap as the adapter) sending every record of a batch before
//! awaiting their acknowledgements, and a `StreamConsumer` in a group with auto commit, taking
//! what has arrived and storing each offset. Its records carry the key and payload only; a
//! second comparison has them carry Herald's headers too (id, name, metadata JSON), so the gap
//! left is the adapter's code: per-key dispatch, leases, the channel, committing below the
//! unsettled.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use futures::FutureExt as _;
use herald::Message;
use herald_bench::{
    Burst, Comparison, Consume, Outgoing, Pace, Queue, Sample, Seen, Table, Work, compare, compared_header,
};
use herald_kafka::{HEADER_ID, HEADER_METADATA, HEADER_NAME, KafkaConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};

const IN_FLIGHT: usize = 256;

fn servers() -> String {
    std::env::var("HERALD_KAFKA_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// What a raw record carries besides its key and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Nothing: the least a raw client would send.
    Minimal,
    /// Herald's headers, made the way the adapter makes them.
    Herald,
}

struct RawQueue {
    producer: FutureProducer,
    topic: String,
    format: Format,
}

#[async_trait]
impl Queue for RawQueue {
    async fn publish(&self, batch: Vec<Outgoing>) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(batch.len());
        for o in &batch {
            let mut record = FutureRecord::to(&self.topic).key(o.key.as_str()).payload(o.payload.as_slice());
            if self.format == Format::Herald {
                let m = Message::new(self.topic.as_str(), "bench.Event.v1", Vec::new());
                let metadata = serde_json::to_string(&m.metadata)?;
                let id = m.id.to_string();
                record = record.headers(
                    OwnedHeaders::new_with_capacity(3)
                        .insert(Header { key: HEADER_ID, value: Some(id.as_str()) })
                        .insert(Header { key: HEADER_NAME, value: Some(m.name.as_str()) })
                        .insert(Header { key: HEADER_METADATA, value: Some(metadata.as_str()) }),
                );
            }
            acks.push(self.producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for ack in acks {
            ack.await?.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

/// A raw group member: whatever has arrived (up to 256), each offset stored for auto commit.
struct RawConsumer {
    consumer: StreamConsumer,
}

#[async_trait]
impl Consume for RawConsumer {
    async fn next(&mut self, seen: &mut Seen<'_>) -> anyhow::Result<usize> {
        let mut n = 0;
        let first = self.consumer.recv().await?;
        seen(first.payload().unwrap_or_default());
        self.consumer.store_offset_from_message(&first)?;
        n += 1;
        while n < IN_FLIGHT {
            match self.consumer.recv().now_or_never() {
                Some(m) => {
                    let m = m?;
                    seen(m.payload().unwrap_or_default());
                    self.consumer.store_offset_from_message(&m)?;
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }
}

struct Bench {
    run: String,
}

impl Bench {
    async fn raw(&self, tag: &str, round: usize, work: Work, format: Format) -> anyhow::Result<Sample> {
        let prefix = format!("hbench-raw-{}-{tag}-{round}.", self.run);
        // The adapter creates the topic as it would its own (same partitions), then steps aside.
        let setup = KafkaConfig::new(servers()).topic_prefix(&prefix).connect().await?;
        let topic = setup.create_topic("events").await?;
        setup.close().await?;
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", servers()).set("log_level", "3");
        let producer: FutureProducer = base
            .clone()
            .set("linger.ms", "1")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("batch.num.messages", "500")
            .create()?;
        let consumer: StreamConsumer = base
            .set("group.id", format!("{topic}/bench"))
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create()?;
        consumer.subscribe(&[topic.as_str()])?;
        let mut raw = RawConsumer { consumer };
        let queue = Arc::new(RawQueue { producer, topic, format });
        work.run(queue, &mut raw).await
    }

    async fn herald(&self, tag: &str, round: usize, work: Work) -> anyhow::Result<Sample> {
        let prefix = format!("hbench-{}-{tag}-{round}.", self.run);
        let broker = KafkaConfig::new(servers()).topic_prefix(prefix).connect().await?;
        let sample = herald_bench::herald_round(broker.clone(), "events", IN_FLIGHT, work).await;
        broker.close().await?;
        sample
    }

    async fn compare(&self, tag: &str, rounds: usize, work: Work, format: Format) -> anyhow::Result<Comparison> {
        eprintln!("{tag}:");
        compare(rounds, |r| self.raw(tag, r, work, format), |r| self.herald(tag, r, work)).await
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let servers = servers();
    let first = servers.split(',').next().unwrap_or_default().trim().to_owned();
    if !herald_bench::reachable(&first) {
        eprintln!("skipped: no Kafka broker at {servers} (set HERALD_KAFKA_SERVERS)");
        return Ok(());
    }
    let messages = herald_bench::size("HERALD_BENCH_MESSAGES", 20_000);
    let rounds = herald_bench::setting("HERALD_BENCH_ROUNDS", 5);
    let bench = Bench { run: herald_bench::run_id() };

    let burst = Burst { messages, batch: 100, keys: 64, payload: 100 };
    let throughput = bench.compare("burst", rounds, Work::Burst(burst), Format::Minimal).await.context("burst")?;
    let same_format =
        bench.compare("burst-herald-format", rounds, Work::Burst(burst), Format::Herald).await.context("format")?;
    let pace = Pace { rate: 1000, per_tick: 1, messages: (messages / 10).clamp(500, 2000), keys: 64, payload: 100 };
    let paced = bench.compare("paced", rounds.div_ceil(2), Work::Pace(pace), Format::Minimal).await.context("paced")?;

    let mut table = Table::new(compared_header("raw rdkafka"));
    table.broker_rows(
        (&burst, &throughput),
        (&same_format, "the same, but each raw record carries Herald's headers (id, name, metadata JSON): what is left is the adapter's code"),
        (&pace, &paced),
    );
    table.print();
    Ok(())
}
