//! PostgreSQL benchmarks: Herald's event store (with the global log's advisory lock), the SQL
//! broker and the outbox relay, beside raw SQL doing the same work at the same concurrency, in
//! the same run, in interleaved rounds (loops from `herald-bench`).
//!
//! ```sh
//! cargo bench -p herald-sql --bench postgres          # about a minute on the project machine
//! HERALD_BENCH_MESSAGES=10000 HERALD_BENCH_ROUNDS=5 cargo bench -p herald-sql --bench postgres
//! ```
//!
//! Sizes: `HERALD_BENCH_MESSAGES` (or the first numeric argument; broker messages, default
//! 5,000), `HERALD_BENCH_ROUNDS` (default 3), `HERALD_BENCH_TRANSACTIONS` (appends per figure,
//! shared by the writers, default 800), `HERALD_BENCH_COMMITS` (outbox commits per latency
//! figure, default 400). `HERALD_BENCH_ONLY=append` runs only the append rows and the
//! append → global log latency.
//!
//! The server comes from `HERALD_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); the binary says so and exits cleanly when nothing
//! listens there. Each round uses a fresh schema (`hbench_…`), dropped at the end of the round.
//!
//! * *append*: raw `INSERT`s of the same rows into a plain table with a `bigserial`, from the
//!   same number of concurrent writers. A `bigserial` alone lets readers skip positions under
//!   concurrency; Herald's appends insert without a position and its sequencer task numbers
//!   committed events afterwards, so the global log never skips
//!   (docs/adr/0003-postgres-global-log.md); the sequencer's batches share the server with the
//!   writers and are included in the time.
//! * *broker*: raw SQL doing the queue work: batches of 100 `INSERT`s in one transaction, a
//!   consumer leasing up to 256 rows at a time (`UPDATE … WHERE position IN (SELECT … FOR UPDATE
//!   SKIP LOCKED) RETURNING`, polled every 2 ms while empty) and one autocommit `DELETE` per
//!   message (the "ack").
//! * *outbox*: commit → delivered latency. One writer commits transactions that append an
//!   event and enqueue an outbox message, at a steady rate; an `OutboxRelay` on a *second*
//!   database handle (so only `LISTEN`/`NOTIFY`, not an in-process signal, wakes it) publishes
//!   to a broker, and a subscriber measures from sending `COMMIT` to receipt. With the SQL
//!   broker the subscriber sits on a third handle (woken by `NOTIFY` again), as in another
//!   process; with the in-memory broker only the relay's latency remains. The floor is a raw
//!   `INSERT` + `pg_notify` commit received by a `PgListener`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_trait::async_trait;
use hdrhistogram::Histogram;
use herald::memory::MemoryBroker;
use herald::outbox::OutboxRelay;
use herald::{
    ExpectedVersion, Message, MessageId, NewEvent, Publisher, StartFrom, Store, SubscribeOptions, Subscriber,
    Subscription,
};
use herald_bench::{Burst, Consume, Outgoing, Pace, Queue, Sample, Seen, Table, Work, compare};
use herald_sql::{PostgresConfig, PostgresDatabase};
use tokio_util::sync::CancellationToken;

const IN_FLIGHT: usize = 256;

