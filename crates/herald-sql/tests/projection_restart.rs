//! The projection acceptance test: 100,000 events, a projection whose read model is its own
//! table (count and sum per stream), its runner killed with SIGKILL midway, restarted, run to the
//! end; then a from-scratch rebuild into a second table must be equal, with progress reported.
//!
//! The parent appends the events, starts a child process (this test binary re-run on the ignored
//! `projection_child_runner` test) that runs the projection, kills it with SIGKILL once a good
//! part of the log is projected, and checks that the read model matches its checkpoint exactly
//! (the checkpoint commits in the read model's transaction). It then restarts the projection in
//! process, checks it resumed at the checkpoint (no event handled twice), and rebuilds.
//!
//! On SQLite (a temporary file) always; on PostgreSQL in a fresh schema when the server at
//! `HERALD_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) is reachable (a loud
//! skip otherwise, a failure when `CI` is set).

use std::collections::BTreeMap;
#[cfg(feature = "sqlite")]
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald::projection::{Progress, Projection, ProjectionError, ProjectionRunner, RunnerConfig, downcast_tx};
use herald::store::{RecordedEvent, StreamAppend};
use herald::{Event, ExpectedVersion, NewEvent, Registry, Store, Transaction};
use herald_sql::{PostgresConfig, PostgresDatabase, PostgresTransaction};
#[cfg(feature = "sqlite")]
use herald_sql::{SqliteDatabase, SqliteTransaction};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

const CHILD_ENV: &str = "HERALD_PROJECTION_CHILD";
const EVENTS: u64 = 100_000;
const STREAMS: u64 = 1_000;
/// Events per appending transaction.
const APPEND_CHUNK: u64 = 10_000;
/// The runner's batch: events per read-model transaction.
const BATCH: usize = 500;
const PROJECTION: &str = "stream-totals";
const REBUILT: &str = "stream-totals-rebuilt";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}
impl Event for Deposited {
    const NAME: &'static str = "bank.Deposited.v1";
}

/// Where the events and read models live; passed to the child in [`CHILD_ENV`].
#[derive(Clone, Debug)]
enum Target {
    #[cfg(feature = "sqlite")]
    Sqlite(PathBuf),
    Postgres {
        url: String,
        schema: String,
    },
}

impl Target {
    fn to_env(&self) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(path) => format!("sqlite|{}", path.display()),
            Self::Postgres { url, schema } => format!("postgres|{url}|{schema}"),
        }
    }

    fn from_env(text: &str) -> Self {
        let parts: Vec<&str> = text.split('|').collect();
        match parts.as_slice() {
            #[cfg(feature = "sqlite")]
            ["sqlite", path] => Self::Sqlite(PathBuf::from(path)),
            ["postgres", url, schema] => Self::Postgres { url: (*url).to_owned(), schema: (*schema).to_owned() },
            _ => panic!("bad {CHILD_ENV}: {text}"),
        }
    }

    async fn open(&self) -> Db {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(path) => {
                Db::Sqlite(SqliteDatabase::open(path.to_str().expect("utf-8 path")).await.expect("open"))
            }
            Self::Postgres { url, schema } => {
                Db::Postgres(PostgresConfig::new(url.clone()).with_schema(schema.clone()).open().await.expect("open"))
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Db {
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteDatabase),
    Postgres(PostgresDatabase),
}

/// `(stream, count, sum)` rows of a read model, by stream.
type Totals = BTreeMap<String, (i64, i64)>;

impl Db {
    fn store(&self) -> Arc<dyn Store> {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(db) => Arc::new(db.store()),
            Self::Postgres(db) => Arc::new(db.store()),
        }
    }

    async fn create_tables(&self) {
        for table in [Table::A, Table::B] {
            match self {
                #[cfg(feature = "sqlite")]
                Self::Sqlite(db) => {
                    db.read(|c| c.execute_batch(table.create())).expect("create table");
                }
                Self::Postgres(db) => {
                    sqlx::query(table.create()).execute(db.pool()).await.expect("create table");
                }
            }
        }
    }

    async fn totals(&self, table: Table) -> Totals {
        let rows: Vec<(String, i64, i64)> = match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(db) => herald_sql::any::query(table.select()).fetch_all(db).await,
            Self::Postgres(db) => herald_sql::any::query(table.select()).fetch_all(db).await,
        }
        .expect("read the read model");
        rows.into_iter().map(|(s, c, t)| (s, (c, t))).collect()
    }

    async fn close(&self) {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(db) => db.close().await,
            Self::Postgres(db) => db.close().await,
        }
    }
}

