//! **CQRS: a projection builds a read model, and can rebuild it.** The write side records order
//! events in the event store; a `ProjectionRunner` follows the store's global log and keeps an
//! `order_summary` table in SQLite, saving its checkpoint *in the same transaction* as the
//! rows (a crash can neither skip an event nor apply one twice). The query side reads the table
//! with plain SQL. `rebuild()` wipes the table and replays the log: the same result.
//!
//! Look at: `OrderSummary` (`handle` writes through the batch's transaction, `reset` clears the
//! table for a rebuild), the live runner (`spawn`, `wait_caught_up`), and the rebuild.
//!
//! ```sh
//! cargo run --example cqrs_projection
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use herald::prelude::*;
use herald_sql::any::{AnyDatabase, Migration, migrate, query};

events! {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    enum OrderEvent {
        Placed = "orders.Placed.v1" { customer: String, cents: i64 },
        Cancelled = "orders.Cancelled.v1" {},
    }
}

#[derive(Debug, Clone)]
enum Command {
    Place { customer: String, cents: i64 },
    Cancel,
}

#[derive(Debug, thiserror::Error)]
#[error("the order is not open")]
struct NotOpen;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Order {
    open: bool,
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = Command;
    type Event = OrderEvent;
    type Error = NotOpen;

    fn handle(&self, command: Command) -> Result<Vec<OrderEvent>, NotOpen> {
        match command {
            Command::Place { customer, cents } => Ok(vec![Placed { customer, cents }.into()]),
            Command::Cancel if self.open => Ok(vec![Cancelled {}.into()]),
            Command::Cancel => Err(NotOpen),
        }
    }
    fn apply(&mut self, event: &OrderEvent) {
        self.open = matches!(event, OrderEvent::Placed(_));
    }
}

/// The read model: one row per order, written only through the runner's transaction.
struct OrderSummary;

#[async_trait]
impl Projection for OrderSummary {
    fn name(&self) -> &str {
        "order-summary"
    }
    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate::<Order>()
    }
    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let order = event.aggregate_id::<Order>().unwrap_or_default().to_owned();
        let statement = match event.decode::<OrderEvent>()? {
            OrderEvent::Placed(e) => {
                query("INSERT INTO order_summary (id, customer, cents, status) VALUES (?, ?, ?, 'open')")
                    .bind(order)
                    .bind(e.customer)
                    .bind(e.cents)
            }
            OrderEvent::Cancelled(_) => query("UPDATE order_summary SET status = 'cancelled' WHERE id = ?").bind(order),
        };
        Ok(statement.execute(tx).await.map(drop)?)
    }
    async fn reset(&self, tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        Ok(query("DELETE FROM order_summary").execute(tx).await.map(drop)?)
    }
}

/// The query side: what each customer has on open orders.
async fn spend_per_customer(db: &AnyDatabase) -> anyhow::Result<Vec<(String, i64, i64)>> {
    let sql = "SELECT customer, COUNT(*), CAST(SUM(cents) AS BIGINT) FROM order_summary
               WHERE status = 'open' GROUP BY customer ORDER BY customer";
    Ok(query(sql).fetch_all(db).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let dir = tempfile::tempdir()?;
    let db = AnyDatabase::open(&format!("sqlite://{}", dir.path().join("orders.db").display())).await?;
    let table = "CREATE TABLE order_summary (id TEXT PRIMARY KEY, customer TEXT NOT NULL, cents BIGINT NOT NULL, status TEXT NOT NULL)";
    migrate(&db, "orders", &[Migration::portable(1, "order summary", table)]).await?;
    let store = db.store();

    // The query side follows the log live, in the background.
    let runner = ProjectionRunner::new(store.clone(), Arc::new(OrderSummary));
    let stop = CancellationToken::new();
    let live = runner.spawn(stop.clone());

    // The write side: commands to aggregates, events in the store. Nothing here knows the table.
    let orders = Repository::<Order>::new();
    let place = |customer: &str, cents| Command::Place { customer: customer.into(), cents };
    for (id, command) in [("o-1", place("ada", 2500)), ("o-2", place("bob", 900)), ("o-3", place("ada", 1200))] {
        orders.execute(&*store, id, command).await?;
    }
    orders.execute(&*store, "o-3", Command::Cancel).await?;

    tokio::time::timeout(Duration::from_secs(10), runner.wait_caught_up()).await??;
    let live_view = spend_per_customer(&db).await?;
    let status = runner.status().await?;
    println!(
        "live: {live_view:?} (checkpoint {} of {}, {} behind)",
        status.position, status.head, status.events_behind
    );
    stop.cancel();
    live.await??;

    // A new column, a fixed bug…: rebuild from the log. The table is reset with the checkpoint.
    let report = runner.rebuild(CancellationToken::new()).await?;
    let rebuilt = spend_per_customer(&db).await?;
    println!("rebuilt from {} events in {:?}: {rebuilt:?}", report.events, report.elapsed);
    db.close().await;

    let expected = vec![("ada".to_owned(), 1, 2500), ("bob".to_owned(), 1, 900)];
    ensure!(live_view == expected, "the live read model is wrong: {live_view:?}");
    ensure!(status.position == 4 && status.events_behind == 0, "the checkpoint is not at the head: {status:?}");
    ensure!(report.completed && report.events == 4, "the rebuild did not replay the log: {report:?}");
    ensure!(rebuilt == live_view, "the rebuild differs from the live read model");
    Ok(())
}
