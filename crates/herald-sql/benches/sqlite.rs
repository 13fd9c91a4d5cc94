//! SQLite benchmarks: Herald's event store and SQL broker beside raw SQLite doing the same
//! work, in the same run, in interleaved rounds (loops from `herald-bench`).
//!
//! ```sh
//! cargo bench -p herald-sql --bench sqlite            # defaults: 10,000 broker msgs, 3 rounds
//! HERALD_BENCH_MESSAGES=20000 HERALD_BENCH_ROUNDS=5 cargo bench -p herald-sql --bench sqlite
//! ```
//!
//! Sizes: `HERALD_BENCH_MESSAGES` (or the first numeric argument; broker messages),
//! `HERALD_BENCH_ROUNDS`, `HERALD_BENCH_TRANSACTIONS` (appends per figure, default 2,000).
//!
//! Every figure uses a fresh database file with the settings Herald uses (WAL,
//! synchronous=NORMAL) for both sides, so the ratio to raw SQLite is the cost of Herald itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald::{ExpectedVersion, NewEvent, Store};
use herald_bench::{Burst, Consume, Outgoing, Pace, Queue, Sample, Seen, Table, Work, compare};
use herald_sql::SqliteDatabase;
use herald_sql::rusqlite::{Connection, params};

const IN_FLIGHT: usize = 256;

async fn fresh(dir: &tempfile::TempDir, name: &str) -> anyhow::Result<SqliteDatabase> {
    Ok(SqliteDatabase::open(&dir.path().join(name).display().to_string()).await?)
}

/// A raw SQLite connection (rusqlite, the client Herald itself uses) on the same file, with
/// the same settings.
fn raw_connection(db: &SqliteDatabase) -> anyhow::Result<Connection> {
    let conn = Connection::open(db.path())?;
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 30000;")?;
    Ok(conn)
}

/// Raw inserts of `per_tx` rows per transaction into a plain table: the baseline.
async fn raw_inserts(db: &SqliteDatabase, transactions: usize, per_tx: usize) -> anyhow::Result<Sample> {
    let conn = raw_connection(db)?;
    conn.execute_batch("CREATE TABLE raw_events (stream TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, payload BLOB NOT NULL, metadata TEXT NOT NULL)")?;
    let payload = vec![b'x'; 200];
    let start = Instant::now();
    for t in 0..transactions {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for v in 0..per_tx {
            conn.prepare_cached(
                "INSERT INTO raw_events (stream, version, name, payload, metadata) VALUES (?, ?, ?, ?, ?)",
            )?
            .execute(params![format!("s-{t}"), v as i64 + 1, "bench.Event.v1", payload, "{}"])?;
        }
        conn.execute_batch("COMMIT")?;
        // Let the runtime's other tasks run, as an async client would between transactions.
        tokio::task::yield_now().await;
    }
    Sample::rate(herald_bench::per_sec(transactions * per_tx, start.elapsed()))
}

/// Herald appends of `per_tx` events per transaction, each to a new stream with `NoStream`.
async fn herald_appends(db: &SqliteDatabase, transactions: usize, per_tx: usize) -> anyhow::Result<Sample> {
    let store = db.store();
    let payload = vec![b'x'; 200];
    let start = Instant::now();
    for t in 0..transactions {
        let events = (0..per_tx).map(|_| NewEvent::new("bench.Event.v1", payload.clone())).collect();
        store.append(&format!("s-{t}"), ExpectedVersion::NoStream, events).await?;
    }
    Sample::rate(herald_bench::per_sec(transactions * per_tx, start.elapsed()))
}

/// The raw queue: a batch is one transaction of `INSERT`s.
struct RawQueue {
    conn: Mutex<Connection>,
}

#[async_trait]
impl Queue for RawQueue {
    async fn publish(&self, batch: Vec<Outgoing>) -> anyhow::Result<()> {
        {
            let conn = self.conn.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            conn.execute_batch("BEGIN IMMEDIATE")?;
            for o in batch {
                conn.prepare_cached("INSERT INTO raw_queue (key, payload) VALUES (?, ?)")?
                    .execute(params![o.key, o.payload])?;
            }
            conn.execute_batch("COMMIT")?;
        }
        tokio::task::yield_now().await;
        Ok(())
    }
}