/// The two read-model tables. (SQL text must be `'static` for sqlx, hence one constant each.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    A,
    B,
}

impl Table {
    fn create(self) -> &'static str {
        match self {
            Self::A => {
                "CREATE TABLE IF NOT EXISTS totals_a (stream TEXT PRIMARY KEY, n BIGINT NOT NULL, total BIGINT NOT NULL)"
            }
            Self::B => {
                "CREATE TABLE IF NOT EXISTS totals_b (stream TEXT PRIMARY KEY, n BIGINT NOT NULL, total BIGINT NOT NULL)"
            }
        }
    }

    #[cfg(feature = "sqlite")]
    fn upsert_sqlite(self) -> &'static str {
        match self {
            Self::A => {
                "INSERT INTO totals_a (stream, n, total) VALUES (?, 1, ?) ON CONFLICT (stream) DO UPDATE SET n = n + 1, total = total + excluded.total"
            }
            Self::B => {
                "INSERT INTO totals_b (stream, n, total) VALUES (?, 1, ?) ON CONFLICT (stream) DO UPDATE SET n = n + 1, total = total + excluded.total"
            }
        }
    }

    fn upsert_postgres(self) -> &'static str {
        match self {
            Self::A => {
                "INSERT INTO totals_a (stream, n, total) VALUES ($1, 1, $2) ON CONFLICT (stream) DO UPDATE SET n = totals_a.n + 1, total = totals_a.total + excluded.total"
            }
            Self::B => {
                "INSERT INTO totals_b (stream, n, total) VALUES ($1, 1, $2) ON CONFLICT (stream) DO UPDATE SET n = totals_b.n + 1, total = totals_b.total + excluded.total"
            }
        }
    }

    /// One statement for a whole batch: rows come as a JSON array of `[stream, n, total]`.
    #[cfg(feature = "sqlite")]
    fn upsert_many_sqlite(self) -> &'static str {
        match self {
            Self::A => {
                "INSERT INTO totals_a (stream, n, total) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?) WHERE true ON CONFLICT (stream) DO UPDATE SET n = n + excluded.n, total = total + excluded.total"
            }
            Self::B => {
                "INSERT INTO totals_b (stream, n, total) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?) WHERE true ON CONFLICT (stream) DO UPDATE SET n = n + excluded.n, total = total + excluded.total"
            }
        }
    }

    /// One statement for a whole batch: rows come as three arrays.
    fn upsert_many_postgres(self) -> &'static str {
        match self {
            Self::A => {
                "INSERT INTO totals_a (stream, n, total) SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) ON CONFLICT (stream) DO UPDATE SET n = totals_a.n + excluded.n, total = totals_a.total + excluded.total"
            }
            Self::B => {
                "INSERT INTO totals_b (stream, n, total) SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) ON CONFLICT (stream) DO UPDATE SET n = totals_b.n + excluded.n, total = totals_b.total + excluded.total"
            }
        }
    }

    fn delete(self) -> &'static str {
        match self {
            Self::A => "DELETE FROM totals_a",
            Self::B => "DELETE FROM totals_b",
        }
    }

    fn select(self) -> &'static str {
        match self {
            Self::A => "SELECT stream, n, total FROM totals_a ORDER BY stream",
            Self::B => "SELECT stream, n, total FROM totals_b ORDER BY stream",
        }
    }
}

/// Count and sum of deposits per stream, in its own table, written through the runner's
/// transaction (SQLite or PostgreSQL, whichever the store is). `batched` folds each batch in
/// memory and writes it with one statement ([`Projection::handle_batch`]); otherwise one
/// upsert per event (the default `handle_batch`). Both must give the same table.
struct StreamTotals {
    name: &'static str,
    table: Table,
    batched: bool,
    registry: Registry,
    handled: AtomicU64,
}

