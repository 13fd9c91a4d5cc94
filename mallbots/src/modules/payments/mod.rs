//! **payments**: payment authorizations (kiosk) and invoices (depot), in state tables.
//!
//! Handles the saga's `ConfirmPayment`; issues an invoice when an order is readied and cancels
//! an open one when an order is canceled (**fix**: the Go version never subscribed to that);
//! paying an invoice publishes `InvoicePaid`, which completes the order.

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
use crate::modules::ordering::api as ordering;

/// payments in the list of modules.
pub const MODULE: Module = Module {
    name: "payments",
    about: "payment authorizations and invoices; confirms payments for the saga",
    http_prefixes: &["/api/payments"],
    grpc_services: &["paymentspb.PaymentsService"],
    migrations: MIGRATIONS,
    routes,
    messages,
    start,
};

/// `payments_invoices.issued_at` is RFC 3339 text of one width, so it sorts as the time does
/// (empty for invoices issued before it was kept: they come first).
const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "payments_payments, payments_invoices (invoice id = order id)",
        "CREATE TABLE IF NOT EXISTS payments_payments (
        id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, amount_cents BIGINT NOT NULL);
     CREATE TABLE IF NOT EXISTS payments_invoices (
        id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, amount_cents BIGINT NOT NULL, status TEXT NOT NULL)",
    ),
    Migration::portable(
        2,
        "payments_invoices.issued_at (open invoices, oldest first)",
        "ALTER TABLE payments_invoices ADD COLUMN issued_at TEXT NOT NULL DEFAULT '';
         CREATE INDEX IF NOT EXISTS payments_invoices_by_status ON payments_invoices (status, issued_at, id)",
    ),
];

fn start(cx: &ModuleContext) -> Parts {
    cx.apis(http::routes(), grpc::service)
}

/// The message routes of payments.
fn routes(_: &ModuleContext) -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(api::COMMAND_TOPIC, "payments-commands"))
            .on_command(application::handle_confirm),
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "payments-orders")).on(application::on_order_event),
    ]
}

/// What payments publishes and handles.
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.sends::<api::InvoiceIntegrationEvent>(api::EVENT_TOPIC)
        .receives_commands::<api::ConfirmPayment>(api::COMMAND_TOPIC, "payments-commands")
        .receives::<ordering::OrderIntegrationEvent>(ordering::EVENT_TOPIC, "payments-orders")
}
