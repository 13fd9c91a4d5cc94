//! **payments**: payment authorizations (kiosk) and invoices (depot), in state tables.
//!
//! Handles the saga's `ConfirmPayment`; issues an invoice when an order is readied and cancels
//! an open one when an order is canceled (**fix**: the Go version never subscribed to that);
//! paying an invoice publishes `InvoicePaid`, which completes the order.

pub mod api;
pub mod application;
pub mod domain;
pub mod http;

use herald::SubscribeOptions;
use herald::router::Route;

use crate::modules::ordering::api as ordering;

/// The message routes of payments.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(api::COMMAND_TOPIC, "payments-commands"))
            .on_command(application::handle_confirm),
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "payments-orders")).on(application::on_order_event),
    ]
}
