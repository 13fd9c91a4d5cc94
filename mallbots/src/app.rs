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
use herald::pubsub::{Broker, Publisher};
use herald::router::{Inbox, RetryPolicy, Router};
use herald_sql::any::Dialect;
use herald_sql::{AnyDatabase, PostgresConfig, SqliteConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, AppState};
use crate::modules::{analytics, baskets, cosec, customers, depot, notifications, ordering, payments, search};

/// Name of the file keeping a generated admin token, next to the database.
pub const ADMIN_TOKEN_FILE: &str = "mallbots-admin-token";

/// The namespace when none is given.
pub const DEFAULT_NAMESPACE: &str = "mallbots";

/// How MallBots runs. The binary fills it from flags and environment variables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the HTTP server listens (`127.0.0.1:0` picks a free port).
    pub http_addr: String,
    /// The database: `sqlite://path.db` (or a plain path), or `postgres://…`.
    pub database: String,
    /// The broker: `None` (or `sql`) is the SQL broker on the same database; else
    /// `nats://…` (JetStream), `redis://…` (Streams) or `amqp://…` (RabbitMQ).
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            database: "sqlite://mallbots.db".into(),
            broker: None,
            namespace: DEFAULT_NAMESPACE.into(),
            ephemeral_broker: false,
            admin_token: None,
        }
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
#[derive(Debug)]
pub struct App {
    db: AnyDatabase,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    /// The store writes messages straight into the broker (SQLite's SQL broker): the outbox
    /// relay only publishes what an earlier version left in the outbox, once, at start.
    publishes_in_tx: bool,
    listener: TcpListener,
    state: AppState,
    token_source: TokenSource,
}

impl App {
    /// Opens (and migrates) the database, binds the HTTP address, and resolves the admin token.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let database = config.database.trim();
        let namespace = config.namespace.trim();
        check_namespace(namespace)?;
        broker_scheme(config.broker.as_deref().map(str::trim).unwrap_or_default())?;
        // On SQLite with its own SQL broker, messages go into the broker's table in the unit of
        // work itself (no outbox relay hop); otherwise through the outbox.
        let sql_broker =
            matches!(broker_scheme(config.broker.as_deref().map(str::trim).unwrap_or_default())?, "" | "sql");
        let publishes_in_tx = sql_broker && AnyDatabase::dialect_of(database) == Dialect::Sqlite;
        let db: AnyDatabase = match AnyDatabase::dialect_of(database) {
            Dialect::Postgres => PostgresConfig::new(database).with_schema(namespace).open().await.map(Into::into),
            Dialect::Sqlite => {
                SqliteConfig::new(database).publish_to_sql_broker(publishes_in_tx).open().await.map(Into::into)
            }
        }
        .with_context(|| format!("opening the database {}", redacted(database)))?;
        crate::db::migrate(&db).await.context("creating MallBots' tables")?;
        crate::metrics::install()?;
        let store = db.store();
        let broker = connect_broker(config.broker.as_deref(), &db, namespace, config.ephemeral_broker).await?;
        let (admin_token, token_source) = match config.admin_token.filter(|t| !t.trim().is_empty()) {
            Some(token) => (token.trim().to_owned(), TokenSource::Configured),
            None => stored_or_generated_token(data_file(database)).await?,
        };
        let listener =
            TcpListener::bind(&config.http_addr).await.with_context(|| format!("listening on {}", config.http_addr))?;
        let analytics = analytics::AnalyticsControl::new(store.clone());
        let state = AppState { store: store.clone(), db: db.clone(), admin_token: admin_token.into(), analytics };
        Ok(Self { db, store, broker, publishes_in_tx, listener, state, token_source })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener knows its address; the fallback is never used in practice.
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.state.admin_token
    }

    /// Where the admin token came from.
    pub fn token_source(&self) -> &TokenSource {
        &self.token_source
    }

    /// The HTTP application (for tests that call it without a socket).
    pub fn http_router(&self) -> axum::Router {
        http::router(self.state.clone())
    }

    /// Herald's store.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The broker the modules talk through.
    pub fn broker(&self) -> Arc<dyn Broker> {
        self.broker.clone()
    }

    /// The message router with every module's routes.
    fn message_router(&self, saga: &herald::saga::Orchestrator<cosec::CreateOrderData>) -> Router {
        // New consumer groups start from the beginning of their topics (Herald's default), so a
        // module added later catches up; on a broker without history (RabbitMQ) that is "now".
        let mut router = Router::new(self.broker.clone())
            .store(self.store.clone())
            .retry(RetryPolicy { initial_delay: Duration::from_millis(100), ..RetryPolicy::default() })
            .middleware(Inbox);
        let routes: Vec<_> = customers::routes()
            .into_iter()
            .chain(baskets::routes())
            .chain(ordering::routes())
            .chain(payments::routes())
            .chain(depot::routes())
            .chain(cosec::routes(saga))
            .chain(notifications::routes())
            .chain(search::routes())
            .collect();
        // Every route's dead letters are archived (in the database) for the admin API.
        let failing: Vec<_> = routes.iter().map(|r| r.options()).collect();
        let archive = self.db.dead_letters().archive_routes_for(&failing, crate::dead_letters::ARCHIVE_GROUP);
        for route in routes.into_iter().chain(archive) {
            router = router.route(route);
        }
        router
    }

    /// Runs HTTP, the router and the relay until `shutdown` fires, then stops them in order.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router_stop = CancellationToken::new();
        let relay_stop = CancellationToken::new();
        let saga = cosec::orchestrator(self.store.clone());
        // Every group subscribes before anything is published: on RabbitMQ a queue only gets
        // what is routed after it exists.
        let routing = self.message_router(&saga).start(router_stop.clone()).await.context("subscribing the routes")?;
        tracing::debug!("every route is subscribed");
        let timeouts_task = tokio::spawn(saga.run_timeouts(Duration::from_secs(1), router_stop.clone()));
        self.state.analytics.start(router_stop.clone(), shutdown.clone()).await;
        let upkeep_task = tokio::spawn(crate::metrics::upkeep(router_stop.clone()));
        let relay = OutboxRelay::new(self.store.clone(), self.broker.clone());
        let relay_task = if self.publishes_in_tx {
            tokio::spawn(async move {
                if let Err(e) = relay.publish_pending().await {
                    tracing::warn!(error = %e, "publishing what an earlier run left in the outbox failed");
                }
            })
        } else {
            tokio::spawn(relay.run(relay_stop.clone()))
        };

        let app = self.http_router();
        tracing::info!(addr = %self.local_addr(), "MallBots is listening");
        let served = axum::serve(self.listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;

        // HTTP has stopped taking work; let in-flight messages finish, then flush the outbox.
        router_stop.cancel();
        routing.wait().await;
        let timed = timeouts_task.await;
        let projected = self.state.analytics.stop().await;
        let upkept = upkeep_task.await;
        relay_stop.cancel();
        let relayed = relay_task.await;
        if let Err(e) = Publisher::close(&*self.broker).await {
            tracing::warn!(error = %e, "closing the broker");
        }
        self.db.close().await;
        served.context("serving HTTP")?;
        relayed.context("the outbox relay panicked")?;
        timed.context("the saga timeouts task panicked")?;
        projected.context("the analytics projection failed")?;
        upkept.context("the metrics upkeep panicked")?;
        tracing::info!("MallBots stopped");
        Ok(())
    }
}

