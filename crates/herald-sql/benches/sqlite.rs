//! SQLite benchmarks: Herald's event store and SQL broker beside raw SQLite inserts, in one run.
//!
//! `cargo bench -p herald-sql --bench sqlite` prints a Markdown table (copied into BENCHMARKS.md).
//! Every figure uses a fresh database file with the same settings Herald uses (WAL,
//! synchronous=NORMAL), so the ratio to the raw insert is the cost of Herald itself.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use herald::{ExpectedVersion, Message, NewEvent, Publisher, StartFrom, Store, SubscribeOptions, Subscriber};
use herald_sql::SqliteDatabase;

const TRANSACTIONS: usize = 2000;
const BROKER_MESSAGES: usize = 10_000;

struct Row {
    what: String,
    rate: f64,
    unit: &'static str,
    baseline: Option<f64>,
    extra: String,
}

async fn fresh(dir: &tempfile::TempDir, name: &str) -> anyhow::Result<SqliteDatabase> {
    Ok(SqliteDatabase::open(&dir.path().join(name).display().to_string()).await?)
}

/// Raw sqlx inserts of `per_tx` rows per transaction into a plain table: the baseline.
async fn raw_inserts(db: &SqliteDatabase, per_tx: usize) -> anyhow::Result<f64> {
    sqlx::query("CREATE TABLE raw_events (stream TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, payload BLOB NOT NULL, metadata TEXT NOT NULL)")
        .execute(db.pool())
        .await?;
    let payload = vec![b'x'; 200];
    let start = Instant::now();
    for t in 0..TRANSACTIONS {
        let mut tx = db.pool().begin().await?;
        for v in 0..per_tx {
            sqlx::query("INSERT INTO raw_events (stream, version, name, payload, metadata) VALUES (?, ?, ?, ?, ?)")
                .bind(format!("s-{t}"))
                .bind(v as i64 + 1)
                .bind("bench.Event.v1")
                .bind(&payload)
                .bind("{}")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    Ok((TRANSACTIONS * per_tx) as f64 / start.elapsed().as_secs_f64())
}

/// Herald appends of `per_tx` events per transaction, each to a new stream with `NoStream`.
async fn herald_appends(db: &SqliteDatabase, per_tx: usize) -> anyhow::Result<f64> {
    let store = db.store();
    let payload = vec![b'x'; 200];
    let start = Instant::now();
    for t in 0..TRANSACTIONS {
        let events = (0..per_tx).map(|_| NewEvent::new("bench.Event.v1", payload.clone())).collect();
        store.append(&format!("s-{t}"), ExpectedVersion::NoStream, events).await?;
    }
    Ok((TRANSACTIONS * per_tx) as f64 / start.elapsed().as_secs_f64())
}

/// Publishes `BROKER_MESSAGES` (batches of 100) while a subscription acks them; throughput from
/// the first publish to the last ack, latency from publish to ack.
async fn broker_publish_ack(db: &SqliteDatabase) -> anyhow::Result<(f64, Histogram<u64>)> {
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
    Ok((BROKER_MESSAGES as f64 / elapsed.as_secs_f64(), latency))
}

/// Latency at a steady 1,000 msgs/s (batches of 10 every 10 ms): publish to ack, not queueing
/// behind a burst.
async fn broker_paced_latency(db: &SqliteDatabase) -> anyhow::Result<Histogram<u64>> {
    const PACED: usize = 3000;
    let broker = db.broker();
    let mut sub = broker.subscribe(SubscribeOptions::new("paced", "bench").start(StartFrom::Beginning)).await?;
    let epoch = Instant::now();
    let publisher = broker.clone();
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for chunk in 0..PACED / 10 {
            tick.tick().await;
            let batch: Vec<Message> = (0..10)
                .map(|i| {
                    let sent = epoch.elapsed().as_micros().to_string();
                    Message::new("paced", "bench.Event.v1", sent.into_bytes())
                        .with_key(format!("k{}", (chunk * 10 + i) % 64))
                })
                .collect();
            publisher.publish(&batch).await?;
        }
        anyhow::Ok(())
    });
    let mut latency = Histogram::<u64>::new(3)?;
    for _ in 0..PACED {
        let d =
            tokio::time::timeout(Duration::from_secs(60), sub.next()).await?.ok_or_else(|| anyhow::anyhow!("ended"))?;
        let sent: u64 = String::from_utf8_lossy(&d.message.payload).parse()?;
        d.ack().await?;
        latency.record((epoch.elapsed().as_micros() as u64).saturating_sub(sent))?;
    }
    producer.await??;
    Ok(latency)
}

/// The same work with raw SQL: insert in batches of 100, then fetch up to 256 at a time and
/// delete each one (the "ack") in its own statement.
async fn raw_queue(db: &SqliteDatabase) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE raw_queue (position INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, payload BLOB NOT NULL)",
    )
    .execute(db.pool())
    .await?;
    let start = Instant::now();
    for chunk in 0..BROKER_MESSAGES / 100 {
        let mut tx = db.pool().begin().await?;
        for i in 0..100 {
            sqlx::query("INSERT INTO raw_queue (key, payload) VALUES (?, ?)")
                .bind(format!("k{}", (chunk * 100 + i) % 64))
                .bind(b"0123456789".as_slice())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    let mut acked = 0;
    while acked < BROKER_MESSAGES {
        let batch: Vec<(i64,)> =
            sqlx::query_as("SELECT position FROM raw_queue ORDER BY position LIMIT 256").fetch_all(db.pool()).await?;
        for (position,) in batch {
            sqlx::query("DELETE FROM raw_queue WHERE position = ?").bind(position).execute(db.pool()).await?;
            acked += 1;
        }
    }
    Ok(BROKER_MESSAGES as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for per_tx in [1, 10] {
        let raw = raw_inserts(&fresh(&dir, &format!("raw{per_tx}.db")).await?, per_tx).await?;
        let herald = herald_appends(&fresh(&dir, &format!("herald{per_tx}.db")).await?, per_tx).await?;
        rows.push(Row {
            what: format!("event store append, {per_tx} event(s)/transaction"),
            rate: herald,
            unit: "events/s",
            baseline: Some(raw),
            extra: format!("{TRANSACTIONS} transactions"),
        });
    }
    let raw_queue = raw_queue(&fresh(&dir, "rawqueue.db").await?).await?;
    let (rate, lat) = broker_publish_ack(&fresh(&dir, "broker.db").await?).await?;
    rows.push(Row {
        what: "SQL broker publish → consume → ack".into(),
        rate,
        unit: "msgs/s",
        baseline: Some(raw_queue),
        extra: format!(
            "{BROKER_MESSAGES} msgs, 64 keys, 256 in flight; latency p50 {:.1} ms, p99 {:.1} ms",
            lat.value_at_quantile(0.5) as f64 / 1000.0,
            lat.value_at_quantile(0.99) as f64 / 1000.0
        ),
    });

    let paced = broker_paced_latency(&fresh(&dir, "paced.db").await?).await?;
    rows.push(Row {
        what: "SQL broker latency at a steady 1,000 msgs/s".into(),
        rate: 1000.0,
        unit: "msgs/s offered",
        baseline: None,
        extra: format!(
            "publish → ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            paced.value_at_quantile(0.5) as f64 / 1000.0,
            paced.value_at_quantile(0.99) as f64 / 1000.0,
            paced.max() as f64 / 1000.0
        ),
    });

    println!("| benchmark | Herald | raw SQLite, same work (same run) | ratio | notes |");
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
