//! **analytics** (**new**): business figures — orders by status, the saga's outcomes
//! (approved, rejected), revenue (in all and by minute), top products — as a
//! [`Projection`](herald::projection::Projection).
//!
//! It depends on nothing but ordering's integration events on the broker: each one is kept in
//! analytics' own event store (a stream per order, in the transaction that records it in the
//! inbox), and the projection reads that log. Its consumer group starts at the beginning of the
//! topic, so added to a running mall (or started as its own process later) it comes up to
//! date, and `POST /api/analytics/rebuild` replays its own log while the app runs
//! ([`AnalyticsControl`]) — even on a broker that keeps no history.

mod application;
mod control;
mod grpc;
mod http;

use std::sync::Arc;

use herald::SubscribeOptions;
use herald::asyncapi::AsyncApi;
use herald::router::Route;
use herald_sql::any::{Migration, query};

pub use application::{AnalyticsProjection, PROJECTION};
pub use control::AnalyticsControl;

use crate::module::{Module, ModuleContext, Parts};
use crate::modules::ordering::api as ordering;

/// analytics in the list of modules.
pub const MODULE: Module = Module {
    name: "analytics",
    about: "business figures (orders by status, saga outcomes, revenue by minute, top products) from the order events, rebuildable",
    http_prefixes: &["/api/analytics"],
    grpc_services: &["analyticspb.AnalyticsService"],
    migrations: MIGRATIONS,
    routes,
    messages,
    start,
};

const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "analytics_orders, analytics_products (the rebuildable projection)",
        "CREATE TABLE IF NOT EXISTS analytics_orders (
            order_id TEXT PRIMARY KEY, status TEXT NOT NULL, total_cents BIGINT NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS analytics_products (
            product_id TEXT PRIMARY KEY, product_name TEXT NOT NULL, orders BIGINT NOT NULL,
            quantity BIGINT NOT NULL, revenue_cents BIGINT NOT NULL)",
    ),
    // analytics-v2 builds the tables anew from the broker's order events.
    Migration::portable(
        2,
        "analytics from the broker: start the read model afresh",
        "DELETE FROM analytics_orders; DELETE FROM analytics_products",
    ),
    // analytics-v3 adds revenue by minute and the saga's outcomes, and builds every table anew
    // (the new ones from the first event on).
    Migration::portable(
        3,
        "analytics_completions, analytics_saga_outcomes; start the read model afresh",
        "CREATE TABLE IF NOT EXISTS analytics_completions (order_id TEXT PRIMARY KEY, minute TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS analytics_completions_by_minute ON analytics_completions (minute);
         CREATE TABLE IF NOT EXISTS analytics_saga_outcomes (order_id TEXT PRIMARY KEY, outcome TEXT NOT NULL);
         DELETE FROM analytics_orders; DELETE FROM analytics_products",
    ),
];

/// Gauge, label `status`: orders per status in the analytics read model.
pub const ORDERS: &str = "mallbots_orders";

/// Every order status, so a status no order has any more reads 0 instead of its last count.
const ORDER_STATUSES: &[&str] = &["pending", "approved", "rejected", "ready", "completed", "canceled"];

/// The message routes of analytics: order events into its own log.
fn routes(_: &ModuleContext) -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "analytics-orders"))
            .on(application::record_order_event),
    ]
}

/// What analytics handles (it publishes nothing).
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.receives::<ordering::OrderIntegrationEvent>(ordering::EVENT_TOPIC, "analytics-orders")
}

fn start(cx: &ModuleContext) -> Parts {
    metrics::describe_gauge!(ORDERS, "Orders by status (analytics read model).");
    let control = AnalyticsControl::new(cx.store.clone(), cx.instance.to_string());
    let projection = {
        let (control, stop, shutdown) = (control.clone(), cx.stop.clone(), cx.shutdown.clone());
        Box::pin(async move {
            control.start(stop.clone(), shutdown).await;
            stop.cancelled().await;
            Ok(control.stop().await?)
        })
    };
    let gauges = {
        let (db, control) = (cx.db.clone(), control.clone());
        Arc::new(move || {
            let (db, control) = (db.clone(), control.clone());
            Box::pin(async move {
                let by_status: Vec<(String, i64)> =
                    query("SELECT status, COUNT(*) FROM analytics_orders GROUP BY status").fetch_all(&db).await?;
                for status in ORDER_STATUSES {
                    let count = by_status.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                    metrics::gauge!(ORDERS, "status" => *status).set(count as f64);
                }
                // Sets Herald's projection-lag gauges; a failure only leaves them stale.
                if let Err(e) = control.runner().status().await {
                    tracing::warn!(error = %e, "no analytics projection lag for this scrape");
                }
                Ok(())
            }) as futures::future::BoxFuture<'static, _>
        })
    };
    let state = http::AnalyticsState { app: cx.state(), control };
    let service = grpc::service(state.clone());
    Parts {
        http: http::routes().with_state(state),
        grpc: vec![Box::new(move |routes: tonic::service::Routes| routes.add_service(service))],
        tasks: vec![("analytics projection", projection)],
        gauges: Some(gauges),
    }
}