/// The broker `url` names, its names prefixed by `namespace`; the SQL broker on `db` if none.
async fn connect_broker(
    url: Option<&str>,
    db: &AnyDatabase,
    namespace: &str,
    ephemeral: bool,
) -> anyhow::Result<Arc<dyn Broker>> {
    let url = url.map(str::trim).unwrap_or_default();
    let connecting = || format!("connecting to the broker {}", redacted(url));
    Ok(match broker_scheme(url)? {
        "" | "sql" => db.broker(),
        "nats" => Arc::new({
            let config = herald_nats::NatsConfig::new(url)
                .stream_prefix(format!("{namespace}-"))
                .subject_prefix(format!("{namespace}."));
            let config = if ephemeral {
                config.storage(herald_nats::Storage::Memory).max_age(Duration::from_secs(600))
            } else {
                config
            };
            config.connect().await.with_context(connecting)?
        }),
        "redis" | "rediss" => Arc::new(
            herald_redis::RedisConfig::new(url)
                .key_prefix(format!("{namespace}:"))
                .connect()
                .await
                .with_context(connecting)?,
        ),
        "amqp" | "amqps" => Arc::new({
            let config = herald_amqp::AmqpConfig::new(url).prefix(format!("{namespace}."));
            let config = if ephemeral {
                config.queue_expires(Duration::from_secs(120)).auto_delete_exchange(true)
            } else {
                config
            };
            config.connect().await.with_context(connecting)?
        }),
        other => bail!("unknown broker {other:?}"),
    })
}

/// The scheme of a broker URL, refused at once (before the database is opened) if MallBots
/// has no adapter for it.
fn broker_scheme(url: &str) -> anyhow::Result<&str> {
    let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
    if !matches!(scheme, "" | "sql" | "nats" | "redis" | "rediss" | "amqp" | "amqps") {
        bail!(
            "unknown broker {scheme:?}: use nats://HOST:PORT, redis://HOST:PORT, amqp://USER:PASS@HOST:PORT, \
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
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) if at > scheme.len() + 3 => match url[scheme.len() + 3..at].split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***{}", &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
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
        for known in ["", "sql", "nats://h:4222", "redis://h", "amqp://u:p@h/%2f"] {
            assert!(broker_scheme(known).is_ok(), "{known}");
        }
        let e = broker_scheme("kafka://h:9092").map(str::to_owned).unwrap_err().to_string();
        assert!(e.contains("unknown broker \"kafka\"") && e.contains("nats://"), "{e}");
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
