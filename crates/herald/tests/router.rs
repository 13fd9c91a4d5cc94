//! The router against the in-memory broker and store: dispatch by name (upcasting old names
//! first), retries, dead letters, per-key order, the unit of work with inbox and outbox,
//! shutdown.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::memory::{MemoryBroker, MemoryStore};
use herald::outbox::OutboxRelay;
use herald::pubsub::{DLQ_REASON, Publisher, StartFrom, SubscribeOptions, Subscriber};
use herald::router::{
    Handler, HandlerContext, HandlerError, Inbox, Retry, RetryPolicy, Route, Router, StartError, Timeout, UPCAST_FROM,
};
use herald::{Event, Message, Registry, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    n: u32,
}
impl Event for Ping {
    const NAME: &'static str = "test.Ping.v1";
}

fn ping(topic: &str, key: &str, n: u32) -> Message {
    Message::new(topic, Ping::NAME, serde_json::to_vec(&Ping { n }).unwrap()).with_key(key)
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

fn options(topic: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic, "workers").start(StartFrom::Beginning).max_in_flight(16).max_deliveries(4)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts `router` and returns its shutdown token and task.
fn start(router: Router) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move { router.run(t).await.expect("router runs") });
    (token, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_are_chosen_by_message_name_and_unknown_names_are_skipped() {
    let broker = MemoryBroker::in_memory();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let router = Router::new(Arc::new(broker.clone())).route(Route::new(options("names")).on_with(
        seen.clone(),
        async |_cx: &mut HandlerContext, p: Ping, seen: &Arc<Mutex<Vec<u32>>>| {
            seen.lock().unwrap().push(p.n);
            Ok(())
        },
    ));
    let (stop, task) = start(router);
    broker.publish(&[Message::new("names", "test.Other.v1", b"{}".to_vec()), ping("names", "", 7)]).await.unwrap();
    eventually("the ping is handled", || seen.lock().unwrap().as_slice() == [7]).await;
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_retried_with_backoff_until_it_succeeds() {
    let broker = MemoryBroker::in_memory();
    let calls = Arc::new(AtomicU32::new(0));
    let router = Router::new(Arc::new(broker.clone())).retry(fast_retry()).route(Route::new(options("retry")).on_with(
        calls.clone(),
        async |cx: &mut HandlerContext, _p: Ping, calls: &Arc<AtomicU32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            if cx.attempt() < 3 { Err(HandlerError::transient("not yet")) } else { Ok(()) }
        },
    ));
    let (stop, task) = start(router);
    broker.publish(&[ping("retry", "k", 1)]).await.unwrap();
    eventually("three attempts", || calls.load(Ordering::SeqCst) == 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "acked after the third attempt, not retried again");
    stop.cancel();
    task.await.unwrap();
}

async fn dead_letters(broker: &MemoryBroker, topic: &str) -> herald::Subscription {
    broker
        .subscribe(
            SubscribeOptions::new(format!("{topic}.workers.dead-letters"), "inspector").start(StartFrom::Beginning),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_decode_is_dead_lettered_at_once_with_the_reason() {
    let broker = MemoryBroker::in_memory();
    let calls = Arc::new(AtomicU32::new(0));
    let router = Router::new(Arc::new(broker.clone())).route(Route::new(options("bad")).on_with(
        calls.clone(),
        async |_cx: &mut HandlerContext, _p: Ping, calls: &Arc<AtomicU32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        },
    ));
    let mut dlq = dead_letters(&broker, "bad").await;
    let (stop, task) = start(router);
    broker.publish(&[Message::new("bad", Ping::NAME, b"{not json".to_vec())]).await.unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(5), dlq.next()).await.unwrap().unwrap();
    let reason = dead.message.header(DLQ_REASON).unwrap();
    assert!(reason.contains("does not decode"), "{reason}");
    assert!(reason.contains("route `workers`") && reason.contains("`Ping`"), "names route and type: {reason}");
    assert_eq!(dead.message.header(herald::pubsub::DLQ_ATTEMPTS), Some("1"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_max_attempts_the_message_is_dead_lettered_with_the_last_error() {
    let broker = MemoryBroker::in_memory();
    let router = Router::new(Arc::new(broker.clone())).retry(fast_retry()).route(
        Route::new(options("doomed"))
            .on(async |_cx: &mut HandlerContext, p: Ping| Err(HandlerError::transient(format!("boom {}", p.n)))),
    );
    let mut dlq = dead_letters(&broker, "doomed").await;
    let (stop, task) = start(router);
    broker.publish(&[ping("doomed", "k", 42)]).await.unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(5), dlq.next()).await.unwrap().unwrap();
    assert_eq!(dead.message.header(herald::pubsub::DLQ_ATTEMPTS), Some("4"));
    let reason = dead.message.header(DLQ_REASON).unwrap();
    assert!(reason.contains("attempt 4") && reason.contains("boom 42"), "{reason}");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_run_concurrently_and_a_failing_key_neither_blocks_others_nor_is_overtaken() {
    let broker = MemoryBroker::in_memory();
    let order: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    type State = (Arc<Mutex<HashMap<String, Vec<u32>>>>, Arc<AtomicUsize>, Arc<AtomicUsize>);
    let state = (order.clone(), running.clone(), max_running.clone());
    let router = Router::new(Arc::new(broker.clone())).retry(fast_retry()).route(
        Route::new(options("keys").max_deliveries(10)).on_with(
            state,
            async |cx: &mut HandlerContext, p: Ping, (order, running, max_running): &State| {
                let key = cx.message().key.clone();
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..5))).await;
                running.fetch_sub(1, Ordering::SeqCst);
                // Key "sick": its first message fails three times before it succeeds.
                if key == "sick" && p.n == 0 && cx.attempt() <= 3 {
                    return Err(HandlerError::transient("sick"));
                }
                order.lock().unwrap().entry(key).or_default().push(p.n);
                Ok(())
            },
        ),
    );
    let (stop, task) = start(router);
    let mut batch = Vec::new();
    for n in 0..20 {
        for key in ["a", "b", "c", "d", "sick"] {
            batch.push(ping("keys", key, n));
        }
    }
    broker.publish(&batch).await.unwrap();
    eventually("all 100 handled", || order.lock().unwrap().values().map(Vec::len).sum::<usize>() == 100).await;
    let order = order.lock().unwrap().clone();
    for (key, seq) in order.iter() {
        assert_eq!(*seq, (0..20).collect::<Vec<_>>(), "key {key} out of order");
    }
    assert!(max_running.load(Ordering::SeqCst) > 1, "different keys should run concurrently");
    stop.cancel();
    task.await.unwrap();
}

/// Handler that records handled pings in the outbox as `Pong`s.
struct Echo {
    handled: Arc<AtomicU32>,
    fail_after_write: bool,
}

#[async_trait::async_trait]
impl Handler for Echo {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let p: Ping = cx.decode()?;
        cx.publish(vec![Message::new("pongs", "test.Pong.v1", serde_json::to_vec(&p).unwrap())]).await?;
        if self.fail_after_write && cx.attempt() == 1 {
            return Err(HandlerError::transient("crash after writing"));
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_skips_a_redelivered_duplicate_and_the_outbox_publishes_what_committed() {
    let broker = MemoryBroker::in_memory();
    let store = MemoryStore::new();
    let handled = Arc::new(AtomicU32::new(0));
    let router = Router::new(Arc::new(broker.clone()))
        .store(Arc::new(store.clone()))
        .retry(fast_retry())
        .middleware(Timeout(Duration::from_secs(5)))
        .middleware(Inbox)
        .route(
            Route::new(options("uow")).on_name(Ping::NAME, Echo { handled: handled.clone(), fail_after_write: true }),
        );
    let (stop, task) = start(router);
    let original = ping("uow", "k", 1);
    // The same message twice (a producer retry): handled once.
    broker.publish(&[original.clone(), original.clone()]).await.unwrap();
    eventually("handled once", || handled.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 1);

    // The failed first attempt's outbox write was rolled back: exactly one pong.
    let pending = store.outbox_pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    let pong = &pending[0].message;
    assert_eq!(pong.metadata.causation_id, Some(original.id));
    assert_eq!(pong.metadata.correlation_id, Some(original.id));

    let relay = OutboxRelay::new(Arc::new(store.clone()), Arc::new(broker.clone()));
    let mut pongs = broker.subscribe(SubscribeOptions::new("pongs", "t").start(StartFrom::Beginning)).await.unwrap();
    assert_eq!(relay.publish_pending().await.unwrap(), 1);
    let got = tokio::time::timeout(Duration::from_secs(5), pongs.next()).await.unwrap().unwrap();
    assert_eq!(got.message.id, pong.id);
    assert!(store.outbox_pending(10).await.unwrap().is_empty());
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_times_out_is_retried() {
    let broker = MemoryBroker::in_memory();
    let calls = Arc::new(AtomicU32::new(0));
    let router = Router::new(Arc::new(broker.clone()))
        .retry(fast_retry())
        .middleware(Timeout(Duration::from_millis(50)))
        .route(Route::new(options("slow")).on_with(
            calls.clone(),
            async |cx: &mut HandlerContext, _p: Ping, calls: &Arc<AtomicU32>| {
                calls.fetch_add(1, Ordering::SeqCst);
                if cx.attempt() == 1 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Ok(())
            },
        ));
    let (stop, task) = start(router);
    broker.publish(&[ping("slow", "", 1)]).await.unwrap();
    eventually("a second attempt", || calls.load(Ordering::SeqCst) == 2).await;
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_in_flight_handlers_and_releases_the_rest() {
    let broker = MemoryBroker::in_memory();
    let finished = Arc::new(AtomicU32::new(0));
    let started = Arc::new(AtomicU32::new(0));
    let router = Router::new(Arc::new(broker.clone())).shutdown_timeout(Duration::from_secs(5)).route(
        Route::new(options("drain").max_in_flight(4)).on_with(
            (finished.clone(), started.clone()),
            async |_cx: &mut HandlerContext, _p: Ping, (finished, started): &(Arc<AtomicU32>, Arc<AtomicU32>)| {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        ),
    );
    let (stop, task) = start(router);
    // One key: handled one at a time, so most are still queued at shutdown.
    let batch: Vec<_> = (0..10).map(|n| ping("drain", "same", n)).collect();
    broker.publish(&batch).await.unwrap();
    eventually("the first handler started", || started.load(Ordering::SeqCst) >= 1).await;
    stop.cancel();
    task.await.unwrap();
    let done = finished.load(Ordering::SeqCst);
    assert_eq!(done, started.load(Ordering::SeqCst), "every started handler finished before run returned");
    assert!(done < 10, "queued deliveries were released, not run");

    // What was released is redelivered at once to the next consumer of the group.
    let mut next = broker.subscribe(options("drain")).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(2), next.next()).await.expect("redelivered promptly").unwrap();
    let p: Ping = serde_json::from_slice(&d.message.payload).unwrap();
    assert_eq!(p.n, done, "the next message of the key, in order");
}

/// A subscriber whose first subscription ends at once (as when an adapter gives up); later
/// subscriptions are the in-memory broker's.
#[derive(Debug)]
struct EndsOnce {
    broker: MemoryBroker,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Subscriber for EndsOnce {
    fn capabilities(&self) -> herald::Capabilities {
        self.broker.capabilities()
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<herald::Subscription, herald::pubsub::PubSubError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let (_tx, rx) = tokio::sync::mpsc::channel(1);
            return Ok(herald::Subscription::new(rx, None));
        }
        self.broker.subscribe(options).await
    }

    async fn close(&self) -> Result<(), herald::pubsub::PubSubError> {
        Subscriber::close(&self.broker).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_subscription_ends_subscribes_again() {
    let broker = MemoryBroker::in_memory();
    let subscriber = Arc::new(EndsOnce { broker: broker.clone(), calls: AtomicUsize::new(0) });
    let handled = Arc::new(AtomicU32::new(0));
    let router = Router::new(subscriber.clone()).route(Route::new(options("resubscribe")).on_with(
        handled.clone(),
        async |_cx: &mut HandlerContext, _p: Ping, handled: &Arc<AtomicU32>| {
            handled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        },
    ));
    let (token, task) = start(router);
    broker.publish(&[ping("resubscribe", "k", 1)]).await.unwrap();
    eventually("the message is handled after the route subscribed again", || handled.load(Ordering::SeqCst) == 1).await;
    assert!(subscriber.calls.load(Ordering::SeqCst) >= 2);
    token.cancel();
    task.await.unwrap();
}

// --- set-up mistakes fail at start ------------------------------------------------------------

#[tokio::test]
async fn a_router_with_the_inbox_and_no_store_refuses_to_start() {
    let broker = MemoryBroker::in_memory();
    let router = Router::new(Arc::new(broker.clone()))
        .middleware(Inbox)
        .route(Route::new(options("inbox")).on(async |_cx: &mut HandlerContext, _p: Ping| Ok(())));
    let err = router.start(CancellationToken::new()).await.expect_err("refused");
    assert!(matches!(err, StartError::Setup { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("route `workers`") && text.contains("`Inbox`") && text.contains(".store("), "{text}");
}

#[tokio::test]
async fn a_command_route_without_a_store_refuses_to_start() {
    let broker = MemoryBroker::in_memory();
    let router = Router::new(Arc::new(broker.clone())).route(Route::new(options("cmds")).on_command(
        async |_cx: &mut HandlerContext, _p: Ping| Ok::<_, HandlerError>(herald::command::Reply::success()),
    ));
    let err = router.start(CancellationToken::new()).await.expect_err("refused");
    assert!(err.to_string().contains("needs a store"), "{err}");
}

#[tokio::test]
async fn an_event_with_two_handlers_on_one_route_refuses_to_start() {
    herald::event_set! {
        #[derive(Debug)]
        enum Pings { Ping(Ping) }
    }
    let broker = MemoryBroker::in_memory();
    let router = Router::new(Arc::new(broker.clone())).route(
        Route::new(options("twice"))
            .on(async |_cx: &mut HandlerContext, _p: Pings| Ok(()))
            .on(async |_cx: &mut HandlerContext, _p: Ping| Ok(())),
    );
    let err = router.start(CancellationToken::new()).await.expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("`test.Ping.v1` has two handlers") && text.contains("`Pings`"), "{text}");
}

// --- retries configured on the route --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_retry_sets_the_attempts_and_what_is_permanent() {
    #[derive(Debug, thiserror::Error)]
    #[error("card declined")]
    struct Declined;

    let broker = MemoryBroker::in_memory();
    let calls = Arc::new(AtomicU32::new(0));
    let fast = Retry::exponential(Duration::from_millis(2)).max_delay(Duration::from_millis(5));
    let router = Router::new(Arc::new(broker.clone()))
        .route(Route::new(options("capped")).retry(fast.clone().attempts(2)).on_with(
            calls.clone(),
            async |_cx: &mut HandlerContext, _p: Ping, calls: &Arc<AtomicU32>| {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::transient("still down"))
            },
        ))
        .route(
            Route::new(options("declined"))
                .retry(fast.permanent_if(|e: &HandlerError| e.source_is::<Declined>()))
                .on(async |_cx: &mut HandlerContext, _p: Ping| Err(HandlerError::transient(Declined))),
        );
    let mut capped = dead_letters(&broker, "capped").await;
    let mut declined = dead_letters(&broker, "declined").await;
    let running = router.start(CancellationToken::new()).await.unwrap();
    broker.publish(&[ping("capped", "k", 1), ping("declined", "k", 2)]).await.unwrap();

    let dead = tokio::time::timeout(Duration::from_secs(5), capped.next()).await.unwrap().unwrap();
    assert_eq!(dead.message.header(herald::pubsub::DLQ_ATTEMPTS), Some("2"), "attempts(2) instead of the 4 of options");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let dead = tokio::time::timeout(Duration::from_secs(5), declined.next()).await.unwrap().unwrap();
    assert_eq!(dead.message.header(herald::pubsub::DLQ_ATTEMPTS), Some("1"), "a declined card is not retried");
    let stats = running.wait_until(|s| s.dead_lettered == 2 && s.is_idle()).await;
    assert_eq!((stats.retried, stats.handled), (1, 0), "{stats:?}");
}

// --- the brokers' close, test helpers -----------------------------------------------------------

#[tokio::test]
async fn shutdown_on_a_dyn_broker_closes_both_halves() {
    let broker: Arc<dyn herald::pubsub::Broker> = Arc::new(MemoryBroker::in_memory());
    broker.shutdown().await.unwrap();
    assert!(broker.publish(&[ping("closed", "", 1)]).await.is_err(), "publishing is closed");
    assert!(broker.subscribe(options("closed")).await.is_err(), "subscribing is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_chain_runs_on_one_message_without_a_broker() {
    let store = MemoryStore::new();
    let handled = Arc::new(AtomicU32::new(0));
    let router =
        Router::new(Arc::new(MemoryBroker::in_memory())).store(Arc::new(store.clone())).middleware(Inbox).route(
            Route::new(options("kit")).on_name(Ping::NAME, Echo { handled: handled.clone(), fail_after_write: false }),
        );
    let message = ping("kit", "k", 1);
    router.handle_now("workers", message.clone()).await.unwrap();
    router.handle_now("workers", message.clone()).await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 1, "the inbox in the chain skipped the duplicate");
    assert_eq!(store.outbox_pending(10).await.unwrap().len(), 1, "the unit of work committed once");
    let err = router.handle_now("nobody", message).await.expect_err("no such route");
    assert!(err.to_string().contains("no route named `nobody`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_router_reports_when_everything_published_is_settled() {
    let broker = MemoryBroker::in_memory();
    let router = Router::new(Arc::new(broker.clone())).route(Route::new(options("stats")).on(
        async |_cx: &mut HandlerContext, p: Ping| {
            if p.n == 3 { Err(HandlerError::permanent("poison")) } else { Ok(()) }
        },
    ));
    let stop = CancellationToken::new();
    let running = router.start(stop.clone()).await.unwrap();
    let batch: Vec<_> = (0..6).map(|n| ping("stats", &format!("k{n}"), n)).collect();
    broker.publish(&batch).await.unwrap();
    broker.publish(&[Message::new("stats", "test.Other.v1", b"{}".to_vec())]).await.unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(10), running.wait_until(|s| s.settled() == 7 && s.is_idle()))
        .await
        .expect("all settled");
    assert_eq!((stats.handled, stats.dead_lettered, stats.skipped), (5, 1, 1), "{stats:?}");
    stop.cancel();
    running.wait().await;
}

/// Version 2 of [`Ping`]: the same fact, with a label added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PingV2 {
    n: u32,
    label: String,
}
impl Event for PingV2 {
    const NAME: &'static str = "test.Ping.v2";
}

/// `test.Ping.v1` → `test.Ping.v2`: labels the ping with its number, refuses 13.
fn ping_upcasters() -> Registry {
    Registry::new().upcast(Ping::NAME, PingV2::NAME, |mut v| {
        let n = v["n"].as_u64().ok_or("n missing")?;
        if n == 13 {
            return Err("13 is unlucky".into());
        }
        v["label"] = serde_json::Value::from(format!("ping {n}"));
        Ok(v)
    })
}

/// What a v2 handler saw: the ping, the message's name and its [`UPCAST_FROM`] header.
type SeenV2 = Arc<Mutex<Vec<(PingV2, String, Option<String>)>>>;

fn v2_route(topic: &str, seen: &SeenV2) -> Route {
    Route::new(options(topic)).ignore_unknown(false).on_with(
        seen.clone(),
        async |cx: &mut HandlerContext, p: PingV2, seen: &SeenV2| {
            let (name, from) = (cx.message().name.clone(), cx.message().header(UPCAST_FROM).map(str::to_owned));
            seen.lock().unwrap().push((p, name, from));
            Ok(())
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_message_in_flight_reaches_the_v2_handler_after_upcasting() {
    let broker = MemoryBroker::in_memory();
    let seen = SeenV2::default();
    // The route handles only v2, and dead-letters what it does not know: without the upcasting
    // the v1 message would be dead-lettered as "no handler".
    let router = Router::new(Arc::new(broker.clone())).registry(ping_upcasters()).route(v2_route("versions", &seen));
    let stop = CancellationToken::new();
    let running = router.start(stop.clone()).await.unwrap();
    let v2 = PingV2 { n: 2, label: "sent as v2".into() };
    broker.publish(&[ping("versions", "k", 1), Message::encode("versions", &v2).unwrap().with_key("k")]).await.unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(10), running.wait_until(|s| s.settled() == 2 && s.is_idle()))
        .await
        .expect("both settled");
    assert_eq!((stats.handled, stats.dead_lettered, stats.skipped), (2, 0, 0), "{stats:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (PingV2 { n: 1, label: "ping 1".into() }, PingV2::NAME.to_owned(), Some(Ping::NAME.to_owned())),
            (v2, PingV2::NAME.to_owned(), None),
        ],
        "the v1 message was upcast (name and payload) and remembers its old name; the v2 one is as sent"
    );
    stop.cancel();
    running.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_message_whose_upcaster_fails_is_dead_lettered_as_sent_with_the_reason() {
    let broker = MemoryBroker::in_memory();
    let seen = SeenV2::default();
    let router = Router::new(Arc::new(broker.clone())).registry(ping_upcasters()).route(v2_route("unlucky", &seen));
    let mut dlq = dead_letters(&broker, "unlucky").await;
    let (stop, task) = start(router);
    let sent = ping("unlucky", "k", 13);
    broker.publish(std::slice::from_ref(&sent)).await.unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(5), dlq.next()).await.unwrap().unwrap();
    let reason = dead.message.header(DLQ_REASON).unwrap();
    assert!(reason.contains("upcasting") && reason.contains("13 is unlucky"), "{reason}");
    assert!(reason.contains(Ping::NAME) && reason.contains(PingV2::NAME), "names both versions: {reason}");
    assert_eq!(dead.message.header(herald::pubsub::DLQ_ATTEMPTS), Some("1"), "permanent: not retried");
    assert_eq!((dead.message.name.as_str(), &dead.message.payload), (Ping::NAME, &sent.payload), "kept as sent");
    assert!(seen.lock().unwrap().is_empty());
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_chain_run_by_hand_upcasts_like_a_delivery() {
    let seen = SeenV2::default();
    let router =
        Router::new(Arc::new(MemoryBroker::in_memory())).registry(ping_upcasters()).route(v2_route("by-hand", &seen));
    router.handle_now("workers", ping("by-hand", "k", 5)).await.unwrap();
    assert_eq!(seen.lock().unwrap()[0].0, PingV2 { n: 5, label: "ping 5".into() });
    let err = router.handle_now("workers", ping("by-hand", "k", 13)).await.expect_err("the upcaster refuses");
    assert!(err.is_permanent() && err.to_string().contains("13 is unlucky"), "{err}");
}
