//! **depot**: shopping lists for the shopper bots, in a state table.
//!
//! Handles the saga's `CreateShoppingList` (replying with the list id), `CancelShoppingList`
//! (idempotent compensation) and `InitiateShopping` (**fix**: it now reaches the list and makes
//! it available); cancels the list of a canceled order. Shopper bots connect over gRPC
//! (`depotpb.ShopperBot/Connect`, [`bots`]): available lists go to idle bots, oldest first; a bot
//! reports each stop picked (the list becomes active) and completion; a bot that disconnects or
//! falls silent loses its list. Admins can still assign and complete by hand (REST, gRPC), and
//! see the bots (`depot_bots`: idle, busy, offline); the bots of a depot process that died go
//! offline and lose their lists after [`bots::STALE`].
//! Completion publishes `ShoppingListCompleted`, which readies the order.

pub mod api;
mod application;
mod bots;
mod domain;
mod grpc;
mod http;

use herald::SubscribeOptions;
use herald::asyncapi::AsyncApi;
use herald::router::Route;
use herald_sql::any::Migration;

use crate::module::{Module, ModuleContext, Parts};
use crate::modules::ordering::api as ordering;

/// depot in the list of modules.
pub const MODULE: Module = Module {
    name: "depot",
    about: "shopping lists for the bots: created, canceled and started by the saga, completed by admins",
    http_prefixes: &["/api/depot"],
    grpc_services: &["depotpb.DepotService", "depotpb.ShopperBot"],
    migrations: MIGRATIONS,
    routes,
    messages,
    start,
};

/// `depot_bots.last_seen` is RFC 3339 text of one width (see `application::timestamp`), so
/// comparing the text compares the times, in both dialects.
const MIGRATIONS: &[Migration] = &[
    Migration::portable(
        1,
        "depot_shopping_lists (items as JSON)",
        "CREATE TABLE IF NOT EXISTS depot_shopping_lists (
        id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, bot_id TEXT, items TEXT NOT NULL);
     CREATE INDEX IF NOT EXISTS depot_shopping_lists_by_status ON depot_shopping_lists (status, id)",
    ),
    Migration::portable(
        2,
        "depot_bots (each shopper bot's status, list, depot process and last sighting)",
        "CREATE TABLE IF NOT EXISTS depot_bots (
            id TEXT PRIMARY KEY, status TEXT NOT NULL, shopping_id TEXT, instance TEXT NOT NULL,
            last_seen TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS depot_bots_by_instance ON depot_bots (instance, status);
         CREATE INDEX IF NOT EXISTS depot_bots_by_last_seen ON depot_bots (last_seen)",
    ),
];

fn start(cx: &ModuleContext) -> Parts {
    let bots = bots::Bots::new(cx.state(), cx.instance.clone());
    let service = grpc::bot_service(bots.clone());
    let mut parts = cx.apis(http::routes(), grpc::service);
    parts.grpc.push(Box::new(move |routes: tonic::service::Routes| routes.add_service(service)));
    let (stop, shutdown) = (cx.stop.clone(), cx.shutdown.clone());
    parts.tasks.push(("shopper bot dispatcher", Box::pin(bots.run(stop, shutdown))));
    parts
}

/// The message routes of depot.
fn routes(_: &ModuleContext) -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(api::COMMAND_TOPIC, "depot-commands")).on_command(application::handle_command),
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "depot-orders")).on(application::on_order_canceled),
    ]
}

/// What depot publishes and handles.
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.sends::<api::ShoppingListIntegrationEvent>(api::EVENT_TOPIC)
        .receives_commands::<api::DepotCommand>(api::COMMAND_TOPIC, "depot-commands")
        .receives::<ordering::OrderCanceled>(ordering::EVENT_TOPIC, "depot-orders")
}
