//! Server-restart fault tests for broker adapters: a private server process on its own port and
//! directory (never the shared one), and the scenario every adapter runs against it — a paced
//! producer that retries until `publish` returns `Ok`, a [`Router`] recording what it handles,
//! the server stopped twice mid-stream (SIGKILL, then SIGTERM for longer than a client timeout),
//! and the check that every message counted as sent was handled by the same broker, subscription
//! and router, which must recover by themselves.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use herald::router::{Handler, HandlerContext, HandlerError, RetryPolicy, Route, Router};
use herald::{Message, MessageId, Publisher, StartFrom, SubscribeOptions, Subscriber};
use tokio_util::sync::CancellationToken;

/// The scenario's topic.
pub const TOPIC: &str = "restart.orders";
/// The scenario's message name.
pub const NAME: &str = "restart.OrderPlaced.v1";
/// The scenario's consumer group.
pub const GROUP: &str = "restart-consumer";
const MESSAGES: usize = 3000;
const KEYS: usize = 50;
/// Pause between two publishes.
const PACE: Duration = Duration::from_millis(3);
/// Stop the server when this share (in percent) of the messages has been sent: first with
/// SIGKILL, then with SIGTERM for longer than the clients' 5 s timeouts, so publishes in flight
/// fail and are retried.
const STOPS: [(usize, Stop, Duration); 2] =
    [(25, Stop::Kill, Duration::from_millis(1500)), (60, Stop::Term, Duration::from_secs(6))];
/// The whole scenario must finish within this.
const TEST_LIMIT: Duration = Duration::from_secs(55);

/// Whether `what` is there. When it is not: with `CI` set, panics (a missing server must never
/// turn into a green run); otherwise prints a loud `SKIPPED` line and returns `false`. The same
/// rule as [`support::server_available`](crate::support::server_available).
pub fn required(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing and CI is set: install it (scripts/ensure-services.sh)");
    }
    eprintln!("SKIPPED: {what} is missing; install it (scripts/ensure-services.sh) to run this test");
    false
}

/// The server binary: `$env_var`, else `name` on `PATH` or in one of `dirs`.
pub fn find_binary(env_var: &str, name: &str, dirs: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(dirs.iter().map(PathBuf::from)).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A free TCP port on the loopback interface (bound, read, released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// How the server is stopped.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a clean stop.
    Term,
}

/// The command-line arguments of a server listening on `port` with its data in `dir`.
pub type ServerArgs = Box<dyn Fn(u16, &Path) -> Vec<OsString> + Send>;

/// A private server process in a temporary directory; killed when dropped, so a failing test
/// never leaves it behind.
pub struct PrivateServer {
    name: String,
    binary: PathBuf,
    args: ServerArgs,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl std::fmt::Debug for PrivateServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateServer").field("name", &self.name).field("port", &self.port).finish_non_exhaustive()
    }
}

impl PrivateServer {
    /// Starts `binary` (named `name` in messages) on a free port in a fresh temporary directory
    /// and waits until it accepts connections; `None` (after [`required`]'s loud skip) when the
    /// binary is missing.
    pub fn start_new(name: &str, binary: Option<PathBuf>, args: ServerArgs) -> Option<Self> {
        if !required(name, binary.is_some()) {
            return None;
        }
        let dir = tempfile::Builder::new().prefix(&format!("herald-{name}-")).tempdir().expect("temp dir");
        let binary = binary.expect("checked above");
        let mut server = Self { name: name.to_owned(), binary, args, port: free_port(), dir, child: None };
        server.start();
        Some(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last 20 lines of the server's output.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts the server on the same port and directory, and waits until it accepts connections.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file()).expect("log file");
        let child = Command::new(&self.binary)
            .args((self.args)(self.port, self.dir.path()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{} exited with {status}:\n{}", self.name, self.log_tail());
            }
            assert!(Instant::now() < deadline, "{} did not accept connections:\n{}", self.name, self.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL or SIGTERM) and waits for it to exit.
    pub fn stop(&mut self, how: Stop) {
        let Some(mut child) = self.child.take() else { return };
        match how {
            Stop::Kill => child.kill().unwrap_or_else(|e| panic!("SIGKILL {}: {e}", self.name)),
            Stop::Term => {
                let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                assert!(status.is_ok_and(|s| s.success()), "SIGTERM {}", self.name);
            }
        }
        child.wait().unwrap_or_else(|e| panic!("reap {}: {e}", self.name));
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

/// The restart scenario against `broker` (connected to `server`): see the module docs. Prints
/// `sent N, handled M, duplicates D, restarts R; lost L` and fails if anything sent was lost.
pub async fn restart_scenario<B: Publisher + Subscriber + 'static>(broker: Arc<B>, server: &mut PrivateServer) {
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
    Subscriber::close(&*broker).await.expect("close");

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

/// Runs `scenario` on a fresh two-worker runtime within `limit` (the restart scenario's 55 s
/// when `None`), failing with the server's log if it does not finish.
pub fn run_with_server<F, T>(server: &mut PrivateServer, limit: Option<Duration>, scenario: F) -> T
where
    F: for<'a> FnOnce(&'a mut PrivateServer) -> futures::future::BoxFuture<'a, T>,
{
    let limit = limit.unwrap_or(TEST_LIMIT);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let result = runtime.block_on(async { tokio::time::timeout(limit, scenario(server)).await });
    drop(runtime);
    match result {
        Ok(value) => value,
        Err(_) => panic!("the scenario did not finish within {limit:?}\nserver log:\n{}", server.log_tail()),
    }
}
