//! A tiny JSON-over-HTTP/1.1 client for the simulator: hyper's pooled client (keep-alive
//! connections, no TLS), a timeout per request, and failures sorted by what the report counts
//! (an HTTP status, a timeout, a connection failure, an answer that does not decode).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;

/// Why a request did not give the answer its caller wanted.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The server answered with a status the caller did not expect.
    #[error("HTTP {0}")]
    Status(u16),
    /// No complete answer within the request timeout.
    #[error("timeout")]
    Timeout,
    /// The connection could not be made or broke.
    #[error("connection")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The answer's body was not the JSON expected.
    #[error("bad response")]
    Decode(#[source] serde_json::Error),
}

impl RequestError {
    /// The kind the report counts (`HTTP 409`, `timeout`, `connection`, `bad response`).
    pub fn kind(&self) -> String {
        self.to_string()
    }
}

/// An answer: its status and whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, RequestError> {
        serde_json::from_slice(&self.body).map_err(RequestError::Decode)
    }

    /// `Ok(self)` when the status is `expected`, else the status as an error.
    pub fn expect(self, expected: StatusCode) -> Result<Self, RequestError> {
        if self.status == expected { Ok(self) } else { Err(RequestError::Status(self.status.as_u16())) }
    }
}

/// The MallBots API at one base URL. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    /// `http://host:port`, without a trailing slash.
    base: Arc<str>,
    /// `Bearer <token>` for the admin endpoints.
    admin: Option<HeaderValue>,
    timeout: Duration,
    /// Requests sent, for the report.
    sent: Arc<AtomicU64>,
}

impl Client {
    /// A client of the server at `base` (`http://HOST:PORT`).
    pub fn new(base: &str, admin_token: Option<&str>, timeout: Duration) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/');
        anyhow::ensure!(base.starts_with("http://"), "the target must be an http:// URL (got {base})");
        let admin = admin_token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|_| anyhow::anyhow!("the admin token is not a valid header value"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { http, base: base.into(), admin, timeout, sent: Arc::default() })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends `method path` with `body` as JSON (if any) and the admin token if `admin`; any
    /// status is an `Ok` answer, the caller decides what it expected.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        admin: bool,
    ) -> Result<Answer, RequestError> {
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if admin && let Some(token) = &self.admin {
            request = request.header(AUTHORIZATION, token.clone());
        }
        let body = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|e| RequestError::Connection(Box::new(e)))?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| RequestError::Connection(Box::new(e)))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| RequestError::Connection(Box::new(e)))?;
            Ok(Answer { status, body: body.to_bytes() })
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| RequestError::Timeout)?
    }

    /// GET `path`.
    pub async fn get(&self, path: &str, admin: bool) -> Result<Answer, RequestError> {
        self.send(Method::GET, path, None, admin).await
    }

    /// POST `body` to `path`, expecting `201 Created` with `{"id": …}`; returns the id.
    pub async fn create(&self, path: &str, body: serde_json::Value, admin: bool) -> Result<String, RequestError> {
        #[derive(serde::Deserialize)]
        struct Created {
            id: String,
        }
        let answer = self.send(Method::POST, path, Some(body), admin).await?.expect(StatusCode::CREATED)?;
        Ok(answer.json::<Created>()?.id)
    }

    /// PUT `body` (if any) to `path`; returns the answer whatever its status.
    pub async fn put(&self, path: &str, body: Option<serde_json::Value>, admin: bool) -> Result<Answer, RequestError> {
        self.send(Method::PUT, path, body, admin).await
    }
}
