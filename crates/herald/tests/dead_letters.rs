//! Dead letters end to end in memory: the router's replay rules (skip replays for other groups,
//! handle them under the original id) and the archive route, with the in-memory broker, store
//! and archive; a replayed dead letter of an old message version reaching the current handler.
//! The same flow on SQLite is `herald-sql/tests/dead_letters.rs`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald::dead_letters::{
    DeadLetter, DeadLetterError, DeadLetterFilter, DeadLetterHook, DeadLetterStatus, DeadLetters, Page,
};
use herald::memory::{MemoryBroker, MemoryDeadLetterArchive, MemoryStore};
use herald::outbox::OutboxRelay;
use herald::pubsub::{Publisher, StartFrom, SubscribeOptions, Subscriber};
use herald::queue::dead_letter_for;
use herald::router::{Handler, HandlerContext, HandlerError, Inbox, RetryPolicy, Route, Router, UPCAST_FROM};
use herald::store::{StoreError, Transaction};
use herald::{Event, Message, MessageId, Registry};
use tokio_util::sync::CancellationToken;

type Seen = Arc<Mutex<Vec<MessageId>>>;

struct Recorder {
    broken: Option<Arc<AtomicBool>>,
    seen: Seen,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        if self.broken.as_ref().is_some_and(|b| b.load(Ordering::SeqCst)) {
            return Err(HandlerError::transient("downstream unavailable"));
        }
        self.seen.lock().unwrap().push(cx.message().id);
        Ok(())
    }
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reaches_only_the_failed_group_and_is_handled_once() {
    let broker = MemoryBroker::in_memory();
    let store = Arc::new(MemoryStore::new());
    let dead_letters = DeadLetters::new(store.clone(), Arc::new(MemoryDeadLetterArchive::new()));
    let broken = Arc::new(AtomicBool::new(true));
    let (billing, shipping) = (Seen::default(), Seen::default());
    let options = |group: &str| SubscribeOptions::new("orders", group).start(StartFrom::Beginning).max_deliveries(2);
    let billing_options = options("billing");

    // Shipping runs without a store or inbox: only the replay's group header keeps it away.
    let shipping_router = Router::new(Arc::new(broker.clone()))
        .route(Route::new(options("shipping")).on_name("Placed.v1", Recorder { broken: None, seen: shipping.clone() }));
    let mut router = Router::new(Arc::new(broker.clone()))
        .store(store.clone())
        .middleware(Inbox)
        .retry(RetryPolicy {
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
            ..RetryPolicy::default()
        })
        .route(
            Route::new(billing_options.clone())
                .on_name("Placed.v1", Recorder { broken: Some(broken.clone()), seen: billing.clone() }),
        );
    for route in dead_letters.archive_routes_for(&[&billing_options], "archive") {
        router = router.route(route);
    }
    let stop = CancellationToken::new();
    let tasks = [tokio::spawn(router.run(stop.clone())), tokio::spawn(shipping_router.run(stop.clone()))];
    let relay = tokio::spawn(OutboxRelay::new(store.clone(), Arc::new(broker.clone())).run(stop.clone()));

    let original = Message::new("orders", "Placed.v1", b"{}".to_vec()).with_key("o-1");
    broker.publish(std::slice::from_ref(&original)).await.unwrap();
    let pending = DeadLetterFilter::pending().group("billing");
    let mut letters: Vec<DeadLetter> = Vec::new();
    eventually("the dead letter is archived", async || {
        letters = dead_letters.list(&pending, &Page::default()).await.unwrap();
        !letters.is_empty()
    })
    .await;
    let letter = letters.remove(0);
    assert_eq!((letter.message.id, letter.attempts), (original.id, 2));
    assert!(letter.reason.contains("downstream unavailable"), "{}", letter.reason);

    broken.store(false, Ordering::SeqCst);
    dead_letters.replay(letter.id).await.unwrap();
    eventually("billing handles the replay", async || !billing.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*billing.lock().unwrap(), vec![original.id], "once, under the original id");
    assert_eq!(*shipping.lock().unwrap(), vec![original.id], "shipping did not handle the replay");
    assert_eq!(dead_letters.get(letter.id).await.unwrap().status, DeadLetterStatus::Replayed);
    assert!(matches!(dead_letters.replay(letter.id).await, Err(DeadLetterError::NotPending { .. })));
    assert!(matches!(dead_letters.discard(MessageId::new()).await, Err(DeadLetterError::NotFound(_))));

    stop.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    relay.await.unwrap();
}

