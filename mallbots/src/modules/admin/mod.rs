//! **admin** (**new**): operating the mall — dead letters, the live feed and the web app.
//!
//! Every message a MallBots consumer gives up on lands on its route's dead-letter topic; this
//! module archives every module's dead-letter topics (whichever process runs them) in its own
//! database, and serves the admin API that lists, shows, replays (through the broker, to the
//! failed group only) or discards them. It runs in the embedded mall and as its own process.
//!
//! It also serves the admin web app (`/admin`, [`web`]) and its live feed of every module's
//! integration events over a WebSocket (`/api/admin/live`, [`live`]), fed from the broker.

mod dead_letters;
mod grpc;
pub mod live;
mod web;

use std::sync::Arc;

use axum::routing::get;
use herald::asyncapi::AsyncApi;
use herald::router::Route;
use utoipa_axum::router::OpenApiRouter;

pub use dead_letters::ARCHIVE_GROUP;

use crate::module::{MODULES, Module, ModuleContext, Parts};

/// admin in the list of modules.
pub const MODULE: Module = Module {
    name: "admin",
    about: "dead letters of every module: archived, listed, replayed or discarded",
    http_prefixes: &["/api/admin", "/admin"],
    grpc_services: &["adminpb.DeadLettersService"],
    migrations: live::MIGRATIONS,
    routes,
    messages,
    start,
};

/// The live feed's routes, and an archive route on the dead-letter topic of every route (the
/// feed's and every other module's).
fn routes(cx: &ModuleContext) -> Vec<Route> {
    // Building a module's routes starts nothing: they are only read for their subscriptions.
    let others = MODULES.iter().filter(|m| m.name != MODULE.name).flat_map(|m| (m.routes)(cx));
    let mut routes = live::routes();
    let failing: Vec<_> =
        routes.iter().map(Route::options).cloned().chain(others.map(|r| r.options().clone())).collect();
    let failing: Vec<_> = failing.iter().collect();
    routes.extend(dead_letters::api(&cx.db).archive_routes_for(&failing, ARCHIVE_GROUP));
    routes
}

/// What admin handles: every integration event, for the live feed. (Its archive routes take
/// whatever lands on the other routes' dead-letter topics, which depend on those routes.)
fn messages(doc: AsyncApi) -> AsyncApi {
    live::TOPICS.iter().fold(doc, |doc, topic| doc.receives_any(topic, live::FEED_GROUP))
}

fn start(cx: &ModuleContext) -> Parts {
    let feed = live::Feed::new(cx.db.clone(), cx.admin_token.clone(), cx.shutdown.clone());
    let live_routes = OpenApiRouter::new().route("/api/admin/live", get(live::live)).with_state(feed.clone());
    let mut parts = cx.apis(dead_letters::routes(), grpc::service);
    parts.http = parts.http.merge(live_routes).merge(OpenApiRouter::from(web::routes()));
    let stop = cx.stop.clone();
    parts.tasks.push(("admin live feed", Box::pin(feed.run(stop))));
    // Herald's `herald_dead_letters_pending{topic,group}`, sampled from the archive at each
    // scrape: the archive route and the admin API may run in other processes, and a sample is
    // what a restarted process reports before anything changes.
    let db = cx.db.clone();
    parts.gauges = Some(Arc::new(move || {
        let db = db.clone();
        Box::pin(async move { Ok(db.dead_letters().record_pending().await?) }) as futures::future::BoxFuture<'static, _>
    }));
    parts
}
