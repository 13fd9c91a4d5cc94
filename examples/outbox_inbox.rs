//! **Transactional outbox and inbox.** A service changes its own table *and* queues the event
//! that announces it in one transaction: both commit or neither (no event for a change that
//! rolled back, no change without its event). The `OutboxRelay` publishes what committed. The
//! consumer records each message id in its own transaction (the `Inbox` middleware), so a
//! message delivered twice changes its table once.
//!
//! Look at: `place_order` (row, event, credit check: one unit of work), the outbox before the
//! relay runs, and the second delivery of the same message skipped by the inbox.
//!
//! ```sh
//! cargo run --example outbox_inbox
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use herald::memory::MemoryBroker;
use herald::prelude::*;
use herald_sql::any::{AnyDatabase, Migration, migrate, query};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    id: String,
    cents: i64,
}

impl herald::Event for OrderPlaced {
    const NAME: &'static str = "orders.OrderPlaced.v1";
}

const TOPIC: &str = "orders.events";

/// The orders service: the order row, its event in the outbox, and the customer's credit, in one
/// transaction. A failure anywhere (here: the credit check) rolls all three back.
async fn place_order(store: &dyn Store, id: &str, customer: &str, cents: i64) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    query("INSERT INTO orders (id, cents) VALUES (?, ?)").bind(id).bind(cents).execute(&mut tx).await?;
    let event = OrderPlaced { id: id.into(), cents };
    tx.enqueue(vec![Message::encode(TOPIC, &event)?.with_key(id)]).await?;
    let charge = query("UPDATE customers SET credit = credit - ? WHERE id = ?").bind(cents).bind(customer);
    charge.execute(&mut tx).await?; // fails the CHECK when the credit would go below zero
    Ok(tx.commit().await?)
}

/// The billing service: a receipt per order, in the delivery's unit of work (with its inbox record).
async fn write_receipt(cx: &mut HandlerContext, order: OrderPlaced) -> Result<(), HandlerError> {
    println!("billing: receipt for {} ({} cents)", order.id, order.cents);
    let insert = query("INSERT INTO receipts (order_id, cents) VALUES (?, ?)").bind(order.id).bind(order.cents);
    Ok(insert.execute(cx.tx()?).await.map(drop)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let dir = tempfile::tempdir()?;
    let db = AnyDatabase::open(&format!("sqlite://{}", dir.path().join("shop.db").display())).await?;
    let tables = "CREATE TABLE customers (id TEXT PRIMARY KEY, credit BIGINT NOT NULL CHECK (credit >= 0));
                  CREATE TABLE orders (id TEXT PRIMARY KEY, cents BIGINT NOT NULL);
                  CREATE TABLE receipts (order_id TEXT NOT NULL, cents BIGINT NOT NULL);
                  INSERT INTO customers (id, credit) VALUES ('ada', 3000)";
    migrate(&db, "shop", &[Migration::portable(1, "shop tables", tables)]).await?;
    let (store, broker) = (db.store(), Arc::new(MemoryBroker::in_memory()));

    place_order(&*store, "o-1", "ada", 2000).await?;
    println!("o-1: order row and OrderPlaced committed together");
    let refused = place_order(&*store, "o-2", "ada", 2000).await.err();
    println!("o-2: refused ({}): row and event rolled back", refused.as_ref().map_or("?".into(), |e| format!("{e:#}")));
    let pending = store.outbox_pending(10).await?;
    let orders: (i64,) = query("SELECT COUNT(*) FROM orders").fetch_one(&db).await?;
    println!("before the relay: {} order row(s), {} message(s) in the outbox", orders.0, pending.len());
    ensure!(refused.is_some() && orders.0 == 1 && pending.len() == 1, "the failed unit of work left something behind");

    // Consumer first, then the relay: it publishes what committed, and only that.
    let shutdown = CancellationToken::new();
    let route = Route::new(SubscribeOptions::new(TOPIC, "billing")).on(write_receipt);
    let billing = Router::new(broker.clone()).store(store.clone()).middleware(Inbox).route(route);
    let billing = billing.start(shutdown.clone()).await?;
    let relay = tokio::spawn(OutboxRelay::new(store.clone(), broker.clone()).run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(10), billing.wait_until(|s| s.handled == 1 && s.is_idle())).await?;

    // A relay that crashed after publishing and before clearing its outbox row publishes again:
    // the same message (same id) arrives a second time.
    broker.publish(&[pending[0].message.clone()]).await?;
    tokio::time::timeout(Duration::from_secs(10), billing.wait_until(|s| s.handled == 2 && s.is_idle())).await?;
    let receipts: (i64,) = query("SELECT COUNT(*) FROM receipts").fetch_one(&db).await?;
    println!("o-1 delivered twice: {} receipt (the inbox skipped the duplicate)", receipts.0);

    shutdown.cancel();
    billing.wait().await;
    relay.await?;
    let left_in_outbox = store.outbox_pending(10).await?.len();
    db.close().await;
    ensure!(receipts.0 == 1, "the duplicate delivery wrote a second receipt");
    ensure!(left_in_outbox == 0, "the relay left messages in the outbox");
    Ok(())
}
