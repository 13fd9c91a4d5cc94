//! Herald's metrics, as seen by a recorder: the router counts handled, failed and dead-lettered
//! messages per topic and handler and times every delivery; the broker counts published
//! messages; the relay keeps the outbox gauges. (Names: `herald::observability::names`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald::memory::{MemoryBroker, MemoryStore};
use herald::observability::names;
use herald::outbox::OutboxRelay;
use herald::pubsub::PubSubError;
use herald::router::{Handler, HandlerContext, HandlerError, RetryPolicy, Route, Router};
use herald::{Message, Publisher, StartFrom, Store, SubscribeOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio_util::sync::CancellationToken;

/// Accumulates snapshots (a debugging recorder's snapshot resets what it reads).
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, f64>,
    histograms: HashMap<String, Vec<f64>>,
}

impl Seen {
    /// `name{k=v,…}` with labels in recording order.
    fn key(name: &str, labels: &[(&str, &str)]) -> String {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{name}{{{}}}", labels.join(","))
    }

    fn take(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let labels: Vec<(&str, &str)> = key.key().labels().map(|l| (l.key(), l.value())).collect();
            let k = Self::key(key.key().name(), &labels);
            match value {
                DebugValue::Counter(n) => *self.counters.entry(k).or_default() += n,
                DebugValue::Gauge(v) => {
                    self.gauges.insert(k, v.into_inner());
                }
                DebugValue::Histogram(vs) => self.histograms.entry(k).or_default().extend(vs.into_iter().map(|v| v.0)),
            }
        }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters.get(&Self::key(name, labels)).copied().unwrap_or(0)
    }
}

/// Succeeds for `Ok`, fails permanently for `Boom`, transiently for anything else.
struct ByName;

#[async_trait]
impl Handler for ByName {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        match cx.message().name.as_str() {
            "Ok" => Ok(()),
            "Boom" => Err(HandlerError::permanent("cannot ever work")),
            _ => Err(HandlerError::transient("not now")),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_router_counts_handled_failed_and_dead_lettered_messages_per_topic_and_handler() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Thread-local, and every task of this current-thread runtime runs on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let broker = Arc::new(MemoryBroker::in_memory());
    let options = SubscribeOptions::new("orders", "billing").start(StartFrom::Beginning).max_deliveries(2);
    let fast = RetryPolicy { initial_delay: Duration::from_millis(5), jitter: 0.0, ..RetryPolicy::default() };
    let router = Router::new(broker.clone())
        .retry(fast)
        .route(Route::new(options).on_name("Ok", ByName).on_name("Boom", ByName).on_name("Flaky", ByName));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(router.run(shutdown.clone()));

    let messages: Vec<Message> =
        ["Ok", "Ok", "Boom", "Flaky"].iter().map(|n| Message::new("orders", *n, b"{}".to_vec())).collect();
    broker.publish(&messages).await.expect("publish");

    let (topic, handler) = (("topic", "orders"), ("handler", "billing"));
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        seen.take(&snapshotter);
        let handled = seen.counter(names::MESSAGES_HANDLED, &[topic, handler]);
        let dead = seen.counter(names::MESSAGES_DEAD_LETTERED, &[topic, handler]);
        if handled == 2 && dead == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "handled {handled}, dead-lettered {dead}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    running.await.expect("router task").expect("router");
    seen.take(&snapshotter);

    assert_eq!(seen.counter(names::MESSAGES_PUBLISHED, &[topic]), 4);
    assert_eq!(seen.counter(names::MESSAGES_HANDLED, &[topic, handler]), 2);
    assert_eq!(seen.counter(names::MESSAGES_FAILED, &[topic, handler, ("kind", "permanent")]), 1);
    // Flaky failed on both of its deliveries; the second was the last, so it was dead-lettered.
    assert_eq!(seen.counter(names::MESSAGES_FAILED, &[topic, handler, ("kind", "transient")]), 2);
    assert_eq!(seen.counter(names::MESSAGES_DEAD_LETTERED, &[topic, handler]), 2);
    let durations = &seen.histograms[&Seen::key(names::HANDLER_DURATION, &[topic, handler])];
    assert_eq!(durations.len(), 5, "one sample per delivery: {durations:?}");
    assert!(durations.iter().all(|d| *d >= 0.0 && *d < 10.0));
    assert!(
        seen.gauges.contains_key(&Seen::key(names::CONSUMER_LAG, &[topic, ("group", "billing")])),
        "the memory broker reports consumer lag: {:?}",
        seen.gauges
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_unknown_message_on_a_strict_route_counts_as_dead_lettered() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let broker = Arc::new(MemoryBroker::in_memory());
    let route = Route::new(SubscribeOptions::new("orders", "strict").start(StartFrom::Beginning))
        .on_name("Ok", ByName)
        .ignore_unknown(false);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Router::new(broker.clone()).route(route).run(shutdown.clone()));
    broker.publish(&[Message::new("orders", "Unknown", b"{}".to_vec())]).await.expect("publish");

