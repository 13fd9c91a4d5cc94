//! Prometheus metrics: Herald's own (messages published, handled, failed, dead-lettered,
//! handler latency, outbox backlog, projection lag), HTTP requests per route template, and the
//! modules' gauges read from their tables at scrape time, all in one `GET /metrics`.
//!
//! The `metrics` facade has one global recorder per process, so [`install`] installs it once
//! and every app built in the process (tests build many) shares it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_otel::prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{AppError, AppResult};
use crate::http::Ops;

/// Counter, labels `method`, `route` (the matched template), `status`.
pub const HTTP_REQUESTS: &str = "mallbots_http_requests_total";
/// Histogram (seconds), labels `method`, `route`.
pub const HTTP_DURATION: &str = "mallbots_http_request_duration_seconds";
/// Gauge: messages committed to the outbox and not yet published (the process's stores).
pub const OUTBOX_PENDING: &str = "mallbots_outbox_pending";
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
    metrics::describe_gauge!(OUTBOX_PENDING, "Messages committed but not yet published (capped at 10000 per store).");
}

/// The recorder's upkeep (draining histogram buffers) until `stop`.
pub async fn upkeep(stop: CancellationToken) {
    if let Some(Ok(handle)) = RECORDER.get() {
        herald_otel::prometheus::upkeep(handle.clone(), stop).await;
    }
}

static TRACE_REQUESTS: AtomicBool = AtomicBool::new(false);

/// Opens a span for every HTTP request (the process exports its traces); otherwise only for
/// requests that carry a `traceparent`.
pub fn trace_every_request(on: bool) {
    TRACE_REQUESTS.store(on, Ordering::Relaxed);
}

/// Middleware observing every request: an `http` span (OpenTelemetry kind `server`), whose
/// parent is the caller's W3C `traceparent` header when it sends one, so a kiosk's trace goes on
/// through the events the request causes, in every process; and the request counted and timed.
/// The route label is the matched template (`/api/baskets/{id}`), never the raw path, so ids do
/// not explode the label set.
pub async fn observe_http(request: Request, next: Next) -> Response {
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
    // A span per request costs about a tenth of the embedded order rate (30 requests an
    // order): only when traces leave the process, or the caller is tracing.
    let traced = TRACE_REQUESTS.load(Ordering::Relaxed) || request.headers().contains_key("traceparent");
    let span = if !traced {
        tracing::Span::none()
    } else {
        tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        )
    };
    {
        // (A block: the borrow of the request, whose body is not `Sync`, ends here.)
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(traceparent) = header("traceparent") {
            herald::observability::set_remote_parent_from(&span, traceparent, header("tracestate"));
        }
    }
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        herald::observability::mark_error(&span);
    }
    let status = status.as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// Prometheus text of every metric of the process, with the modules' gauges (read from their
/// tables) refreshed first.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = OK, description = "Prometheus text format", body = String)))]
pub async fn scrape(State(ops): State<Ops>) -> AppResult<Response> {
    let handle = install().map_err(|e| AppError::internal(e.to_string()))?;
    let mut outbox = 0;
    for store in &ops.stores {
        outbox += store.outbox_pending(OUTBOX_SCAN).await?.len();
    }
    metrics::gauge!(OUTBOX_PENDING).set(outbox as f64);
    for refresh in &ops.gauges {
        refresh().await?;
    }
    let mut response = handle.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}
