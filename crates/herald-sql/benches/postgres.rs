//! PostgreSQL benchmarks: Herald's event store (with the global log's advisory lock) and SQL
//! broker beside raw `INSERT`s at the same concurrency, in one run.
//!
//! `cargo bench -p herald-sql --bench postgres` prints a Markdown table. The server comes from
//! `HERALD_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`); each figure uses a
//! fresh schema (`herald_bench_…`, dropped at the end). The raw baseline inserts the same rows
//! into a plain table with a `bigserial`, which is exactly what skips readers under concurrency:
//! the ratio is the price of a global log that never skips (docs/adr/0003-postgres-global-log.md).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use herald::{ExpectedVersion, Message, NewEvent, Publisher, StartFrom, Store, SubscribeOptions, Subscriber};
use herald_sql::{PostgresConfig, PostgresDatabase};

/// Transactions per append figure, shared by the tasks.
const TRANSACTIONS: usize = 4000;
const BROKER_MESSAGES: usize = 10_000;

struct Row {
    what: String,
    rate: f64,
    unit: &'static str,
    baseline: Option<f64>,
    extra: String,
}

fn url() -> String {
    std::env::var("HERALD_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn fresh() -> anyhow::Result<PostgresDatabase> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let schema = format!("herald_bench_{secs}_{}", uuid::Uuid::now_v7().simple());
    Ok(PostgresConfig::new(url()).with_schema(schema).open().await?)
}

async fn drop_schema(db: PostgresDatabase) -> anyhow::Result<()> {
    let drop = format!("DROP SCHEMA \"{}\" CASCADE", db.schema());
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(db.pool()).await?;
    db.close().await;
    Ok(())
}

/// Raw inserts of `per_tx` rows per transaction into a plain table with a `bigserial`, from
/// `tasks` concurrent tasks: the baseline.
async fn raw_inserts(db: &PostgresDatabase, tasks: usize, per_tx: usize) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE raw_events (position BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, version BIGINT NOT NULL, \
         name TEXT NOT NULL, payload BYTEA NOT NULL, metadata TEXT NOT NULL)",
    )
    .execute(db.pool())
    .await?;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let pool = db.pool().clone();
        set.spawn(async move {
            let payload = vec![b'x'; 200];
            for t in 0..TRANSACTIONS / tasks {
                let mut tx = pool.begin().await?;
                for v in 0..per_tx {
                    sqlx::query(
                        "INSERT INTO raw_events (stream, version, name, payload, metadata) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(format!("s-{task}-{t}"))
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
    Ok((TRANSACTIONS / tasks * tasks * per_tx) as f64 / start.elapsed().as_secs_f64())
}

/// Herald appends of `per_tx` events per transaction, each to a new stream with `NoStream`,
/// from `tasks` concurrent tasks.
async fn herald_appends(db: &PostgresDatabase, tasks: usize, per_tx: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let store = db.store();
        set.spawn(async move {
            let payload = vec![b'x'; 200];
            for t in 0..TRANSACTIONS / tasks {
                let events = (0..per_tx).map(|_| NewEvent::new("bench.Event.v1", payload.clone())).collect();
                store.append(&format!("s-{task}-{t}"), ExpectedVersion::NoStream, events).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok((TRANSACTIONS / tasks * tasks * per_tx) as f64 / start.elapsed().as_secs_f64())
}

/// Publishes `BROKER_MESSAGES` (batches of 100) while a subscription acks them; throughput from
/// the first publish to the last ack, latency from publish to ack.
async fn broker_publish_ack(db: &PostgresDatabase) -> anyhow::Result<(f64, Histogram<u64>)> {
    let broker = db.broker();
    let mut sub = broker
        .subscribe(SubscribeOptions::new("bench", "bench").start(StartFrom::Beginning).max_in_flight(256))
        .await?;
    let epoch = Instant::now();
    let publisher = broker.clone();
    let producer = tokio::spawn(async move {
        for chunk in 0..BROKER_MESSAGES / 100 {
            let batch: Vec<Message> = (0..100)
                .map(|i| {
                    let sent = epoch.elapsed().as_micros().to_string();
                    Message::new("bench", "bench.Event.v1", sent.into_bytes())
                        .with_key(format!("k{}", (chunk * 100 + i) % 64))
                })
                .collect();
            publisher.publish(&batch).await?;
        }
        anyhow::Ok(())
    });
    let mut latency = Histogram::<u64>::new(3)?;
    for _ in 0..BROKER_MESSAGES {
        let d =
            tokio::time::timeout(Duration::from_secs(60), sub.next()).await?.ok_or_else(|| anyhow::anyhow!("ended"))?;
        let sent: u64 = String::from_utf8_lossy(&d.message.payload).parse()?;
        d.ack().await?;
        latency.record((epoch.elapsed().as_micros() as u64).saturating_sub(sent))?;
    }
    let elapsed = epoch.elapsed();
    producer.await??;
    Publisher::close(&broker).await?;
    Ok((BROKER_MESSAGES as f64 / elapsed.as_secs_f64(), latency))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (tasks, per_tx) in [(1, 1), (8, 1), (8, 10)] {
        let raw_db = fresh().await?;
        let raw = raw_inserts(&raw_db, tasks, per_tx).await?;
        drop_schema(raw_db).await?;
        let herald_db = fresh().await?;
        let herald = herald_appends(&herald_db, tasks, per_tx).await?;
        drop_schema(herald_db).await?;
        rows.push(Row {
            what: format!("event store append, {per_tx} event(s)/transaction, {tasks} task(s)"),
            rate: herald,
            unit: "events/s",
            baseline: Some(raw),
            extra: format!("{TRANSACTIONS} transactions"),
        });
    }
    let db = fresh().await?;
    let (rate, lat) = broker_publish_ack(&db).await?;
    drop_schema(db).await?;
    rows.push(Row {
        what: "SQL broker publish → consume → ack".into(),
        rate,
        unit: "msgs/s",
        baseline: None,
        extra: format!(
            "{BROKER_MESSAGES} msgs, 64 keys, 256 in flight; latency p50 {:.1} ms, p99 {:.1} ms",
            lat.value_at_quantile(0.5) as f64 / 1000.0,
            lat.value_at_quantile(0.99) as f64 / 1000.0
        ),
    });

    println!("| benchmark | Herald | raw INSERT, same concurrency (same run) | ratio | notes |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        let (base, ratio) = match r.baseline {
            Some(b) => (format!("{b:.0} rows/s"), format!("{:.2}×", r.rate / b)),
            None => ("—".into(), "—".into()),
        };
        println!("| {} | {:.0} {} | {} | {} | {} |", r.what, r.rate, r.unit, base, ratio, r.extra);
    }
    Ok(())
}
