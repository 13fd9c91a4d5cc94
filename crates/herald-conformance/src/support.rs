//! Helpers shared by the scenarios (and usable by adapters' own tests): bounded waiting, unique
//! names, collecting deliveries, running consumers whose panics surface at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use herald::message::{Message, MessageId, Metadata};
use herald::pubsub::{Capabilities, Delivery, Subscription};
use herald::store::NewEvent;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tracing::instrument::WithSubscriber;

/// How long to wait for something that must happen. Generous: real brokers are slower than
/// the in-memory one, and a passing scenario never waits this long.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long to watch for something that must *not* happen (a duplicate, a message from another
/// topic). Long enough to catch a mistake, short enough to keep the suite fast.
pub const QUIET: Duration = Duration::from_millis(300);

/// How often [`eventually`] checks its condition.
pub const POLL: Duration = Duration::from_millis(10);

/// A name unique to this run: `<prefix>-<uuid>`, so scenarios never see each other's topics,
/// groups or streams, even on a shared server. Only letters, digits and `-`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Waits until `condition` holds, checking every [`POLL`]; panics if it does not within
/// `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_that(timeout, "the condition", condition).await;
}

/// [`eventually`] with a description of what is awaited, for the panic message.
pub async fn eventually_that<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Like [`eventually_that`], but also re-raises at once the panic of any task of `tasks` that
/// ended (a consumer's failed assertion), instead of timing out without saying why.
pub async fn eventually_while_running<F, Fut>(tasks: &mut JoinSet<()>, timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        while let Some(result) = tasks.try_join_next() {
            reraise(result);
        }
        if condition().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for every task of `tasks`, re-raising the first panic with its own message.
pub async fn join_all(mut tasks: JoinSet<()>) {
    while let Some(result) = tasks.join_next().await {
        reraise(result);
    }
}

/// Re-raises a task's panic in the caller (cancellation is not an error here).
pub fn reraise<T>(result: Result<T, JoinError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// Receives `n` deliveries (unsettled: the caller settles them); panics if they do not all
/// arrive within `timeout` or the subscription ends first. Messages sharing a key are held back
/// by per-key order until the previous one is settled: use [`collect_acking`] for those.
pub async fn collect(sub: &mut Subscription, n: usize, timeout: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(d)) => out.push(d),
            Ok(None) => panic!("subscription ended after {} of {n} deliveries", out.len()),
            Err(_) => panic!("received {} of {n} deliveries within {timeout:?}", out.len()),
        }
    }
    out
}

/// What [`collect_acking`] keeps of a delivery it acked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The message.
    pub message: Message,
    /// Its attempt number.
    pub attempt: u32,
    /// Its position, where the broker has one.
    pub position: Option<u64>,
}

/// Receives `n` deliveries, acking each as it arrives (necessary when several share a key:
/// per-key order holds the next one back until the previous is settled); panics if they do not
/// all arrive within `timeout`.
pub async fn collect_acking(sub: &mut Subscription, n: usize, timeout: Duration) -> Vec<Acked> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(d)) => {
                let acked = Acked { message: d.message.clone(), attempt: d.attempt, position: d.position };
                d.ack().await.unwrap_or_else(|e| panic!("ack of {} failed: {e}", acked.message.id));
                out.push(acked);
            }
            Ok(None) => panic!("subscription ended after {} of {n} deliveries", out.len()),
            Err(_) => panic!("received {} of {n} deliveries within {timeout:?}", out.len()),
        }
    }
    out
}

/// Receives one delivery within `timeout`, or panics saying what was awaited.
pub async fn next_delivery(sub: &mut Subscription, timeout: Duration, what: &str) -> Delivery {
    match tokio::time::timeout(timeout, sub.next()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("subscription ended while waiting for {what}"),
        Err(_) => panic!("no delivery within {timeout:?} while waiting for {what}"),
    }
}

/// Checks that nothing is delivered for `window`; panics with the unexpected delivery.
pub async fn expect_nothing(sub: &mut Subscription, window: Duration, why: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(window, sub.next()).await {
        panic!(
            "unexpected delivery ({why}): id {} name {} key {:?} attempt {} on {}",
            d.message.id, d.message.name, d.message.key, d.attempt, d.message.topic
        );
    }
}

/// Acks every delivery, panicking on a refused ack.
pub async fn ack_all(deliveries: Vec<Delivery>) {
    for d in deliveries {
        let id = d.message.id;
        d.ack().await.unwrap_or_else(|e| panic!("ack of {id} failed: {e}"));
    }
}

/// Feeds every delivery of `sub` to `handler`, each in its own task, until the subscription
/// ends. A handler's panic ends the consumer with that panic (see
/// [`eventually_while_running`]); dropping the consumer's task aborts its handlers.
pub async fn consume<H, Fut>(mut sub: Subscription, handler: H)
where
    H: Fn(Delivery) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            delivery = sub.next() => match delivery {
                Some(d) => {
                    handlers.spawn(handler(d));
                }
                None => break,
            },
            Some(result) = handlers.join_next(), if !handlers.is_empty() => {
                reraise(result);
            }
        }
    }
    join_all(handlers).await;
}

/// Prints the loud line that marks a scenario skipped for a capability the implementation does
/// not declare, and returns whether it is supported.
pub fn supports(capabilities: Capabilities, name: &str, supported: bool) -> bool {
    if !supported {
        println!("SKIPPED (not supported: {name}); the subscriber declares {capabilities:?}");
    }
    supported
}

