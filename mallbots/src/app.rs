//! The composition root: [`Config`] builds an [`App`] (database, Herald's store and broker, the
//! message router with every module's routes, the outbox relay, the HTTP server), and
//! [`App::run`] runs it until the caller's shutdown token fires, then stops in order: HTTP
//! first (no new work), then the router (in-flight messages finish), then the relay (a last
//! pass publishes everything committed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use herald::Store;
use herald::outbox::OutboxRelay;
use herald::router::{Inbox, RetryPolicy, Router, Tracing};
use herald_sql::{SqlBroker, SqliteDatabase};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, AppState};
use crate::modules::{analytics, baskets, cosec, customers, depot, notifications, ordering, payments, search};

/// Name of the file keeping a generated admin token, next to the database.
pub const ADMIN_TOKEN_FILE: &str = "mallbots-admin-token";

/// How MallBots runs. The binary fills it from flags and environment variables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the HTTP server listens (`127.0.0.1:0` picks a free port).
    pub http_addr: String,
    /// The database: `sqlite://path.db`, a plain path, or `sqlite::memory:`.
    pub database: String,
    /// The broker: `None` (or `sql`) is the SQL broker on the same database.
    pub broker: Option<String>,
    /// The admin bearer token; `None` reads or generates one kept next to the database.
    pub admin_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            database: "sqlite://mallbots.db".into(),
            broker: None,
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
    db: SqliteDatabase,
    store: Arc<dyn Store>,
    broker: SqlBroker,
    listener: TcpListener,
    state: AppState,
    token_source: TokenSource,
}

impl App {
    /// Opens (and migrates) the database, binds the HTTP address, and resolves the admin token.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let database = config.database.trim();
        if database.starts_with("postgres:") || database.starts_with("postgresql:") {
            bail!("PostgreSQL is not wired into MallBots yet; use sqlite://FILE");
        }
        match config.broker.as_deref().map(str::trim) {
            None | Some("" | "sql") => {}
            Some(other) => bail!("broker {other:?} is not supported yet; leave --broker unset for the SQL broker"),
        }
        let db = SqliteDatabase::open(database).await.with_context(|| format!("opening the database {database}"))?;
        crate::db::migrate(db.pool()).await.context("creating MallBots' tables")?;
        let store: Arc<dyn Store> = Arc::new(db.store());
        let broker = db.broker();
        let (admin_token, token_source) = match config.admin_token.filter(|t| !t.trim().is_empty()) {
            Some(token) => (token.trim().to_owned(), TokenSource::Configured),
            None => stored_or_generated_token(data_file(database)).await?,
        };
        let listener =
            TcpListener::bind(&config.http_addr).await.with_context(|| format!("listening on {}", config.http_addr))?;
        let state = AppState { store: store.clone(), pool: db.pool().clone(), admin_token: admin_token.into() };
        Ok(Self { db, store, broker, listener, state, token_source })
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
    pub fn broker(&self) -> SqlBroker {
        self.broker.clone()
    }

    /// The message router with every module's routes.
    fn message_router(&self, saga: &herald::saga::Orchestrator<cosec::CreateOrderData>) -> Router {
        let mut router = Router::new(Arc::new(self.broker.clone()))
            .store(self.store.clone())
            .retry(RetryPolicy { initial_delay: Duration::from_millis(100), ..RetryPolicy::default() })
            .middleware(Tracing)
            .middleware(Inbox);
        for route in customers::routes()
            .into_iter()
            .chain(baskets::routes())
            .chain(ordering::routes())
            .chain(payments::routes())
            .chain(depot::routes())
            .chain(cosec::routes(saga))
            .chain(notifications::routes())
            .chain(search::routes())
        {
            router = router.route(route);
        }
        router
    }

    /// Runs HTTP, the router and the relay until `shutdown` fires, then stops them in order.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router_stop = CancellationToken::new();
        let relay_stop = CancellationToken::new();
        let saga = cosec::orchestrator(self.store.clone());
        let router_task = tokio::spawn(self.message_router(&saga).run(router_stop.clone()));
        let timeouts_task = tokio::spawn(saga.run_timeouts(Duration::from_secs(1), router_stop.clone()));
        let analytics = herald::projection::ProjectionRunner::new(
            self.store.clone(),
            Arc::new(analytics::AnalyticsProjection::default()),
        );
        let analytics_task = analytics.spawn(router_stop.clone());
        let relay = OutboxRelay::new(self.store.clone(), Arc::new(self.broker.clone()));
        let relay_task = tokio::spawn(relay.run(relay_stop.clone()));

        let app = self.http_router();
        tracing::info!(addr = %self.local_addr(), "MallBots is listening");
        let served = axum::serve(self.listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;

        // HTTP has stopped taking work; let in-flight messages finish, then flush the outbox.
        router_stop.cancel();
        let routed = router_task.await;
        let timed = timeouts_task.await;
        let projected = analytics_task.await;
        relay_stop.cancel();
        let relayed = relay_task.await;
        self.db.close().await;
        served.context("serving HTTP")?;
        routed.context("the message router panicked")?.context("the message router failed")?;
        relayed.context("the outbox relay panicked")?;
        timed.context("the saga timeouts task panicked")?;
        projected.context("the analytics projection panicked")?.context("the analytics projection failed")?;
        tracing::info!("MallBots stopped");
        Ok(())
    }
}

/// The file keeping a generated admin token: next to the database file, or none for an
/// in-memory database.
fn data_file(database: &str) -> Option<PathBuf> {
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
    }
}
