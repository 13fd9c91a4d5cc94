//! The one list of MallBots' modules, and what a module is.
//!
//! Each module describes itself once, as a [`Module`]: its name, the REST paths it owns, its
//! tables (migrations), its message routes (and the messages it publishes and handles, for the
//! AsyncAPI document), and what it starts in a process (HTTP endpoints with their OpenAPI,
//! background tasks, metrics gauges). The composition root
//! ([`App`](crate::app::App)) runs any subset of [`MODULES`] in one process —
//! `mallbots serve --modules ordering,cosec` — so the same binary is the embedded mall (every
//! module on one SQLite file) and each service of the distributed one (one module per
//! process, each in its own PostgreSQL schema, talking only through the broker).
//!
//! Modules meet only through their `api` (messages, topics, ids): a module's `domain` and
//! `application` are private to it, and no module reads another's tables.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use herald::Store;
use herald::asyncapi::AsyncApi;
use herald::pubsub::Broker;
use herald::router::Route;
use herald_sql::AnyDatabase;
use herald_sql::any::Migration;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::error::AppResult;
use crate::http::AppState;
use crate::modules::{
    admin, analytics, baskets, cosec, customers, depot, notifications, ordering, payments, search, stores,
};

/// Every module, in the order they are listed and started.
pub const MODULES: &[Module] = &[
    stores::MODULE,
    customers::MODULE,
    baskets::MODULE,
    ordering::MODULE,
    payments::MODULE,
    depot::MODULE,
    cosec::MODULE,
    notifications::MODULE,
    search::MODULE,
    analytics::MODULE,
    admin::MODULE,
];

/// A module: everything the composition root needs to know to run it.
pub struct Module {
    /// Its name: `--modules` takes it; its PostgreSQL schema is `<namespace>_<name>`.
    pub name: &'static str,
    /// One line on what it does (`mallbots serve --help`, the README).
    pub about: &'static str,
    /// The REST paths it owns (the gateway sends `<prefix>…` to its processes).
    pub http_prefixes: &'static [&'static str],
    /// Its gRPC services, by full name (`storespb.StoresService`: `proto/<module>.proto`); the
    /// gateway sends their calls to its processes.
    pub grpc_services: &'static [&'static str],
    /// Its tables, version by version (recorded as the app `mallbots-<name>`).
    pub migrations: &'static [Migration],
    /// Its message routes. Building them has no effect (the admin module builds every
    /// module's routes to learn their dead-letter topics), so this must not start anything.
    pub routes: fn(&ModuleContext) -> Vec<Route>,
    /// What it publishes and what its consumer groups handle, added to the process's AsyncAPI
    /// document (`/asyncapi.json`): the topics and groups of its `routes`, with their types.
    pub messages: fn(AsyncApi) -> AsyncApi,
    /// What it runs in a process beside its routes.
    pub start: fn(&ModuleContext) -> Parts,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module").field("name", &self.name).field("http_prefixes", &self.http_prefixes).finish()
    }
}

/// What a module is given in a process.
#[derive(Clone, Debug)]
pub struct ModuleContext {
    /// The module's database: its own schema on PostgreSQL; the shared file on SQLite.
    pub db: AnyDatabase,
    /// Herald's store on that database: the module's event store, outbox, inbox and sagas.
    pub store: Arc<dyn Store>,
    /// The broker all modules talk through.
    pub broker: Arc<dyn Broker>,
    /// The bearer token of admin endpoints.
    pub admin_token: Arc<str>,
    /// Seals and opens customers' personal data (names, SMS numbers) with per-customer keys
    /// kept in the vault (`<namespace>_vault` on PostgreSQL, the shared file on SQLite), which
    /// every module that reads those fields shares; forgetting a customer deletes the key.
    pub shredder: herald::shredding::Shredder,
    /// Background work stops when this fires (after HTTP has stopped taking requests).
    pub stop: CancellationToken,
    /// Fires when the process begins to shut down: long requests (a rebuild) give up.
    pub shutdown: CancellationToken,
    /// How long the SMS gateway takes per message, one at a time (0: at once). A stand-in for
    /// a slow provider, to show scale-out.
    pub sms_latency: std::time::Duration,
    /// How long a basket stays open: baskets schedules its expiry this long after it starts.
    pub basket_ttl: std::time::Duration,
    /// This process among the replicas of its modules (host, pid and a random part): the
    /// holder name of the leases its singletons take.
    pub instance: Arc<str>,
}

/// The modules that seal or open customers' personal data, and so reach the vault of keys
/// (`ModuleContext::shredder`); a process running none of them does not open it.
pub const USES_PERSONAL_DATA: &[&str] = &["customers", "notifications", "search"];

/// The key store of a process that runs no module of [`USES_PERSONAL_DATA`]: sealing or
/// opening there is a bug, reported as an error (never as forgotten data).
#[derive(Debug)]
pub struct NoVault;

#[async_trait::async_trait]
impl herald::shredding::KeyStore for NoVault {
    async fn key_for(&self, subject: &str) -> Result<herald::shredding::SubjectKey, herald::StoreError> {
        Err(no_vault(subject))
    }
    async fn existing_key(&self, subject: &str) -> Result<Option<herald::shredding::SubjectKey>, herald::StoreError> {
        Err(no_vault(subject))
    }
    async fn forget(&self, subject: &str) -> Result<bool, herald::StoreError> {
        Err(no_vault(subject))
    }
}

fn no_vault(subject: &str) -> herald::StoreError {
    herald::StoreError::backend(std::io::Error::other(format!(
        "the key of {subject} was asked for in a process without the vault (a module missing from USES_PERSONAL_DATA)"
    )))
}

