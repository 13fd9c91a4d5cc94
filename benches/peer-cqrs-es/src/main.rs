//! Herald's command path beside cqrs-es + postgres-es, the most used Rust event-sourcing crate,
//! on the same PostgreSQL, in the same run, in interleaved rounds (cqrs-es, Herald, cqrs-es,
//! Herald…; the runner is `herald_bench::compare`).
//!
//! ```sh
//! cargo run --release --manifest-path benches/peer-cqrs-es/Cargo.toml -- \
//!     --writers 1,8 --commands-per-aggregate 10 --rounds 3
//! ```
//!
//! This crate is outside the workspace (its own `[workspace]`), so CI never compiles the peer
//! and its sqlx 0.8 (the workspace is on 0.9). It builds into `benches/peer-cqrs-es/target/`.
//!
//! # What is measured
//!
//! One aggregate, [`Counter`], implements both libraries' `Aggregate` traits through the same two
//! functions ([`Counter::decide`], [`Counter::evolve`]); its one command, `Increment`, records one
//! `Incremented` event whose JSON is about [`EVENT_BYTES`] bytes. `W` writers run at once, each on
//! aggregates of its own (so there are no conflicts), sending `K` commands to an aggregate in
//! sequence before moving to the next one, `N` commands per round in all. A command is timed
//! from the call to its return; the rate counts from the first command to the last writer's end.
//!
//! Neither side caches anything between commands: every command loads the aggregate from its
//! events, decides, appends and commits.
//!
//! * *cqrs-es*: `CqrsFramework::execute` over `postgres_es::postgres_cqrs` (the event store as
//!   source of truth, no snapshots, no queries): one autocommit `SELECT` of the aggregate's
//!   events, then `BEGIN`, one `INSERT` per event, `COMMIT`. The `(type, id, sequence)` primary
//!   key is the optimistic lock.
//! * *Herald*: `Repository::execute` over `herald_sql::PostgresStore` (no snapshots): `BEGIN`
//!   (READ COMMITTED), the snapshot `SELECT`, the events `SELECT`, the global log's advisory lock,
//!   the stream-version check, the `INSERT`, `pg_notify`, `COMMIT`, all in one transaction.
//!
//! Both sides use a pool of [`Args::pool`] connections (default 10, postgres-es's own default),
//! in a fresh schema per round (connections' `search_path`), dropped after the round. Herald's
//! `LISTEN` task is off (`listen = false`) so that no pooled connection is taken by it. Before
//! the clock starts each writer sends one command to an aggregate outside the measured set on
//! both sides, so pools are warm and statements prepared alike.

#![forbid(unsafe_code)]

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{AggregateError, DomainEvent};
use hdrhistogram::Histogram;
use herald::aggregate::Repository;
use herald_bench::{Comparison, Sample, Table, compare, histogram, per_sec};
use herald_sql::{PostgresConfig, PostgresDatabase, PostgresStore};
use postgres_es::PostgresCqrs;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The JSON size of one `Incremented` event, as both libraries store it (payload only): exact
/// for `by: 1, total: 10`, 255–257 bytes over a round's values.
const EVENT_BYTES: usize = 256;

/// postgres-es's tables, as its documented schema (`db/init.sql` of postgres-es 0.5) creates
/// them; created in the round's schema.
const POSTGRES_ES_SCHEMA: &str = "
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
";

/// Herald's command path vs cqrs-es + postgres-es, interleaved rounds.
#[derive(Debug, Parser)]
struct Args {
    /// Concurrent writers, one figure per value (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    writers: Vec<usize>,
    /// Commands sent to one aggregate, in sequence, before the writer moves to its next one.
    #[arg(long, default_value_t = 10)]
    commands_per_aggregate: usize,
    /// Commands per round, shared by the writers (rounded down to whole aggregates per writer).
    #[arg(long, default_value_t = 2000)]
    commands: usize,
    /// Rounds per writer count; each round runs cqrs-es then Herald.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections in each side's pool.
    #[arg(long, default_value_t = 10)]
    pool: u32,
    /// The PostgreSQL server and database.
    #[arg(long, env = "HERALD_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    url: String,
}

// ---- The aggregate, once for both libraries ----

/// Counts increments; the note makes each event [`EVENT_BYTES`] of JSON.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    total: u64,
    increments: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CounterCommand {
    Increment { by: u64, note: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Incremented {
    by: u64,
    /// The total after this increment, as decided.
    total: u64,
    note: String,
}

#[derive(Debug, PartialEq, Eq)]
enum CounterError {
    ZeroIncrement,
}

impl std::fmt::Display for CounterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ZeroIncrement => f.write_str("an increment must be positive"),
        }
    }
}

