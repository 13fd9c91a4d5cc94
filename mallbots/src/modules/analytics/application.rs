//! The analytics projection and its query.

use herald_sql::any::{Conn, query};
use std::collections::BTreeMap;

use async_trait::async_trait;
use herald::projection::{EventFilter, Projection, ProjectionError};
use herald::router::{HandlerContext, HandlerError};
use herald::{ExpectedVersion, NewEvent, RecordedEvent, Transaction};
use herald_sql::AnyDatabase;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{AppError, AppResult};
use crate::modules::ordering::api::OrderIntegrationEvent;
use crate::money::Money;

/// The projection's name (its checkpoint key). v2 reads analytics' own copy of the order
/// events (v1 read ordering's event store); v3 adds revenue by minute and the saga's outcomes
/// (a new name replays the log into the new tables).
pub const PROJECTION: &str = "analytics-v3";

/// Analytics keeps every order event it receives in its own event store, in a stream per
/// order named with this prefix; the projection reads those streams. So analytics depends on
/// nothing but the broker, joins late (its group starts at the beginning of the topic), and
/// rebuilds from its own log even on a broker that keeps no history.
pub const STREAM_PREFIX: &str = "analytics-order-";

/// Keeps an order event from the broker in analytics' own log (the inbox makes a redelivery a
/// no-op, so each event is kept once).
pub async fn record_order_event(cx: &mut HandlerContext, event: OrderIntegrationEvent) -> Result<(), HandlerError> {
    let order_id = match &event {
        OrderIntegrationEvent::Created(e) => &e.id,
        OrderIntegrationEvent::Approved(e) => &e.id,
        OrderIntegrationEvent::Rejected(e) => &e.id,
        OrderIntegrationEvent::Readied(e) => &e.id,
        OrderIntegrationEvent::Canceled(e) => &e.id,
        OrderIntegrationEvent::Completed(e) => &e.id,
    };
    let stream = format!("{STREAM_PREFIX}{order_id}");
    let mut recorded = NewEvent::encode(&event).map_err(HandlerError::permanent)?.caused_by(cx.message());
    // When it happened, not when analytics heard of it: the figures by time come from this.
    recorded.metadata.occurred_at = cx.message().metadata.occurred_at;
    cx.tx()?.append(&stream, ExpectedVersion::Any, vec![recorded]).await?;
    Ok(())
}

/// Orders and products, from analytics' copy of the order events.
#[derive(Debug, Default)]
pub struct AnalyticsProjection;

fn db(e: herald_sql::SqlError) -> ProjectionError {
    ProjectionError::transient(e)
}

/// `insert` (`INSERT INTO table (order_id, column)`) of `value` for an order, unless the order
/// has one already: the first fact seen stands, and a replayed event changes nothing.
async fn record_once(conn: &mut Conn<'_>, insert: &str, order_id: &str, value: &str) -> Result<(), ProjectionError> {
    query(format!("{insert} VALUES (?, ?) ON CONFLICT (order_id) DO NOTHING"))
        .bind(order_id)
        .bind(value)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// Orders move forward only (pending → approved → ready → completed; rejected and canceled
/// end them): on a broker without per-key order an order's events can arrive out of order, and
/// a late `approved` must not overwrite `completed`.
const RANK: &str = "CASE {} WHEN 'pending' THEN 0 WHEN 'approved' THEN 1 WHEN 'ready' THEN 2 \
    WHEN 'rejected' THEN 3 WHEN 'canceled' THEN 3 WHEN 'completed' THEN 4 ELSE -1 END";

/// Every table of the read model: what a rebuild clears.
pub const TABLES: &[&str] =
    &["analytics_orders", "analytics_products", "analytics_completions", "analytics_saga_outcomes"];

#[async_trait]
impl Projection for AnalyticsProjection {
    fn name(&self) -> &str {
        PROJECTION
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().stream_prefix(STREAM_PREFIX)
    }

    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let order_id = event.stream.strip_prefix(STREAM_PREFIX).unwrap_or_default().to_owned();
        let decoded: OrderIntegrationEvent = event.decode().map_err(ProjectionError::permanent)?;
        let mut conn = Conn::of(tx).map_err(ProjectionError::permanent)?;
        let at = event.metadata.occurred_at.to_rfc3339();
        let status = match &decoded {
            OrderIntegrationEvent::Created(e) => {
                let total: i64 = e.items.iter().map(|i| i.price_cents.saturating_mul(i64::from(i.quantity))).sum();
                query(
                    "INSERT INTO analytics_orders (order_id, status, total_cents, created_at, updated_at)
                     VALUES (?, 'pending', ?, ?, ?)
                     ON CONFLICT (order_id) DO UPDATE SET total_cents = excluded.total_cents, created_at = excluded.created_at",
                )
                .bind(&order_id)
                .bind(total)
                .bind(&at)
                .bind(&at)
                .execute(&mut conn)
                .await
                .map_err(db)?;
                for item in &e.items {
                    query(
                        "INSERT INTO analytics_products (product_id, product_name, orders, quantity, revenue_cents)
                         VALUES (?, ?, 1, ?, ?) ON CONFLICT (product_id) DO UPDATE SET
                         product_name = excluded.product_name, orders = analytics_products.orders + 1,
                         quantity = analytics_products.quantity + excluded.quantity, revenue_cents = analytics_products.revenue_cents + excluded.revenue_cents",
                    )
                    .bind(&item.product_id)
                    .bind(&item.product_name)
                    .bind(i64::from(item.quantity))
                    .bind(item.price_cents.saturating_mul(i64::from(item.quantity)))
                    .execute(&mut conn)
                    .await
                    .map_err(db)?;
                }
                return Ok(());
            }
            OrderIntegrationEvent::Approved(_) => "approved",
            OrderIntegrationEvent::Rejected(_) => "rejected",
            OrderIntegrationEvent::Readied(_) => "ready",
            OrderIntegrationEvent::Canceled(_) => "canceled",
            OrderIntegrationEvent::Completed(_) => "completed",
        };
        match status {
            // How the saga decided, once per order (the first decision seen stands).
            "approved" | "rejected" => {
                record_once(&mut conn, "INSERT INTO analytics_saga_outcomes (order_id, outcome)", &order_id, status)
                    .await?;
            }
            // The minute it completed, by the event's own time (so a rebuild gives the same).
            "completed" => {
                let minute = event.metadata.occurred_at.format("%Y-%m-%dT%H:%M:00Z").to_string();
                record_once(&mut conn, "INSERT INTO analytics_completions (order_id, minute)", &order_id, &minute)
                    .await?;
            }
            _ => {}
        }
        // An order's first event to arrive may be a later one: insert it without a total (its
        // OrderCreated sets it), and never move a status backwards.
        let sql = format!(
            "INSERT INTO analytics_orders (order_id, status, total_cents, created_at, updated_at) VALUES (?, ?, 0, ?, ?)
             ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at
             WHERE {} > {}",
            RANK.replace("{}", "excluded.status"),
            RANK.replace("{}", "analytics_orders.status"),
        );
        query(sql).bind(&order_id).bind(status).bind(&at).bind(&at).execute(conn).await.map_err(db)?;
        Ok(())
    }

    async fn reset(&self, tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        let mut conn = Conn::of(tx).map_err(ProjectionError::permanent)?;
        for table in TABLES {
            query(format!("DELETE FROM {table}")).execute(&mut conn).await.map_err(db)?;
        }
        Ok(())
    }
}

