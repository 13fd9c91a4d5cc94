//! The composition root: [`Config`] builds an [`App`] (database, Herald's store and broker, the
//! message router with every module's routes, the outbox relay, the HTTP server), and
//! [`App::run`] runs it until the caller's shutdown token fires, then stops in order: HTTP
//! first (no new work), then the router (in-flight messages finish), then the relay (a last
//! pass publishes everything committed).
//!
//! The database is SQLite (the embedded default) or PostgreSQL (in the schema named by the
//! namespace); the broker is Herald's SQL broker on that database unless `--broker` names
//! NATS JetStream, Redis Streams or RabbitMQ, whose streams, keys or queues are prefixed by
//! the namespace. Every module's code is the same on each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use herald::Store;
use herald::outbox::OutboxRelay;
use herald::pubsub::Broker;
use herald::router::{Inbox, RetryPolicy, Router};
use herald_sql::any::Dialect;
use herald_sql::{AnyDatabase, PostgresConfig, SqliteConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http;
use crate::module::{self, Module, ModuleContext, Task};

/// Name of the file keeping a generated admin token, next to the database.
pub const ADMIN_TOKEN_FILE: &str = "mallbots-admin-token";

/// The namespace when none is given.
pub const DEFAULT_NAMESPACE: &str = "mallbots";

/// How MallBots runs. The binary fills it from flags and environment variables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the HTTP server listens (`127.0.0.1:0` picks a free port).
    pub http_addr: String,
    /// Where the gRPC server listens (`127.0.0.1:0` picks a free port).
    pub grpc_addr: String,
    /// The database: `sqlite://path.db` (or a plain path), or `postgres://…`.
    pub database: String,
    /// The broker: `None` (or `sql`) is the SQL broker on the same database; else
    /// `nats://…` (JetStream), `redis://…` (Streams), `amqp://…` (RabbitMQ) or `kafka://…`.
    pub broker: Option<String>,
    /// Keeps this MallBots apart from others on the same servers: the PostgreSQL schema, the
    /// prefix of NATS streams, Redis keys and RabbitMQ exchanges and queues. Lowercase
    /// letters, digits and `_`, starting with a letter.
    pub namespace: String,
    /// The broker's state is throw-away (tests, demos): NATS streams in memory keeping
    /// messages 10 minutes, RabbitMQ queues deleted 2 minutes after their last consumer goes.
    /// Off by default: a restart must not lose messages.
    pub ephemeral_broker: bool,
    /// The admin bearer token; `None` reads or generates one kept next to the database.
    pub admin_token: Option<String>,
    /// The modules to run (names from [`MODULES`](crate::module::MODULES), comma-separated
    /// lists allowed); empty = all of them.
    pub modules: Vec<String>,
    /// The SMS gateway's time per message (see [`ModuleContext::sms_latency`]).
    pub sms_latency: Duration,
    /// How long a basket stays open (see [`ModuleContext::basket_ttl`]).
    pub basket_ttl: Duration,
    /// Connections of each module's PostgreSQL pool; `None`: [`POOL_OF_ONE_MODULE`] in a
    /// process running one module, [`POOL_PER_MODULE`] per module in one running several.
    pub pool_size: Option<u32>,
}

impl Default for Config {
    /// The documented defaults ([`Settings`](crate::settings::Settings)'s).
    fn default() -> Self {
        crate::settings::Settings::default().app_config()
    }
}

/// Where the admin token came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// Given in the configuration.
    Configured,
    /// Read from this file (generated at an earlier start).
    Stored(PathBuf),
    /// Generated now and kept in this file (`None`: an in-memory database, not kept).
    Generated(Option<PathBuf>),
}

