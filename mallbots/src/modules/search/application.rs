//! The search read model and its query.

use herald::router::{HandlerContext, HandlerError};
use herald::shredding::{FORGOTTEN, Shredder};
use herald_sql::AnyDatabase;
use herald_sql::any::query;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db;
use crate::error::{AppError, AppResult};
use crate::http::one_of;
use crate::modules::customers::api as customers;
use crate::modules::ordering::api as ordering;
use crate::money::Money;

fn transient(e: impl Into<AppError>) -> HandlerError {
    HandlerError::transient(e.into())
}

/// Keeps customer names for the order rows: opened from the sealed event field when a customer
/// registers (`[forgotten]` if it was forgotten before), blanked when it is forgotten.
pub async fn on_customer_event(
    cx: &mut HandlerContext,
    event: customers::CustomerIntegrationEvent,
    shredder: &Shredder,
) -> Result<(), HandlerError> {
    let (id, name) = match &event {
        customers::CustomerIntegrationEvent::Registered(e) => (&e.id, shredder.reveal(&e.name).await?),
        customers::CustomerIntegrationEvent::Forgotten(e) => (&e.id, FORGOTTEN.to_owned()),
        _ => return Ok(()),
    };
    let mut conn = db::conn(cx.tx()?).map_err(transient)?;
    query("INSERT INTO search_customers (id, name) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name")
        .bind(id)
        .bind(&name)
        .execute(&mut conn)
        .await
        .map_err(transient)?;
    query("UPDATE search_orders SET customer_name = ? WHERE customer_id = ?")
        .bind(&name)
        .bind(id)
        .execute(conn)
        .await
        .map_err(transient)?;
    Ok(())
}

/// Keeps one row per order.
pub async fn on_order_event(
    cx: &mut HandlerContext,
    event: ordering::OrderIntegrationEvent,
) -> Result<(), HandlerError> {
    let at = cx.message().metadata.occurred_at.to_rfc3339();
    let mut conn = db::conn(cx.tx()?).map_err(transient)?;
    let (id, status) = match &event {
        ordering::OrderIntegrationEvent::Created(e) => {
            let items = serde_json::to_string(&e.items).map_err(HandlerError::permanent)?;
            let inserted = query(
                "INSERT INTO search_orders (order_id, customer_id, customer_name, status, total_cents, items, created_at, updated_at)
                 VALUES (?, ?, (SELECT name FROM search_customers WHERE id = ?), 'pending', ?, ?, ?, ?)
                 ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(&e.id)
            .bind(&e.customer_id)
            .bind(&e.customer_id)
            .bind(e.total_cents)
            .bind(items)
            .bind(&at)
            .bind(&at)
            .execute(&mut conn)
            .await
            .map_err(transient)?;
            if inserted == 1 {
                for item in &e.items {
                    query("INSERT INTO search_order_items (order_id, store_id, product_id) VALUES (?, ?, ?)")
                        .bind(&e.id)
                        .bind(&item.store_id)
                        .bind(&item.product_id)
                        .execute(&mut conn)
                        .await
                        .map_err(transient)?;
                }
            }
            return Ok(());
        }
        ordering::OrderIntegrationEvent::Approved(e) => (&e.id, "approved"),
        ordering::OrderIntegrationEvent::Rejected(e) => (&e.id, "rejected"),
        ordering::OrderIntegrationEvent::Readied(e) => (&e.id, "ready"),
        ordering::OrderIntegrationEvent::Canceled(e) => (&e.id, "canceled"),
        ordering::OrderIntegrationEvent::Completed(e) => (&e.id, "completed"),
    };
    query("UPDATE search_orders SET status = ?, updated_at = ? WHERE order_id = ?")
        .bind(status)
        .bind(&at)
        .bind(id)
        .execute(conn)
        .await
        .map_err(transient)?;
    Ok(())
}

/// Search filters; every one is optional, all given ones must hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchOrders {
    pub customer_id: Option<String>,
    /// RFC 3339; orders created at or after.
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339; orders created before.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Orders with an item from any of these stores (at most 100).
    #[serde(default)]
    #[schema(default = json!([]), max_items = 100)]
    pub store_ids: Vec<String>,
    /// Orders with any of these products (at most 100).
    #[serde(default)]
    #[schema(default = json!([]), max_items = 100)]
    pub product_ids: Vec<String>,
    /// Decimal amount, at most two fraction digits, not negative, not above `maxTotal`.
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 9999999999999.99, multiple_of = 0.01)]
    pub min_total: Option<Money>,
    /// Decimal amount, at most two fraction digits, not negative.
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 9999999999999.99, multiple_of = 0.01)]
    pub max_total: Option<Money>,
    /// pending, approved, rejected, ready, completed or canceled.
    #[schema(schema_with = order_statuses)]
    pub status: Option<String>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 100 (default 20).
    #[schema(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<u32>,
    /// Newest first (default: oldest first). Pages continue in the same direction.
    #[serde(default)]
    #[schema(default = false)]
    pub newest_first: bool,
}

