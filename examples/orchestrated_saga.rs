//! **An orchestrated saga.** One place decides the steps of placing an order — reserve the
//! stock, charge the card, approve the order — by sending a command to each service and waiting
//! for its reply. When a step fails, the saga undoes the steps before it (compensation) in
//! reverse order: here the card is declined, so the stock is released and the order rejected.
//!
//! Look at: `saga()` (the steps, their commands and compensations), the services answering with
//! `Route::on_command` (a `Reply` always goes back, through the outbox), the route that starts
//! the saga on `OrderPlaced`, and `orchestrator.reply_handler()` on the reply topic.
//! (MallBots' create-order saga is the full-size version: `mallbots/src/modules/cosec`.)
//!
//! ```sh
//! cargo run --example orchestrated_saga
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::ensure;
use herald::command::Reply;
use herald::memory::{MemoryBroker, MemoryStore};
use herald::prelude::*;
use herald::saga::{Orchestrator, Saga, SagaError, SagaInstance, SagaStatus, Step};

events! {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    enum Commands {
        ReserveStock = "warehouse.ReserveStock.v1" { order: String, units: u32 },
        ReleaseStock = "warehouse.ReleaseStock.v1" { order: String },
        ChargeCard = "payments.ChargeCard.v1" { order: String, cents: i64 },
        ApproveOrder = "orders.ApproveOrder.v1" { order: String },
        RejectOrder = "orders.RejectOrder.v1" { order: String },
    }
}

/// The event that starts the saga.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order: String,
    units: u32,
    cents: i64,
}

impl herald::Event for OrderPlaced {
    const NAME: &'static str = "orders.OrderPlaced.v1";
}

const ORDER_EVENTS: &str = "orders.events";
const COMMANDS: &str = "shop.commands";
const REPLIES: &str = "place-order.replies";
/// Payments declines a charge above this.
const CARD_LIMIT_CENTS: i64 = 10_000;

/// What the saga keeps about its order (saved with every step).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PlaceOrder {
    order: String,
    units: u32,
    cents: i64,
}

fn command(d: &PlaceOrder, command: impl Into<Commands>) -> Result<Message, SagaError> {
    Ok(Message::encode(COMMANDS, &command.into())?.with_key(&d.order))
}

/// The steps, in order. A failure walks back from the step before the failed one, sending each
/// compensation it finds; step 0 has only a compensation (rejecting the order).
fn saga() -> Saga<PlaceOrder> {
    Saga::new("place-order", REPLIES)
        .step(Step::new("reject-order").compensation(|d| command(d, RejectOrder { order: d.order.clone() })))
        .step(
            Step::new("reserve-stock")
                .action(|d| command(d, ReserveStock { order: d.order.clone(), units: d.units }))
                .compensation(|d| command(d, ReleaseStock { order: d.order.clone() })),
        )
        .step(Step::new("charge-card").action(|d| command(d, ChargeCard { order: d.order.clone(), cents: d.cents })))
        .step(Step::new("approve-order").action(|d| command(d, ApproveOrder { order: d.order.clone() })))
}

/// The services' state: stock reserved per order, and each order's status.
#[derive(Debug, Default)]
struct Shop {
    reserved: Mutex<BTreeMap<String, u32>>,
    status: Mutex<BTreeMap<String, &'static str>>,
}

/// The warehouse, payments and orders services, each answering its commands with a reply (one
/// topic and one handler here for brevity; in a real system each service has its own).
async fn serve(_: &mut HandlerContext, command: Commands, shop: &Arc<Shop>) -> Result<Reply, HandlerError> {
    let mut reserved = shop.reserved.lock().unwrap_or_else(PoisonError::into_inner);
    let mut status = shop.status.lock().unwrap_or_else(PoisonError::into_inner);
    let reply = match command {
        Commands::ReserveStock(c) => {
            println!("  warehouse: {} units reserved for {}", c.units, c.order);
            reserved.insert(c.order, c.units);
            Reply::success()
        }
        Commands::ReleaseStock(c) => {
            println!("  warehouse: {}'s units released (compensation)", c.order);
            reserved.remove(&c.order);
            Reply::success()
        }
        Commands::ChargeCard(c) if c.cents > CARD_LIMIT_CENTS => {
            println!("  payments:  {} cents for {}: declined", c.cents, c.order);
            Reply::failure("card declined")
        }
        Commands::ChargeCard(c) => {
            println!("  payments:  {} cents for {}: charged", c.cents, c.order);
            Reply::success()
        }
        Commands::ApproveOrder(c) => {
            println!("  orders:    {} approved", c.order);
            status.insert(c.order, "approved");
            Reply::success()
        }
        Commands::RejectOrder(c) => {
            println!("  orders:    {} rejected (compensation)", c.order);
            status.insert(c.order, "rejected");
            Reply::success()
        }
    };
    Ok(reply)
}

