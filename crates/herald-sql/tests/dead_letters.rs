//! Dead letters end to end on the embedded default (one SQLite file, the SQL broker, a router
//! with the store and the inbox, the outbox relay): a handler fails a message until it runs out
//! of deliveries, the dead letter lands in the archive with its reason and attempts, the handler
//! is fixed, and the dead-letter API replays it to the failed group only. The main scenario
//! also runs on PostgreSQL (the store and the SQL broker in a fresh schema), skipping loudly
//! without a server.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald::dead_letters::{
    DeadLetter, DeadLetterError, DeadLetterFilter, DeadLetterStatus, DeadLetters, Page, REPLAY_FOR_GROUP,
};
use herald::outbox::OutboxRelay;
use herald::pubsub::{Publisher, StartFrom, SubscribeOptions, Subscriber};
use herald::router::{Handler, HandlerContext, HandlerError, Inbox, RetryPolicy, Route, Router};
use herald::{Message, MessageId, Store};
use herald_sql::PostgresConfig;
#[cfg(feature = "sqlite")]
use herald_sql::SqliteDatabase;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "orders";
const PLACED: &str = "ordering.OrderPlaced.v1";
const MAX_DELIVERIES: u32 = 3;

/// What a handler saw: the message id, correlation id and trace parent of each handled message.
type Seen = Arc<Mutex<Vec<(MessageId, Option<MessageId>, Option<String>)>>>;

/// Billing: fails every message (transiently) while `broken`, or at once (permanently) for
/// payloads saying `poison`; records what it handled.
struct Billing {
    broken: Arc<AtomicBool>,
    seen: Seen,
}

#[async_trait]
impl Handler for Billing {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let m = cx.message();
        if m.payload == b"poison" {
            return Err(HandlerError::permanent("cannot bill a poisoned order"));
        }
        if self.broken.load(Ordering::SeqCst) {
            return Err(HandlerError::transient("payment service down"));
        }
        self.seen.lock().unwrap().push((m.id, m.metadata.correlation_id, m.metadata.traceparent.clone()));
        Ok(())
    }
}

/// Shipping: always handles; records what it handled.
struct Shipping {
    seen: Seen,
}

#[async_trait]
impl Handler for Shipping {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let m = cx.message();
        self.seen.lock().unwrap().push((m.id, m.metadata.correlation_id, m.metadata.traceparent.clone()));
        Ok(())
    }
}