/// MallBots, built and bound, not yet running.
pub struct App {
    /// The modules this process runs, each with what it was given.
    modules: Vec<(&'static Module, ModuleContext)>,
    /// Every database opened (one per module on PostgreSQL, one on SQLite, and the SQL
    /// broker's), closed at the end.
    databases: Vec<AnyDatabase>,
    broker: Arc<dyn Broker>,
    listener: TcpListener,
    http: axum::Router,
    grpc_listener: TcpListener,
    grpc: tonic::service::Routes,
    tasks: Vec<(&'static str, Task)>,
    /// Fires when `run`'s shutdown token does: long requests give up.
    shutting_down: CancellationToken,
    /// Stops the modules' routes and tasks, after HTTP has stopped.
    stop: CancellationToken,
    admin_token: Arc<str>,
    token_source: TokenSource,
}

/// How long opening a database or connecting to the broker may take before start-up fails
/// (naming what could not be reached) instead of hanging.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// Partitions of every NATS topic: the most replicas of a module that share its work.
const NATS_PARTITIONS: u32 = 8;
/// How long a dead replica keeps its partitions before another takes them over.
const NATS_CLAIM_TTL: Duration = Duration::from_secs(5);

/// Connections of each module's pool on PostgreSQL when a process runs several modules.
const POOL_PER_MODULE: u32 = 4;
/// Connections of the pool of a process running one module. Not Herald's default (16): a
/// cluster is a process per module, and ten of them at 16 each, with the vault's pools, outgrew
/// PostgreSQL's default `max_connections` (100) under load ("too many clients"; the kill -9
/// test's requests then waited 30 s for a connection).
const POOL_OF_ONE_MODULE: u32 = 8;
/// Connections of the vault's pool (customers' keys: a read per sealed or opened event).
const POOL_OF_VAULT: u32 = 2;

impl App {
    /// Opens (and migrates) the databases, connects to the broker, binds the HTTP address, and
    /// resolves the admin token.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let database = config.database.trim();
        let namespace = config.namespace.trim();
        check_namespace(namespace)?;
        let selected = module::select(&config.modules)?;
        let broker_url = config.broker.as_deref().map(str::trim).unwrap_or_default();
        // On SQLite with its own SQL broker, messages go into the broker's table in the unit of
        // work itself (no outbox relay hop); otherwise through the outbox. Scheduled messages
        // always wait in the outbox for the relay.
        let sql_broker = matches!(broker_scheme(broker_url)?, "" | "sql");
        let dialect = AnyDatabase::dialect_of(database);
        let publishes_in_tx = sql_broker && dialect == Dialect::Sqlite;
        let (module_dbs, bus, databases, vault) = match dialect {
            Dialect::Sqlite => {
                let db: AnyDatabase = within("opening the SQLite database", database, async {
                    SqliteConfig::new(database).publish_to_sql_broker(publishes_in_tx).open().await
                })
                .await?
                .into();
                (vec![db.clone(); selected.len()], Some(db.clone()), vec![db.clone()], Some(db))
            }
            Dialect::Postgres => {
                let pool =
                    config.pool_size.unwrap_or(if selected.len() > 1 { POOL_PER_MODULE } else { POOL_OF_ONE_MODULE });
                within("connecting to PostgreSQL", database, reachable(database, 5432)).await?;
                let open = |schema: String, pool: u32| async move {
                    let config = PostgresConfig {
                        max_connections: pool,
                        application_name: Some(application_name(&schema)),
                        ..PostgresConfig::new(database)
                    };
                    let db = within("connecting to PostgreSQL", database, config.with_schema(schema).open()).await?;
                    anyhow::Ok(AnyDatabase::from(db))
                };
                let dbs = futures::future::try_join_all(
                    selected.iter().map(|m| open(module::schema(namespace, m.name), pool)),
                )
                .await?;
                // The SQL broker's tables are shared by every module: the namespace's own schema.
                let bus = if sql_broker { Some(open(namespace.to_owned(), pool).await?) } else { None };
                // Customers' keys (crypto-shredding): shared by the modules that open personal
                // data, and opened only by their processes.
                let vault = if selected.iter().any(|m| module::USES_PERSONAL_DATA.contains(&m.name)) {
                    Some(open(module::schema(namespace, "vault"), POOL_OF_VAULT).await?)
                } else {
                    None
                };
                let all = dbs.iter().chain(&bus).chain(&vault).cloned().collect();
                (dbs, bus, all, vault)
            }
        };
        for (m, db) in selected.iter().zip(&module_dbs) {
            crate::db::migrate(db, m).await.with_context(|| format!("creating the tables of {}", m.name))?;
        }
        let shredder = match vault {
            Some(vault) => {
                let keys = herald_sql::shredding::SqlKeyStore::open(vault)
                    .await
                    .context("creating the vault of customers' keys")?;
                herald::shredding::Shredder::new(Arc::new(keys))
            }
            None => herald::shredding::Shredder::new(Arc::new(module::NoVault)),
        };
        crate::metrics::install()?;
        let broker = match (&bus, sql_broker) {
            (Some(bus), true) => bus.broker(),
            _ => connect_broker(broker_url, namespace, config.ephemeral_broker).await?,
        };
        let (admin_token, token_source) = match config.admin_token.filter(|t| !t.trim().is_empty()) {
            Some(token) => (token.trim().to_owned(), TokenSource::Configured),
            None => stored_or_generated_token(data_file(database)).await?,
        };
        let admin_token: Arc<str> = admin_token.into();
        let listener =
            TcpListener::bind(&config.http_addr).await.with_context(|| format!("listening on {}", config.http_addr))?;
        let grpc_listener = TcpListener::bind(&config.grpc_addr)
            .await
            .with_context(|| format!("listening for gRPC on {}", config.grpc_addr))?;
        let (stop, shutting_down) = (CancellationToken::new(), CancellationToken::new());
        let instance: Arc<str> = module::instance_name().into();
        let modules: Vec<_> = selected
            .into_iter()
            .zip(module_dbs)
            .map(|(m, db)| {
                let cx = ModuleContext {
                    store: db.store(),
                    db,
                    broker: broker.clone(),
                    admin_token: admin_token.clone(),
                    shredder: shredder.clone(),
                    stop: stop.clone(),
                    shutdown: shutting_down.clone(),
                    instance: instance.clone(),
                    sms_latency: config.sms_latency,
                    basket_ttl: config.basket_ttl,
                };
                (m, cx)
            })
            .collect();
        let (mut http_parts, mut tasks, mut gauges) = (Vec::new(), Vec::new(), Vec::new());
        let mut grpc = tonic::service::Routes::default();
        for (m, cx) in &modules {
            let parts = (m.start)(cx);
            http_parts.push(parts.http);
            grpc = parts.grpc.into_iter().fold(grpc, |routes, add| add(routes));
            tasks.extend(parts.tasks);
            gauges.extend(parts.gauges);
        }
        let ops = http::Ops {
            modules: module::names_of(modules.iter().map(|(m, _)| *m)),
            databases: databases.clone(),
            stores: distinct_stores(&modules),
            gauges,
        };
        let http = http::router(ops, http_parts);
        Ok(Self {
            modules,
            databases,
            broker,
            listener,
            http,
            grpc_listener,
            grpc,
            tasks,
            shutting_down,
            stop,
            admin_token,
            token_source,
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener knows its address; the fallback is never used in practice.
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The address the gRPC server listens on.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Where the admin token came from.
    pub fn token_source(&self) -> &TokenSource {
        &self.token_source
    }

    /// The names of the modules this process runs.
    pub fn module_names(&self) -> Vec<&'static str> {
        module::names_of(self.modules.iter().map(|(m, _)| *m))
    }

    /// The HTTP application (for tests that call it without a socket).
    pub fn http_router(&self) -> axum::Router {
        self.http.clone()
    }

    /// The store of module `name` (if this process runs it).
    pub fn store_of(&self, name: &str) -> Option<Arc<dyn Store>> {
        self.modules.iter().find(|(m, _)| m.name == name).map(|(_, cx)| cx.store.clone())
    }

    /// The broker the modules talk through.
    pub fn broker(&self) -> Arc<dyn Broker> {
        self.broker.clone()
    }

    /// One message router per store: the routes of the modules sharing it (all of them on
    /// SQLite, each module alone on PostgreSQL), with the inbox and retries.
    fn message_routers(&self) -> Vec<Router> {
        let mut by_store: Vec<(Arc<dyn Store>, Vec<_>)> = Vec::new();
        for (m, cx) in &self.modules {
            let routes = (m.routes)(cx);
            match by_store.iter_mut().find(|(store, _)| same_store(store, &cx.store)) {
                Some((_, all)) => all.extend(routes),
                None => by_store.push((cx.store.clone(), routes)),
            }
        }
        // New consumer groups start from the beginning of their topics (Herald's default), so
        // a module added later catches up; on a broker without history (RabbitMQ) that is "now".
        by_store
            .into_iter()
            .filter(|(_, routes)| !routes.is_empty())
            .map(|(store, routes)| {
                Router::new(self.broker.clone())
                    .store(store)
                    .retry(RetryPolicy { initial_delay: Duration::from_millis(100), ..RetryPolicy::default() })
                    .middleware(Inbox)
                    .routes(routes)
            })
            .collect()
    }

    /// Runs HTTP, the routers, the modules' tasks and the relays until `shutdown` fires, then
    /// stops them in order: HTTP, then routers and tasks, then the relays' last pass.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay_stop = CancellationToken::new();
        // Every group subscribes before anything is published: on RabbitMQ a queue only gets
        // what is routed after it exists.
        let mut routing = Vec::new();
        for router in self.message_routers() {
            routing.push(router.start(self.stop.clone()).await.context("subscribing the routes")?);
        }
        tracing::debug!("every route is subscribed");
        let tasks: Vec<_> = self.tasks.into_iter().map(|(name, task)| (name, tokio::spawn(task))).collect();
        let upkeep_task = tokio::spawn(crate::metrics::upkeep(self.stop.clone()));
        let mut relay_tasks = Vec::new();
        for store in distinct_stores(&self.modules) {
            // Every store's relay runs, also where the unit of work writes immediate messages
            // straight into the broker (SQLite with its SQL broker): scheduled messages (a
            // basket's deadline) wait in the outbox until the relay publishes them at their
            // time, and it publishes what an earlier version left in the outbox.
            relay_tasks.push(tokio::spawn(OutboxRelay::new(store, self.broker.clone()).run(relay_stop.clone())));
        }
        let linked = tokio::spawn({
            let (shutdown, shutting_down) = (shutdown.clone(), self.shutting_down.clone());
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => shutting_down.cancel(),
                    () = shutting_down.cancelled() => {}
                }
            }
        });

        tracing::info!(addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            modules = ?module::names_of(self.modules.iter().map(|(m, _)| *m)), "MallBots is listening");
        let grpc_task = tokio::spawn(crate::grpc::serve(self.grpc_listener, self.grpc, shutdown.clone()));
        let served = axum::serve(self.listener, self.http).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        let grpc_served = grpc_task.await;

        // HTTP has stopped taking work; let in-flight messages finish, then flush the outbox.
        self.shutting_down.cancel();
        let _ = linked.await;
        self.stop.cancel();
        for running in routing {
            running.wait().await;
        }
        let mut failures = Vec::new();
        for (name, task) in tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("{name}: {e:#}")),
                Err(e) => failures.push(format!("{name} panicked: {e}")),
            }
        }
        let upkept = upkeep_task.await;
        relay_stop.cancel();
        for task in relay_tasks {
            if let Err(e) = task.await {
                failures.push(format!("the outbox relay panicked: {e}"));
            }
        }
        if let Err(e) = self.broker.shutdown().await {
            tracing::warn!(error = %e, "closing the broker");
        }
        for db in &self.databases {
            db.close().await;
        }
        served.context("serving HTTP")?;
        grpc_served.context("the gRPC server panicked")??;
        upkept.context("the metrics upkeep panicked")?;
        if !failures.is_empty() {
            bail!("stopping MallBots: {}", failures.join("; "));
        }
        tracing::info!("MallBots stopped");
        Ok(())
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("modules", &self.module_names()).field("broker", &self.broker).finish()
    }
}

