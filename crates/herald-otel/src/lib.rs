//! # herald-otel
//!
//! Observability set-up for applications built on Herald: one call installs a `tracing`
//! subscriber that writes logs (human-readable or JSON) and gives every span an OpenTelemetry
//! context, exporting spans over OTLP/gRPC when an endpoint is configured. With it, Herald's
//! spans (`command`, `append`, `publish`, `relay`, `handle`; see [`herald::observability`]) form
//! one trace per request across processes and brokers.
//!
//! Herald itself only depends on the `tracing` and `metrics` facades (and, with its `otel`
//! feature, on the OpenTelemetry API); everything that installs, exports or serves lives here,
//! for the binary to call once at start-up. ADR 0007 explains the split.
//!
//! | cargo feature | what it adds | cost |
//! |---|---|---|
//! | (none) | subscriber, logs, OpenTelemetry SDK tracer (propagation, no export) | light |
//! | `otlp` | OTLP/gRPC span export (`opentelemetry-otlp`, tonic, prost) | heavy: ~1 min of a clean build on 2 cores |
//! | `prometheus` | a Prometheus recorder for the `metrics` facade ([`prometheus`]) | light (no HTTP server) |
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In main, once: reads OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, RUST_LOG, LOG_FORMAT.
//! let telemetry = herald_otel::install(herald_otel::TelemetryConfig::from_env("mallbots"))?;
//! // … run the application …
//! telemetry.shutdown(); // flushes spans still buffered
//! # Ok(()) }
//! ```

use std::fmt;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use herald::observability::{describe_metrics, names};

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Pretty,
    /// One JSON object per event, with the current span and its parents.
    Json,
}

/// What [`install`] sets up.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
    /// Which spans and events are logged, in `EnvFilter` syntax (e.g. `info,herald=debug`).
    pub filter: String,
    /// Which spans are traced (exported, and given the trace context messages carry on), in
    /// `EnvFilter` syntax; apart from `filter`, so that quieter logs (`RUST_LOG=warn`) do not
    /// cut the traces. Herald's spans are at `info`.
    pub trace_filter: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Where to export spans over OTLP/gRPC (e.g. `http://localhost:4317`); `None`: spans get
    /// trace ids and propagate, but are not exported. Needs the `otlp` feature.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            service_name: "herald".to_owned(),
            filter: "info".to_owned(),
            trace_filter: "info".to_owned(),
            log_format: LogFormat::Pretty,
            otlp_endpoint: None,
        }
    }
}

impl TelemetryConfig {
    /// Defaults for `service_name`: `info` logs, pretty, no export.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self { service_name: service_name.into(), ..Self::default() }
    }

    /// The configuration from the standard variables, for a binary's start-up (the one place
    /// that reads the environment): `OTEL_EXPORTER_OTLP_ENDPOINT` (export when set and not
    /// empty), `OTEL_SERVICE_NAME` (else `service_name`), `RUST_LOG` (else `info`),
    /// `HERALD_TRACE_FILTER` (else `info`) and `LOG_FORMAT` (`json` for JSON lines).
    pub fn from_env(service_name: impl Into<String>) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.into()),
            filter: var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            trace_filter: var("HERALD_TRACE_FILTER").unwrap_or_else(|| "info".to_owned()),
            log_format: match var("LOG_FORMAT").as_deref() {
                Some(f) if f.eq_ignore_ascii_case("json") => LogFormat::Json,
                _ => LogFormat::Pretty,
            },
            otlp_endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        }
    }
}

/// Why [`install`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The filter directives do not parse.
    #[error("invalid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// An endpoint is configured but this build has no OTLP exporter.
    #[error("OTLP endpoint `{0}` configured, but herald-otel was built without its `otlp` feature")]
    NoOtlp(String),
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber was installed already.
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// The installed telemetry. Keep it for the life of the program; [`shutdown`](Self::shutdown)
/// (or dropping it) flushes the spans not exported yet.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The tracer provider (e.g. for instrumentation outside `tracing`).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Flushes and stops span export.
    pub fn shutdown(self) {
        // Drop does it.
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            // The subscriber may be the one being shut down: stderr is what is left.
            eprintln!("telemetry shutdown: {e}");
        }
    }
}

/// Installs the global `tracing` subscriber: the filter, log lines in the configured format, and
/// an OpenTelemetry layer (exporting over OTLP when an endpoint is configured). Also makes the
/// provider OpenTelemetry's global one and W3C trace context its global propagator, for other
/// instrumented libraries (HTTP, gRPC). Call once, inside the Tokio runtime (the OTLP exporter
/// needs it).
pub fn install(config: TelemetryConfig) -> Result<Telemetry, InstallError> {
    let filter = EnvFilter::try_new(&config.filter)?;
    let trace_filter = EnvFilter::try_new(&config.trace_filter)?;
    let provider = tracer_provider(&config)?;
    let logs = match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(true).boxed(),
    };
    // A filter per layer: the logs' does not decide which spans are traced.
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(layer(&provider).with_filter(trace_filter))
        .try_init()?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    Ok(Telemetry { provider })
}