#[tokio::test]
async fn a_dead_letter_without_a_group_is_not_replayable() {
    let store = Arc::new(MemoryStore::new());
    let dead_letters = DeadLetters::new(store.clone(), Arc::new(MemoryDeadLetterArchive::new()));
    // Someone published something to a dead-letter topic by hand: no headers at all.
    let stray = Message::new("orders.billing.dead-letters", "Placed.v1", b"{}".to_vec());
    assert!(dead_letters.archive_message(&stray).await.unwrap());
    assert!(!dead_letters.archive_message(&stray).await.unwrap(), "archiving is idempotent");
    let letter = dead_letters.get(stray.id).await.unwrap();
    assert_eq!((letter.group.as_str(), letter.reason.as_str(), letter.attempts), ("", "unknown", 0));
    assert!(matches!(dead_letters.replay(stray.id).await, Err(DeadLetterError::NotReplayable { .. })));
    assert_eq!(dead_letters.replay_all(&DeadLetterFilter::all()).await.unwrap(), 0);
    assert_eq!(dead_letters.get(stray.id).await.unwrap().status, DeadLetterStatus::Pending);
    assert_eq!(dead_letters.discard(stray.id).await.unwrap().status, DeadLetterStatus::Discarded);
}

/// Version 2 of an order placement (v1 had no currency).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct PlacedV2 {
    total: i64,
    currency: String,
}
impl Event for PlacedV2 {
    const NAME: &'static str = "Placed.v2";
}

/// What the v2 handler saw: the id it was handled under, the order, the [`UPCAST_FROM`] header.
type HandledV2 = Arc<Mutex<Vec<(MessageId, PlacedV2, Option<String>)>>>;