impl StreamTotals {
    fn new(name: &'static str, table: Table, batched: bool) -> Self {
        Self { name, table, batched, registry: Registry::new(), handled: AtomicU64::new(0) }
    }
}

#[async_trait]
impl Projection for StreamTotals {
    fn name(&self) -> &str {
        self.name
    }

    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let amount = event.decode_with::<Deposited>(&self.registry)?.amount;
        #[cfg(feature = "sqlite")]
        if tx.as_any_mut().is::<SqliteTransaction>() {
            let conn = downcast_tx::<SqliteTransaction>(tx)?.connection().await?;
            conn.execute(self.table.upsert_sqlite(), herald_sql::rusqlite::params![event.stream, amount])
                .map_err(ProjectionError::transient)?;
            self.handled.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let conn = downcast_tx::<PostgresTransaction>(tx)?.connection();
        sqlx::query(self.table.upsert_postgres())
            .bind(&event.stream)
            .bind(amount)
            .execute(conn)
            .await
            .map_err(ProjectionError::transient)?;
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn handle_batch(&self, tx: &mut dyn Transaction, events: &[&RecordedEvent]) -> Result<(), ProjectionError> {
        if !self.batched {
            for event in events {
                self.handle(tx, event).await?;
            }
            return Ok(());
        }
        let mut rows: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for event in events {
            let amount = event.decode_with::<Deposited>(&self.registry)?.amount;
            let row = rows.entry(event.stream.as_str()).or_default();
            row.0 += 1;
            row.1 += amount;
        }
        #[cfg(feature = "sqlite")]
        if tx.as_any_mut().is::<SqliteTransaction>() {
            let json: Vec<(&str, i64, i64)> = rows.iter().map(|(s, (n, t))| (*s, *n, *t)).collect();
            let json = serde_json::to_string(&json).map_err(ProjectionError::permanent)?;
            let conn = downcast_tx::<SqliteTransaction>(tx)?.connection().await?;
            conn.execute(self.table.upsert_many_sqlite(), [json]).map_err(ProjectionError::transient)?;
            self.handled.fetch_add(events.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        let streams: Vec<String> = rows.keys().map(|s| (*s).to_owned()).collect();
        let counts: Vec<i64> = rows.values().map(|(n, _)| *n).collect();
        let totals: Vec<i64> = rows.values().map(|(_, t)| *t).collect();
        let conn = downcast_tx::<PostgresTransaction>(tx)?.connection();
        sqlx::query(self.table.upsert_many_postgres())
            .bind(streams)
            .bind(counts)
            .bind(totals)
            .execute(conn)
            .await
            .map_err(ProjectionError::transient)?;
        self.handled.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn reset(&self, tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        #[cfg(feature = "sqlite")]
        if tx.as_any_mut().is::<SqliteTransaction>() {
            let conn = downcast_tx::<SqliteTransaction>(tx)?.connection().await?;
            conn.execute(self.table.delete(), []).map_err(ProjectionError::transient)?;
            return Ok(());
        }
        let conn = downcast_tx::<PostgresTransaction>(tx)?.connection();
        sqlx::query(self.table.delete()).execute(conn).await.map_err(ProjectionError::transient)?;
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn runner(store: Arc<dyn Store>, projection: Arc<StreamTotals>) -> ProjectionRunner {
    ProjectionRunner::with_config(store, projection, RunnerConfig::default().batch_size(BATCH).log_every(20_000))
}

/// The child: runs the projection until killed.
#[test]
#[ignore = "run by the projection_restart tests as a child process"]
fn projection_child_runner() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return; // run by hand with --ignored: nothing to do
    };
    runtime().block_on(async move {
        let db = Target::from_env(&target).open().await;
        let projection = Arc::new(StreamTotals::new(PROJECTION, Table::A, false));
        runner(db.store(), projection).run(CancellationToken::new()).await.expect("the projection runs");
    });
}

fn spawn_child(target: &Target) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    Command::new(exe)
        .args(["--exact", "projection_child_runner", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, target.to_env())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child runner")
}

/// Appends `EVENTS` deposits (amount `i` to stream `s{i % STREAMS}`) in transactions of
/// `APPEND_CHUNK` events.
async fn append_events(store: &dyn Store) {
    for chunk_start in (0..EVENTS).step_by(APPEND_CHUNK as usize) {
        let mut by_stream: BTreeMap<u64, Vec<NewEvent>> = BTreeMap::new();
        for i in chunk_start..chunk_start + APPEND_CHUNK {
            let amount = i64::try_from(i).expect("small");
            by_stream.entry(i % STREAMS).or_default().push(NewEvent::encode(&Deposited { amount }).expect("encode"));
        }
        let batch = by_stream
            .into_iter()
            .map(|(s, events)| StreamAppend { stream: format!("s{s}"), expected: ExpectedVersion::Any, events })
            .collect();
        store.append_many(batch).await.expect("append");
    }
}

/// The ground truth: count and sum per stream of the events at positions ≤ `upto`, folded from
/// the log itself.
async fn fold_log(store: &dyn Store, upto: u64) -> Totals {
    let registry = Registry::new();
    let mut totals = Totals::new();
    let mut after = 0;
    while after < upto {
        let page = store.read_all(after, 10_000).await.expect("read the log");
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in page.iter().filter(|e| e.position <= upto) {
            let amount = e.decode_with::<Deposited>(&registry).expect("decode").amount;
            let row = totals.entry(e.stream.clone()).or_default();
            row.0 += 1;
            row.1 += amount;
        }
    }
    totals
}

async fn checkpoint(store: &dyn Store, name: &str) -> u64 {
    store.load_checkpoint(name).await.expect("load checkpoint").unwrap_or(0)
}

fn sigkill(mut child: Child) {
    child.kill().expect("SIGKILL the child"); // Child::kill sends SIGKILL on Unix
    child.wait().expect("reap the child");
}

/// The whole scenario on one database.
async fn kill_restart_rebuild(target: Target) {
    let label = match &target {
        #[cfg(feature = "sqlite")]
        Target::Sqlite(_) => "SQLite",
        Target::Postgres { .. } => "PostgreSQL",
    };
    let started = Instant::now();
    let db = target.open().await;
    db.create_tables().await;
    let store = db.store();

    let t = Instant::now();
    append_events(&*store).await;
    let append_time = t.elapsed();
    let head = store.read_all(EVENTS - 1, 10).await.expect("read");
    assert_eq!(head.last().map(|e| e.position), Some(EVENTS), "positions are 1..=EVENTS");

    // 1. The child projects until SIGKILLed midway.
    let t = Instant::now();
    let child = spawn_child(&target);
    let kill_at = EVENTS * 2 / 5;
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint(&*store, PROJECTION).await < kill_at {
        assert!(Instant::now() < deadline, "the child projected only {} events", checkpoint(&*store, PROJECTION).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sigkill(child);
    let first_run = t.elapsed();
    let killed_at = checkpoint(&*store, PROJECTION).await;
    assert!(killed_at < EVENTS, "killed midway, not after the end (checkpoint {killed_at})");

    // The read model holds exactly the events up to the checkpoint: they committed together.
    let after_kill = db.totals(Table::A).await;
    let projected: i64 = after_kill.values().map(|(n, _)| n).sum();
    assert_eq!(u64::try_from(projected).expect("count"), killed_at, "read model and checkpoint agree after SIGKILL");
    assert_eq!(after_kill, fold_log(&*store, killed_at).await, "read model = the log folded up to the checkpoint");

    // 2. Restart (in this process): it resumes at the checkpoint and runs to the end.
    let t = Instant::now();
    let projection = Arc::new(StreamTotals::new(PROJECTION, Table::A, false));
    let restarted = runner(store.clone(), projection.clone());
    let lag = restarted.status().await.expect("status");
    assert_eq!((lag.position, lag.head, lag.events_behind), (killed_at, EVENTS, EVENTS - killed_at));
    let cancel = CancellationToken::new();
    let task = restarted.spawn(cancel.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = restarted.status().await.expect("status");
        if status.events_behind == 0 {
            assert_eq!((status.position, status.head, status.seconds_behind), (EVENTS, EVENTS, 0.0));
            break;
        }
        assert!(Instant::now() < deadline, "the restarted runner is stuck: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    task.await.expect("join").expect("the restarted runner stops cleanly");
    let second_run = t.elapsed();
    assert_eq!(
        projection.handled.load(Ordering::Relaxed),
        EVENTS - killed_at,
        "resumed at the checkpoint: nothing twice"
    );
    let final_a = db.totals(Table::A).await;
    let truth = fold_log(&*store, EVENTS).await;
    assert_eq!(final_a.len() as u64, STREAMS);
    assert_eq!(final_a, truth, "the read model is the whole log folded, each event once");

    // 3. A from-scratch rebuild into a second table (writing each batch with one statement),
    // watching its progress.
    let t = Instant::now();
    let rebuilt = runner(store.clone(), Arc::new(StreamTotals::new(REBUILT, Table::B, true)));
    let mut progress = rebuilt.progress();
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<Progress> = Vec::new();
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            let done = p.rebuilding && p.target > 0 && p.position >= p.target;
            seen.push(p);
            if done {
                break;
            }
        }
        seen
    });
    let report = rebuilt.rebuild(CancellationToken::new()).await.expect("rebuild");
    let seen = tokio::time::timeout(Duration::from_secs(10), watcher).await.expect("progress ends").expect("join");
    let rebuild_time = t.elapsed();
    assert!(report.completed);
    assert_eq!((report.position, report.target, report.events), (EVENTS, EVENTS, EVENTS));
    let updates: Vec<&Progress> = seen.iter().filter(|p| p.rebuilding && p.events > 0).collect();
    assert!(updates.len() >= 5, "progress reported during the rebuild ({} updates)", updates.len());
    assert!(
        updates.windows(2).all(|w| w[0].position < w[1].position && w[0].events < w[1].events),
        "progress increases"
    );
    let last = updates.last().expect("an update");
    assert_eq!((last.position, last.target, last.events), (EVENTS, EVENTS, EVENTS));
    let final_b = db.totals(Table::B).await;
    assert_eq!(final_b, final_a, "the rebuilt read model equals the restarted one");
    assert_eq!(checkpoint(&*store, REBUILT).await, EVENTS);

    // 4. Rebuilding the first projection in place (batched too) ends equal.
    let again = runner(store.clone(), Arc::new(StreamTotals::new(PROJECTION, Table::A, true)));
    let report_a = again.rebuild(CancellationToken::new()).await.expect("rebuild in place");
    assert_eq!((report_a.position, report_a.events), (EVENTS, EVENTS));
    assert_eq!(db.totals(Table::A).await, final_b, "rebuild in place ends equal");

    println!(
        "{label}: {EVENTS} events over {STREAMS} streams appended in {append_time:.2?}; child SIGKILLed at checkpoint \
         {killed_at} after {first_run:.2?}; restart projected the other {} events in {second_run:.2?}; rebuild into a \
         second table: {} events in {rebuild_time:.2?} ({:.0} events/s, {} progress updates); in-place rebuild {:.2?}; \
         total {:.2?}",
        EVENTS - killed_at,
        report.events,
        last.rate,
        updates.len(),
        report_a.elapsed,
        started.elapsed(),
    );
    #[cfg_attr(not(feature = "sqlite"), allow(irrefutable_let_patterns))] // PostgreSQL is then the only target
    if let (Db::Postgres(pg), Target::Postgres { schema, .. }) = (&db, &target) {
        // Tidy up (a failed run leaves its schema to the sweep of `postgres_conformance`).
        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(pg.pool()).await.expect("drop the test schema");
    }
    db.close().await;
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_projection_killed_midway_resumes_and_a_rebuild_ends_equal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("projection.db");
    runtime().block_on(kill_restart_rebuild(Target::Sqlite(path)));
}

const PG_SERVER: (&str, &str) = ("PostgreSQL", "127.0.0.1:5432");

#[test]
fn postgres_projection_killed_midway_resumes_and_a_rebuild_ends_equal() {
    if !herald_conformance::support::server_available(PG_SERVER) {
        return;
    }
    let url =
        std::env::var("HERALD_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!(
        "herald_test_{}_{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        uuid::Uuid::now_v7().simple()
    );
    runtime().block_on(kill_restart_rebuild(Target::Postgres { url, schema }));
}