/// A name for this process, unique among the replicas: `<host>-<pid>-<random>`.
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "mallbots".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

/// How long a singleton's lease (saga timeouts, the analytics projection) outlives its
/// holder's last renewal: how soon another replica takes over from one that died.
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(6);

impl ModuleContext {
    /// The state of the module's HTTP handlers.
    pub fn state(&self) -> AppState {
        AppState {
            store: self.store.clone(),
            db: self.db.clone(),
            admin_token: self.admin_token.clone(),
            shredder: self.shredder.clone(),
        }
    }

    /// Parts with the module's HTTP routes (bound to its state) and nothing else.
    pub fn http_only(&self, routes: OpenApiRouter<AppState>) -> Parts {
        Parts { http: routes.with_state(self.state()), ..Parts::default() }
    }

    /// Parts with the module's HTTP routes and its gRPC service (both bound to its state).
    pub fn apis<S>(&self, routes: OpenApiRouter<AppState>, grpc: impl FnOnce(AppState) -> S) -> Parts
    where
        S: tonic::codegen::Service<axum::http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        let service = grpc(self.state());
        Parts {
            http: routes.with_state(self.state()),
            grpc: vec![Box::new(move |routes: tonic::service::Routes| routes.add_service(service))],
            ..Parts::default()
        }
    }
}

/// Adds a module's gRPC service to the process's routes.
pub type GrpcService = Box<dyn FnOnce(tonic::service::Routes) -> tonic::service::Routes + Send>;

/// A future a module runs until its context's `stop` fires.
pub type Task = BoxFuture<'static, anyhow::Result<()>>;

/// Refreshes a module's gauges from its tables, at each `/metrics` scrape.
pub type Gauges = Arc<dyn Fn() -> BoxFuture<'static, AppResult<()>> + Send + Sync>;

/// What a module starts in a process.
#[derive(Default)]
pub struct Parts {
    /// Its REST endpoints (their state bound) and their OpenAPI.
    pub http: OpenApiRouter,
    /// Its gRPC services (their state bound), each added to the process's routes.
    pub grpc: Vec<GrpcService>,
    /// Background tasks (name, future), spawned when the app runs.
    pub tasks: Vec<(&'static str, Task)>,
    /// Its gauges, refreshed at each scrape.
    pub gauges: Option<Gauges>,
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tasks: Vec<_> = self.tasks.iter().map(|(name, _)| *name).collect();
        f.debug_struct("Parts").field("tasks", &tasks).field("gauges", &self.gauges.is_some()).finish()
    }
}

/// The module called `name`.
pub fn find(name: &str) -> Option<&'static Module> {
    MODULES.iter().find(|m| m.name == name)
}

/// The modules named (each once, in [`MODULES`] order); every module if `names` is empty or
/// `all`. An unknown name is refused with the list of known ones.
pub fn select<S: AsRef<str>>(names: &[S]) -> anyhow::Result<Vec<&'static Module>> {
    let names: Vec<&str> =
        names.iter().flat_map(|n| n.as_ref().split(',')).map(str::trim).filter(|n| !n.is_empty()).collect();
    if names.is_empty() || names == ["all"] {
        return Ok(MODULES.iter().collect());
    }
    if let Some(unknown) = names.iter().find(|n| find(n).is_none()) {
        anyhow::bail!("unknown module {unknown:?}: the modules are {} (or all)", names_of(MODULES.iter()).join(", "));
    }
    Ok(MODULES.iter().filter(|m| names.contains(&m.name)).collect())
}

/// The names of `modules`.
pub fn names_of<'a>(modules: impl IntoIterator<Item = &'a Module>) -> Vec<&'static str> {
    modules.into_iter().map(|m| m.name).collect()
}

/// The service name of a process running `modules` (its traces' `service.name`): `mallbots`
/// for all of them, else `mallbots-<module>-<module>…`.
pub fn service_name(modules: &[&Module]) -> String {
    if modules.len() == MODULES.len() {
        "mallbots".to_owned()
    } else {
        format!("mallbots-{}", names_of(modules.iter().copied()).join("-"))
    }
}

/// The PostgreSQL schema of module `name` in `namespace`.
pub fn schema(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_selected_by_name_in_their_order() {
        assert_eq!(select::<&str>(&[]).map(names_of).unwrap_or_default().len(), MODULES.len());
        assert_eq!(select(&["all"]).map(names_of).unwrap_or_default().len(), MODULES.len());
        let picked = select(&["search,stores", " ordering", "stores"]).map(names_of).unwrap_or_default();
        assert_eq!(picked, ["stores", "ordering", "search"]);
        let e = select(&["stores,shops"]).map(names_of).unwrap_err().to_string();
        assert!(e.contains("unknown module \"shops\"") && e.contains("stores, customers"), "{e}");
    }

    #[test]
    fn names_are_unique_and_make_schema_names() {
        let mut names = names_of(MODULES.iter());
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MODULES.len());
        for name in names {
            assert!(name.chars().all(|c| c.is_ascii_lowercase()), "{name}");
            // The longest namespace (48) + '_' + the name fits PostgreSQL's 63-byte identifiers.
            assert!(48 + 1 + name.len() <= 63, "{name}");
        }
    }

    #[test]
    fn every_rest_prefix_has_one_owner() {
        let mut prefixes: Vec<_> = MODULES.iter().flat_map(|m| m.http_prefixes.iter()).collect();
        let all = prefixes.len();
        prefixes.sort_unstable();
        prefixes.dedup();
        assert_eq!(prefixes.len(), all, "a REST prefix owned by two modules");
    }
}
