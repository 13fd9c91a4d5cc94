//! **baskets**: kiosk baskets.
//!
//! `Basket` is event-sourced (with snapshots). Prices and names come from a local copy of the
//! stores' catalog (`baskets_stores`, `baskets_products`), kept up to date from the stores
//! events (event-carried state transfer: no call to stores on the hot path). Checking out
//! publishes [`api::BasketCheckedOut`] with the full item list.
//!
//! A basket expires: starting one schedules (Herald's scheduled messages, ADR 0021) a
//! `baskets.ExpireBasket.v1` to baskets itself, due `basket_ttl` later (30 minutes by default);
//! if the basket is still open then, it is canceled as a kiosk's cancel would
//! ([`api::BasketCanceled`] with reason `expired`).

pub mod api;
mod application;
mod domain;
mod grpc;
mod http;

use herald::SubscribeOptions;
use herald::asyncapi::AsyncApi;
use herald::router::Route;
use herald_sql::any::Migration;

use crate::module::{Module, ModuleContext, Parts};
use crate::modules::stores::api as stores;

/// baskets in the list of modules.
pub const MODULE: Module = Module {
    name: "baskets",
    about: "shopping baskets at the kiosks, with a local copy of the catalog; checkouts start orders",
    http_prefixes: &["/api/baskets"],
    grpc_services: &["basketspb.BasketService"],
    migrations: MIGRATIONS,
    routes,
    messages,
    start,
};

const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "baskets_stores, baskets_products (the local copy of the catalog)",
    "CREATE TABLE IF NOT EXISTS baskets_stores (id TEXT PRIMARY KEY, name TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS baskets_products (
        id TEXT PRIMARY KEY, store_id TEXT NOT NULL, name TEXT NOT NULL, price_cents BIGINT NOT NULL)",
)];

fn start(cx: &ModuleContext) -> Parts {
    let ttl = application::BasketTtl(cx.basket_ttl);
    cx.apis(http::routes().layer(axum::Extension(ttl)), |state| grpc::service(state, ttl))
}

/// The message routes of baskets: the two feeds of its catalog cache, and its own commands
/// (baskets' deadlines). The feeds start from the beginning of the stream, so a new deployment
/// builds its cache from the whole history.
fn routes(_: &ModuleContext) -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(stores::STORE_TOPIC, "baskets-stores")).on(application::on_store_event),
        Route::new(SubscribeOptions::new(stores::PRODUCT_TOPIC, "baskets-products")).on(application::on_product_event),
        Route::new(SubscribeOptions::new(application::COMMAND_TOPIC, COMMAND_GROUP)).on(application::on_expire_basket),
    ]
}

/// The consumer group of baskets' own commands.
const COMMAND_GROUP: &str = "baskets-commands";

/// What baskets publishes and handles (the feeds of its catalog cache, its deadlines).
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.sends::<api::BasketIntegrationEvent>(api::EVENT_TOPIC)
        .receives::<stores::StoreIntegrationEvent>(stores::STORE_TOPIC, "baskets-stores")
        .receives::<stores::ProductIntegrationEvent>(stores::PRODUCT_TOPIC, "baskets-products")
        .sends::<application::ExpireBasket>(application::COMMAND_TOPIC)
        .receives::<application::ExpireBasket>(application::COMMAND_TOPIC, COMMAND_GROUP)
}