/// A v1 message published before the deploy that introduced v2 (and forgot its upcaster) is
/// dead-lettered as "no handler"; once the upcaster is deployed, its replay — the v1 message
/// as sent — is upcast by the router and reaches the v2 handler, under the original id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_v1_dead_letter_reaches_the_v2_handler_through_the_routers_upcasting() {
    let broker = MemoryBroker::in_memory();
    let store = Arc::new(MemoryStore::new());
    let dead_letters = DeadLetters::new(store.clone(), Arc::new(MemoryDeadLetterArchive::new()));
    let options = SubscribeOptions::new("orders-v", "billing").start(StartFrom::Beginning).max_deliveries(2);
    let handled = HandledV2::default();
    let router = |registry: Registry| {
        let route = Route::new(options.clone()).ignore_unknown(false).on_with(
            handled.clone(),
            async |cx: &mut HandlerContext, placed: PlacedV2, handled: &HandledV2| {
                let from = cx.message().header(UPCAST_FROM).map(str::to_owned);
                handled.lock().unwrap().push((cx.message().id, placed, from));
                Ok(())
            },
        );
        let router = Router::new(Arc::new(broker.clone())).store(store.clone()).middleware(Inbox).registry(registry);
        dead_letters.archive_routes_for(&[&options], "archive").into_iter().fold(router.route(route), Router::route)
    };

    // Before: a v2 handler and no upcaster.
    let stop = CancellationToken::new();
    let running = tokio::spawn(router(Registry::new()).run(stop.clone()));
    let original = Message::new("orders-v", "Placed.v1", br#"{"total":42}"#.to_vec()).with_key("o-7");
    broker.publish(std::slice::from_ref(&original)).await.unwrap();
    let pending = DeadLetterFilter::pending().group("billing");
    let mut letters: Vec<DeadLetter> = Vec::new();
    eventually("the v1 message is dead-lettered and archived", async || {
        letters = dead_letters.list(&pending, &Page::default()).await.unwrap();
        !letters.is_empty()
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    let letter = letters.remove(0);
    assert!(letter.reason.contains("no handler for message `Placed.v1`"), "{}", letter.reason);
    assert_eq!(letter.message.name, "Placed.v1");

    // After: the upcaster is deployed; the dead letter is replayed through the outbox.
    let upcasters = Registry::new().upcast("Placed.v1", PlacedV2::NAME, |mut v| {
        v["currency"] = serde_json::Value::from("EUR");
        Ok(v)
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(router(upcasters).run(stop.clone()));
    let relay = tokio::spawn(OutboxRelay::new(store.clone(), Arc::new(broker.clone())).run(stop.clone()));
    let replay = dead_letters.replay(letter.id).await.unwrap();
    assert_eq!(replay.name, "Placed.v1", "a replay republishes the message as it was sent");
    eventually("the v2 handler handles the replay", async || !handled.lock().unwrap().is_empty()).await;
    let seen = handled.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(original.id, PlacedV2 { total: 42, currency: "EUR".into() }, Some("Placed.v1".to_owned()))],
        "upcast, under the original id"
    );
    assert_eq!(dead_letters.get(letter.id).await.unwrap().status, DeadLetterStatus::Replayed);
    stop.cancel();
    running.await.unwrap().unwrap();
    relay.await.unwrap();
}

/// Alerts on new dead letters, in the archiving unit of work (failing its first call), and on
/// resolutions, in theirs.
struct Alert {
    calls: Arc<Mutex<Vec<MessageId>>>,
}

#[async_trait]
impl DeadLetterHook for Alert {
    async fn archived(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<(), StoreError> {
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(letter.id);
            calls.len() == 1
        };
        let alert = Message::new("alerts", "DeadLetterAlert.v1", letter.reason.clone().into_bytes());
        tx.enqueue(vec![alert]).await?;
        if first {
            return Err(StoreError::Backend("the alert's first try fails".into()));
        }
        Ok(())
    }

    async fn resolved(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<(), StoreError> {
        let alert = Message::new("alerts", "DeadLetterResolved.v1", letter.status.as_str().as_bytes().to_vec());
        tx.enqueue(vec![alert]).await
    }
}

/// A `DeadLetterHook` runs in the archiving unit of work: its failure rolls the archiving
/// back (and the retry archives and alerts once); a redelivered dead letter, already archived,
/// does not call it again. A resolution calls it in the resolution's unit of work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_hook_runs_once_in_the_archiving_and_in_the_resolving_unit_of_work() {
    let broker = MemoryBroker::in_memory();
    let store = Arc::new(MemoryStore::new());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let dead_letters =
        DeadLetters::new(store.clone(), Arc::new(MemoryDeadLetterArchive::new())).hook(Alert { calls: calls.clone() });
    let failing = SubscribeOptions::new("orders", "billing");
    let router = Router::new(Arc::new(broker.clone())).store(store.clone()).middleware(Inbox).retry(RetryPolicy {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(10),
        ..RetryPolicy::default()
    });
    let router = dead_letters.archive_routes_for(&[&failing], "archive").into_iter().fold(router, Router::route);
    let mut alerts =
        broker.subscribe(SubscribeOptions::new("alerts", "ops").start(StartFrom::Beginning)).await.unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(router.run(stop.clone()));
    let relay = tokio::spawn(OutboxRelay::new(store.clone(), Arc::new(broker.clone())).run(stop.clone()));
    let mut next_alert = async || {
        let alert = tokio::time::timeout(Duration::from_secs(10), alerts.next()).await.unwrap().unwrap();
        let seen = (alert.message.name.clone(), String::from_utf8(alert.message.payload.clone()).unwrap());
        alert.ack().await.unwrap();
        seen
    };

    let original = Message::new("orders", "Placed.v1", b"{}".to_vec()).with_key("o-9");
    let dead = dead_letter_for(&original, "billing", 3, "card declined", &failing.effective_dead_letter_topic());
    broker.publish(std::slice::from_ref(&dead)).await.unwrap();
    assert_eq!(next_alert().await, ("DeadLetterAlert.v1".to_owned(), "card declined".to_owned()));
    assert_eq!(*calls.lock().unwrap(), vec![dead.id, dead.id], "failed once (rolled back), then archived");
    // (The in-memory archive applies its changes just after the store's commit.)
    eventually("the dead letter is archived", async || dead_letters.get(dead.id).await.is_ok()).await;
    assert_eq!(dead_letters.get(dead.id).await.unwrap().status, DeadLetterStatus::Pending);

    // The broker delivers the same dead letter again (archived already: no call), then another
    // of the same key (handled after it, in key order: one call).
    let later = dead_letter_for(&original, "billing", 3, "card expired", &failing.effective_dead_letter_topic());
    broker.publish(&[dead.clone(), later.clone()]).await.unwrap();
    assert_eq!(next_alert().await, ("DeadLetterAlert.v1".to_owned(), "card expired".to_owned()));
    assert_eq!(*calls.lock().unwrap(), vec![dead.id, dead.id, later.id], "no call for the redelivery");
    eventually("both are archived", async || dead_letters.count(&DeadLetterFilter::all()).await.unwrap() == 2).await;

    // Resolving it calls the hook in the resolution's unit of work.
    dead_letters.discard(dead.id).await.unwrap();
    assert_eq!(next_alert().await, ("DeadLetterResolved.v1".to_owned(), "discarded".to_owned()));
    stop.cancel();
    running.await.unwrap().unwrap();
    relay.await.unwrap();
}
