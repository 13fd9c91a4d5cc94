//! Test support: each test gets its own app on a temp database and port 0; on PostgreSQL and
//! the real brokers, in a namespace (schema, stream/key/queue prefix) of its own.
#![allow(dead_code)]

pub mod live;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use mallbots::app::{App, Config};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

/// An app on its own database, not running (HTTP is called in-process), or a cluster of
/// processes behind a gateway (HTTP over TCP).
pub struct TestApp {
    /// The built app, until a test runs it.
    pub app: Option<App>,
    pub router: Router,
    /// The gateway of a cluster: requests go there instead of to `router`.
    pub gateway: Option<String>,
    /// The gRPC server of an app in this process.
    pub grpc: Option<std::net::SocketAddr>,
    /// The HTTP server of an app in this process (a real TCP port, once the app runs): what a
    /// browser loads.
    pub http: Option<std::net::SocketAddr>,
    pub token: String,
    pub dir: TempDir,
    /// Where it ran, to remove its schema and streams afterwards.
    pub backend: Backend,
    pub config: Config,
}

pub const TOKEN: &str = "test-admin-token";

/// Where an app keeps its data and sends its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: a SQLite file and the SQL broker on it.
    Sqlite,
    /// PostgreSQL with the SQL broker on it.
    Postgres,
    /// PostgreSQL and NATS JetStream.
    PostgresNats,
    /// PostgreSQL and Redis Streams.
    PostgresRedis,
    /// PostgreSQL and RabbitMQ.
    PostgresRabbitMq,
    /// PostgreSQL and Kafka (tansu in the tests).
    PostgresKafka,
    /// Services: one `mallbots serve --modules <module>` process per module (the real binary),
    /// each in its own schema, on NATS, behind an nginx gateway.
    Services,
}

const POSTGRES: (&str, &str) = ("PostgreSQL", "127.0.0.1:5432");

impl Backend {
    /// The servers it needs (name, address).
    fn servers(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Self::Sqlite => vec![],
            Self::Postgres => vec![POSTGRES],
            Self::PostgresNats | Self::Services => vec![POSTGRES, ("NATS", "127.0.0.1:4222")],
            Self::PostgresRedis => vec![POSTGRES, ("Redis", "127.0.0.1:6379")],
            Self::PostgresRabbitMq => vec![POSTGRES, ("RabbitMQ", "127.0.0.1:5672")],
            Self::PostgresKafka => vec![POSTGRES, ("Kafka", "127.0.0.1:9092")],
        }
    }

    /// The configuration of a fresh app on it.
    fn config(self, dir: &TempDir) -> Config {
        let postgres = std::env::var("MALLBOTS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let database = match self {
            Self::Sqlite => format!("sqlite://{}", dir.path().join("mallbots.db").display()),
            _ => postgres,
        };
        let broker = match self {
            Self::Sqlite | Self::Postgres => None,
            Self::PostgresNats | Self::Services => Some("nats://127.0.0.1:4222".to_owned()),
            Self::PostgresRedis => Some("redis://127.0.0.1:6379".to_owned()),
            Self::PostgresRabbitMq => Some("amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
            Self::PostgresKafka => Some("kafka://127.0.0.1:9092".to_owned()),
        };
        Config {
            http_addr: "127.0.0.1:0".into(),
            grpc_addr: "127.0.0.1:0".into(),
            database,
            broker,
            namespace: format!("mb_test_{}", uuid::Uuid::now_v7().simple()),
            // A shared server must not collect every test's streams and queues.
            ephemeral_broker: true,
            admin_token: Some(TOKEN.into()),
            modules: Vec::new(),
            sms_latency: Duration::ZERO,
            basket_ttl: mallbots::settings::DEFAULT_BASKET_TTL,
            pool_size: None,
        }
    }
}

/// Settings a scenario needs other than the defaults, for an app in this process (its
/// [`Config`]) or for every process of a cluster (flags).
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup {
    /// How long baskets stay open.
    pub basket_ttl: Option<Duration>,
}

impl Setup {
    fn apply(&self, config: &mut Config) {
        if let Some(ttl) = self.basket_ttl {
            config.basket_ttl = ttl;
        }
    }

    fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(ttl) = self.basket_ttl {
            flags.extend(["--basket-ttl".to_owned(), format!("{}ms", ttl.as_millis())]);
        }
        flags
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_on(Backend::Sqlite).await.expect("SQLite needs no server")
}

/// Errors the app logs (a 500's cause) show in a failing test's output.
fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("MALLBOTS_TEST_LOG").unwrap_or_else(|_| "warn,sqlx=error".into()))
        .try_init();
}

