//! Nothing is lost, and nothing is handled twice, when the PostgreSQL server crashes mid-stream
//! (`pg_ctl stop -m immediate`, twice) and comes back on the same port and data directory.
//!
//! The test starts a PRIVATE PostgreSQL server (its own `initdb` in a temporary directory, its
//! own free port; the shared server on 5432 is never touched) and runs, all in one process:
//!
//! * a producer through the production path: each message is an event appended to a stream
//!   *and* an outbox row, in one transaction, with an [`OutboxRelay`] running continuously to the
//!   [`PgBroker`](herald_sql::PgBroker). It appends with `ExpectedVersion::Exact`, so the
//!   application's retry after an ambiguous failure (the commit may or may not have landed) is
//!   idempotent: a version conflict on the retry means the earlier attempt committed;
//! * a second producer publishing straight to the broker, retrying the same message (same id) on
//!   error; the broker de-duplicates on `(topic, id)`;
//! * a [`Router`] with the [`Inbox`] middleware, whose handler records each message in its own
//!   table in the router's transaction (so the table shows exactly-once handling).
//!
//! Mid-stream the server is crashed twice, each time for ~1.5 s. The same router, relay and
//! broker objects must recover by themselves, and the `LISTEN` connection must come back. Run
//! with `--nocapture` to see the `sent N, handled M, duplicates D, restarts R` line; set
//! `RUST_LOG=warn` to see the adapters' retry warnings.
//!
//! Without PostgreSQL's binaries (`/usr/lib/postgresql/<version>/bin`, or `HERALD_PG_BIN`) the
//! test skips loudly, and fails when `CI` is set.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use herald::outbox::OutboxRelay;
use herald::router::{Handler, HandlerContext, HandlerError, Inbox, RetryPolicy, Route, Router};
use herald::store::{ExpectedVersion, NewEvent, Store};
use herald::{Message, MessageId, Publisher, StartFrom, SubscribeOptions};
use herald_sql::{PostgresConfig, PostgresDatabase, PostgresTransaction};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "restart.orders";
const NAME: &str = "restart.OrderPlaced.v1";
const GROUP: &str = "restart-consumer";
/// Messages sent through the event store and the outbox.
const VIA_OUTBOX: usize = 2000;
/// Messages published straight to the broker.
const DIRECT: usize = 1000;
const KEYS: usize = 50;
/// Pause between two sends of one producer.
const PACE: Duration = Duration::from_millis(3);
/// Crash the server when this fraction (in percent) of the messages has been sent.
const CRASH_AT_PERCENT: [usize; 2] = [25, 60];
/// How long the server stays down.
const DOWNTIME: Duration = Duration::from_millis(1500);
/// The whole scenario must finish within this.
const TEST_LIMIT: Duration = Duration::from_secs(55);

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Whether `what` is there. When it is not: with `CI` set, panics (a missing server must never
/// turn into a green run); otherwise prints a loud `SKIPPED` line and returns `false`. The same
/// rule as `herald_conformance::support::server_available`.
fn required(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing and CI is set: install it (scripts/ensure-services.sh)");
    }
    eprintln!("SKIPPED: {what} is missing; install PostgreSQL (scripts/ensure-services.sh) to run this test");
    false
}

