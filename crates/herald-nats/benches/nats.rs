//! NATS JetStream benchmarks: `herald-nats` beside raw `async-nats` JetStream doing the same
//! work, in the same run, in interleaved rounds.
//!
//! ```sh
//! cargo bench -p herald-nats --bench nats             # defaults: 20,000 msgs, 5 rounds
//! HERALD_BENCH_MESSAGES=50000 HERALD_BENCH_ROUNDS=7 cargo bench -p herald-nats --bench nats
//! ```
//!
//! The server comes from `HERALD_NATS_URL` (default `nats://127.0.0.1:4222`); the binary says so
//! and exits cleanly when nothing listens there. Every round uses streams of its own (named
//! after the run), deleted at the end of the round. Both sides use file storage.
//!
//! The raw side: one stream per round, `publish` of every message of a batch before awaiting
//! their acks (many in flight), a durable pull consumer with explicit acks, `max_ack_pending`
//! 256, batches of up to 256, and one `ack` per message. The payload is the same; the raw
//! message carries its key in one header. Herald adds the message id (`Nats-Msg-Id`, so the
//! server de-duplicates), the name and the metadata as JSON headers, decoding on receipt, and
//! the subscription's task and channel. A second comparison has the raw side send Herald's
//! headers too (with `Nats-Msg-Id`, so the server de-duplicates for it as well), so the
//! remaining gap is the adapter's code rather than its wire format.

use std::sync::Arc;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use futures::{FutureExt as _, StreamExt as _};
use herald::Message;
use herald_bench::{
    Burst, Comparison, Consume, Outgoing, Pace, Queue, Sample, Seen, Table, Work, compare, compared_header,
};
use herald_nats::{HEADER_KEY, HEADER_METADATA, HEADER_NAME, NatsBroker, NatsConfig};

const IN_FLIGHT: usize = 256;

fn url() -> String {
    std::env::var("HERALD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Raw JetStream publishing: every publish of the batch sent, then every ack awaited.
struct RawQueue {
    js: jetstream::Context,
    subject: String,
    format: Format,
}

/// What a raw message carries besides its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// The key in one header: the least a raw client would send.
    Minimal,
    /// Herald's headers, made the way the adapter makes them: `Nats-Msg-Id` (so the server
    /// de-duplicates), name, key and metadata as JSON. Isolates what the wire format costs from
    /// what the adapter's code costs.
    Herald,
}

#[async_trait]
impl Queue for RawQueue {
    async fn publish(&self, batch: Vec<Outgoing>) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(batch.len());
        for o in batch {
            let mut headers = HeaderMap::new();
            let mut publish = PublishMessage::build();
            if self.format == Format::Herald {
                let m = Message::new(self.subject.as_str(), "bench.Event.v1", Vec::new());
                headers.insert(HEADER_NAME, m.name.as_str());
                headers.insert(HEADER_KEY, o.key.as_str());
                headers.insert(HEADER_METADATA, serde_json::to_string(&m.metadata)?.as_str());
                publish = publish.message_id(m.id.to_string());
            } else {
                headers.insert("key", o.key.as_str());
            }
            let publish = publish.payload(o.payload.into()).headers(headers);
            acks.push(self.js.send_publish(self.subject.clone(), publish).await?);
        }
        futures::future::try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await?;
        Ok(())
    }
}

/// A raw pull consumer: whatever the pull stream already holds (up to 256), one ack each.
struct RawConsumer {
    messages: pull::Stream,
}

#[async_trait]
impl Consume for RawConsumer {
    async fn next(&mut self, seen: &mut Seen<'_>) -> anyhow::Result<usize> {
        let first = self.messages.next().await.context("the pull stream ended")??;
        let mut batch = vec![first];
        while batch.len() < IN_FLIGHT {
            match self.messages.next().now_or_never() {
                Some(Some(m)) => batch.push(m?),
                _ => break,
            }
        }
        for m in &batch {
            seen(&m.payload);
        }
        futures::future::try_join_all(batch.iter().map(|m| m.ack())).await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        Ok(batch.len())
    }
}

struct Bench {
    js: jetstream::Context,
    run: String,
}

impl Bench {
    async fn raw(&self, tag: &str, round: usize, work: Work, format: Format) -> anyhow::Result<Sample> {
        let name = format!("hbench-raw-{}-{tag}-{round}", self.run);
        let subject = format!("hbench.raw.{}.{tag}.{round}", self.run);
        let stream = self
            .js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("bench".to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: IN_FLIGHT as i64,
                ..Default::default()
            })
            .await?;
        let messages = consumer.stream().max_messages_per_batch(IN_FLIGHT).messages().await?;
        let mut raw = RawConsumer { messages };
        let queue = Arc::new(RawQueue { js: self.js.clone(), subject, format });
        let sample = work.run(queue, &mut raw).await;
        drop(raw);
        self.js.delete_stream(&name).await?;
        sample
    }

    async fn herald(&self, tag: &str, round: usize, work: Work) -> anyhow::Result<Sample> {
        let prefix = format!("hbench-{}-{tag}-{round}-", self.run);
        let topic = format!("hbench.herald.{}.{tag}.{round}", self.run);
        let broker: NatsBroker = NatsConfig::new(url()).stream_prefix(prefix).connect().await?;
        let sample = herald_bench::herald_round(broker.clone(), &topic, IN_FLIGHT, work).await;
        self.js.delete_stream(broker.stream_name(&topic)).await?;
        sample
    }

    async fn compare(&self, tag: &str, rounds: usize, work: Work, format: Format) -> anyhow::Result<Comparison> {
        eprintln!("{tag}:");
        compare(rounds, |r| self.raw(tag, r, work, format), |r| self.herald(tag, r, work)).await
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = url();
    if !herald_bench::reachable(&herald_bench::host_port(&url, 4222)) {
        eprintln!("skipped: no NATS server at {url} (set HERALD_NATS_URL)");
        return Ok(());
    }
    let messages = herald_bench::size("HERALD_BENCH_MESSAGES", 20_000);
    let rounds = herald_bench::setting("HERALD_BENCH_ROUNDS", 5);
    let client = async_nats::connect(url.as_str()).await?;
    let bench = Bench { js: jetstream::new(client), run: herald_bench::run_id() };

    let burst = Burst { messages, batch: 100, keys: 64, payload: 100 };
    let throughput = bench.compare("burst", rounds, Work::Burst(burst), Format::Minimal).await?;
    let same_format = bench.compare("burst-herald-format", rounds, Work::Burst(burst), Format::Herald).await?;
    let pace = Pace { rate: 1000, per_tick: 1, messages: (messages / 10).clamp(500, 2000), keys: 64, payload: 100 };
    let paced = bench.compare("paced", rounds.div_ceil(2), Work::Pace(pace), Format::Minimal).await?;

    let mut table = Table::new(compared_header("raw async-nats JetStream"));
    table.broker_rows((&burst, &throughput), (&same_format, "the same, but each raw message carries Herald's headers (`Nats-Msg-Id`, so the server de-duplicates, name, key, metadata JSON): what is left is the adapter's code"), (&pace, &paced));
    table.print();
    Ok(())
}