/// A product's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductFigures {
    pub product_id: String,
    pub product_name: String,
    /// Orders it was in (whatever became of them).
    pub orders: i64,
    pub quantity: i64,
    #[schema(value_type = f64)]
    pub ordered_value: Money,
}

/// The orders completed in one minute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinuteRevenue {
    /// The minute's start (RFC 3339, UTC).
    #[schema(example = "2025-01-31T14:05:00Z")]
    pub minute: String,
    /// The total of the orders completed in it.
    #[schema(value_type = f64)]
    pub revenue: Money,
    /// How many orders completed in it.
    pub orders: i64,
}

/// How the create-order saga decided: each order counted once, whatever became of it after.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaOutcomes {
    pub approved: i64,
    pub rejected: i64,
}

/// The most minutes [`Summary::revenue_by_minute`] has.
pub const REVENUE_MINUTES: i64 = 60;

/// The business summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Order count per status (pending, approved, rejected, ready, completed, canceled).
    pub orders_by_status: BTreeMap<String, i64>,
    /// The total of completed orders.
    #[schema(value_type = f64)]
    pub revenue: Money,
    /// The five products ordered most (by quantity).
    pub top_products: Vec<ProductFigures>,
    /// Completed orders' revenue by the minute they completed (by the events' time): the last
    /// 60 minutes that have any, oldest first.
    pub revenue_by_minute: Vec<MinuteRevenue>,
    /// Orders the saga approved and rejected.
    pub saga_outcomes: SagaOutcomes,
}

/// The summary, from the read model.
pub async fn summary(db: &AnyDatabase) -> AppResult<Summary> {
    let by_status: Vec<(String, i64)> =
        query("SELECT status, COUNT(*) FROM analytics_orders GROUP BY status").fetch_all(db).await?;
    // PostgreSQL sums BIGINTs to NUMERIC: cast back.
    let (revenue,): (i64,) =
        query("SELECT CAST(COALESCE(SUM(total_cents), 0) AS BIGINT) FROM analytics_orders WHERE status = 'completed'")
            .fetch_one(db)
            .await?;
    let top: Vec<(String, String, i64, i64, i64)> = query(
        "SELECT product_id, product_name, orders, quantity, revenue_cents FROM analytics_products
         ORDER BY quantity DESC, product_id LIMIT 5",
    )
    .fetch_all(db)
    .await?;
    let mut by_minute: Vec<(String, i64, i64)> = query(
        "SELECT c.minute, CAST(COALESCE(SUM(o.total_cents), 0) AS BIGINT), COUNT(*)
         FROM analytics_completions c JOIN analytics_orders o ON o.order_id = c.order_id
         GROUP BY c.minute ORDER BY c.minute DESC LIMIT ?",
    )
    .bind(REVENUE_MINUTES)
    .fetch_all(db)
    .await?;
    by_minute.reverse();
    let outcomes: Vec<(String, i64)> =
        query("SELECT outcome, COUNT(*) FROM analytics_saga_outcomes GROUP BY outcome").fetch_all(db).await?;
    let outcome = |name: &str| outcomes.iter().find(|(o, _)| o == name).map_or(0, |(_, n)| *n);
    let money = |cents| Money::from_cents(cents).map_err(AppError::internal);
    Ok(Summary {
        orders_by_status: by_status.into_iter().collect(),
        revenue: money(revenue)?,
        top_products: top
            .into_iter()
            .map(|(product_id, product_name, orders, quantity, cents)| {
                Ok(ProductFigures { product_id, product_name, orders, quantity, ordered_value: money(cents)? })
            })
            .collect::<AppResult<_>>()?,
        revenue_by_minute: by_minute
            .into_iter()
            .map(|(minute, cents, orders)| Ok(MinuteRevenue { minute, revenue: money(cents)?, orders }))
            .collect::<AppResult<_>>()?,
        saga_outcomes: SagaOutcomes { approved: outcome("approved"), rejected: outcome("rejected") },
    })
}
