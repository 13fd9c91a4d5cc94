//! # A guided tour of event-driven architecture with Herald, on one SQLite file
//!
//! Run it with `cargo run -p herald-sql --example tutorial` (add a path to keep the database).
//!
//! The story, in the seed book's terms:
//!
//! 1. **Producer + event sourcing.** An `Order` aggregate decides events from commands; they are
//!    appended to its stream in the event store with optimistic concurrency.
//! 2. **The dual-write problem, solved by an outbox.** In the *same transaction*, the producer
//!    writes an integration event to the outbox. Either both commit or neither does.
//! 3. **A broker with retention (an event stream).** The outbox relay publishes to the SQL broker,
//!    a durable stream kept in the same database, so no broker process is needed.
//! 4. **Consumers and consumer groups.** `notifications` and `analytics` each get every event;
//!    within a group, instances would share the work. `analytics` joins late and replays the
//!    stream from the beginning.
//! 5. **Idempotent consumers.** The inbox records each handled message id in the consumer's
//!    transaction, so a redelivered duplicate is skipped.
//! 6. **Retries and dead letters.** A message that can never be handled (a poison message) ends
//!    in a dead-letter topic with the reason, instead of blocking the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald::aggregate::{Aggregate, Repository, stream_name};
use herald::outbox::OutboxRelay;
use herald::pubsub::DLQ_REASON;
use herald::router::{HandlerContext, HandlerError, Inbox, RetryPolicy, Route, Router, Tracing, handler_fn};
use herald::{Event, Message, Publisher, StartFrom, Store, SubscribeOptions, Subscriber, event_set};
use herald_sql::SqliteDatabase;
use herald_sql::any::query;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// The domain: an order, event-sourced. Events are facts, named in the past tense, versioned.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    customer: String,
    total_cents: i64,
}
impl Event for OrderPlaced {
    const NAME: &'static str = "ordering.OrderPlaced.v1";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderCanceled {
    reason: String,
}
impl Event for OrderCanceled {
    const NAME: &'static str = "ordering.OrderCanceled.v1";
}

event_set! {
    #[derive(Debug, Clone, PartialEq)]
    enum OrderEvent { Placed(OrderPlaced), Canceled(OrderCanceled) }
}

#[derive(Debug, Clone)]
enum OrderCommand {
    Place { customer: String, total_cents: i64 },
    Cancel { reason: String },
}

#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("the order was already placed")]
    AlreadyPlaced,
    #[error("only a placed order can be canceled")]
    NotPlaced,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Order {
    placed: bool,
    canceled: bool,
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    // `handle` decides; it changes nothing.
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { .. } if self.placed => Err(OrderError::AlreadyPlaced),
            OrderCommand::Place { customer, total_cents } => Ok(vec![OrderPlaced { customer, total_cents }.into()]),
            OrderCommand::Cancel { reason } if self.placed && !self.canceled => {
                Ok(vec![OrderCanceled { reason }.into()])
            }
            OrderCommand::Cancel { .. } => Err(OrderError::NotPlaced),
        }
    }

    // `apply` evolves; it decides nothing.
    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed(_) => self.placed = true,
            OrderEvent::Canceled(_) => self.canceled = true,
        }
    }
}

const TOPIC: &str = "ordering.events";