impl std::error::Error for CounterError {}

impl Counter {
    /// The domain rule, shared by both `handle`s.
    fn decide(&self, command: CounterCommand) -> Result<Vec<Incremented>, CounterError> {
        match command {
            CounterCommand::Increment { by: 0, .. } => Err(CounterError::ZeroIncrement),
            CounterCommand::Increment { by, note } => Ok(vec![Incremented { by, total: self.total + by, note }]),
        }
    }

    /// The state change, shared by both `apply`s.
    fn evolve(&mut self, event: &Incremented) {
        self.total = event.total;
        self.increments += 1;
    }
}

impl herald::Event for Incremented {
    const NAME: &'static str = "counter.Incremented.v1";
}

impl herald::aggregate::Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = Incremented;
    type Error = CounterError;

    fn handle(&self, command: CounterCommand) -> Result<Vec<Incremented>, CounterError> {
        self.decide(command)
    }

    fn apply(&mut self, event: &Incremented) {
        self.evolve(event);
    }
}

impl DomainEvent for Incremented {
    fn event_type(&self) -> String {
        "Incremented".to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl cqrs_es::Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = Incremented;
    type Error = CounterError;
    type Services = ();

    async fn handle(&mut self, command: CounterCommand, _: &(), sink: &EventSink<Self>) -> Result<(), CounterError> {
        // cqrs-es's sink applies each event as it is written.
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Incremented) {
        self.evolve(&event);
    }
}

/// A note that makes the JSON of an `Incremented { by: 1, total, .. }` with a 2-digit total (the rounds' usual size)
/// [`EVENT_BYTES`] long.
fn note() -> String {
    let probe = Incremented { by: 1, total: 10, note: String::new() };
    let empty = serde_json::to_vec(&probe).map_or(0, |v| v.len());
    "n".repeat(EVENT_BYTES.saturating_sub(empty))
}

// ---- One round ----

/// Who executes a command: each side's handle, cheap to clone into the writers.
#[derive(Clone)]
enum Side {
    CqrsEs(Arc<PostgresCqrs<Counter>>),
    Herald(PostgresStore, Repository<Counter>),
}

impl Side {
    async fn execute(&self, id: &str, command: CounterCommand) -> anyhow::Result<()> {
        match self {
            Self::CqrsEs(cqrs) => cqrs.execute(id, command).await.map_err(|e: AggregateError<_>| anyhow::anyhow!(e)),
            Self::Herald(store, repository) => {
                repository.execute(store, id, command).await.map(drop).map_err(Into::into)
            }
        }
    }
}

/// The shape of a round.
#[derive(Clone, Copy, Debug)]
struct Load {
    writers: usize,
    aggregates_per_writer: usize,
    commands_per_aggregate: usize,
}

impl Load {
    fn commands(&self) -> usize {
        self.writers * self.aggregates_per_writer * self.commands_per_aggregate
    }
}

/// Runs `load` through `side`: one warm-up command per writer, then the timed commands.
async fn drive(side: Side, load: Load) -> anyhow::Result<Sample> {
    let note = note();
    let command = |by| CounterCommand::Increment { by, note: note.clone() };
    let warm = (0..load.writers).map(|w| {
        let side = side.clone();
        let command = command(1);
        async move { side.execute(&format!("warm-{w}"), command).await }
    });
    futures_join(warm).await.context("warm-up")?;

    let start = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..load.writers {
        let side = side.clone();
        let note = note.clone();
        writers.spawn(async move {
            let mut latency = histogram()?;
            for a in 0..load.aggregates_per_writer {
                let id = format!("w{w}-a{a}");
                for k in 0..load.commands_per_aggregate {
                    let command = CounterCommand::Increment { by: k as u64 + 1, note: note.clone() };
                    let t = Instant::now();
                    side.execute(&id, command).await.with_context(|| format!("{id}, command {k}"))?;
                    latency.saturating_record(micros(t.elapsed()).max(1));
                }
            }
            anyhow::Ok(latency)
        });
    }
    let mut latency = histogram()?;
    while let Some(done) = writers.join_next().await {
        latency.add(&done.context("a writer panicked")??)?;
    }
    Ok(Sample { rate: per_sec(load.commands(), start.elapsed()), latency, publishing: None })
}

/// Waits for all of `futures`, failing with the first error.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    while let Some(done) = set.join_next().await {
        done.context("a task panicked")??;
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Server-side setup and teardown: one small pool on the database's default `search_path`.
struct Admin {
    pool: PgPool,
    url: String,
    run: String,
}

impl Admin {
    fn schema(&self, side: &str, writers: usize, round: usize) -> String {
        format!("peer_{side}_{}_w{writers}_r{round}", self.run)
    }

