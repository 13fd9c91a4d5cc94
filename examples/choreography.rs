//! **Choreography: services react to each other's events, with no coordinator.** Orders
//! announces an order; payments reacts by taking the payment (or declining it); the warehouse
//! reacts to a payment by shipping; orders reacts to both outcomes. No service calls another or
//! knows who listens: each subscribes to the events it cares about and publishes its own.
//!
//! Look at: the four routes in `main` (who reacts to what), `cx.publish` (the reaction goes out
//! through the outbox, in the handler's unit of work, marked as caused by the event), and the
//! correlation id that ties a whole conversation back to its first event.
//!
//! ```sh
//! cargo run --example choreography
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::ensure;
use herald::memory::{MemoryBroker, MemoryStore};
use herald::prelude::*;

events! {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    enum ShopEvent {
        OrderPlaced = "orders.OrderPlaced.v1" { order: String, cents: i64 },
        PaymentReceived = "payments.PaymentReceived.v1" { order: String },
        PaymentDeclined = "payments.PaymentDeclined.v1" { order: String, reason: String },
        OrderShipped = "warehouse.OrderShipped.v1" { order: String },
    }
}

const ORDERS: &str = "orders.events";
const PAYMENTS: &str = "payments.events";
const WAREHOUSE: &str = "warehouse.events";
/// The most a customer may pay at once.
const CARD_LIMIT_CENTS: i64 = 10_000;

/// Payments reacts to an order placed.
async fn take_payment(cx: &mut HandlerContext, e: OrderPlaced) -> Result<(), HandlerError> {
    let outcome: ShopEvent = if e.cents <= CARD_LIMIT_CENTS {
        PaymentReceived { order: e.order.clone() }.into()
    } else {
        PaymentDeclined { order: e.order.clone(), reason: "over the card limit".into() }.into()
    };
    println!("payments:  {} placed -> {}", e.order, outcome.event_name());
    cx.publish(vec![Message::encode(PAYMENTS, &outcome)?.with_key(e.order)]).await
}

/// The warehouse reacts to a payment received.
async fn ship(cx: &mut HandlerContext, e: PaymentReceived) -> Result<(), HandlerError> {
    println!("warehouse: {} paid -> {}", e.order, OrderShipped::NAME);
    cx.publish(vec![Message::encode(WAREHOUSE, &OrderShipped { order: e.order.clone() })?.with_key(e.order)]).await
}

/// What orders knows of each order: its status and the id of the conversation it belongs to.
type Statuses = Arc<Mutex<BTreeMap<String, (&'static str, herald::MessageId)>>>;

/// Orders records an outcome: the order's new status and the conversation it belongs to.
fn set_status(
    cx: &HandlerContext,
    statuses: &Statuses,
    order: String,
    status: &'static str,
) -> Result<(), HandlerError> {
    println!("orders:    {order} -> {status}");
    let conversation = cx.message().correlation_id();
    statuses.lock().unwrap_or_else(PoisonError::into_inner).insert(order, (status, conversation));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let (store, broker) = (Arc::new(MemoryStore::new()), Arc::new(MemoryBroker::in_memory()));
    let statuses = Statuses::default();
    let shutdown = CancellationToken::new();

    let routes = [
        Route::new(SubscribeOptions::new(ORDERS, "payments")).on(take_payment),
        Route::new(SubscribeOptions::new(PAYMENTS, "warehouse")).on(ship),
        Route::new(SubscribeOptions::new(PAYMENTS, "orders")).on_with(
            statuses.clone(),
            async |cx: &mut HandlerContext, e: PaymentDeclined, statuses: &Statuses| {
                set_status(cx, statuses, e.order, "cancelled")
            },
        ),
        Route::new(SubscribeOptions::new(WAREHOUSE, "orders")).on_with(
            statuses.clone(),
            async |cx: &mut HandlerContext, e: OrderShipped, statuses: &Statuses| {
                set_status(cx, statuses, e.order, "shipped")
            },
        ),
    ];
    let router = Router::new(broker.clone()).store(store.clone()).middleware(Inbox).routes(routes);
    let router = router.start(shutdown.clone()).await?;
    let relay = tokio::spawn(OutboxRelay::new(store.clone(), broker.clone()).run(shutdown.clone()));

    // Orders announces two orders (through its outbox); what happens next is up to the others.
    let placed = [("o-1", 2_500), ("o-2", 25_000)].map(|(order, cents)| {
        Message::encode(ORDERS, &OrderPlaced { order: order.into(), cents }).map(|m| m.with_key(order))
    });
    let placed = placed.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut tx = store.begin().await?;
    tx.enqueue(placed.clone()).await?;
    tx.commit().await?;

    // payments ×2, warehouse ×1, orders ×2.
    let done = router.wait_until(|s| s.handled == 5 && s.is_idle());
    tokio::time::timeout(Duration::from_secs(10), done).await?;
    shutdown.cancel();
    router.wait().await;
    relay.await?;

    let statuses = statuses.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let expected = BTreeMap::from([
        ("o-1".to_owned(), ("shipped", placed[0].id)),
        ("o-2".to_owned(), ("cancelled", placed[1].id)),
    ]);
    ensure!(statuses == expected, "unexpected outcome: {statuses:?}");
    println!("each outcome carries the id of the OrderPlaced that started its conversation");
    Ok(())
}
