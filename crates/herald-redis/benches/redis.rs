//! Redis Streams benchmarks: `herald-redis` beside raw redis-rs doing the same work (`XADD`,
//! `XREADGROUP`, `XACK`), in the same run, in interleaved rounds.
//!
//! ```sh
//! cargo bench -p herald-redis --bench redis           # defaults: 30,000 msgs, 5 rounds
//! HERALD_BENCH_MESSAGES=50000 HERALD_BENCH_ROUNDS=7 cargo bench -p herald-redis --bench redis
//! ```
//!
//! The server comes from `HERALD_REDIS_URL` (default `redis://127.0.0.1:6379`); the binary says
//! so and exits cleanly when nothing listens there. Every round uses keys of its own (named
//! after the run), deleted at the end of the round.
//!
//! The raw side: a batch is one pipeline of `XADD`s with two fields (`key`, `payload`) on a
//! multiplexed connection; a consumer group read with `XREADGROUP … COUNT 256 BLOCK 100 >` on a
//! connection of its own; one `XACK` per message, sent concurrently on the multiplexed
//! connection (so pipelined). Herald adds the id, topic, name and metadata (JSON) fields, the
//! batch's `MULTI`/`EXEC`, decoding on receipt, the claim round (`XPENDING … IDLE`) before each
//! read, the in-flight semaphore and the subscription's task and channel. A second comparison
//! has the raw side write Herald's six fields in `MULTI`/`EXEC` too, so the remaining gap is the
//! adapter's code rather than its wire format.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use herald::Message;
use herald_bench::{
    Burst, Comparison, Consume, Outgoing, Pace, Queue, Sample, Seen, Table, Work, compare, compared_header,
};
use herald_redis::{FIELD_ID, FIELD_KEY, FIELD_METADATA, FIELD_NAME, FIELD_PAYLOAD, FIELD_TOPIC, RedisConfig};
use redis::Value;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;

const IN_FLIGHT: usize = 256;

fn url() -> String {
    std::env::var("HERALD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

struct RawQueue {
    conn: MultiplexedConnection,
    stream: String,
    format: Format,
}

/// What a raw entry carries besides its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// A plain pipeline of `XADD`s with two fields (`key`, `payload`).
    Minimal,
    /// Herald's entry, made the way the adapter makes it: six fields (`id`, `topic`, `name`,
    /// `key`, `payload`, `metadata` as JSON), the batch in one `MULTI`/`EXEC`. Isolates what the
    /// wire format costs from what the adapter's code costs.
    Herald,
}

#[async_trait]
impl Queue for RawQueue {
    async fn publish(&self, batch: Vec<Outgoing>) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        if self.format == Format::Herald {
            pipe.atomic();
        }
        for o in &batch {
            let xadd = pipe.cmd("XADD").arg(&self.stream).arg("*");
            if self.format == Format::Herald {
                let m = Message::new("bench.burst", "bench.Event.v1", Vec::new());
                xadd.arg(FIELD_ID)
                    .arg(m.id.to_string())
                    .arg(FIELD_TOPIC)
                    .arg(&m.topic)
                    .arg(FIELD_NAME)
                    .arg(&m.name)
                    .arg(FIELD_METADATA)
                    .arg(serde_json::to_string(&m.metadata)?);
            }
            xadd.arg(FIELD_KEY).arg(&o.key).arg(FIELD_PAYLOAD).arg(&o.payload[..]).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }
}

struct RawConsumer {
    reader: MultiplexedConnection,
    acker: MultiplexedConnection,
    stream: String,
}

#[async_trait]
impl Consume for RawConsumer {
    async fn next(&mut self, seen: &mut Seen<'_>) -> anyhow::Result<usize> {
        loop {
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("bench")
                .arg("raw")
                .arg("COUNT")
                .arg(IN_FLIGHT)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query_async(&mut self.reader)
                .await?;
            let ids: Vec<_> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            if ids.is_empty() {
                continue;
            }
            for id in &ids {
                match id.map.get(FIELD_PAYLOAD) {
                    Some(Value::BulkString(p)) => seen(p),
                    other => anyhow::bail!("entry {} without a payload: {other:?}", id.id),
                }
            }
            let stream = self.stream.as_str();
            let acks = ids.iter().map(|id| {
                let mut conn = self.acker.clone();
                async move { redis::cmd("XACK").arg(stream).arg("bench").arg(&id.id).query_async::<()>(&mut conn).await }
            });
            futures::future::try_join_all(acks).await?;
            return Ok(ids.len());
        }
    }
}

struct Bench {
    client: redis::Client,
    conn: MultiplexedConnection,
    run: String,
}

impl Bench {
    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        redis::cmd("DEL").arg(key).query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn raw(&self, tag: &str, round: usize, work: Work, format: Format) -> anyhow::Result<Sample> {
        let stream = format!("hbench:{}:raw:{tag}:{round}", self.run);
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("bench")
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        let mut consumer = RawConsumer {
            reader: self.client.get_multiplexed_async_connection().await?,
            acker: self.conn.clone(),
            stream: stream.clone(),
        };
        let queue = Arc::new(RawQueue { conn: self.conn.clone(), stream: stream.clone(), format });
        let sample = work.run(queue, &mut consumer).await;
        self.delete(&stream).await?;
        sample
    }

    async fn herald(&self, tag: &str, round: usize, work: Work) -> anyhow::Result<Sample> {
        let prefix = format!("hbench:{}:herald:{round}:", self.run);
        let topic = format!("bench.{tag}");
        let broker = RedisConfig::new(url()).key_prefix(prefix).connect().await?;
        let sample = herald_bench::herald_round(broker.clone(), &topic, IN_FLIGHT, work).await;
        self.delete(&broker.stream_key(&topic)).await?;
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
    if !herald_bench::reachable(&herald_bench::host_port(&url, 6379)) {
        eprintln!("skipped: no Redis server at {url} (set HERALD_REDIS_URL)");
        return Ok(());
    }
    let messages = herald_bench::size("HERALD_BENCH_MESSAGES", 30_000);
    let rounds = herald_bench::setting("HERALD_BENCH_ROUNDS", 5);
    let client = redis::Client::open(url.as_str())?;
    let conn = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let bench = Bench { client, conn, run: herald_bench::run_id() };

    let burst = Burst { messages, batch: 100, keys: 64, payload: 100 };
    let throughput = bench.compare("burst", rounds, Work::Burst(burst), Format::Minimal).await?;
    let same_format = bench.compare("burst-herald-format", rounds, Work::Burst(burst), Format::Herald).await?;
    let pace = Pace { rate: 1000, per_tick: 1, messages: (messages / 10).clamp(500, 2000), keys: 64, payload: 100 };
    let paced = bench.compare("paced", rounds.div_ceil(2), Work::Pace(pace), Format::Minimal).await?;

    let mut table = Table::new(compared_header("raw redis-rs Streams"));
    table.broker_rows((&burst, &throughput), (&same_format, "the same, but each raw entry has Herald's six fields (id, topic, name, key, payload, metadata JSON) and each batch is one MULTI/EXEC: what is left is the adapter's code"), (&pace, &paced));
    table.print();
    Ok(())
}
