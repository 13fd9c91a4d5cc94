//! The application's own tables, beside Herald's in the same database (SQLite or PostgreSQL),
//! and the bridge from a Herald [`Transaction`] to its connection so that they change in the
//! same unit of work as events, outbox rows and inbox records.

use herald::Transaction;
use herald_sql::AnyDatabase;
use herald_sql::any::{self, Conn, Migration};

use crate::error::{AppError, AppResult};

/// The application's tables, version by version (see [`herald_sql::any::migrate`]): never edit
/// an applied version, add one. Tables are prefixed by their module.
const MIGRATIONS: &[Migration] = &[
    // 1: http_idempotency (the first response to each Idempotency-Key and route); stores_mall,
    // stores_catalog (read models); customers_customers (the Customer state table);
    // baskets_stores, baskets_products (baskets' copy of the catalog); payments_payments,
    // payments_invoices (invoice id = order id); depot_shopping_lists (items as JSON);
    // notifications_customers, notifications_sent (the recording SMS gateway);
    // analytics_orders, analytics_products (the rebuildable projection); search_customers,
    // search_orders (denormalised orders, items as JSON). `IF NOT EXISTS`: databases made
    // before migrations were recorded already have these tables.
    Migration::per_dialect(1, "the tables of every module", SQLITE_V1, POSTGRES_V1),
    // 2: the products and stores of each searched order, so search filters without JSON
    // functions (which differ per dialect); filled from the orders already there.
    Migration::per_dialect(
        2,
        "search_order_items",
        "CREATE TABLE search_order_items (order_id TEXT NOT NULL, store_id TEXT NOT NULL, product_id TEXT NOT NULL);
         CREATE INDEX search_order_items_by_product ON search_order_items (product_id, order_id);
         CREATE INDEX search_order_items_by_store ON search_order_items (store_id, order_id);
         INSERT INTO search_order_items (order_id, store_id, product_id)
             SELECT o.order_id, json_extract(i.value, '$.store_id'), json_extract(i.value, '$.product_id')
             FROM search_orders o, json_each(o.items) i",
        "CREATE TABLE search_order_items (order_id TEXT NOT NULL, store_id TEXT NOT NULL, product_id TEXT NOT NULL);
         CREATE INDEX search_order_items_by_product ON search_order_items (product_id, order_id);
         CREATE INDEX search_order_items_by_store ON search_order_items (store_id, order_id);
         INSERT INTO search_order_items (order_id, store_id, product_id)
             SELECT o.order_id, i ->> 'store_id', i ->> 'product_id'
             FROM search_orders o, jsonb_array_elements(o.items::jsonb) i",
    ),
];

const SQLITE_V1: &str = "CREATE TABLE IF NOT EXISTS http_idempotency (
        key TEXT NOT NULL, route TEXT NOT NULL, fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (key, route));
CREATE TABLE IF NOT EXISTS stores_mall (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, location TEXT NOT NULL, participating INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stores_catalog (
        id TEXT PRIMARY KEY, store_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
        sku TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS stores_catalog_by_store ON stores_catalog (store_id, name);
CREATE TABLE IF NOT EXISTS customers_customers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL, enabled INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS baskets_stores (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS baskets_products (
        id TEXT PRIMARY KEY, store_id TEXT NOT NULL, name TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS payments_payments (
        id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, amount_cents INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS payments_invoices (
        id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, amount_cents INTEGER NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS depot_shopping_lists (
        id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, bot_id TEXT, items TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS depot_shopping_lists_by_status ON depot_shopping_lists (status, id);
CREATE TABLE IF NOT EXISTS notifications_customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notifications_sent (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, customer_id TEXT NOT NULL, order_id TEXT NOT NULL, kind TEXT NOT NULL,
        sms_number TEXT NOT NULL, text TEXT NOT NULL, sent_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS notifications_sent_by_customer ON notifications_sent (customer_id, seq);
CREATE TABLE IF NOT EXISTS analytics_orders (
        order_id TEXT PRIMARY KEY, status TEXT NOT NULL, total_cents INTEGER NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS analytics_products (
        product_id TEXT PRIMARY KEY, product_name TEXT NOT NULL, orders INTEGER NOT NULL,
        quantity INTEGER NOT NULL, revenue_cents INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS search_customers (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS search_orders (
        order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, customer_name TEXT, status TEXT NOT NULL,
        total_cents INTEGER NOT NULL, items TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS search_orders_by_customer ON search_orders (customer_id, order_id)";

const POSTGRES_V1: &str = "CREATE TABLE IF NOT EXISTS http_idempotency (
        key TEXT NOT NULL, route TEXT NOT NULL, fingerprint TEXT NOT NULL,
        status BIGINT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (key, route));
CREATE TABLE IF NOT EXISTS stores_mall (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, location TEXT NOT NULL, participating BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS stores_catalog (
        id TEXT PRIMARY KEY, store_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
        sku TEXT NOT NULL, price_cents BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS stores_catalog_by_store ON stores_catalog (store_id, name);
CREATE TABLE IF NOT EXISTS customers_customers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL, enabled BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS baskets_stores (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS baskets_products (
        id TEXT PRIMARY KEY, store_id TEXT NOT NULL, name TEXT NOT NULL, price_cents BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS payments_payments (
        id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, amount_cents BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS payments_invoices (
        id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, amount_cents BIGINT NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS depot_shopping_lists (
        id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, bot_id TEXT, items TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS depot_shopping_lists_by_status ON depot_shopping_lists (status, id);
CREATE TABLE IF NOT EXISTS notifications_customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notifications_sent (
        seq BIGSERIAL PRIMARY KEY, customer_id TEXT NOT NULL, order_id TEXT NOT NULL, kind TEXT NOT NULL,
        sms_number TEXT NOT NULL, text TEXT NOT NULL, sent_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS notifications_sent_by_customer ON notifications_sent (customer_id, seq);
CREATE TABLE IF NOT EXISTS analytics_orders (
        order_id TEXT PRIMARY KEY, status TEXT NOT NULL, total_cents BIGINT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS analytics_products (
        product_id TEXT PRIMARY KEY, product_name TEXT NOT NULL, orders BIGINT NOT NULL,
        quantity BIGINT NOT NULL, revenue_cents BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS search_customers (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS search_orders (
        order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, customer_name TEXT, status TEXT NOT NULL,
        total_cents BIGINT NOT NULL, items TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS search_orders_by_customer ON search_orders (customer_id, order_id)";

/// Creates or updates the application's tables.
pub async fn migrate(db: &AnyDatabase) -> AppResult<()> {
    let applied = any::migrate(db, "mallbots", MIGRATIONS).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "MallBots' tables migrated");
    }
    Ok(())
}

/// The connection of a Herald transaction, for the application's own tables: statements on it
/// commit or roll back with the transaction's events, outbox rows and inbox record.
pub fn conn(tx: &mut dyn Transaction) -> AppResult<Conn<'_>> {
    Conn::of(tx).map_err(AppError::internal)
}

/// A new id for something created (time-ordered, so listings by id follow creation).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