/// The directory holding `initdb` and `pg_ctl`: `HERALD_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HERALD_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A free TCP port on the loopback interface (bound, read, released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A private PostgreSQL server in a temporary directory. Stopped (immediately) when dropped, so
/// a failing test never leaves it behind.
struct PgServer {
    bin: PathBuf,
    /// Root refuses to run PostgreSQL: then every command runs as `postgres` through `runuser`.
    as_postgres: bool,
    port: u16,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// Initialises and starts a server, or `None` (skipped) when the binaries are missing.
    fn start_new() -> Option<Self> {
        let bin = pg_bin();
        if !required("PostgreSQL's initdb and pg_ctl (/usr/lib/postgresql/<version>/bin)", bin.is_some()) {
            return None;
        }
        let as_postgres = running_as_root();
        if as_postgres
            && !required("runuser (to run PostgreSQL as `postgres` when root)", Path::new("/usr/sbin/runuser").exists())
        {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("herald-pg-restart-").tempdir().expect("temp dir");
        let server = Self { bin: bin.expect("checked above"), as_postgres, port: free_port(), dir };
        if as_postgres {
            let status = Command::new("chown").arg("postgres:postgres").arg(server.dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the temp dir to postgres");
        }
        let data = server.data_dir();
        server.run("initdb", &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
        server.start();
        Some(server)
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log_file(&self) -> String {
        self.dir.path().join("server.log").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("/usr/sbin/runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Runs `tool` with `args`; panics (with the server log's tail) if it fails.
    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool).args(args).stdin(Stdio::null()).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts the server and waits (`-w`) until it accepts connections.
    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        let (data, log) = (self.data_dir(), self.log_file());
        self.run("pg_ctl", &["start", "-w", "-t", "30", "-D", &data, "-l", &log, "-o", &options]);
    }

    /// A crash: every backend is killed at once, no checkpoint; the next start runs recovery.
    fn crash(&self) {
        let data = self.data_dir();
        self.run("pg_ctl", &["stop", "-m", "immediate", "-w", "-t", "30", "-D", &data]);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        let stopped = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D", &data])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            eprintln!("could not stop the private PostgreSQL server in {data} (already stopped?)");
        }
    }
}

/// What the producers and the consumer saw.
#[derive(Default)]
struct Tally {
    /// Ids of messages whose send returned `Ok` (or was proven committed).
    sent: Mutex<Vec<MessageId>>,
    sent_count: AtomicUsize,
    /// Failed send attempts, each retried.
    send_failures: AtomicUsize,
    /// Handler runs per message id (a run whose transaction did not commit counts too).
    runs: Mutex<HashMap<MessageId, u32>>,
    /// Distinct messages the handler ran for.
    handled: AtomicUsize,
    restarts: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tally {
    fn record_sent(&self, id: MessageId) {
        lock(&self.sent).push(id);
        self.sent_count.fetch_add(1, Ordering::SeqCst);
    }
}

/// Records the message in `restart_handled`, in the router's transaction (with the inbox entry).
struct RecordHandled(Arc<Tally>);

#[async_trait::async_trait]
impl Handler for RecordHandled {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let id = cx.message().id;
        {
            let mut runs = lock(&self.0.runs);
            let n = runs.entry(id).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.0.handled.fetch_add(1, Ordering::SeqCst);
            }
        }
        let tx = cx.tx()?;
        let pg = tx
            .as_any_mut()
            .downcast_mut::<PostgresTransaction>()
            .ok_or_else(|| HandlerError::permanent("not a PostgreSQL transaction"))?;
        sqlx::query("INSERT INTO restart_handled (message_id) VALUES ($1)")
            .bind(id.to_string())
            .execute(pg.connection())
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }
}

/// Appends the event of `message` to its stream at `version + 1` and puts `message` in the
/// outbox, in one transaction.
async fn append_with_outbox(store: &dyn Store, version: u64, message: &Message) -> Result<(), herald::StoreError> {
    let event = NewEvent {
        id: message.id,
        name: message.name.clone(),
        payload: message.payload.clone(),
        metadata: message.metadata.clone(),
    };
    let mut tx = store.begin().await?;
    tx.append(&message.key, ExpectedVersion::Exact(version), vec![event]).await?;
    tx.enqueue(vec![message.clone()]).await?;
    tx.commit().await
}

fn numbered(prefix: &str, i: usize) -> Message {
    Message::new(TOPIC, NAME, i.to_string().into_bytes()).with_key(format!("{prefix}-{}", i % KEYS))
}

async fn pause_after_failure(failures: u32) {
    tokio::time::sleep(Duration::from_millis(20) * failures.min(25)).await;
}

/// The production path: event + outbox row per message; the relay publishes them.
async fn outbox_producer(store: Arc<dyn Store>, tally: Arc<Tally>) {
    let mut versions = vec![0u64; KEYS];
    for i in 0..VIA_OUTBOX {
        let message = numbered("order", i);
        let version = &mut versions[i % KEYS];
        let mut failures = 0u32;
        loop {
            match append_with_outbox(store.as_ref(), *version, &message).await {
                Ok(()) => break,
                // This producer is the stream's only writer: a conflict on a retry means the
                // failed attempt's commit did land (the error came after it).
                Err(e) if e.is_conflict() && failures > 0 => break,
                Err(e) if e.is_conflict() => panic!("version conflict on a first attempt: {e}"),
                Err(_) => {
                    failures += 1;
                    tally.send_failures.fetch_add(1, Ordering::SeqCst);
                    pause_after_failure(failures).await;
                }
            }
        }
        *version += 1;
        tally.record_sent(message.id);
        tokio::time::sleep(PACE).await;
    }
}

/// Publishes straight to the broker, retrying the same message (same id) on error.
async fn direct_producer(broker: Arc<dyn Publisher>, tally: Arc<Tally>) {
    for i in 0..DIRECT {
        let message = numbered("direct", i);
        let mut failures = 0u32;
        while broker.publish(std::slice::from_ref(&message)).await.is_err() {
            failures += 1;
            tally.send_failures.fetch_add(1, Ordering::SeqCst);
            pause_after_failure(failures).await;
        }
        tally.record_sent(message.id);
        tokio::time::sleep(PACE * 2).await;
    }
}

/// Sessions that are `LISTEN`ing (the database's change listener).
async fn listeners(db: &PostgresDatabase) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
        .fetch_one(db.pool())
        .await
        .unwrap_or(-1)
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn scenario(server: &PgServer) {
    let db = PostgresConfig::new(server.url()).with_schema("restart").open().await.expect("open the database");
    sqlx::query("CREATE TABLE restart_handled (message_id TEXT NOT NULL, row BIGSERIAL PRIMARY KEY)")
        .execute(db.pool())
        .await
        .expect("create the consumer's table");
    let store: Arc<dyn Store> = Arc::new(db.store());
    let broker = Arc::new(db.broker());
    let tally = Arc::new(Tally::default());
    let shutdown = CancellationToken::new();

    let relay = tokio::spawn(OutboxRelay::new(store.clone(), broker.clone()).batch(64).run(shutdown.clone()));
    let options = SubscribeOptions::new(TOPIC, GROUP)
        .start(StartFrom::Beginning)
        .max_in_flight(32)
        .ack_wait(Duration::from_secs(3))
        .max_deliveries(10_000);
    let router = Router::new(broker.clone())
        .store(store.clone())
        .retry(RetryPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(500),
            ..RetryPolicy::default()
        })
        .middleware(Inbox)
        .route(Route::new(options).on_name(NAME, RecordHandled(tally.clone())));
    let router = tokio::spawn(router.run(shutdown.clone()));

    let started = Instant::now();
    let producers = [
        tokio::spawn(outbox_producer(store.clone(), tally.clone())),
        tokio::spawn(direct_producer(broker.clone(), tally.clone())),
    ];
    wait_until("the change listener", Duration::from_secs(10), async || listeners(&db).await >= 1).await;

    let total = VIA_OUTBOX + DIRECT;
    for percent in CRASH_AT_PERCENT {
        let target = total * percent / 100;
        wait_until(&format!("{target} messages sent"), Duration::from_secs(20), async || {
            tally.sent_count.load(Ordering::SeqCst) >= target
        })
        .await;
        tokio::task::block_in_place(|| server.crash());
        tokio::time::sleep(DOWNTIME).await;
        tokio::task::block_in_place(|| server.start());
        tally.restarts.fetch_add(1, Ordering::SeqCst);
        // The listener re-connects and LISTENs again (not only the polling safety net).
        wait_until("the change listener to LISTEN again after the restart", Duration::from_secs(10), async || {
            listeners(&db).await >= 1
        })
        .await;
    }
    for p in producers {
        p.await.expect("producer");
    }
    let sent: HashSet<MessageId> = lock(&tally.sent).iter().copied().collect();
    assert_eq!(sent.len(), total, "every message was sent once");
    wait_until(&format!("all {total} messages handled"), Duration::from_secs(25), async || {
        tally.handled.load(Ordering::SeqCst) >= total
    })
    .await;
    // Leave time for a duplicate to show up if the inbox were broken.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!relay.is_finished(), "the outbox relay stopped by itself");
    assert!(!router.is_finished(), "the router stopped by itself");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM restart_handled")
            .fetch_one(db.pool())
            .await
            .expect("count handled");
    let committed: HashSet<MessageId> = sqlx::query_scalar::<_, String>("SELECT message_id FROM restart_handled")
        .fetch_all(db.pool())
        .await
        .expect("handled ids")
        .iter()
        .map(|s| MessageId::parse(s).expect("a message id"))
        .collect();
    let outbox_left = store.outbox_pending(10).await.expect("outbox").len();
    shutdown.cancel();
    router.await.expect("router task").expect("router");
    relay.await.expect("relay task");

    let reruns: u32 = lock(&tally.runs).values().map(|n| n - 1).sum();
    let restarts = tally.restarts.load(Ordering::SeqCst);
    let failures = tally.send_failures.load(Ordering::SeqCst);
    let lost = sent.difference(&committed).count();
    let duplicates = rows - distinct;
    let summary = format!(
        "sent {} ({VIA_OUTBOX} via the outbox, {DIRECT} direct), handled {distinct}, duplicates {duplicates}, \
         restarts {restarts}; lost {lost}; {failures} failed sends retried; {reruns} handler runs rolled back and \
         redelivered; {outbox_left} left in the outbox; {:.1} s",
        sent.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{summary}");
    assert_eq!(restarts, CRASH_AT_PERCENT.len() as u64, "{summary}");
    assert_eq!(lost, 0, "messages lost: {summary}");
    assert_eq!(duplicates, 0, "messages handled twice: {summary}");
    assert_eq!(distinct as usize, total, "{summary}");
    assert_eq!(outbox_left, 0, "{summary}");
    db.close().await;
}

#[test]
fn postgres_crashes_mid_stream_lose_nothing_and_handle_nothing_twice() {
    init_tracing();
    let Some(server) = PgServer::start_new() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        if tokio::time::timeout(TEST_LIMIT, scenario(&server)).await.is_err() {
            panic!("the restart scenario did not finish within {TEST_LIMIT:?}\nserver log:\n{}", server.log_tail());
        }
    });
    // Background tasks (pool connections) end with the runtime, before the server is stopped.
    drop(runtime);
}
