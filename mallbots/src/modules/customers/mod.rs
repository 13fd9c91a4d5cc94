//! **customers**: registration, SMS number, enable/disable, and the `AuthorizeCustomer` command
//! the create-order saga sends.
//!
//! The `Customer` aggregate decides as an [`Aggregate`](herald::aggregate::Aggregate) (so it is
//! tested given/when/then) but is persisted as a row of `customers_customers` (a state table,
//! as the spec asks), changed in the same transaction as the outbox rows of its integration
//! events.

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

/// customers in the list of modules.
pub const MODULE: Module = Module {
    name: "customers",
    about: "customer registration, SMS numbers, enabling and disabling; authorizes customers for the saga",
    http_prefixes: &["/api/customers"],
    grpc_services: &["customerspb.CustomersService"],
    migrations: MIGRATIONS,
    routes,
    messages,
    start,
};

const MIGRATIONS: &[Migration] = &[Migration::per_dialect(
    1,
    "customers_customers (the Customer state table)",
    "CREATE TABLE IF NOT EXISTS customers_customers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL, enabled INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS customers_customers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL, enabled BOOLEAN NOT NULL)",
)];

fn start(cx: &ModuleContext) -> Parts {
    cx.apis(http::routes(), grpc::service)
}

/// The message routes of customers: its command handler.
fn routes(cx: &ModuleContext) -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(api::COMMAND_TOPIC, "customers-commands"))
            .on_command_with(cx.shredder.clone(), application::handle_authorize),
    ]
}

/// What customers publishes and handles (the saga's command).
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.sends::<api::CustomerIntegrationEvent>(api::EVENT_TOPIC)
        .receives_commands::<api::AuthorizeCustomer>(api::COMMAND_TOPIC, "customers-commands")
}
