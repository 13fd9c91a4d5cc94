//! **admin** (**new**): operating the mall — dead letters.
//!
//! Every message a MallBots consumer gives up on lands on its route's dead-letter topic; this
//! module archives every module's dead-letter topics (whichever process runs them) in its own
//! database, and serves the admin API that lists, shows, replays (through the broker, to the
//! failed group only) or discards them. It runs in the embedded mall and as its own process.

mod dead_letters;
mod grpc;

use herald::router::Route;

pub use dead_letters::ARCHIVE_GROUP;

use crate::module::{MODULES, Module, ModuleContext, Parts};

/// admin in the list of modules.
pub const MODULE: Module = Module {
    name: "admin",
    about: "dead letters of every module: archived, listed, replayed or discarded",
    http_prefixes: &["/api/admin"],
    grpc_services: &["adminpb.DeadLettersService"],
    migrations: &[],
    routes,
    start,
};

/// An archive route on the dead-letter topic of every other module's routes.
fn routes(cx: &ModuleContext) -> Vec<Route> {
    // Building a module's routes starts nothing: they are only read for their subscriptions.
    let failing: Vec<Route> = MODULES.iter().filter(|m| m.name != MODULE.name).flat_map(|m| (m.routes)(cx)).collect();
    let failing: Vec<_> = failing.iter().map(Route::options).collect();
    cx.db.dead_letters().archive_routes_for(&failing, ARCHIVE_GROUP)
}

fn start(cx: &ModuleContext) -> Parts {
    cx.apis(dead_letters::routes(), grpc::service)
}
