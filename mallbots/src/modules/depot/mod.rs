//! **depot**: shopping lists for the shopper bots, in a state table.
//!
//! Handles the saga's `CreateShoppingList` (replying with the list id), `CancelShoppingList`
//! (idempotent compensation) and `InitiateShopping` (**fix**: it now reaches the list and makes
//! it available); cancels the list of a canceled order; assignment and completion are admin REST
//! calls for now (the bot stream comes later). Completion publishes `ShoppingListCompleted`,
//! which readies the order.

pub mod api;
pub mod application;
pub mod domain;
pub mod http;

use herald::SubscribeOptions;
use herald::router::Route;

use crate::modules::ordering::api as ordering;

/// The message routes of depot.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(api::COMMAND_TOPIC, "depot-commands")).on_command(application::handle_command),
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "depot-orders")).on(application::on_order_canceled),
    ]
}
