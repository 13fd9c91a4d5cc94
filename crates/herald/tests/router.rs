//! The router against the in-memory broker and store: dispatch by name, retries, dead letters,
//! per-key order, the unit of work with inbox and outbox, shutdown.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::memory::{MemoryBroker, MemoryStore};
use herald::outbox::OutboxRelay;
use herald::pubsub::{DLQ_REASON, Publisher, StartFrom, SubscribeOptions, Subscriber};
use herald::router::{
    Handler, HandlerContext, HandlerError, Inbox, RetryPolicy, Route, Router, Timeout, Tracing, handler_fn,
};
use herald::{Event, Message, Store};
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
    let s = seen.clone();
    let router = Router::new(Arc::new(broker.clone())).route(Route::new(options("names")).on::<Ping>(handler_fn(
        move |_cx: &mut HandlerContext, p: Ping| {
            let s = s.clone();
            Box::pin(async move {
                s.lock().unwrap().push(p.n);
                Ok(())
            })
        },
    )));
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
    let c = calls.clone();
    let router = Router::new(Arc::new(broker.clone())).retry(fast_retry()).route(
        Route::new(options("retry")).on::<Ping>(handler_fn(move |cx: &mut HandlerContext, _p: Ping| {
            let c = c.clone();
            let attempt = cx.attempt();
            Box::pin(async move {
                c.fetch_add(1, Ordering::SeqCst);
                if attempt < 3 { Err(HandlerError::transient("not yet")) } else { Ok(()) }
            })
        })),
    );
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
    let c = calls.clone();
    let router = Router::new(Arc::new(broker.clone())).route(Route::new(options("bad")).on::<Ping>(handler_fn(
        move |_cx: &mut HandlerContext, _p: Ping| {
            c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        },
    )));
    let mut dlq = dead_letters(&broker, "bad").await;
    let (stop, task) = start(router);
    broker.publish(&[Message::new("bad", Ping::NAME, b"{not json".to_vec())]).await.unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(5), dlq.next()).await.unwrap().unwrap();
    let reason = dead.message.header(DLQ_REASON).unwrap();
    assert!(reason.contains("does not decode"), "{reason}");
    assert_eq!(dead.message.header(herald::pubsub::DLQ_ATTEMPTS), Some("1"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_max_attempts_the_message_is_dead_lettered_with_the_last_error() {
    let broker = MemoryBroker::in_memory();
    let router = Router::new(Arc::new(broker.clone())).retry(fast_retry()).route(
        Route::new(options("doomed")).on::<Ping>(handler_fn(|_cx: &mut HandlerContext, p: Ping| {
            Box::pin(async move { Err(HandlerError::transient(format!("boom {}", p.n))) })
        })),
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
    let (o, r, mr) = (order.clone(), running.clone(), max_running.clone());
    let router = Router::new(Arc::new(broker.clone())).retry(fast_retry()).route(
        Route::new(options("keys").max_deliveries(10)).on::<Ping>(handler_fn(
            move |cx: &mut HandlerContext, p: Ping| {
                let (o, r, mr) = (o.clone(), r.clone(), mr.clone());
                let key = cx.message().key.clone();
                let attempt = cx.attempt();
                Box::pin(async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    mr.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..5))).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    // Key "sick": its first message fails three times before it succeeds.
                    if key == "sick" && p.n == 0 && attempt <= 3 {
                        return Err(HandlerError::transient("sick"));
                    }
                    o.lock().unwrap().entry(key).or_default().push(p.n);
                    Ok(())
                })
            },
        )),
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
        .middleware(Tracing)
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
    let c = calls.clone();
    let router = Router::new(Arc::new(broker.clone()))
        .retry(fast_retry())
        .middleware(Timeout(Duration::from_millis(50)))
        .route(Route::new(options("slow")).on::<Ping>(handler_fn(move |cx: &mut HandlerContext, _p: Ping| {
            c.fetch_add(1, Ordering::SeqCst);
            let slow = cx.attempt() == 1;
            Box::pin(async move {
                if slow {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Ok(())
            })
        })));
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
    let (f, s) = (finished.clone(), started.clone());
    let router = Router::new(Arc::new(broker.clone())).shutdown_timeout(Duration::from_secs(5)).route(
        Route::new(options("drain").max_in_flight(4)).on::<Ping>(handler_fn(
            move |_cx: &mut HandlerContext, _p: Ping| {
                let (f, s) = (f.clone(), s.clone());
                Box::pin(async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
            },
        )),
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
    let h = handled.clone();
    let router = Router::new(subscriber.clone()).route(Route::new(options("resubscribe")).on::<Ping>(handler_fn(
        move |_cx: &mut HandlerContext, _p: Ping| {
            let h = h.clone();
            Box::pin(async move {
                h.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        },
    )));
    let (token, task) = start(router);
    broker.publish(&[ping("resubscribe", "k", 1)]).await.unwrap();
    eventually("the message is handled after the route subscribed again", || handled.load(Ordering::SeqCst) == 1).await;
    assert!(subscriber.calls.load(Ordering::SeqCst) >= 2);
    token.cancel();
    task.await.unwrap();
}