/// An app on `backend`; `None` (after a loud SKIPPED line) if a server it needs is not running
/// and `CI` is not set (with `CI` set, a missing server fails the test).
pub async fn spawn_app_on(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, Setup::default()).await
}

/// [`spawn_app_on`], with `setup`.
pub async fn spawn_app_with(backend: Backend, setup: Setup) -> Option<TestApp> {
    if !backend.servers().into_iter().all(herald_conformance::support::server_available) {
        return None;
    }
    show_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = backend.config(&dir);
    setup.apply(&mut config);
    let app = App::build(config.clone()).await.expect("app builds");
    let router = app.http_router();
    let grpc = Some(app.grpc_addr());
    let http = Some(app.local_addr());
    Some(TestApp { app: Some(app), router, gateway: None, grpc, http, token: TOKEN.into(), dir, backend, config })
}

/// A response, decoded.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `id` of a creation.
    pub fn id(&self) -> String {
        assert_eq!(self.status, StatusCode::CREATED, "expected a creation, got {self:?}");
        self.body["id"].as_str().expect("an id").to_owned()
    }

    /// The error message.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_else(|| panic!("no error message in {self:?}"))
    }
}

impl TestApp {
    /// The base URL (`http://host:port`) of the app over real HTTP: the gateway of a cluster,
    /// else the app's own listener.
    pub fn base_url(&self) -> Option<String> {
        self.gateway.clone().or_else(|| self.http.map(|addr| format!("http://{addr}")))
    }

    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        admin: bool,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        if admin {
            builder = builder.header("authorization", format!("Bearer {}", self.token));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = match body {
            Some(body) => {
                builder.header("content-type", "application/json").body(Body::from(body.to_string())).expect("request")
            }
            None => builder.body(Body::empty()).expect("request"),
        };
        let response = match &self.gateway {
            Some(gateway) => over_http(gateway, request).await,
            None => self.router.clone().oneshot(request).await.expect("infallible"),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply { status, headers, body }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.request(Method::GET, uri, false, None, &[]).await
    }

    pub async fn post(&self, uri: &str, admin: bool, body: Value) -> Reply {
        self.request(Method::POST, uri, admin, Some(body), &[]).await
    }

    pub async fn put(&self, uri: &str, admin: bool, body: Option<Value>) -> Reply {
        self.request(Method::PUT, uri, admin, body, &[]).await
    }

    pub async fn delete(&self, uri: &str, admin: bool) -> Reply {
        self.request(Method::DELETE, uri, admin, None, &[]).await
    }
}

/// Sends `request` to `base` (`http://host:port`) over a real connection.
async fn over_http(base: &str, request: Request<Body>) -> axum::response::Response {
    use http_body_util::BodyExt;
    let (mut parts, body) = request.into_parts();
    let bytes = body.collect().await.expect("request body").to_bytes();
    parts.uri = format!("{base}{}", parts.uri).parse().expect("uri");
    let request = Request::from_parts(parts, http_body_util::Full::new(bytes));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<axum::body::Bytes>>();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("an answer within 30 s")
        .expect("the gateway answers");
    response.map(Body::new)
}

impl TestApp {
    /// Drops the app's PostgreSQL schema and NATS streams (RabbitMQ queues expire by
    /// themselves: `ephemeral_broker`), so shared servers do not collect every run's state.
    pub async fn remove_server_state(&self) {
        let namespace = &self.config.namespace;
        if self.backend != Backend::Sqlite {
            let pool = sqlx::PgPool::connect(&self.config.database).await.expect("connect to PostgreSQL");
            let schemas = std::iter::once(namespace.clone())
                .chain(mallbots::module::MODULES.iter().map(|m| mallbots::module::schema(namespace, m.name)));
            for schema in schemas {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
                    .execute(&pool)
                    .await
                    .expect("drop a test schema");
            }
            pool.close().await;
        }
        if matches!(self.backend, Backend::PostgresNats | Backend::Services) {
            use futures::TryStreamExt;
            let client = async_nats::connect("127.0.0.1:4222").await.expect("connect to NATS");
            let js = async_nats::jetstream::new(client);
            let names: Vec<String> = js.stream_names().try_collect().await.expect("list streams");
            for name in names.iter().filter(|n| n.starts_with(&format!("{namespace}-"))) {
                js.delete_stream(name).await.expect("delete a test stream");
            }
        }
    }
}

/// Waits (bounded) until `f` holds.
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(10), f).await;
}

