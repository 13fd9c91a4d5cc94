//! **ordering**: orders, event-sourced (with snapshots).
//!
//! An order is created from `BasketCheckedOut` (order id = basket id, so a redelivered
//! checkout cannot create two), approved or rejected by the create-order saga's commands, and
//! canceled through REST while pending or approved, and completed when its invoice is paid
//! (**fix**: nothing consumed InvoicePaid in the Go version). It is readied when its
//! shopping list is completed.

pub mod api;
mod application;
mod domain;
mod grpc;
mod http;

use herald::SubscribeOptions;
use herald::asyncapi::AsyncApi;
use herald::router::Route;

use crate::module::{Module, ModuleContext, Parts};

use crate::modules::baskets::api as baskets;
use crate::modules::depot::api as depot;
use crate::modules::payments::api as payments;

/// ordering in the list of modules.
pub const MODULE: Module = Module {
    name: "ordering",
    about: "orders (event-sourced): created at checkout, approved or rejected by the saga, readied, completed, canceled",
    http_prefixes: &["/api/ordering"],
    grpc_services: &["orderingpb.OrderingService"],
    migrations: &[],
    routes,
    messages,
    start,
};

fn start(cx: &ModuleContext) -> Parts {
    cx.apis(http::routes(), grpc::service)
}

/// The message routes of ordering: checkouts in, saga commands in.
fn routes(_: &ModuleContext) -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(baskets::EVENT_TOPIC, "ordering-baskets"))
            .on(application::on_basket_checked_out),
        Route::new(SubscribeOptions::new(api::COMMAND_TOPIC, "ordering-commands"))
            .on_command(application::handle_command),
        Route::new(SubscribeOptions::new(payments::EVENT_TOPIC, "ordering-payments")).on(application::on_invoice_paid),
        Route::new(SubscribeOptions::new(depot::EVENT_TOPIC, "ordering-depot"))
            .on(application::on_shopping_list_completed),
    ]
}

/// What ordering publishes and handles.
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.sends::<api::OrderIntegrationEvent>(api::EVENT_TOPIC)
        .receives::<baskets::BasketCheckedOut>(baskets::EVENT_TOPIC, "ordering-baskets")
        .receives_commands::<api::OrderingCommand>(api::COMMAND_TOPIC, "ordering-commands")
        .receives::<payments::InvoicePaid>(payments::EVENT_TOPIC, "ordering-payments")
        .receives::<depot::ShoppingListCompleted>(depot::EVENT_TOPIC, "ordering-depot")
}
