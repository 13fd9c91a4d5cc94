//! Nothing is lost when the Redis server goes away mid-stream (SIGKILL, then SIGTERM) and comes
//! back on the same port and data directory.
//!
//! The test starts a PRIVATE `redis-server` with persistence on (`--appendonly yes
//! --appendfsync always`, so what was acknowledged survives the restart) on its own free port in
//! a temporary directory (the shared server on 6379 is never touched), and runs a producer that
//! publishes a paced stream of messages over many keys, counting a message as sent only when
//! `publish` returned `Ok` and retrying the same message (same id) on error (Redis Streams do
//! not de-duplicate, so a publish that landed before its error was seen is stored twice and
//! shows up as a duplicate delivery: at least once), and a [`Router`] whose handler records
//! every message it handles. Mid-stream the server is stopped twice: for ~1.5 s, then for 6 s
//! (longer than the client's 5 s response timeout). The same broker, subscription and router
//! must recover by themselves; every message counted as sent must be handled (at least once:
//! what was in flight is claimed again after its ack wait). Run with
//! `--nocapture` to see the `sent N, handled M, duplicates D, restarts R` line, and
//! `RUST_LOG=warn` for the adapter's warnings.
//!
//! Without `redis-server` (on `PATH`, `/usr/bin`, or `HERALD_REDIS_SERVER`) the test skips
//! loudly, and fails when `CI` is set.

use std::collections::{HashMap, HashSet};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use herald::router::{Handler, HandlerContext, HandlerError, RetryPolicy, Route, Router};
use herald::{Message, MessageId, Publisher, StartFrom, SubscribeOptions, Subscriber};
use herald_redis::RedisConfig;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "restart.orders";
const NAME: &str = "restart.OrderPlaced.v1";
const GROUP: &str = "restart-consumer";
const MESSAGES: usize = 3000;
const KEYS: usize = 50;
/// Pause between two publishes.
const PACE: Duration = Duration::from_millis(3);
/// Stop the server when this share (in percent) of the messages has been sent, first with
/// SIGKILL, then with SIGTERM.
/// The second outage is longer than the client's 5 s response timeout.
const STOPS: [(usize, Stop, Duration); 2] =
    [(25, Stop::Kill, Duration::from_millis(1500)), (60, Stop::Term, Duration::from_secs(6))];
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
    eprintln!("SKIPPED: {what} is missing; install it (scripts/ensure-services.sh) to run this test");
    false
}

/// `HERALD_REDIS_SERVER`, else `redis-server` on `PATH` or in `/usr/bin`.
fn redis_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HERALD_REDIS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

/// A free TCP port on the loopback interface (bound, read, released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Term,
}