    async fn drop_schema(&self, schema: &str) -> anyhow::Result<()> {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&self.pool).await?;
        Ok(())
    }

    /// A cqrs-es round in a fresh schema holding postgres-es's tables.
    async fn cqrs_es_round(&self, pool_size: u32, load: Load, round: usize) -> anyhow::Result<Sample> {
        let schema = self.schema("cqrs", load.writers, round);
        sqlx::query(&format!("CREATE SCHEMA \"{schema}\"")).execute(&self.pool).await?;
        let sample = async {
            let options = PgConnectOptions::from_str(&self.url)?.options([("search_path", schema.as_str())]);
            let pool = PgPoolOptions::new().max_connections(pool_size).connect_with(options).await?;
            sqlx::raw_sql(POSTGRES_ES_SCHEMA).execute(&pool).await?;
            let cqrs = postgres_es::postgres_cqrs(pool.clone(), Vec::new(), ());
            let sample = drive(Side::CqrsEs(Arc::new(cqrs)), load).await;
            pool.close().await;
            sample
        }
        .await;
        self.drop_schema(&schema).await?;
        sample
    }

    /// A Herald round in a fresh schema, created and migrated by `open`.
    async fn herald_round(&self, pool_size: u32, load: Load, round: usize) -> anyhow::Result<Sample> {
        let schema = self.schema("herald", load.writers, round);
        let mut config = PostgresConfig::new(self.url.as_str()).with_schema(schema.as_str());
        config.max_connections = pool_size;
        config.listen = false;
        let sample = async {
            let db: PostgresDatabase = config.open().await?;
            let sample = drive(Side::Herald(db.store(), Repository::new()), load).await;
            db.close().await;
            sample
        }
        .await;
        self.drop_schema(&schema).await?;
        sample
    }
}

fn uptime() -> String {
    std::process::Command::new("uptime")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("(uptime failed: {e})"))
}

fn row(table: &mut Table, load: Load, pool: u32, c: &Comparison) {
    let lat = |h: Option<Histogram<u64>>| h.map_or_else(|| "—".to_owned(), |h| herald_bench::p50_p99(&h));
    table.row([
        format!("command (load + decide + append + commit), {} writer(s)", load.writers),
        herald_bench::rate(c.herald_rate(), "commands/s"),
        herald_bench::rate(c.raw_rate(), "commands/s"),
        c.ratio_text(),
        lat(c.herald_latency()),
        lat(c.raw_latency()),
        format!(
            "{} commands per round, {} per aggregate, {} aggregates per writer, 1 event of ~{EVENT_BYTES} B per command; pool {pool}; {} rounds",
            load.commands(),
            load.commands_per_aggregate,
            load.aggregates_per_writer,
            c.raw.len()
        ),
    ]);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.commands_per_aggregate > 0 && args.rounds > 0 && args.pool > 0, "sizes must be positive");
    let addr = herald_bench::host_port(&args.url, 5432);
    if !herald_bench::reachable(&addr) {
        eprintln!("nothing listens at {addr} (HERALD_POSTGRES_URL / --url); skipping");
        return Ok(());
    }
    let admin = Admin {
        pool: PgPoolOptions::new().max_connections(1).connect(&args.url).await.context("connecting")?,
        url: args.url.clone(),
        run: herald_bench::run_id(),
    };
    let started = uptime();
    eprintln!("start: {started}");
    eprintln!("(in the round lines below, \"raw\" is cqrs-es + postgres-es)");

    let mut table = Table::new([
        "benchmark",
        "Herald",
        "cqrs-es + postgres-es (same run)",
        "ratio (median, range)",
        "Herald p50 / p99",
        "cqrs-es p50 / p99",
        "notes",
    ]);
    for &writers in &args.writers {
        anyhow::ensure!(writers > 0, "--writers: at least 1");
        let per_writer = args.commands / writers;
        let load = Load {
            writers,
            aggregates_per_writer: (per_writer / args.commands_per_aggregate).max(1),
            commands_per_aggregate: args.commands_per_aggregate,
        };
        eprintln!("{writers} writer(s), {} commands per round:", load.commands());
        let admin = &admin;
        let c = compare(
            args.rounds,
            |round| admin.cqrs_es_round(args.pool, load, round),
            |round| admin.herald_round(args.pool, load, round),
        )
        .await?;
        row(&mut table, load, args.pool, &c);
    }
    let ended = uptime();
    eprintln!("end: {ended}");
    admin.pool.close().await;

    table.print();
    println!("load at start: {started}");
    println!("load at end:   {ended}");
    Ok(())
}