fn url() -> String {
    std::env::var("HERALD_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn new_schema() -> String {
    format!("hbench_{}_{}", std::process::id(), uuid::Uuid::now_v7().simple())
}

/// A handle on `schema` with room for 16 writers plus the listener.
async fn open(schema: &str) -> anyhow::Result<PostgresDatabase> {
    let mut config = PostgresConfig::new(url()).with_schema(schema);
    config.max_connections = 24;
    Ok(config.open().await?)
}

async fn drop_schema(db: &PostgresDatabase) -> anyhow::Result<()> {
    let drop = format!("DROP SCHEMA \"{}\" CASCADE", db.schema());
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(db.pool()).await?;
    db.close().await;
    Ok(())
}

/// Runs `f` on a fresh schema and drops the schema afterwards, whatever `f` returned.
async fn in_fresh_schema<F, Fut>(f: F) -> anyhow::Result<Sample>
where
    F: FnOnce(PostgresDatabase) -> Fut,
    Fut: Future<Output = anyhow::Result<Sample>>,
{
    let db = open(&new_schema()).await?;
    let sample = f(db.clone()).await;
    drop_schema(&db).await?;
    sample
}

/// Raw inserts of `per_tx` rows per transaction into a plain table with a `bigserial`, from
/// `writers` concurrent tasks.
async fn raw_inserts(
    db: PostgresDatabase,
    writers: usize,
    transactions: usize,
    per_tx: usize,
) -> anyhow::Result<Sample> {
    sqlx::query(
        "CREATE TABLE raw_events (position BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, version BIGINT NOT NULL, \
         name TEXT NOT NULL, payload BYTEA NOT NULL, metadata TEXT NOT NULL)",
    )
    .execute(db.pool())
    .await?;
    let per_writer = transactions / writers;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers {
        let pool = db.pool().clone();
        set.spawn(async move {
            let payload = vec![b'x'; 200];
            for t in 0..per_writer {
                let mut tx = pool.begin().await?;
                for v in 0..per_tx {
                    sqlx::query(
                        "INSERT INTO raw_events (stream, version, name, payload, metadata) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(format!("s-{w}-{t}"))
                    .bind(v as i64 + 1)
                    .bind("bench.Event.v1")
                    .bind(&payload)
                    .bind("{}")
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Sample::rate(herald_bench::per_sec(per_writer * writers * per_tx, start.elapsed()))
}

/// Herald appends of `per_tx` events per transaction, each to a new stream with `NoStream`,
/// from `writers` concurrent tasks.
async fn herald_appends(
    db: PostgresDatabase,
    writers: usize,
    transactions: usize,
    per_tx: usize,
) -> anyhow::Result<Sample> {
    let per_writer = transactions / writers;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers {
        let store = db.store();
        set.spawn(async move {
            let payload = vec![b'x'; 200];
            for t in 0..per_writer {
                let events = (0..per_tx).map(|_| NewEvent::new("bench.Event.v1", payload.clone())).collect();
                store.append(&format!("s-{w}-{t}"), ExpectedVersion::NoStream, events).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    // Counted until every event is in the global log: a read past the head waits for the
    // sequencer when committed events still lack a position.
    db.store().read_all(i64::MAX as u64, 1).await?;
    Sample::rate(herald_bench::per_sec(per_writer * writers * per_tx, start.elapsed()))
}

/// The raw queue: a batch is one transaction of `INSERT`s.
struct RawQueue {
    db: PostgresDatabase,
}

#[async_trait]
impl Queue for RawQueue {
    async fn publish(&self, batch: Vec<Outgoing>) -> anyhow::Result<()> {
        let mut tx = self.db.pool().begin().await?;
        for o in batch {
            sqlx::query("INSERT INTO raw_queue (key, payload) VALUES ($1, $2)")
                .bind(o.key)
                .bind(o.payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The raw consumer: leases up to 256 rows (`FOR UPDATE SKIP LOCKED`), then deletes each.
struct RawConsumer {
    db: PostgresDatabase,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl Consume for RawConsumer {
    async fn next(&mut self, seen: &mut Seen<'_>) -> anyhow::Result<usize> {
        loop {
            let now = now_ms();
            let batch: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "UPDATE raw_queue SET leased_until = $1 WHERE position IN \
                 (SELECT position FROM raw_queue WHERE leased_until < $2 ORDER BY position LIMIT $3 \
                  FOR UPDATE SKIP LOCKED) RETURNING position, payload",
            )
            .bind(now + 30_000)
            .bind(now)
            .bind(IN_FLIGHT as i64)
            .fetch_all(self.db.pool())
            .await?;
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            for (_, payload) in &batch {
                seen(payload);
            }
            let acks = batch.iter().map(|(position, _)| {
                sqlx::query("DELETE FROM raw_queue WHERE position = $1").bind(position).execute(self.db.pool())
            });
            futures::future::try_join_all(acks).await?;
            return Ok(batch.len());
        }
    }
}

async fn raw_queue(db: PostgresDatabase, burst: Burst) -> anyhow::Result<Sample> {
    sqlx::query(
        "CREATE TABLE raw_queue (position BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, payload BYTEA NOT NULL, \
         leased_until BIGINT NOT NULL DEFAULT 0)",
    )
    .execute(db.pool())
    .await?;
    let mut consumer = RawConsumer { db: db.clone() };
    herald_bench::throughput(Arc::new(RawQueue { db }), &mut consumer, burst).await
}

/// Commit times and receipt times by message id, matched at the end (a delivery can arrive
/// before its committer has even seen `COMMIT` return). A commit's time is when `COMMIT` was
/// sent, so its own round trip and flush are part of the latency.
#[derive(Default)]
struct Times {
    committed: Mutex<HashMap<MessageId, Instant>>,
    received: Mutex<HashMap<MessageId, Instant>>,
}

impl Times {
    fn commit(&self, id: MessageId, at: Instant) {
        self.committed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, at);
    }

    fn receive(&self, id: MessageId) {
        self.received.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, Instant::now());
    }

    fn latencies(&self) -> anyhow::Result<Histogram<u64>> {
        let committed = self.committed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let received = self.received.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut h = herald_bench::histogram()?;
        for (id, at) in committed.iter() {
            let got = received.get(id).with_context(|| format!("{id} committed, never received"))?;
            h.saturating_record((got.saturating_duration_since(*at).as_micros() as u64).max(1));
        }
        Ok(h)
    }
}

/// Commits `n` transactions at `rate` per second, each appending one event to a new stream and
/// enqueuing one outbox message to `topic`, recording when each `COMMIT` was sent.
async fn commit_paced(store: &dyn Store, topic: &str, n: usize, rate: usize, times: &Times) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..n {
        tick.tick().await;
        let mut tx = store.begin().await?;
        tx.append(
            &format!("order-{i}"),
            ExpectedVersion::NoStream,
            vec![NewEvent::new("bench.Placed.v1", vec![b'x'; 100])],
        )
        .await?;
        let message = Message::new(topic, "bench.Placed.v1", vec![b'x'; 100]);
        let id = message.id;
        tx.enqueue(vec![message]).await?;
        let committing = Instant::now();
        tx.commit().await?;
        times.commit(id, committing);
    }
    Ok(())
}

/// Receives `n` messages from `subscription`, recording receipt and acking each.
async fn receive(mut subscription: Subscription, n: usize, times: &Times) -> anyhow::Result<()> {
    for _ in 0..n {
        let d = tokio::time::timeout(herald_bench::STALL, subscription.next())
            .await
            .context("stalled")?
            .context("the subscription ended")?;
        times.receive(d.message.id);
        d.ack().await?;
    }
    Ok(())
}

/// Which broker the relay publishes to.
#[derive(Clone, Copy, Debug)]
enum RelayTo {
    Postgres,
    Memory,
}

/// Outbox commit → delivered: writer on one handle, relay on another (woken by `NOTIFY`),
/// subscriber on a third (SQL broker) or in memory.
async fn outbox_latency(to: RelayTo, n: usize, rate: usize) -> anyhow::Result<Sample> {
    let schema = new_schema();
    let writer = open(&schema).await?;
    let relay_db = open(&schema).await?;
    let subscriber_db = open(&schema).await?;
    let memory = MemoryBroker::in_memory();
    let pg = relay_db.broker();
    let (publisher, subscriber): (Arc<dyn Publisher>, Arc<dyn Subscriber>) = match to {
        RelayTo::Postgres => (Arc::new(pg.clone()), Arc::new(subscriber_db.broker())),
        RelayTo::Memory => (Arc::new(memory.clone()), Arc::new(memory.clone())),
    };
    let subscription =
        subscriber.subscribe(SubscribeOptions::new("orders", "bench").start(StartFrom::Beginning)).await?;
    let stop = CancellationToken::new();
    let relay = tokio::spawn(OutboxRelay::new(Arc::new(relay_db.store()), publisher).run(stop.clone()));
    let times = Times::default();
    let store = writer.store();
    let start = Instant::now();
    let (written, received) =
        tokio::join!(commit_paced(&store, "orders", n, rate, &times), receive(subscription, n, &times));
    let elapsed = start.elapsed();
    stop.cancel();
    relay.await?;
    Subscriber::close(subscriber.as_ref()).await?;
    Publisher::close(&pg).await?;
    Publisher::close(&memory).await?;
    written?;
    received?;
    let latency = times.latencies()?;
    subscriber_db.close().await;
    relay_db.close().await;
    drop_schema(&writer).await?;
    Ok(Sample { rate: herald_bench::per_sec(n, elapsed), latency, publishing: None })
}

/// Append commit → read from the global log by a `LogReader` on a second handle (woken by the
/// sequencer's `NOTIFY`): the sequencer's latency, as another process's projection sees it.
async fn log_latency(n: usize, rate: usize) -> anyhow::Result<Sample> {
    let schema = new_schema();
    let writer = open(&schema).await?;
    let reader_db = open(&schema).await?;
    let times = Times::default();
    let store = writer.store();
    let write = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for i in 0..n {
            tick.tick().await;
            let event = NewEvent::new("bench.Placed.v1", vec![b'x'; 100]);
            let id = event.id;
            let mut tx = store.begin().await?;
            tx.append(&format!("order-{i}"), ExpectedVersion::NoStream, vec![event]).await?;
            let committing = Instant::now();
            tx.commit().await?;
            times.commit(id, committing);
        }
        anyhow::Ok(())
    };
    let read = async {
        let mut reader = herald::store::LogReader::new(Arc::new(reader_db.store()), 0);
        for _ in 0..n {
            let e = tokio::time::timeout(herald_bench::STALL, reader.next()).await.context("stalled")??;
            times.receive(e.id);
        }
        anyhow::Ok(())
    };
    let start = Instant::now();
    let (w, r) = tokio::join!(write, read);
    let elapsed = start.elapsed();
    w?;
    r?;
    reader_db.close().await;
    drop_schema(&writer).await?;
    Ok(Sample { rate: herald_bench::per_sec(n, elapsed), latency: times.latencies()?, publishing: None })
}

/// The floor: a transaction inserting a row and calling `pg_notify`, received by a
/// `PgListener` on another connection.
async fn notify_latency(n: usize, rate: usize) -> anyhow::Result<Sample> {
    let db = open(&new_schema()).await?;
    sqlx::query("CREATE TABLE raw_outbox (id TEXT PRIMARY KEY, payload BYTEA NOT NULL)").execute(db.pool()).await?;
    let channel = format!("{}_n", db.schema());
    let mut listener = sqlx::postgres::PgListener::connect_with(db.pool()).await?;
    listener.listen(&channel).await?;
    let times = Times::default();
    let listen = async {
        for _ in 0..n {
            let note = tokio::time::timeout(herald_bench::STALL, listener.recv()).await.context("stalled")??;
            times.receive(MessageId::parse(note.payload())?);
        }
        anyhow::Ok(())
    };
    let write = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..n {
            tick.tick().await;
            let id = MessageId::new();
            let mut tx = db.pool().begin().await?;
            sqlx::query("INSERT INTO raw_outbox (id, payload) VALUES ($1, $2)")
                .bind(id.to_string())
                .bind(vec![b'x'; 100])
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_notify($1, $2)").bind(&channel).bind(id.to_string()).execute(&mut *tx).await?;
            let committing = Instant::now();
            tx.commit().await?;
            times.commit(id, committing);
        }
        anyhow::Ok(())
    };
    let start = Instant::now();
    let (w, l) = tokio::join!(write, listen);
    let elapsed = start.elapsed();
    w?;
    l?;
    drop(listener);
    drop_schema(&db).await?;
    Ok(Sample { rate: herald_bench::per_sec(n, elapsed), latency: times.latencies()?, publishing: None })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = url();
    if !herald_bench::reachable(&herald_bench::host_port(&url, 5432)) {
        eprintln!("skipped: no PostgreSQL server at {url} (set HERALD_POSTGRES_URL)");
        return Ok(());
    }
    let messages = herald_bench::size("HERALD_BENCH_MESSAGES", 5000);
    let rounds = herald_bench::setting("HERALD_BENCH_ROUNDS", 3);
    let transactions = herald_bench::setting("HERALD_BENCH_TRANSACTIONS", 800);
    let mut table = Table::new(herald_bench::compared_header("raw SQL, same work and concurrency"));

    for (writers, per_tx) in [(1, 1), (4, 1), (16, 1), (16, 10)] {
        eprintln!("append, {writers} writer(s), {per_tx}/transaction:");
        let c = compare(
            rounds,
            |_| in_fresh_schema(move |db| raw_inserts(db, writers, transactions, per_tx)),
            |_| in_fresh_schema(move |db| herald_appends(db, writers, transactions, per_tx)),
        )
        .await?;
        table.compared(
            &format!("event store append, {per_tx} event(s)/transaction, {writers} concurrent writer(s)"),
            "events/s",
            &c,
            &format!("{transactions} transactions in all, each to a new stream with `NoStream`; {rounds} rounds"),
        );
    }

    let commits = herald_bench::setting("HERALD_BENCH_COMMITS", 400);
    let rate = 200;
    let visible = log_latency(commits, rate).await?;
    table.row([
        format!("append commit → read from the global log on another handle, {rate} commits/s"),
        format!("{:.0} events/s", visible.rate),
        "—".to_owned(),
        "—".to_owned(),
        herald_bench::p50_p99(&visible.latency),
        "—".to_owned(),
        format!(
            "{commits} commits of 1 event; a LogReader on a second handle, woken by the sequencer's NOTIFY; max {} ms",
            herald_bench::ms(visible.latency.max())
        ),
    ]);
    if std::env::var("HERALD_BENCH_ONLY").is_ok_and(|only| only == "append") {
        table.print();
        return Ok(());
    }

    let burst = Burst { messages, batch: 100, keys: 64, payload: 100 };
    eprintln!("broker burst:");
    let c = compare(
        rounds,
        |_| in_fresh_schema(move |db| raw_queue(db, burst)),
        |_| in_fresh_schema(move |db| herald_bench::herald_round(db.broker(), "bench", IN_FLIGHT, Work::Burst(burst))),
    )
    .await?;
    table.compared(
        "SQL broker (PgBroker) publish → consume → ack",
        "msgs/s",
        &c,
        &format!(
            "{messages} msgs in publish batches of 100, 64 keys, {IN_FLIGHT} in flight; {rounds} rounds; latency is queueing behind the burst"
        ),
    );

    eprintln!("broker paced, outbox latency:");
    let pace = Pace { rate, per_tick: 1, messages: commits, keys: 64, payload: 100 };
    let paced =
        in_fresh_schema(move |db| herald_bench::herald_round(db.broker(), "bench", IN_FLIGHT, Work::Pace(pace)))
            .await?;
    let relay_pg = outbox_latency(RelayTo::Postgres, commits, rate).await?;
    let relay_memory = outbox_latency(RelayTo::Memory, commits, rate).await?;
    let floor = notify_latency(commits, rate).await?;
    let latency_row = |table: &mut Table, what: &str, s: &Sample, notes: &str| {
        table.row([
            what.to_owned(),
            format!("{:.0} msgs/s", s.rate),
            "—".to_owned(),
            "—".to_owned(),
            herald_bench::p50_p99(&s.latency),
            "—".to_owned(),
            format!("{notes}; max {} ms", herald_bench::ms(s.latency.max())),
        ]);
    };
    latency_row(
        &mut table,
        &format!("SQL broker publish → delivery at a steady {rate} msgs/s"),
        &paced,
        &format!("{commits} msgs one at a time, from the publish call to receipt; subscriber woken in-process"),
    );
    latency_row(
        &mut table,
        &format!("outbox commit → delivered, relay to PgBroker, {rate} commits/s"),
        &relay_pg,
        &format!(
            "{commits} commits (1 event + 1 outbox row each); relay and subscriber on their own handles, woken by LISTEN/NOTIFY"
        ),
    );
    latency_row(
        &mut table,
        &format!("outbox commit → delivered, relay to in-memory broker, {rate} commits/s"),
        &relay_memory,
        &format!("{commits} commits; the relay alone (woken by LISTEN/NOTIFY)"),
    );
    latency_row(
        &mut table,
        &format!("floor: raw INSERT + pg_notify commit → PgListener, {rate} commits/s"),
        &floor,
        &format!("{commits} commits; the one-hop floor of the two rows above"),
    );
    table.print();
    Ok(())
}