/// The statuses a search takes, or null.
fn order_statuses() -> utoipa::openapi::Object {
    one_of("Only orders of this status.", &STATUSES, true)
}

/// The most store ids, and product ids, a search takes (each id is a bound parameter of its
/// query: the database's limit on them must never be what refuses a request).
pub const MAX_IDS: usize = 100;

/// An order as search shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummary {
    pub id: String,
    pub customer_id: String,
    pub customer_name: Option<String>,
    pub status: String,
    #[schema(value_type = f64)]
    pub total: Money,
    pub store_ids: Vec<String>,
    pub product_ids: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// One page of results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchPage {
    pub orders: Vec<OrderSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next: Option<String>,
}

const STATUSES: [&str; 6] = ["pending", "approved", "rejected", "ready", "completed", "canceled"];

type Row = (String, String, Option<String>, String, i64, String, String);

fn summary((id, customer_id, customer_name, status, total_cents, items, created_at): Row) -> AppResult<OrderSummary> {
    let items: Vec<ordering::OrderItem> = serde_json::from_str(&items).map_err(AppError::internal)?;
    let mut store_ids: Vec<String> = items.iter().map(|i| i.store_id.clone()).collect();
    store_ids.sort();
    store_ids.dedup();
    Ok(OrderSummary {
        id,
        customer_id,
        customer_name,
        status,
        total: Money::from_cents(total_cents).map_err(AppError::internal)?,
        store_ids,
        product_ids: items.into_iter().map(|i| i.product_id).collect(),
        created_at,
    })
}

const COLUMNS: &str =
    "SELECT order_id, customer_id, customer_name, status, total_cents, items, created_at FROM search_orders";

/// Orders matching the filters, oldest first (order ids are time-ordered) or newest first, one
/// page at a time.
pub async fn search(db: &AnyDatabase, filters: SearchOrders) -> AppResult<SearchPage> {
    let limit = filters.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(AppError::invalid("limit must be between 1 and 100"));
    }
    if let Some(status) = &filters.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(AppError::invalid(format!("unknown status {status:?}")));
    }
    if filters.store_ids.len() > MAX_IDS || filters.product_ids.len() > MAX_IDS {
        return Err(AppError::invalid(format!("at most {MAX_IDS} store ids and {MAX_IDS} product ids")));
    }
    if let (Some(min), Some(max)) = (filters.min_total, filters.max_total)
        && min > max
    {
        return Err(AppError::invalid("minTotal must not be above maxTotal"));
    }
    let mut q = query(COLUMNS).push(" WHERE 1 = 1");
    if let Some(customer) = &filters.customer_id {
        q = q.push(" AND customer_id = ?").bind(customer);
    }
    if let Some(after) = filters.created_after {
        q = q.push(" AND created_at >= ?").bind(after.to_rfc3339());
    }
    if let Some(before) = filters.created_before {
        q = q.push(" AND created_at < ?").bind(before.to_rfc3339());
    }
    for (field, ids) in [("store_id", &filters.store_ids), ("product_id", &filters.product_ids)] {
        if ids.is_empty() {
            continue;
        }
        let placeholders = vec!["?"; ids.len()].join(", ");
        q = q.push(&format!(
            " AND EXISTS (SELECT 1 FROM search_order_items i \
             WHERE i.order_id = search_orders.order_id AND i.{field} IN ({placeholders}))"
        ));
        for id in ids {
            q = q.bind(id);
        }
    }
    if let Some(min) = filters.min_total {
        q = q.push(" AND total_cents >= ?").bind(min.cents());
    }
    if let Some(max) = filters.max_total {
        q = q.push(" AND total_cents <= ?").bind(max.cents());
    }
    if let Some(status) = &filters.status {
        q = q.push(" AND status = ?").bind(status);
    }
    let (past_cursor, order) = if filters.newest_first {
        (" AND order_id < ?", " ORDER BY order_id DESC")
    } else {
        (" AND order_id > ?", " ORDER BY order_id")
    };
    if let Some(cursor) = &filters.cursor {
        q = q.push(past_cursor).bind(cursor);
    }
    let mut rows: Vec<Row> = q.push(order).push(" LIMIT ?").bind(i64::from(limit) + 1).fetch_all(db).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let orders = rows.into_iter().map(summary).collect::<AppResult<Vec<_>>>()?;
    let next = if more { orders.last().map(|o| o.id.clone()) } else { None };
    Ok(SearchPage { orders, next })
}

/// One order.
pub async fn get(db: &AnyDatabase, id: &str) -> AppResult<OrderSummary> {
    let row: Option<Row> = query(
        "SELECT order_id, customer_id, customer_name, status, total_cents, items, created_at FROM search_orders WHERE order_id = ?",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    summary(row.ok_or_else(|| AppError::NotFound("order".into()))?)
}