/// `what` (opening `url`), failing after [`CONNECT_TIMEOUT`] with a message that names it
/// (its password hidden) instead of hanging.
async fn within<T, E>(
    what: &str,
    url: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(CONNECT_TIMEOUT, future).await {
        Ok(result) => result.map_err(|e| anyhow::anyhow!("{what} at {}: {}", redacted(url), redact_all(&e, url))),
        Err(_) => bail!("{what} at {}: no answer within {} s", redacted(url), CONNECT_TIMEOUT.as_secs()),
    }
}

/// An error's whole chain as one line, with `url`'s password hidden wherever it appears.
fn redact_all(e: &(dyn std::error::Error + 'static), url: &str) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // Adapters often repeat their source in their own message: say each thing once.
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    match password_of(url) {
        Some(password) if !password.is_empty() => text.replace(password, "***"),
        _ => text,
    }
}

/// Whether the host and port of `url` accept a TCP connection: a refused or unroutable server
/// is reported at once (a database driver may retry until its own timeout). URLs without a
/// host (a Unix socket) pass.
/// What a module's connections are called in `pg_stat_activity` (`mallbots/<schema>`, at most
/// PostgreSQL's 63 bytes; schemas are ASCII), so an operator sees whose connections they are.
pub fn application_name(schema: &str) -> String {
    let mut name = format!("mallbots/{schema}");
    name.truncate(63);
    name
}

async fn reachable(url: &str, default_port: u16) -> std::io::Result<()> {
    let Some((_, rest)) = url.split_once("://") else { return Ok(()) };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.is_empty() {
        return Ok(());
    }
    let has_port = host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    let address = if has_port { host.to_owned() } else { format!("{host}:{default_port}") };
    tokio::net::TcpStream::connect(address).await.map(drop)
}

fn same_store(a: &Arc<dyn Store>, b: &Arc<dyn Store>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// The distinct stores of `modules` (one on SQLite, one per module on PostgreSQL).
fn distinct_stores(modules: &[(&'static Module, ModuleContext)]) -> Vec<Arc<dyn Store>> {
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for (_, cx) in modules {
        if !stores.iter().any(|s| same_store(s, &cx.store)) {
            stores.push(cx.store.clone());
        }
    }
    stores
}

/// The broker `url` names (NATS, Redis, RabbitMQ or Kafka), its names prefixed by `namespace`.
pub async fn connect_broker(url: &str, namespace: &str, ephemeral: bool) -> anyhow::Result<Arc<dyn Broker>> {
    const WHAT: &str = "connecting to the broker";
    Ok(match broker_scheme(url)? {
        "nats" => {
            // Partitioned subjects: the replicas of a module share its work and per-key order
            // (an order's events, in order) holds across them (ADR 0014).
            let config = herald_nats::NatsConfig::new(url)
                .stream_prefix(format!("{namespace}-"))
                .subject_prefix(format!("{namespace}."))
                .partitions(NATS_PARTITIONS)
                .claim_ttl(NATS_CLAIM_TTL);
            let config = if ephemeral {
                config.storage(herald_nats::Storage::Memory).max_age(Duration::from_secs(600))
            } else {
                config
            };
            Arc::new(within(WHAT, url, config.connect()).await?)
        }
        "redis" | "rediss" => {
            let config = herald_redis::RedisConfig::new(url).key_prefix(format!("{namespace}:"));
            Arc::new(within(WHAT, url, config.connect()).await?)
        }
        "amqp" | "amqps" => {
            let config = herald_amqp::AmqpConfig::new(url).prefix(format!("{namespace}."));
            let config = if ephemeral {
                config.queue_expires(Duration::from_secs(120)).auto_delete_exchange(true)
            } else {
                config
            };
            Arc::new(within(WHAT, url, config.connect()).await?)
        }
        "kafka" => {
            // `kafka://HOST:PORT[,HOST:PORT…]`: Kafka takes bare host:port bootstrap servers.
            let servers = url.split_once("://").map_or(url, |(_, rest)| rest).trim_end_matches('/');
            let config = herald_kafka::KafkaConfig::new(servers).topic_prefix(format!("{namespace}."));
            Arc::new(within(WHAT, url, config.connect()).await?)
        }
        other => bail!("unknown broker {other:?}"),
    })
}

/// The scheme of a broker URL, refused at once (before the database is opened) if MallBots
/// has no adapter for it.
fn broker_scheme(url: &str) -> anyhow::Result<&str> {
    let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
    if !matches!(scheme, "" | "sql" | "nats" | "redis" | "rediss" | "amqp" | "amqps" | "kafka") {
        bail!(
            "unknown broker {scheme:?}: use nats://HOST:PORT, redis://HOST:PORT, amqp://USER:PASS@HOST:PORT, \
             kafka://HOST:PORT, \
             or leave it unset for the SQL broker on the database"
        );
    }
    Ok(scheme)
}

/// Refuses a namespace that is not a safe schema / stream / key name.
fn check_namespace(namespace: &str) -> anyhow::Result<()> {
    let mut chars = namespace.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && namespace.len() <= 48;
    if !valid {
        bail!("invalid namespace {namespace:?}: use 1 to 48 lowercase letters, digits and '_', starting with a letter");
    }
    Ok(())
}

/// A URL with its password hidden, for messages.
pub fn redacted(url: &str) -> String {
    match password_of(url) {
        Some(password) => {
            let at = url.rfind('@').unwrap_or(url.len());
            format!("{}***{}", &url[..at - password.len()], &url[at..])
        }
        None => url.to_owned(),
    }
}

/// The password of a `scheme://user:password@host…` URL.
fn password_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let userinfo = &rest[..rest.rfind('@')?];
    if userinfo.contains('/') {
        return None; // an '@' in the path, not a user
    }
    userinfo.split_once(':').map(|(_, password)| password)
}

/// The file keeping a generated admin token: next to the database file, none for an in-memory
/// database, and the working directory for PostgreSQL (which has no data directory here).
fn data_file(database: &str) -> Option<PathBuf> {
    if AnyDatabase::dialect_of(database) == Dialect::Postgres {
        return Some(PathBuf::from(".").join(ADMIN_TOKEN_FILE));
    }
    let path = database.strip_prefix("sqlite://").or_else(|| database.strip_prefix("sqlite:")).unwrap_or(database);
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.starts_with(":memory:") {
        return None;
    }
    let dir = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(dir.join(ADMIN_TOKEN_FILE))
}

async fn stored_or_generated_token(file: Option<PathBuf>) -> anyhow::Result<(String, TokenSource)> {
    if let Some(file) = &file {
        match tokio::fs::read_to_string(file).await {
            Ok(token) if !token.trim().is_empty() => {
                return Ok((token.trim().to_owned(), TokenSource::Stored(file.clone())));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading the admin token from {}", file.display())),
        }
    }
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    if let Some(file) = &file {
        write_private(file, &token).await.with_context(|| format!("keeping the admin token in {}", file.display()))?;
    }
    Ok((token, TokenSource::Generated(file)))
}

/// Writes `content` to a new file only its owner can read.
async fn write_private(file: &Path, content: &str) -> std::io::Result<()> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(file).await?;
    tokio::io::AsyncWriteExt::write_all(&mut f, content.as_bytes()).await?;
    tokio::io::AsyncWriteExt::flush(&mut f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_sits_next_to_the_database() {
        assert_eq!(data_file("sqlite://mallbots.db"), Some(PathBuf::from("./mallbots-admin-token")));
        assert_eq!(
            data_file("sqlite:///var/lib/mb/x.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/mb/mallbots-admin-token"))
        );
        assert_eq!(data_file("data/x.db"), Some(PathBuf::from("data/mallbots-admin-token")));
        assert_eq!(data_file("sqlite::memory:"), None);
        assert_eq!(data_file("postgres://u@h/db"), Some(PathBuf::from("./mallbots-admin-token")));
    }

    #[test]
    fn unknown_brokers_are_refused_by_name() {
        for known in ["", "sql", "nats://h:4222", "redis://h", "amqp://u:p@h/%2f", "kafka://h:9092"] {
            assert!(broker_scheme(known).is_ok(), "{known}");
        }
        let e = broker_scheme("pulsar://h:6650").map(str::to_owned).unwrap_err().to_string();
        assert!(e.contains("unknown broker \"pulsar\"") && e.contains("kafka://"), "{e}");
    }

    #[test]
    fn namespaces_are_safe_names() {
        for good in ["mallbots", "mb_test_1", "a"] {
            assert!(check_namespace(good).is_ok(), "{good}");
        }
        for bad in ["", "1mb", "Mall", "mb-test", "mb test", "mb;drop", &"a".repeat(49)] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redacted("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redacted("postgres://postgres@127.0.0.1/test"), "postgres://postgres@127.0.0.1/test");
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
