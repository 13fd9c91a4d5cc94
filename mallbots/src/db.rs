//! The application's own tables, beside Herald's in the same SQLite file, and the bridge from a
//! Herald [`Transaction`] to its SQLite connection so that they change in the same unit of work
//! as events, outbox rows and inbox records.

use herald::Transaction;
use herald_sql::SqliteTransaction;
use sqlx::{SqliteConnection, SqlitePool};

use crate::error::{AppError, AppResult};

/// Every application table. Idempotent (run at each start).
const SCHEMA: &[&str] = &[
    // HTTP: the first response to each (Idempotency-Key, route).
    "CREATE TABLE IF NOT EXISTS http_idempotency (
        key TEXT NOT NULL, route TEXT NOT NULL, fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (key, route))",
    // stores: the mall (stores) and the catalog (products), read models.
    "CREATE TABLE IF NOT EXISTS stores_mall (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, location TEXT NOT NULL, participating INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS stores_catalog (
        id TEXT PRIMARY KEY, store_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
        sku TEXT NOT NULL, price_cents INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS stores_catalog_by_store ON stores_catalog (store_id, name)",
    // customers: the state table of the Customer aggregate.
    "CREATE TABLE IF NOT EXISTS customers_customers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL, enabled INTEGER NOT NULL)",
    // baskets: the local copy of the stores' catalog (fed by stores events).
    "CREATE TABLE IF NOT EXISTS baskets_stores (id TEXT PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS baskets_products (
        id TEXT PRIMARY KEY, store_id TEXT NOT NULL, name TEXT NOT NULL, price_cents INTEGER NOT NULL)",
    // payments: authorizations and invoices (invoice id = order id).
    "CREATE TABLE IF NOT EXISTS payments_payments (
        id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, amount_cents INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS payments_invoices (
        id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, amount_cents INTEGER NOT NULL, status TEXT NOT NULL)",
    // depot: shopping lists (items as JSON).
    "CREATE TABLE IF NOT EXISTS depot_shopping_lists (
        id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, bot_id TEXT, items TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS depot_shopping_lists_by_status ON depot_shopping_lists (status, id)",
    // notifications: the customer copy and the log of every SMS (the recording gateway).
    "CREATE TABLE IF NOT EXISTS notifications_customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS notifications_sent (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, customer_id TEXT NOT NULL, order_id TEXT NOT NULL, kind TEXT NOT NULL,
        sms_number TEXT NOT NULL, text TEXT NOT NULL, sent_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS notifications_sent_by_customer ON notifications_sent (customer_id, seq)",
    // analytics: its read model (a projection of the order streams; rebuildable).
    "CREATE TABLE IF NOT EXISTS analytics_orders (
        order_id TEXT PRIMARY KEY, status TEXT NOT NULL, total_cents INTEGER NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS analytics_products (
        product_id TEXT PRIMARY KEY, product_name TEXT NOT NULL, orders INTEGER NOT NULL,
        quantity INTEGER NOT NULL, revenue_cents INTEGER NOT NULL)",
    // search: denormalised orders (items as JSON) and customer names.
    "CREATE TABLE IF NOT EXISTS search_customers (id TEXT PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS search_orders (
        order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, customer_name TEXT, status TEXT NOT NULL,
        total_cents INTEGER NOT NULL, items TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS search_orders_by_customer ON search_orders (customer_id, order_id)",
];

/// Creates the application's tables if missing.
pub async fn migrate(pool: &SqlitePool) -> AppResult<()> {
    for statement in SCHEMA {
        sqlx::query(*statement).execute(pool).await?;
    }
    Ok(())
}

/// The SQLite connection of a Herald transaction, for the application's own tables.
pub fn connection(tx: &mut dyn Transaction) -> AppResult<&mut SqliteConnection> {
    tx.as_any_mut()
        .downcast_mut::<SqliteTransaction>()
        .map(SqliteTransaction::connection)
        .ok_or_else(|| AppError::internal("the store is not SQLite"))
}

/// A new id for something created (time-ordered, so listings by id follow creation).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