/// The producer side of one command: load, decide, append, and put the integration events in the
/// outbox, all in one transaction.
async fn execute(store: &dyn Store, order_id: &str, command: OrderCommand) -> anyhow::Result<()> {
    let repository = Repository::<Order>::new();
    let mut tx = store.begin().await?;
    let mut order = repository.load(tx.as_mut(), order_id).await?;
    let before = order.version;
    let events = order.state.handle(command)?;
    repository.save(tx.as_mut(), &mut order, &events, None).await?;
    // The integration messages are the appended events themselves: same ids, keyed by stream,
    // so a republished message can be recognised downstream.
    let appended = tx.read_stream(&stream_name::<Order>(order_id), before + 1, events.len()).await?;
    tx.enqueue(appended.iter().map(|e| e.to_message(TOPIC)).collect()).await?;
    tx.commit().await?; // events + outbox rows, atomically
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keep = std::env::args().nth(1);
    let dir = tempfile::tempdir()?;
    let path = keep.unwrap_or_else(|| dir.path().join("tutorial.db").display().to_string());
    println!("Database: {path}\n");

    let db = SqliteDatabase::open(&path).await?;
    let store: Arc<dyn Store> = Arc::new(db.store());
    let broker = db.broker();
    query("CREATE TABLE IF NOT EXISTS sms_sent (customer TEXT NOT NULL, text TEXT NOT NULL)").execute(&db).await?;

    // --- 1 & 2: the producer writes events and outbox rows in one transaction ---------------
    println!("1. Placing three orders (event store + outbox, one transaction each)");
    execute(store.as_ref(), "o-1", OrderCommand::Place { customer: "ada".into(), total_cents: 1250 }).await?;
    execute(store.as_ref(), "o-2", OrderCommand::Place { customer: "grace".into(), total_cents: 990 }).await?;
    execute(store.as_ref(), "o-3", OrderCommand::Place { customer: "alan".into(), total_cents: 4200 }).await?;
    execute(store.as_ref(), "o-2", OrderCommand::Cancel { reason: "changed mind".into() }).await?;
    match execute(store.as_ref(), "o-2", OrderCommand::Place { customer: "grace".into(), total_cents: 1 }).await {
        Err(e) => println!("   a rule held: {e}"),
        Ok(()) => anyhow::bail!("placing o-2 twice should be refused"),
    }
    println!("   outbox holds {} messages, not yet published\n", store.outbox_pending(100).await?.len());

    // --- 3: the relay publishes the outbox to the SQL broker --------------------------------
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(store.clone(), Arc::new(broker.clone()));
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));

    // --- 4 & 5: a consumer group with the inbox ---------------------------------------------
    println!("2. Consumer group `notifications` (inbox: each message handled once)");
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let notifications = Route::new(SubscribeOptions::new(TOPIC, "notifications").start(StartFrom::Beginning))
        .on::<OrderPlaced>(handler_fn(move |cx: &mut HandlerContext, placed: OrderPlaced| {
        let counter = counter.clone();
        Box::pin(async move {
            let text =
                format!("Thanks {}, your order of ${:.2} is in!", placed.customer, placed.total_cents as f64 / 100.0);
            // The consumer's own state, in the same transaction as its inbox record; `?` retries
            // a busy database and dead-letters what can never pass (a broken constraint…).
            query("INSERT INTO sms_sent (customer, text) VALUES (?, ?)")
                .bind(&placed.customer)
                .bind(&text)
                .execute(cx.tx()?)
                .await?;
            println!("   [notifications] {text}");
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }));

    // --- 6: a handler that can never succeed, to show retries and a dead letter -------------
    let audits = Route::new(SubscribeOptions::new(TOPIC, "audit").start(StartFrom::Beginning).max_deliveries(3))
        .on::<OrderCanceled>(handler_fn(|cx: &mut HandlerContext, canceled: OrderCanceled| {
        let attempt = cx.attempt();
        Box::pin(async move {
            println!("   [audit] attempt {attempt} to archive a cancellation ({}) fails", canceled.reason);
            Err(HandlerError::transient("the archive service is down"))
        })
    }));

    let router = Router::new(Arc::new(broker.clone()))
        .store(store.clone())
        .retry(RetryPolicy { initial_delay: Duration::from_millis(100), ..RetryPolicy::default() })
        .middleware(Tracing)
        .middleware(Inbox)
        .route(notifications)
        .route(audits);
    let router_task = tokio::spawn(router.run(shutdown.clone()));
    let mut dead_letters = broker
        .subscribe(SubscribeOptions::new(format!("{TOPIC}.audit.dead-letters"), "operator").start(StartFrom::Beginning))
        .await?;

    wait_until(|| sent.load(Ordering::SeqCst) == 3).await?;
    let dead = tokio::time::timeout(Duration::from_secs(10), dead_letters.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no dead letter"))?;
    println!(
        "\n3. Dead letter on `{}`: {} — reason: {}",
        dead.message.topic,
        dead.message.name,
        dead.message.header(DLQ_REASON).unwrap_or("?")
    );
    dead.ack().await?;

    // --- 5 again: a republished duplicate is absorbed ----------------------------------------
    println!("\n4. Publishing the first order's event again, as a relay that crashed after publishing would");
    let first = store.read_stream("order-o-1", 1, 1).await?.remove(0).to_message(TOPIC);
    broker.publish(std::slice::from_ref(&first)).await?; // same id: the broker drops it, the inbox would too
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("   notifications sent: {} (unchanged)", sent.load(Ordering::SeqCst));
    broker.publish(&[Message { id: herald::MessageId::new(), ..first }]).await?; // a genuinely new message
    wait_until(|| sent.load(Ordering::SeqCst) == 4).await?;
    let (rows,): (i64,) = query("SELECT COUNT(*) FROM sms_sent").fetch_one(&db).await?;
    println!("   after a genuinely new message (new id): SMS rows = {rows}");

    // --- An event stream keeps history: a group that joins late replays it ----------------
    println!("\n5. Group `analytics` joins late and replays the stream from the beginning");
    let mut analytics = broker.subscribe(SubscribeOptions::new(TOPIC, "analytics").start(StartFrom::Beginning)).await?;
    let mut revenue = 0;
    for _ in 0..5 {
        let d = tokio::time::timeout(Duration::from_secs(5), analytics.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        if let Ok(p) = serde_json::from_slice::<OrderPlaced>(&d.message.payload) {
            revenue += p.total_cents;
        }
        d.ack().await?;
    }
    println!("   replayed 5 messages (4 events + the new one); revenue seen: ${:.2}", revenue as f64 / 100.0);

    // --- The global log: every event, in commit order, for projections -------------------------
    println!("\n6. The event store's global log (what projections read):");
    for e in store.read_all(0, 100).await? {
        println!("   #{:<2} {:<10} v{} {}", e.position, e.stream, e.version, e.name);
    }

    // --- Clean shutdown: stop taking work, finish in-flight, flush the outbox ---------------
    shutdown.cancel();
    router_task.await??;
    relay_task.await?;
    println!("\nShut down cleanly. Outbox left: {}", store.outbox_pending(10).await?.len());
    Ok(())
}

async fn wait_until(f: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