/// A message with every metadata field set to something a backend could lose or mangle: ids,
/// trace context, a past `occurred_at`, an unusual content type, headers with awkward
/// characters, and a payload that is not UTF-8.
pub fn rich_message(topic: &str, key: &str) -> Message {
    let cause = MessageId::new();
    let mut headers = BTreeMap::new();
    headers.insert("saga-id".to_owned(), "order-42".to_owned());
    headers.insert("reply-to".to_owned(), "ordering.replies".to_owned());
    headers.insert("x-unicode".to_owned(), "crème brûlée ✓ \"quoted\" = ; ,".to_owned());
    headers.insert("x-empty".to_owned(), String::new());
    Message {
        id: MessageId::new(),
        name: "conformance.RoundTripped.v1".to_owned(),
        topic: topic.to_owned(),
        key: key.to_owned(),
        payload: vec![0, 1, 2, 0xff, 0xfe, b'{', b'"', b'}', 0x80, 0],
        metadata: Metadata {
            correlation_id: Some(MessageId::new()),
            causation_id: Some(cause),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
            tracestate: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".to_owned()),
            occurred_at: past_time(),
            content_type: "application/x-conformance+octets".to_owned(),
            headers,
        },
    }
}

/// A fixed time in the past with millisecond precision (every backend keeps milliseconds), so a
/// backend that stamps its own time instead of keeping `occurred_at` is caught.
pub fn past_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(1_700_000_000_123).expect("a valid timestamp")
}

/// A small message on `topic` whose payload and `seq` header carry `seq`.
pub fn numbered(topic: &str, key: &str, seq: u64) -> Message {
    Message::new(topic, "conformance.Numbered.v1", seq.to_string().into_bytes())
        .with_key(key)
        .with_header("seq", seq.to_string())
}

/// The `seq` header of a message made by [`numbered`].
pub fn seq_of(message: &Message) -> u64 {
    message
        .header("seq")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("message {} has no seq header", message.id))
}

/// An event with full metadata, as [`rich_message`] but for the store.
pub fn rich_event(n: u64) -> NewEvent {
    let m = rich_message("unused", "unused");
    NewEvent {
        id: MessageId::new(),
        name: format!("conformance.Happened{n}.v1"),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        metadata: m.metadata,
    }
}

/// A plain event whose payload is `n`.
pub fn event(n: u64) -> NewEvent {
    NewEvent::new("conformance.Counted.v1", n.to_string().into_bytes())
}

/// Whether the server `(name, "host:port")` a suite needs is reachable. When it is not: with `CI`
/// set, panics (a missing server must never turn into a green run); otherwise prints a loud
/// `SKIPPED` line and returns `false`.
pub fn server_available((name, address): (&str, &str)) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let reachable = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    if reachable {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is not reachable at {address} and CI is set: start it (scripts/ensure-services.sh)");
    }
    eprintln!("SKIPPED: {name} is not reachable at {address}; start it with `bash scripts/ensure-services.sh`");
    false
}

/// Runs `f` with a `tracing` subscriber of its own that records its `warn!` and `error!` lines,
/// and returns them (one line each, fields as `name=value`, no colours) with `f`'s output.
/// Only what `f` logs while it is being polled is captured (tasks it spawns log elsewhere), so
/// scenarios running at the same time do not mix their lines.
pub async fn capture_warnings<F: Future>(f: F) -> (F::Output, String) {
    let buffer = Captured::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    let output = f.with_subscriber(subscriber).await;
    let lines = String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned();
    (output, lines)
}

/// The buffer [`capture_warnings`] writes to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A metrics recorder that keeps gauges (and ignores counters and histograms), for scenarios
/// that check Herald's gauges labelled `topic` and `group` (consumer lag, pending dead letters).
/// Install it as the thread's local recorder (`metrics::set_default_local_recorder`) and run
/// everything that records on that thread (a current-thread runtime). Not `metrics_util`'s
/// debugging recorder: its snapshot zeroes every gauge it reads, so a gauge polled twice reads 0
/// the second time although nobody set it; here a gauge reads what it was last set to.
#[derive(Clone)]
pub struct Gauges {
    registry: Arc<metrics_util::registry::Registry<metrics::Key, metrics_util::registry::AtomicStorage>>,
}

impl Gauges {
    /// A recorder with no gauges yet.
    pub fn new() -> Self {
        Self { registry: Arc::new(metrics_util::registry::Registry::atomic()) }
    }

    /// The gauge `name{topic, group}` as last set, or `None` if it never was.
    pub fn get(&self, name: &str, topic: &str, group: &str) -> Option<f64> {
        use herald::observability::names;
        self.registry.get_gauge_handles().into_iter().find_map(|(key, gauge)| {
            let label = |k: &str| key.labels().find(|l| l.key() == k).map(|l| l.value().to_owned());
            let matches = key.name() == name
                && label(names::TOPIC).as_deref() == Some(topic)
                && label(names::GROUP).as_deref() == Some(group);
            matches.then(|| f64::from_bits(gauge.load(std::sync::atomic::Ordering::Acquire)))
        })
    }
}

impl Default for Gauges {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauges").finish_non_exhaustive()
    }
}

impl metrics::Recorder for Gauges {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.registry.get_or_create_gauge(key, |gauge| metrics::Gauge::from_arc(gauge.clone()))
    }

    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