fn ids(seen: &Seen) -> Vec<MessageId> {
    seen.lock().unwrap().iter().map(|s| s.0).collect()
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct App {
    _guard: Box<dyn std::any::Any + Send>,
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    dead_letters: DeadLetters,
    broken: Arc<AtomicBool>,
    billing: Seen,
    shipping: Seen,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl App {
    /// On a fresh SQLite file.
    #[cfg(feature = "sqlite")]
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDatabase::open(dir.path().join("app.db").to_str().unwrap()).await.unwrap();
        let store = Arc::new(db.store());
        let broker = Arc::new(db.broker());
        Self::start(DeadLetters::on(store.clone()), store, broker.clone(), broker, Box::new(dir)).await
    }

    /// In a fresh PostgreSQL schema (named like the conformance tests' schemas, which their
    /// setup sweeps after an hour).
    async fn postgres() -> Self {
        let url = std::env::var("HERALD_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let schema = format!("herald_test_{secs}_{}", uuid::Uuid::now_v7().simple());
        let db = PostgresConfig::new(url).with_schema(&schema).open().await.unwrap();
        let store = Arc::new(db.store());
        let broker = Arc::new(db.broker());
        Self::start(DeadLetters::on(store.clone()), store, broker.clone(), broker, Box::new(db)).await
    }

    /// Billing and shipping on `orders`, the archive of billing's dead letters, the relay.
    async fn start(
        dead_letters: DeadLetters,
        store: Arc<dyn Store>,
        publisher: Arc<dyn Publisher>,
        subscriber: Arc<dyn Subscriber>,
        guard: Box<dyn std::any::Any + Send>,
    ) -> Self {
        let (broken, billing, shipping) = (Arc::new(AtomicBool::new(true)), Seen::default(), Seen::default());

        let options = |group: &str| {
            SubscribeOptions::new(TOPIC, group)
                .start(StartFrom::Beginning)
                .max_deliveries(MAX_DELIVERIES)
                .ack_wait(Duration::from_secs(5))
        };
        let billing_options = options("billing");
        let mut router = Router::new(subscriber.clone())
            .store(store.clone())
            .middleware(Inbox)
            .retry(RetryPolicy {
                initial_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(20),
                ..RetryPolicy::default()
            })
            .route(
                Route::new(billing_options.clone())
                    .on_name(PLACED, Billing { broken: broken.clone(), seen: billing.clone() }),
            );
        // Shipping is another service: its own router, no store and no inbox, so only the
        // replay's group header keeps the replay away from it.
        let shipping_router = Router::new(subscriber)
            .route(Route::new(options("shipping")).on_name(PLACED, Shipping { seen: shipping.clone() }));
        for route in dead_letters.archive_routes_for(&[&billing_options], "dead-letter-archive") {
            router = router.route(route);
        }

        let stop = CancellationToken::new();
        let relay = OutboxRelay::new(store.clone(), publisher.clone());
        let tasks = vec![
            tokio::spawn({
                let stop = stop.clone();
                async move { router.run(stop).await.unwrap() }
            }),
            tokio::spawn({
                let stop = stop.clone();
                async move { shipping_router.run(stop).await.unwrap() }
            }),
            tokio::spawn(relay.run(stop.clone())),
        ];
        Self { _guard: guard, store, publisher, dead_letters, broken, billing, shipping, stop, tasks }
    }

    async fn publish(&self, message: &Message) {
        self.publisher.publish(std::slice::from_ref(message)).await.unwrap();
    }

    /// Waits for the dead letter of `original` in the archive.
    async fn archived(&self, original: &Message) -> DeadLetter {
        let mut found = None;
        eventually("the dead letter is archived", async || {
            let all = self.dead_letters.list(&DeadLetterFilter::all(), &Page::first(100)).await.unwrap();
            found = all.into_iter().find(|l| l.message.id == original.id);
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
        self.publisher.close().await.unwrap();
    }
}

fn order(payload: &[u8]) -> Message {
    let mut m = Message::new(TOPIC, PLACED, payload.to_vec()).with_key("order-1").with_header("tenant", "acme");
    m.metadata.correlation_id = Some(MessageId::new());
    m.metadata.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    m
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_api_replays_a_dead_letter_and_it_is_then_handled() {
    replays_a_dead_letter_to_the_failed_group_only(App::sqlite().await).await;
}

#[test]
fn on_postgres_the_dead_letter_api_replays_a_dead_letter_and_it_is_then_handled() {
    if !herald_conformance::support::server_available(("PostgreSQL", "127.0.0.1:5432")) {
        return;
    }
    herald_conformance::run(async { replays_a_dead_letter_to_the_failed_group_only(App::postgres().await).await });
}

async fn replays_a_dead_letter_to_the_failed_group_only(app: App) {
    let original = order(br#"{"total":42}"#);
    app.publish(&original).await;

    // Shipping handles it; billing fails it MAX_DELIVERIES times and it is dead-lettered.
    let letter = app.archived(&original).await;
    assert_eq!(ids(&app.shipping), vec![original.id], "shipping handled the original");
    assert!(ids(&app.billing).is_empty(), "billing never handled it");
    assert_eq!(letter.group, "billing");
    assert_eq!(letter.attempts, MAX_DELIVERIES, "attempts");
    assert!(letter.reason.contains("payment service down"), "reason: {}", letter.reason);
    assert_eq!(letter.status, DeadLetterStatus::Pending);
    assert_eq!(letter.dead_letter_topic, "orders.billing.dead-letters");
    assert_eq!(letter.message, original, "the original message with its metadata, intact");
    assert_eq!(app.dead_letters.get(letter.id).await.unwrap(), letter, "inspect by id");
    let pending = DeadLetterFilter::pending().topic(TOPIC).group("billing");
    assert_eq!(app.dead_letters.count(&pending).await.unwrap(), 1);

    // Fix billing, replay.
    app.broken.store(false, Ordering::SeqCst);
    let replay = app.dead_letters.replay(letter.id).await.unwrap();
    assert_eq!(replay.header(REPLAY_FOR_GROUP), Some("billing"));
    eventually("billing handles the replay", async || !ids(&app.billing).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // room for a wrong extra delivery
    {
        let billing = app.billing.lock().unwrap();
        assert_eq!(billing.len(), 1, "billing handled the replay exactly once");
        let (id, correlation, traceparent) = &billing[0];
        assert_eq!(*id, original.id, "under the original id (so the inbox de-duplicates)");
        assert_eq!(*correlation, original.metadata.correlation_id, "same conversation");
        assert_eq!(*traceparent, original.metadata.traceparent, "same trace");
    }
    assert_eq!(ids(&app.shipping), vec![original.id], "shipping did NOT handle it again");
    let replayed = app.dead_letters.get(letter.id).await.unwrap();
    assert_eq!((replayed.status, replayed.replay_id), (DeadLetterStatus::Replayed, Some(replay.id)));
    assert_eq!(app.dead_letters.count(&pending).await.unwrap(), 0, "nothing pending");

    // Bad input is a typed error, not a panic.
    assert!(matches!(
        app.dead_letters.replay(letter.id).await,
        Err(DeadLetterError::NotPending { status: DeadLetterStatus::Replayed, .. })
    ));
    let unknown = MessageId::new();
    assert!(matches!(app.dead_letters.replay(unknown).await, Err(DeadLetterError::NotFound(id)) if id == unknown));

    // A duplicate of the replay (another transport id, as a republish beyond a broker's
    // de-duplication window would be) is absorbed by billing's inbox.
    app.publish(&replayed.replay_message(MessageId::new())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&app.billing), vec![original.id], "the inbox absorbs a duplicate replay");
    assert_eq!(ids(&app.shipping), vec![original.id]);
    assert!(app.store.outbox_pending(10).await.unwrap().is_empty(), "the relay published the replay");

    app.stop().await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_dead_letter_leaves_the_pending_list_and_is_never_handled() {
    let app = App::sqlite().await;
    app.broken.store(false, Ordering::SeqCst);
    let poison = order(b"poison");
    app.publish(&poison).await;

    let letter = app.archived(&poison).await;
    assert_eq!(letter.attempts, 1, "a permanent error is dead-lettered at once");
    assert!(letter.reason.contains("poisoned"), "reason: {}", letter.reason);
    let pending = DeadLetterFilter::pending().group("billing");
    let listed = app.dead_letters.list(&pending, &Page::default()).await.unwrap();
    assert_eq!(listed.iter().map(|l| l.id).collect::<Vec<_>>(), vec![letter.id]);

    let discarded = app.dead_letters.discard(letter.id).await.unwrap();
    assert_eq!(discarded.status, DeadLetterStatus::Discarded);
    assert!(app.dead_letters.list(&pending, &Page::default()).await.unwrap().is_empty(), "hidden from pending");
    let all = app.dead_letters.list(&DeadLetterFilter::all(), &Page::default()).await.unwrap();
    assert_eq!(all.len(), 1, "kept in the archive, as discarded");
    assert!(matches!(app.dead_letters.replay(letter.id).await, Err(DeadLetterError::NotPending { .. })));
    assert!(matches!(app.dead_letters.discard(letter.id).await, Err(DeadLetterError::NotPending { .. })));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ids(&app.billing).is_empty());
    assert_eq!(ids(&app.shipping), vec![poison.id]);

    app.stop().await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_fails_again_is_archived_again_and_can_be_replayed_again() {
    let app = App::sqlite().await;
    let original = order(br#"{"total":7}"#);
    app.publish(&original).await;
    let first = app.archived(&original).await;

    // Still broken: the replay fails too and becomes a second dead letter.
    app.dead_letters.replay(first.id).await.unwrap();
    let mut second = None;
    eventually("the failed replay is archived", async || {
        let pending = app.dead_letters.list(&DeadLetterFilter::pending(), &Page::default()).await.unwrap();
        second = pending.into_iter().next();
        second.is_some()
    })
    .await;
    let second = second.unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(second.original_id(), original.id, "it remembers the original");
    assert_eq!(second.group, "billing");
    assert_eq!(ids(&app.shipping), vec![original.id], "shipping skipped the replay");

    app.broken.store(false, Ordering::SeqCst);
    assert_eq!(app.dead_letters.replay_all(&DeadLetterFilter::all().group("billing")).await.unwrap(), 1);
    eventually("billing handles the second replay", async || !ids(&app.billing).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&app.billing), vec![original.id], "once, under the original id");
    assert_eq!(ids(&app.shipping), vec![original.id]);

    app.stop().await;
}