/// A private `redis-server` with persistence in a temporary directory; killed when dropped, so
/// a failing test never leaves it behind.
struct RedisServer {
    binary: PathBuf,
    /// Append-only file with `fsync` on every write; off: nothing survives a restart.
    persistent: bool,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    fn start_new(persistent: bool) -> Option<Self> {
        let binary = redis_server_binary();
        if !required("redis-server", binary.is_some()) {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("herald-redis-restart-").tempdir().expect("temp dir");
        let mut server =
            Self { binary: binary.expect("checked above"), persistent, port: free_port(), dir, child: None };
        server.start();
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts the server on the same port and data directory (it reloads its append-only
    /// file), and waits until it accepts connections.
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file()).expect("log file");
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(self.dir.path())
            .args(["--appendonly", if self.persistent { "yes" } else { "no" }, "--appendfsync", "always", "--save", ""])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("redis-server exited with {status}:\n{}", self.log_tail());
            }
            assert!(Instant::now() < deadline, "redis-server did not accept connections:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL or SIGTERM) and waits for it to exit.
    fn stop(&mut self, how: Stop) {
        let Some(mut child) = self.child.take() else { return };
        match how {
            Stop::Kill => child.kill().expect("SIGKILL redis-server"),
            Stop::Term => {
                let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                assert!(status.is_ok_and(|s| s.success()), "SIGTERM redis-server");
            }
        }
        child.wait().expect("reap redis-server");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the producer and the consumer saw.
#[derive(Default)]
struct Tally {
    sent: Mutex<Vec<MessageId>>,
    sent_count: AtomicUsize,
    send_failures: AtomicUsize,
    /// Handler runs per message id.
    runs: Mutex<HashMap<MessageId, u32>>,
    handled: AtomicUsize,
}

struct RecordHandled(Arc<Tally>);

#[async_trait::async_trait]
impl Handler for RecordHandled {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let mut runs = lock(&self.0.runs);
        let n = runs.entry(cx.message().id).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.0.handled.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Publishes a paced stream, retrying a message (same id) until `publish` returns `Ok`.
async fn producer(broker: Arc<dyn Publisher>, tally: Arc<Tally>) {
    for i in 0..MESSAGES {
        let message = Message::new(TOPIC, NAME, i.to_string().into_bytes()).with_key(format!("order-{}", i % KEYS));
        let mut failures = 0u32;
        while broker.publish(std::slice::from_ref(&message)).await.is_err() {
            failures += 1;
            tally.send_failures.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20) * failures.min(25)).await;
        }
        lock(&tally.sent).push(message.id);
        tally.sent_count.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(PACE).await;
    }
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn scenario(server: &mut RedisServer) {
    let broker = RedisConfig::new(server.url())
        .key_prefix("restart:")
        .connect()
        .await
        .expect("connect to the private Redis server");
    let broker = Arc::new(broker);
    let tally = Arc::new(Tally::default());
    let shutdown = CancellationToken::new();
    let options = SubscribeOptions::new(TOPIC, GROUP)
        .start(StartFrom::Beginning)
        .max_in_flight(64)
        .ack_wait(Duration::from_secs(3))
        .max_deliveries(10_000);
    let router = Router::new(broker.clone())
        .retry(RetryPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(500),
            ..RetryPolicy::default()
        })
        .route(Route::new(options).on_name(NAME, RecordHandled(tally.clone())));
    let router = tokio::spawn(router.run(shutdown.clone()));

    let started = Instant::now();
    let producer = tokio::spawn(producer(broker.clone(), tally.clone()));
    let mut restarts = 0;
    for (percent, how, downtime) in STOPS {
        let target = MESSAGES * percent / 100;
        wait_until(&format!("{target} messages sent"), Duration::from_secs(20), || {
            tally.sent_count.load(Ordering::SeqCst) >= target
        })
        .await;
        tokio::task::block_in_place(|| server.stop(how));
        tokio::time::sleep(downtime).await;
        tokio::task::block_in_place(|| server.start());
        restarts += 1;
    }
    producer.await.expect("producer");
    let sent: HashSet<MessageId> = lock(&tally.sent).iter().copied().collect();
    assert_eq!(sent.len(), MESSAGES, "every message was sent once");
    let waited = wait_until_all_handled(&tally, &sent, Duration::from_secs(25)).await;
    // Leave time for late redeliveries to show up in the duplicate count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!router.is_finished(), "the router stopped by itself");
    shutdown.cancel();
    router.await.expect("router task").expect("router");
    broker.close().await.expect("close");

    let runs = lock(&tally.runs);
    let lost = sent.iter().filter(|id| !runs.contains_key(id)).count();
    let duplicates: u32 = runs.values().map(|n| n - 1).sum();
    let summary = format!(
        "sent {}, handled {}, duplicates {duplicates}, restarts {restarts}; lost {lost}; {} failed publishes \
         retried; {:.1} s ({waited})",
        sent.len(),
        runs.len(),
        tally.send_failures.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    println!("{summary}");
    assert_eq!(lost, 0, "messages lost: {summary}");
    assert_eq!(runs.len(), MESSAGES, "{summary}");
}

/// Waits until every sent message was handled; says how long it took, or panics with the
/// count still missing.
async fn wait_until_all_handled(tally: &Tally, sent: &HashSet<MessageId>, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let missing = {
            let runs = lock(&tally.runs);
            sent.iter().filter(|id| !runs.contains_key(id)).count()
        };
        if missing == 0 {
            return format!("all handled {:.1} s after the last send", start.elapsed().as_secs_f64());
        }
        assert!(
            start.elapsed() < timeout,
            "{missing} of {} sent messages not handled {timeout:?} after the last send (handled {})",
            sent.len(),
            tally.handled.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn redis_server_restarts_mid_stream_lose_nothing() {
    init_tracing();
    let Some(mut server) = RedisServer::start_new(true) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let timed_out = runtime.block_on(async { tokio::time::timeout(TEST_LIMIT, scenario(&mut server)).await.is_err() });
    drop(runtime);
    assert!(
        !timed_out,
        "the restart scenario did not finish within {TEST_LIMIT:?}\nserver log:\n{}",
        server.log_tail()
    );
}

/// Without persistence a restart loses the streams and the consumer groups (the messages of the
/// outage are gone: that is what no persistence means). The subscription made before the
/// restart must notice its group is gone, re-create it, and receive what is published after
/// the restart, with the same broker and subscription objects.
async fn lost_group_scenario(server: &mut RedisServer) -> u32 {
    let broker = RedisConfig::new(server.url())
        .key_prefix("restart-volatile:")
        .connect()
        .await
        .expect("connect to the private Redis server");
    let message = || Message::new(TOPIC, NAME, b"m".to_vec());
    let mut subscription = broker
        .subscribe(SubscribeOptions::new(TOPIC, GROUP).ack_wait(Duration::from_secs(5)))
        .await
        .expect("subscribe");
    broker.publish(&[message()]).await.expect("first publish");
    let first = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await;
    first.expect("the first message within 5 s").expect("a delivery").ack().await.expect("ack");
    tokio::task::block_in_place(|| server.stop(Stop::Kill));
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| server.start());
    let mut failures = 0;
    // The group is re-created at the subscription's start (`Latest`), possibly after a publish:
    // keep publishing until one arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    let received = loop {
        match tokio::time::timeout(Duration::from_millis(500), subscription.next()).await {
            Ok(Some(d)) => break d,
            Ok(None) => panic!("the subscription ended when the server lost its group"),
            Err(_) => {
                assert!(Instant::now() < deadline, "the subscription received nothing after the restart");
                if broker.publish(&[message()]).await.is_err() {
                    failures += 1;
                }
            }
        }
    };
    received.ack().await.expect("ack after the restart");
    drop(subscription);
    broker.close().await.expect("close");
    failures
}

#[test]
fn a_group_lost_in_a_restart_is_recreated() {
    init_tracing();
    let Some(mut server) = RedisServer::start_new(false) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let failures = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(40), lost_group_scenario(&mut server)).await });
    drop(runtime);
    let failures = failures.expect("the lost-group scenario did not finish within 40 s");
    println!("the subscription re-created its group; {failures} failed publishes");
}
