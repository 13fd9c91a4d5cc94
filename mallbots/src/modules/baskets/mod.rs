//! **baskets**: kiosk baskets.
//!
//! `Basket` is event-sourced (with snapshots). Prices and names come from a local copy of the
//! stores' catalog (`baskets_stores`, `baskets_products`), kept up to date from the stores
//! events (event-carried state transfer: no call to stores on the hot path). Checking out
//! publishes [`api::BasketCheckedOut`] with the full item list.

pub mod api;
pub mod application;
pub mod domain;
pub mod http;

use herald::SubscribeOptions;
use herald::router::Route;

use crate::modules::stores::api as stores;

/// The message routes of baskets: the two feeds of its catalog cache. They start from the
/// beginning of the stream, so a new deployment builds its cache from the whole history.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(stores::STORE_TOPIC, "baskets-stores")).on(application::on_store_event),
        Route::new(SubscribeOptions::new(stores::PRODUCT_TOPIC, "baskets-products")).on(application::on_product_event),
    ]
}
