//! Prometheus metrics: Herald's own (messages published, handled, failed, dead-lettered,
//! handler latency, outbox backlog, projection lag), HTTP requests per route template, and a
//! few business gauges read from the database at scrape time, all in one `GET /metrics`.
//!
//! The `metrics` facade has one global recorder per process, so [`install`] installs it once
//! and every app built in the process (tests build many) shares it.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_otel::prometheus::PrometheusHandle;
use herald_sql::any::query;
use tokio_util::sync::CancellationToken;

use crate::error::{AppError, AppResult};
use crate::http::AppState;

/// Counter, labels `method`, `route` (the matched template), `status`.
pub const HTTP_REQUESTS: &str = "mallbots_http_requests_total";
/// Histogram (seconds), labels `method`, `route`.
pub const HTTP_DURATION: &str = "mallbots_http_request_duration_seconds";
/// Gauge, label `status`: orders per status in the analytics read model.
pub const ORDERS: &str = "mallbots_orders";
/// Gauge: messages committed to the outbox and not yet published.
pub const OUTBOX_PENDING: &str = "mallbots_outbox_pending";
/// Counter: SMS recorded by notifications (read from its table).
pub const SMS_SENT: &str = "mallbots_sms_sent_total";

/// Every order status, so a status no order has any more reads 0 instead of its last count.
const ORDER_STATUSES: &[&str] = &["pending", "approved", "rejected", "ready", "completed", "canceled"];
/// The outbox scan is capped so a scrape stays cheap on a huge backlog.
const OUTBOX_SCAN: usize = 10_000;

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process's Prometheus recorder (once; later calls return the same handle).
/// Call it before the router starts: Herald binds a route's metrics to the recorder present
/// when the route is registered. Fails if another global recorder was installed first.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let handle = herald_otel::prometheus::install().map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("installing the Prometheus recorder: {e}"))
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests, per method, route template and status.");
    metrics::describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "Time to answer an HTTP request.");
    metrics::describe_gauge!(ORDERS, "Orders by status (analytics read model).");
    metrics::describe_gauge!(OUTBOX_PENDING, "Messages committed but not yet published (capped at 10000).");
    metrics::describe_counter!(SMS_SENT, "SMS recorded by notifications.");
}

/// The recorder's upkeep (draining histogram buffers) until `stop`.
pub async fn upkeep(stop: CancellationToken) {
    if let Some(Ok(handle)) = RECORDER.get() {
        herald_otel::prometheus::upkeep(handle.clone(), stop).await;
    }
}

/// Middleware counting requests and timing them. The route label is the matched template
/// (`/api/baskets/{id}`), never the raw path, so ids do not explode the label set.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// Prometheus text of every metric of the process, with the business gauges and the analytics
/// projection's lag refreshed first.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = OK, description = "Prometheus text format", body = String)))]
pub async fn scrape(State(state): State<AppState>) -> AppResult<Response> {
    let handle = install().map_err(|e| AppError::internal(e.to_string()))?;
    let by_status: Vec<(String, i64)> =
        query("SELECT status, COUNT(*) FROM analytics_orders GROUP BY status").fetch_all(&state.db).await?;
    let (sms,): (i64,) = query("SELECT COUNT(*) FROM notifications_sent").fetch_one(&state.db).await?;
    let outbox = state.store.outbox_pending(OUTBOX_SCAN).await?.len();
    for status in ORDER_STATUSES {
        let count = by_status.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
        metrics::gauge!(ORDERS, "status" => *status).set(count as f64);
    }
    metrics::gauge!(OUTBOX_PENDING).set(outbox as f64);
    metrics::counter!(SMS_SENT).absolute(u64::try_from(sms).unwrap_or(0));
    // Sets Herald's projection-lag gauges; a failure only leaves them stale.
    if let Err(e) = state.analytics.runner().status().await {
        tracing::warn!(error = %e, "no analytics projection lag for this scrape");
    }
    let mut response = handle.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}
