//! **stores**: stores, their products and their participation in the mall.
//!
//! `Store` and `Product` are event-sourced (with snapshots); the read models `stores_mall` and
//! `stores_catalog` change in the same transaction as the events, and so do the integration
//! events in the outbox ([`api`]). It consumes nothing.

pub mod api;
mod application;
mod domain;
mod grpc;
mod http;

use herald::asyncapi::AsyncApi;
use herald_sql::any::Migration;

use crate::module::{Module, ModuleContext, Parts};

/// stores in the list of modules.
pub const MODULE: Module = Module {
    name: "stores",
    about: "stores, their products and their participation in the mall",
    http_prefixes: &["/api/stores"],
    grpc_services: &["storespb.StoresService"],
    migrations: MIGRATIONS,
    routes: |_| Vec::new(),
    messages,
    start,
};

const MIGRATIONS: &[Migration] = &[Migration::per_dialect(
    1,
    "stores_mall, stores_catalog (read models)",
    "CREATE TABLE IF NOT EXISTS stores_mall (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, location TEXT NOT NULL, participating INTEGER NOT NULL);
     CREATE TABLE IF NOT EXISTS stores_catalog (
        id TEXT PRIMARY KEY, store_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
        sku TEXT NOT NULL, price_cents INTEGER NOT NULL);
     CREATE INDEX IF NOT EXISTS stores_catalog_by_store ON stores_catalog (store_id, name)",
    "CREATE TABLE IF NOT EXISTS stores_mall (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, location TEXT NOT NULL, participating BOOLEAN NOT NULL);
     CREATE TABLE IF NOT EXISTS stores_catalog (
        id TEXT PRIMARY KEY, store_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
        sku TEXT NOT NULL, price_cents BIGINT NOT NULL);
     CREATE INDEX IF NOT EXISTS stores_catalog_by_store ON stores_catalog (store_id, name)",
)];

fn start(cx: &ModuleContext) -> Parts {
    cx.apis(http::routes(), grpc::service)
}

/// What stores publishes: the state of its stores and products.
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.sends::<api::StoreIntegrationEvent>(api::STORE_TOPIC).sends::<api::ProductIntegrationEvent>(api::PRODUCT_TOPIC)
}
