//! The analytics projection and its query.

use herald_sql::any::{Conn, query};
use std::collections::BTreeMap;

use async_trait::async_trait;
use herald::projection::{EventFilter, Projection, ProjectionError};
use herald::{RecordedEvent, Registry, Transaction};
use herald_sql::AnyDatabase;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{AppError, AppResult};
use crate::modules::ordering::domain::{Order, OrderEvent};
use crate::money::Money;

/// The projection's name (its checkpoint key).
pub const PROJECTION: &str = "analytics-v1";

/// Orders and products, from the `order-*` streams.
#[derive(Debug, Default)]
pub struct AnalyticsProjection {
    registry: Registry,
}

fn db(e: herald_sql::SqlError) -> ProjectionError {
    ProjectionError::transient(e)
}

#[async_trait]
impl Projection for AnalyticsProjection {
    fn name(&self) -> &str {
        PROJECTION
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate::<Order>()
    }

    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let order_id = event.aggregate_id::<Order>().unwrap_or_default().to_owned();
        let decoded: OrderEvent = match event.decode_with(&self.registry) {
            Ok(e) => e,
            Err(e) => return Err(ProjectionError::permanent(e)),
        };
        let mut conn = Conn::of(tx).map_err(ProjectionError::permanent)?;
        let at = event.metadata.occurred_at.to_rfc3339();
        let status = match &decoded {
            OrderEvent::Created(e) => {
                let total: i64 = e.items.iter().map(|i| i.price_cents.saturating_mul(i64::from(i.quantity))).sum();
                query(
                    "INSERT INTO analytics_orders (order_id, status, total_cents, created_at, updated_at)
                     VALUES (?, 'pending', ?, ?, ?) ON CONFLICT (order_id) DO NOTHING",
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
            OrderEvent::Approved(_) => "approved",
            OrderEvent::Rejected(_) => "rejected",
            OrderEvent::Readied(_) => "ready",
            OrderEvent::Canceled(_) => "canceled",
            OrderEvent::Completed(_) => "completed",
        };
        query("UPDATE analytics_orders SET status = ?, updated_at = ? WHERE order_id = ?")
            .bind(status)
            .bind(&at)
            .bind(&order_id)
            .execute(conn)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn reset(&self, tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        let mut conn = Conn::of(tx).map_err(ProjectionError::permanent)?;
        query("DELETE FROM analytics_orders").execute(&mut conn).await.map_err(db)?;
        query("DELETE FROM analytics_products").execute(conn).await.map_err(db)?;
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
    })
}