/// Starts a saga for each order placed, in the handler's unit of work.
async fn start_saga(
    cx: &mut HandlerContext,
    e: OrderPlaced,
    sagas: &Orchestrator<PlaceOrder>,
) -> Result<(), HandlerError> {
    let cause = cx.message().clone();
    let data = PlaceOrder { order: e.order.clone(), units: e.units, cents: e.cents };
    sagas.start(cx.tx()?, &e.order, data, Some(&cause)).await?;
    Ok(())
}

/// Waits until the saga of `order` has ended, either way.
async fn ended(sagas: &Orchestrator<PlaceOrder>, order: &str) -> anyhow::Result<SagaInstance<PlaceOrder>> {
    loop {
        if let Some(saga) = sagas.load(order).await?
            && matches!(saga.status, SagaStatus::Completed | SagaStatus::Compensated)
        {
            return Ok(saga);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let (store, broker) = (Arc::new(MemoryStore::new()), Arc::new(MemoryBroker::in_memory()));
    let sagas = Orchestrator::new(saga(), store.clone());
    let shop = Arc::new(Shop::default());
    let shutdown = CancellationToken::new();

    let routes = [
        Route::new(SubscribeOptions::new(ORDER_EVENTS, "place-order-saga")).on_with(sagas.clone(), start_saga),
        Route::new(SubscribeOptions::new(REPLIES, "place-order-saga")).fallback(sagas.reply_handler()),
        Route::new(SubscribeOptions::new(COMMANDS, "shop-services")).on_command_with(shop.clone(), serve),
    ];
    let router = Router::new(broker.clone()).store(store.clone()).middleware(Inbox).routes(routes);
    let router = router.start(shutdown.clone()).await?;
    let relay = tokio::spawn(OutboxRelay::new(store.clone(), broker.clone()).run(shutdown.clone()));

    let mut outcomes = Vec::new();
    for (order, cents) in [("o-1", 4_000), ("o-2", 25_000)] {
        println!("{order} placed ({cents} cents):");
        let placed = OrderPlaced { order: order.into(), units: 2, cents };
        broker.publish(&[Message::encode(ORDER_EVENTS, &placed)?.with_key(order)]).await?;
        let saga = tokio::time::timeout(Duration::from_secs(10), ended(&sagas, order)).await??;
        println!(
            "{order}: saga {:?}{}",
            saga.status,
            saga.failure.as_deref().map(|f| format!(" ({f})")).unwrap_or_default()
        );
        outcomes.push(saga);
    }
    shutdown.cancel();
    router.wait().await;
    relay.await?;

    let reserved = shop.reserved.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let status = shop.status.lock().unwrap_or_else(PoisonError::into_inner).clone();
    ensure!(outcomes[0].status == SagaStatus::Completed, "o-1 did not complete");
    ensure!(outcomes[1].status == SagaStatus::Compensated, "o-2 was not compensated");
    ensure!(outcomes[1].failure.as_deref().is_some_and(|f| f.contains("card declined")), "o-2's failure is not kept");
    ensure!(reserved == BTreeMap::from([("o-1".to_owned(), 2)]), "stock is still held for o-2: {reserved:?}");
    let expected = BTreeMap::from([("o-1".to_owned(), "approved"), ("o-2".to_owned(), "rejected")]);
    ensure!(status == expected, "unexpected order statuses: {status:?}");
    Ok(())
}