/// [`eventually`] with a deadline of `limit`.
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app running in the background (router and relay too), called in-process over HTTP.
pub struct RunningApp {
    pub t: TestApp,
    pub broker: std::sync::Arc<dyn herald::pubsub::Broker>,
    /// The analytics module's store (its read model is changed behind its back in a test).
    pub store: std::sync::Arc<dyn herald::Store>,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub running: Running,
    /// A cluster's turn (see [`CLUSTER_TURN`]), given back when the app is dropped or stopped.
    pub turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// One cluster at a time per test binary: a cluster is a dozen processes and nginx, and two of
/// them beside the other tests starve each other on 2 cores (partition claims and hand-overs
/// then miss their timers, and a test waiting 30 s for 60 SMS timed out in CI, while it takes
/// 6 s alone). Tests on an in-process app still run beside a cluster.
static CLUSTER_TURN: std::sync::LazyLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(Default::default);

/// What runs a [`RunningApp`].
pub enum Running {
    /// `App::run` in this process.
    InProcess(tokio::task::JoinHandle<anyhow::Result<()>>),
    /// A process per module behind nginx.
    Cluster(Box<mallbots::cluster::Cluster>),
}

pub async fn spawn_running_app() -> RunningApp {
    spawn_running_app_on(Backend::Sqlite).await.expect("SQLite needs no server")
}

/// [`spawn_app_on`], running.
pub async fn spawn_running_app_on(backend: Backend) -> Option<RunningApp> {
    spawn_running_app_with(backend, Setup::default()).await
}

/// [`spawn_running_app_on`], with `setup`.
pub async fn spawn_running_app_with(backend: Backend, setup: Setup) -> Option<RunningApp> {
    if backend == Backend::Services {
        let flags = setup.flags();
        return spawn_cluster_with(&[], &[], &flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    }
    let mut t = spawn_app_with(backend, setup).await?;
    let app = t.app.take().expect("not yet running");
    let broker = app.broker();
    let store = app.store_of("analytics").expect("every module runs");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = app.run(shutdown.clone());
    let task = tokio::spawn(async move {
        let stopped = run.await;
        if let Err(e) = &stopped {
            // Shown in a failing test's output even when the test panics before `stop`.
            tracing::error!("the app stopped: {e:#}");
        }
        stopped
    });
    Some(RunningApp { t, broker, store, shutdown, running: Running::InProcess(task), turn: None })
}

/// A cluster on PostgreSQL + NATS: every module in its own process (`replicas` more for some),
/// behind nginx. `None` (after a loud SKIPPED line) without the servers, unless `CI` is set.
pub async fn spawn_cluster(replicas: &[(&str, usize)]) -> Option<RunningApp> {
    spawn_cluster_with(replicas, &[], &[]).await
}

/// [`spawn_cluster`] of `only` these modules (empty: all), every process given `extra_args`.
pub async fn spawn_cluster_with(replicas: &[(&str, usize)], only: &[&str], extra_args: &[&str]) -> Option<RunningApp> {
    let backend = Backend::Services;
    if !backend.servers().into_iter().all(herald_conformance::support::server_available) {
        return None;
    }
    show_logs();
    let turn = CLUSTER_TURN.clone().lock_owned().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = backend.config(&dir);
    let broker_url = config.broker.clone().expect("NATS");
    let cluster_config = mallbots::cluster::ClusterConfig {
        namespace: config.namespace.clone(),
        admin_token: TOKEN.into(),
        ephemeral_broker: true,
        replicas: replicas.iter().map(|(m, n)| ((*m).to_owned(), *n)).collect(),
        only: only.iter().map(|m| (*m).to_owned()).collect(),
        extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        ..mallbots::cluster::ClusterConfig::new(
            env!("CARGO_BIN_EXE_mallbots"),
            &config.database,
            Some(&broker_url),
            &dir.path().join("cluster"),
        )
    };
    let cluster = mallbots::cluster::Cluster::start(cluster_config).await.expect("the cluster starts");
    // The test's own handles on the same servers: the broker, and analytics' store.
    let broker =
        mallbots::app::connect_broker(&broker_url, &config.namespace, true).await.expect("connect to the broker");
    let schema = mallbots::module::schema(&config.namespace, "analytics");
    let store = herald_sql::PostgresConfig::new(&config.database)
        .with_schema(schema)
        .open()
        .await
        .map(|db| herald_sql::AnyDatabase::from(db).store())
        .expect("open analytics' store");
    let t = TestApp {
        app: None,
        router: Router::new(),
        gateway: Some(cluster.url()),
        grpc: cluster.grpc_addr().parse().ok(),
        http: None,
        token: TOKEN.into(),
        dir,
        backend,
        config,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    Some(RunningApp { t, broker, store, shutdown, running: Running::Cluster(Box::new(cluster)), turn: Some(turn) })
}

impl RunningApp {
    /// Stops the app and checks it stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match self.running {
            Running::InProcess(task) => {
                tokio::time::timeout(Duration::from_secs(15), task)
                    .await
                    .expect("stops in time")
                    .expect("no panic")
                    .expect("clean stop");
            }
            Running::Cluster(cluster) => cluster.stop().await.expect("every process stops cleanly"),
        }
        let _ = self.broker.shutdown().await;
        self.t.remove_server_state().await;
    }
}

// --- the order life over REST, shared by the end-to-end tests ---

/// The admin's catalog: one store with one product at 9.99; returns the product id.
pub async fn catalog(t: &TestApp) -> String {
    let store = t.post("/api/stores", true, json!({ "name": "Books", "location": "L1" })).await.id();
    assert_eq!(t.put(&format!("/api/stores/{store}/participating"), true, None).await.status, StatusCode::NO_CONTENT);
    t.post(&format!("/api/stores/{store}/products"), true, json!({ "name": "Treasury", "price": 9.99 })).await.id()
}

/// A customer checks out 2 × the product with a payment of `amount`; returns the order id.
pub async fn order(t: &TestApp, customer: &str, product: &str, amount: Value) -> String {
    order_with(t, customer, product, amount, &[]).await
}

/// [`order`], the checkout request sent with `headers` (e.g. a `traceparent`).
pub async fn order_with(t: &TestApp, customer: &str, product: &str, amount: Value, headers: &[(&str, &str)]) -> String {
    let payment = t.post("/api/payments", false, json!({ "customerId": customer, "amount": amount })).await.id();
    let basket = t.post("/api/baskets", false, json!({ "customerId": customer })).await.id();
    let add = json!({ "productId": product, "quantity": 2 });
    eventually("the product reaches the baskets' catalog", || async {
        t.put(&format!("/api/baskets/{basket}/addItem"), false, Some(add.clone())).await.status
            == StatusCode::NO_CONTENT
    })
    .await;
    let checkout = t
        .request(
            Method::PUT,
            &format!("/api/baskets/{basket}/checkout"),
            false,
            Some(json!({ "paymentId": payment })),
            headers,
        )
        .await;
    assert_eq!(checkout.status, StatusCode::NO_CONTENT);
    basket
}

pub async fn status_becomes(t: &TestApp, order: &str, status: &str) {
    eventually(&format!("the order is {status}"), || async {
        t.get(&format!("/api/ordering/{order}")).await.body["status"] == status
    })
    .await;
}

pub async fn admin_get(t: &TestApp, uri: &str) -> Value {
    let reply = t.request(Method::GET, uri, true, None, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{uri}: {reply:?}");
    reply.body
}

/// The shopping list of an order, once it has one.
pub async fn shopping_list(t: &TestApp, order: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lists = admin_get(t, "/api/depot/shopping").await;
        if let Some(found) = lists.as_array().and_then(|l| l.iter().find(|s| s["orderId"] == order)) {
            return found.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for the shopping list of {order}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub async fn register(t: &TestApp, name: &str) -> String {
    t.post("/api/customers", false, json!({ "name": name, "smsNumber": "555 0100" })).await.id()
}

/// Drives an order through the depot and payments to `completed`: bot assigned, shopping
/// completed, invoice paid.
pub async fn complete(t: &TestApp, order: &str) {
    status_becomes(t, order, "approved").await;
    let list = shopping_list(t, order).await;
    let id = list["id"].as_str().expect("shopping list id");
    let assign = t.put(&format!("/api/depot/shopping/{id}/assign"), true, Some(json!({ "botId": "bot-1" }))).await;
    assert_eq!(assign.status, StatusCode::NO_CONTENT);
    assert_eq!(t.put(&format!("/api/depot/shopping/{id}/complete"), true, None).await.status, StatusCode::NO_CONTENT);
    status_becomes(t, order, "ready").await;
    let find = format!("/api/payments/invoices?orderId={order}");
    eventually("the invoice exists", || async {
        t.request(Method::GET, &find, true, None, &[]).await.status == StatusCode::OK
    })
    .await;
    let invoice = admin_get(t, &find).await;
    let invoice_id = invoice["id"].as_str().expect("invoice id");
    let pay = t.put(&format!("/api/payments/invoices/{invoice_id}/pay"), true, None).await;
    assert_eq!(pay.status, StatusCode::NO_CONTENT);
    status_becomes(t, order, "completed").await;
}