/// The raw consumer: `SELECT … ORDER BY position LIMIT 256` (polled every millisecond while
/// empty), then one autocommit `DELETE` per message (the "ack").
struct RawConsumer {
    conn: Connection,
}

#[async_trait]
impl Consume for RawConsumer {
    async fn next(&mut self, seen: &mut Seen<'_>) -> anyhow::Result<usize> {
        loop {
            let batch: Vec<(i64, Vec<u8>)> = self
                .conn
                .prepare_cached("SELECT position, payload FROM raw_queue ORDER BY position LIMIT ?")?
                .query_map([IN_FLIGHT as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            for (_, payload) in &batch {
                seen(payload);
            }
            for (position, _) in &batch {
                self.conn.prepare_cached("DELETE FROM raw_queue WHERE position = ?")?.execute([position])?;
            }
            return Ok(batch.len());
        }
    }
}

async fn raw_queue(db: SqliteDatabase, burst: Burst) -> anyhow::Result<Sample> {
    let conn = raw_connection(&db)?;
    conn.execute_batch(
        "CREATE TABLE raw_queue (position INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, payload BLOB NOT NULL)",
    )?;
    let mut consumer = RawConsumer { conn: raw_connection(&db)? };
    herald_bench::throughput(Arc::new(RawQueue { conn: Mutex::new(conn) }), &mut consumer, burst).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let messages = herald_bench::size("HERALD_BENCH_MESSAGES", 10_000);
    let rounds = herald_bench::setting("HERALD_BENCH_ROUNDS", 3);
    let transactions = herald_bench::setting("HERALD_BENCH_TRANSACTIONS", 2000);
    let dir = tempfile::tempdir()?;
    let dir = &dir;
    let mut table = Table::new(herald_bench::compared_header("raw SQLite, same work"));

    for per_tx in [1, 10] {
        eprintln!("append, {per_tx}/transaction:");
        let c =
            compare(
                rounds,
                |r| async move {
                    raw_inserts(&fresh(dir, &format!("raw{per_tx}-{r}.db")).await?, transactions, per_tx).await
                },
                |r| async move {
                    herald_appends(&fresh(dir, &format!("herald{per_tx}-{r}.db")).await?, transactions, per_tx).await
                },
            )
            .await?;
        table.compared(
            &format!("event store append, {per_tx} event(s)/transaction"),
            "events/s",
            &c,
            &format!("{transactions} transactions, each to a new stream with `NoStream`; {rounds} rounds"),
        );
    }

    let burst = Burst { messages, batch: 100, keys: 64, payload: 100 };
    eprintln!("broker burst:");
    let c = compare(
        rounds,
        |r| async move { raw_queue(fresh(dir, &format!("rawqueue-{r}.db")).await?, burst).await },
        |r| async move {
            herald_bench::herald_round(
                fresh(dir, &format!("broker-{r}.db")).await?.broker(),
                "bench",
                IN_FLIGHT,
                Work::Burst(burst),
            )
            .await
        },
    )
    .await?;
    table.compared(
        "SQL broker publish → consume → ack",
        "msgs/s",
        &c,
        &format!("{messages} msgs in publish batches of 100, 64 keys, {IN_FLIGHT} in flight; latency is queueing behind the burst"),
    );

    eprintln!("broker paced:");
    let pace = Pace { rate: 1000, per_tick: 10, messages: (messages * 3 / 10).max(500), keys: 64, payload: 100 };
    let paced =
        herald_bench::herald_round(fresh(dir, "paced.db").await?.broker(), "bench", IN_FLIGHT, Work::Pace(pace))
            .await?;
    table.row([
        "SQL broker at a steady 1,000 msgs/s".to_owned(),
        format!("{:.0} msgs/s", paced.rate),
        "—".to_owned(),
        "—".to_owned(),
        herald_bench::p50_p99(&paced.latency),
        "—".to_owned(),
        format!(
            "{} msgs in batches of 10 every 10 ms; publish → delivery, max {} ms",
            pace.messages,
            herald_bench::ms(paced.latency.max())
        ),
    ]);
    table.print();
    Ok(())
}
