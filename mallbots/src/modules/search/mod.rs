//! **search**: the order search read model (CQRS): one denormalised row per order, built from
//! the order and customer events, queried with filters and cursor paging (**fix**: the Go
//! version left search unimplemented).

pub mod application;
pub mod http;

use herald::SubscribeOptions;
use herald::router::Route;

use crate::modules::customers::api as customers;
use crate::modules::ordering::api as ordering;

/// The message routes of search.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(customers::EVENT_TOPIC, "search-customers"))
            .on(application::on_customer_registered),
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "search-orders")).on(application::on_order_event),
    ]
}