    let mut seen = Seen::default();
    let key = [("topic", "orders"), ("handler", "strict")];
    for _ in 0..1000 {
        seen.take(&snapshotter);
        if seen.counter(names::MESSAGES_DEAD_LETTERED, &key) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    running.await.expect("router task").expect("router");
    assert_eq!(seen.counter(names::MESSAGES_DEAD_LETTERED, &key), 1);
    assert_eq!(seen.counter(names::MESSAGES_FAILED, &[key[0], key[1], ("kind", "permanent")]), 0);
}

/// A broker that is down.
#[derive(Debug)]
struct Down;

#[async_trait]
impl Publisher for Down {
    async fn publish(&self, _: &[Message]) -> Result<(), PubSubError> {
        Err(PubSubError::Closed)
    }

    async fn close(&self) -> Result<(), PubSubError> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_relay_reports_the_outbox_backlog_and_what_it_relayed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let store = Arc::new(MemoryStore::new());
    let mut tx = store.begin().await.expect("begin");
    tx.enqueue((0..3).map(|i| Message::new("t", format!("N{i}"), b"{}".to_vec())).collect()).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let stats = store.outbox_stats().await.expect("stats");
    assert_eq!(stats.backlog, 3);

    // The broker is down: the backlog stays, and the gauges say so.
    let failing = OutboxRelay::new(store.clone(), Arc::new(Down)).holder("r");
    assert!(failing.publish_pending().await.is_err());
    let mut seen = Seen::default();
    seen.take(&snapshotter);
    assert_eq!(seen.gauges[&Seen::key(names::OUTBOX_BACKLOG, &[])], 3.0);
    assert!(seen.gauges[&Seen::key(names::OUTBOX_OLDEST_AGE, &[])] >= 0.0);

    // The broker is back: everything is relayed and the backlog is empty.
    let relay = OutboxRelay::new(store.clone(), Arc::new(MemoryBroker::in_memory())).holder("r");
    assert_eq!(relay.publish_pending().await.expect("relay"), 3);
    seen.take(&snapshotter);
    assert_eq!(seen.counter(names::OUTBOX_RELAYED, &[]), 3);
    assert_eq!(seen.counter(names::MESSAGES_PUBLISHED, &[("topic", "t")]), 3);
    assert_eq!(seen.gauges[&Seen::key(names::OUTBOX_BACKLOG, &[])], 0.0);
}

#[test]
fn saga_and_projection_metrics_are_recorded_under_their_documented_names() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        herald::observability::record_saga_started("order");
        herald::observability::record_saga_completed("order");
        herald::observability::record_saga_compensated("order");
        herald::observability::record_projection_lag("stores", 7, 1.5);
    });
    let mut seen = Seen::default();
    seen.take(&snapshotter);
    for name in [names::SAGAS_STARTED, names::SAGAS_COMPLETED, names::SAGAS_COMPENSATED] {
        assert_eq!(seen.counter(name, &[("saga", "order")]), 1, "{name}");
    }
    assert_eq!(seen.gauges[&Seen::key(names::PROJECTION_LAG, &[("projection", "stores")])], 7.0);
    assert_eq!(seen.gauges[&Seen::key(names::PROJECTION_LAG_SECONDS, &[("projection", "stores")])], 1.5);
    assert!(names::ALL.iter().all(|(name, _, _)| name.starts_with("herald_")));
}

/// Saga outcomes are counted by the orchestrator when their transition commits.
#[test]
fn the_orchestrator_counts_started_completed_and_compensated_sagas() {
    use herald::command::Reply;
    use herald::saga::testing::SagaTest;
    use herald::saga::{Saga, Step};

    let saga = || {
        Saga::<u32>::new("trip", "trip.replies")
            .step(
                Step::new("flight")
                    .action(|_| Ok(Message::new("c", "Book.v1", Vec::new())))
                    .compensation(|_| Ok(Message::new("c", "Cancel.v1", Vec::new()))),
            )
            .step(Step::new("hotel").action(|_| Ok(Message::new("c", "Book.v1", Vec::new()))))
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut done = SagaTest::start(saga(), "a", 0).await.expect("start");
            done.reply(Reply::success()).await.expect("reply");
            done.reply(Reply::success()).await.expect("reply");
            let mut undone = SagaTest::start(saga(), "b", 0).await.expect("start");
            undone.reply(Reply::success()).await.expect("reply");
            undone.reply(Reply::failure("full")).await.expect("reply");
            undone.reply(Reply::success()).await.expect("reply");
            SagaTest::start(saga(), "c", 0).await.expect("start");
        });
    });
    let mut seen = Seen::default();
    seen.take(&snapshotter);
    assert_eq!(seen.counter(names::SAGAS_STARTED, &[("saga", "trip")]), 3);
    assert_eq!(seen.counter(names::SAGAS_COMPLETED, &[("saga", "trip")]), 1);
    assert_eq!(seen.counter(names::SAGAS_COMPENSATED, &[("saga", "trip")]), 1);
}
