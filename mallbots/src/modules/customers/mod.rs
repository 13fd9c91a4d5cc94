//! **customers**: registration, SMS number, enable/disable, and the `AuthorizeCustomer` command
//! the create-order saga sends.
//!
//! The `Customer` aggregate decides as an [`Aggregate`](herald::aggregate::Aggregate) (so it is
//! tested given/when/then) but is persisted as a row of `customers_customers` (a state table,
//! as the spec asks), changed in the same transaction as the outbox rows of its integration
//! events.

pub mod api;
pub mod application;
pub mod domain;
pub mod http;

use herald::SubscribeOptions;
use herald::router::Route;

/// The message routes of customers: its command handler.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(api::COMMAND_TOPIC, "customers-commands"))
            .on_command(application::handle_authorize),
    ]
}