/// The `tracing-opentelemetry` layer over `provider`, for composing a subscriber by hand (tests
/// use it with an in-memory exporter).
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("herald"))
}

/// The tracer provider [`install`] uses: with a batching OTLP exporter when an endpoint is
/// configured, without any exporter otherwise (spans still get ids, so trace context still
/// propagates through this process).
pub fn tracer_provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, InstallError> {
    let resource = Resource::builder().with_service_name(config.service_name.clone()).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let builder = match &config.otlp_endpoint {
        None => builder,
        Some(endpoint) => with_otlp(builder, endpoint)?,
    };
    Ok(builder.build())
}

#[cfg(feature = "otlp")]
fn with_otlp(
    builder: opentelemetry_sdk::trace::TracerProviderBuilder,
    endpoint: &str,
) -> Result<opentelemetry_sdk::trace::TracerProviderBuilder, InstallError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| InstallError::Exporter(e.to_string()))?;
    Ok(builder.with_batch_exporter(exporter))
}

#[cfg(not(feature = "otlp"))]
fn with_otlp(
    _: opentelemetry_sdk::trace::TracerProviderBuilder,
    endpoint: &str,
) -> Result<opentelemetry_sdk::trace::TracerProviderBuilder, InstallError> {
    Err(InstallError::NoOtlp(endpoint.to_owned()))
}

/// Prometheus exposition of Herald's metrics (feature `prometheus`).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let handle = herald_otel::prometheus::install()?;
/// // In the application's HTTP server: GET /metrics → handle.render()
/// // and, in a tracked task, `herald_otel::prometheus::upkeep(handle.clone(), shutdown)`.
/// # let _ = handle; Ok(()) }
/// ```
#[cfg(feature = "prometheus")]
pub mod prometheus {
    use std::time::Duration;

    use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
    pub use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

    /// Histogram buckets (seconds) for Herald's durations: 1 ms to 10 s.
    pub const DURATION_BUCKETS: &[f64] =
        &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

    /// The builder with Herald's settings: durations (`*_seconds`) as real histograms with
    /// [`DURATION_BUCKETS`] rather than summaries. Add the application's own settings to it.
    pub fn builder() -> Result<PrometheusBuilder, BuildError> {
        PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), DURATION_BUCKETS)
    }

    /// Installs a Prometheus recorder as the global `metrics` recorder, with Herald's metric
    /// descriptions, and returns the handle whose [`render`](PrometheusHandle::render) is the
    /// body of a `GET /metrics` response. Serving it is the application's job (it has an HTTP
    /// server already; this crate brings none).
    pub fn install() -> Result<PrometheusHandle, BuildError> {
        let handle = builder()?.install_recorder()?;
        herald::observability::describe_metrics();
        Ok(handle)
    }

    /// Runs the recorder's upkeep (draining histogram buffers) every 5 s until `shutdown`.
    pub async fn upkeep(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => handle.run_upkeep(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_to_pretty_info_logs_without_export() {
        let c = TelemetryConfig::new("svc");
        assert_eq!(c.service_name, "svc");
        assert_eq!(c.filter, "info");
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.otlp_endpoint, None);
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let c: TelemetryConfig =
            serde_json::from_str(r#"{"log_format":"json","otlp_endpoint":"http://localhost:4317"}"#).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://localhost:4317"));
        assert_eq!(c.service_name, "herald");
    }

    #[cfg(not(feature = "otlp"))]
    #[test]
    fn an_endpoint_without_the_otlp_feature_is_an_error() {
        let config =
            TelemetryConfig { otlp_endpoint: Some("http://localhost:4317".into()), ..TelemetryConfig::default() };
        assert!(matches!(tracer_provider(&config), Err(InstallError::NoOtlp(_))));
    }

    #[cfg(feature = "prometheus")]
    #[test]
    fn prometheus_renders_handler_durations_as_histograms() {
        let recorder = prometheus::builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            herald::observability::record_handled(
                "orders",
                "billing",
                herald::observability::HandleOutcome::Handled,
                std::time::Duration::from_millis(3),
            );
        });
        let text = handle.render();
        assert!(
            text.contains(
                "herald_handler_duration_seconds_bucket{topic=\"orders\",handler=\"billing\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("herald_messages_handled_total{topic=\"orders\",handler=\"billing\"} 1"), "{text}");
    }
}
