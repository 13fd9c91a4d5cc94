//! `install` sets up the global subscriber once (its own test binary: the subscriber is global).

use herald_otel::{InstallError, LogFormat, TelemetryConfig};

#[tokio::test]
async fn install_sets_up_json_logs_with_trace_context_once() {
    // Quiet logs: only warnings are logged, but `info` spans are still traced.
    let config = TelemetryConfig { log_format: LogFormat::Json, filter: "warn".into(), ..TelemetryConfig::new("test") };
    let telemetry = herald_otel::install(config.clone()).expect("installed");

    // Spans now have OpenTelemetry contexts: a message built in one carries it (the logs'
    // filter does not decide what is traced).
    let message =
        tracing::info_span!("request").in_scope(|| herald::Message::new("t", "N", b"{}".to_vec()).with_current_trace());
    assert!(message.metadata.traceparent.is_some(), "{:?}", message.metadata);

    assert!(matches!(herald_otel::install(config), Err(InstallError::AlreadyInstalled(_))));
    let bad = TelemetryConfig { filter: "=[".into(), ..TelemetryConfig::new("test") };
    assert!(matches!(herald_otel::install(bad), Err(InstallError::Filter(_))));
    telemetry.shutdown();
}
