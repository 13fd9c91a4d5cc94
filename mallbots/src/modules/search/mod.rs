//! **search**: the order search read model (CQRS): one denormalised row per order, built from
//! the order and customer events, queried with filters and cursor paging (**fix**: the Go
//! version left search unimplemented).

mod application;
mod grpc;
mod http;

use herald::SubscribeOptions;
use herald::asyncapi::AsyncApi;
use herald::router::Route;
use herald_sql::any::Migration;

use crate::module::{Module, ModuleContext, Parts};
use crate::modules::customers::api as customers;
use crate::modules::ordering::api as ordering;

/// search in the list of modules.
pub const MODULE: Module = Module {
    name: "search",
    about: "the order search read model (orders with their customer, items and status), queried with filters",
    http_prefixes: &["/api/search"],
    grpc_services: &["searchpb.SearchService"],
    migrations: MIGRATIONS,
    routes,
    messages,
    start,
};

/// `search_order_items` holds each order's products and stores, so search filters without
/// JSON functions (which differ per dialect); version 2 fills it from the orders of a database
/// made before it existed.
const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "search_customers, search_orders, search_order_items",
        "CREATE TABLE IF NOT EXISTS search_customers (id TEXT PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS search_orders (
            order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, customer_name TEXT, status TEXT NOT NULL,
            total_cents BIGINT NOT NULL, items TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS search_orders_by_customer ON search_orders (customer_id, order_id);
         CREATE TABLE IF NOT EXISTS search_order_items (
            order_id TEXT NOT NULL, store_id TEXT NOT NULL, product_id TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS search_order_items_by_product ON search_order_items (product_id, order_id);
         CREATE INDEX IF NOT EXISTS search_order_items_by_store ON search_order_items (store_id, order_id)",
    ),
    Migration::per_dialect(
        2,
        "search_order_items of older orders",
        "INSERT INTO search_order_items (order_id, store_id, product_id)
            SELECT o.order_id, json_extract(i.value, '$.store_id'), json_extract(i.value, '$.product_id')
            FROM search_orders o, json_each(o.items) i
            WHERE NOT EXISTS (SELECT 1 FROM search_order_items)",
        "INSERT INTO search_order_items (order_id, store_id, product_id)
            SELECT o.order_id, i ->> 'store_id', i ->> 'product_id'
            FROM search_orders o, jsonb_array_elements(o.items::jsonb) i
            WHERE NOT EXISTS (SELECT 1 FROM search_order_items)",
    ),
];

fn start(cx: &ModuleContext) -> Parts {
    cx.apis(http::routes(), grpc::service)
}

/// The message routes of search.
fn routes(cx: &ModuleContext) -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(customers::EVENT_TOPIC, "search-customers"))
            .on_with(cx.shredder.clone(), application::on_customer_event),
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "search-orders")).on(application::on_order_event),
    ]
}

/// What search handles (it publishes nothing).
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.receives::<customers::CustomerIntegrationEvent>(customers::EVENT_TOPIC, "search-customers")
        .receives::<ordering::OrderIntegrationEvent>(ordering::EVENT_TOPIC, "search-orders")
}
