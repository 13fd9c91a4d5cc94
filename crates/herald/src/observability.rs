//! Tracing and metrics: the spans Herald opens, the W3C trace context it carries in message
//! metadata, and the metrics it records through the [`metrics`] facade.
//!
//! # Spans
//!
//! | span | where | OpenTelemetry kind |
//! |---|---|---|
//! | `command` | [`Repository::execute`](crate::aggregate::Repository::execute) | internal |
//! | `append` | [`Repository::save`](crate::aggregate::Repository::save) | internal |
//! | `publish` | [`HandlerContext::publish`](crate::router::HandlerContext::publish), the broker's publish | producer |
//! | `relay` | each batch of the [outbox relay](crate::outbox::OutboxRelay), linked to every message's context | producer |
//! | `handle` | every delivery the [router](crate::router::Router) hands to a handler | consumer |
//!
//! # Trace context
//!
//! A message carries the W3C `traceparent` / `tracestate` of the span it was created in
//! ([`Metadata::traceparent`](crate::message::Metadata)). It is **injected** when a message is
//! published from a handler (the `publish` span), enqueued in a transaction without one, saved as
//! an event by a repository (the `append` span), or built by application code with
//! [`Message::with_current_trace`](crate::Message::with_current_trace); and **extracted** when the
//! router handles it, so the `handle` span's parent is the producer's span, in another process or
//! not. One trace therefore follows a request through every hop, however many brokers and
//! subscriptions lie between.
//!
//! Reading and writing OpenTelemetry contexts needs the `otel` feature (which brings
//! `opentelemetry` and `tracing-opentelemetry`) and a `tracing-opentelemetry` layer in the
//! subscriber (`herald-otel` installs one). Without them the spans are plain `tracing` spans,
//! the incoming `traceparent` is a field of the `handle` span, and derived messages carry their
//! cause's trace context on unchanged ([`Metadata::continue_from`](crate::Metadata::continue_from)),
//! so a process without OpenTelemetry does not break the chain for the others.
//!
//! Correlation and causation ids need no tracing at all: a message published from a handler is
//! [`caused_by`](crate::Message::caused_by) the message being handled (causation = its id,
//! correlation kept), and so are events saved with a cause.
//!
//! # Metrics
//!
//! Herald records through the [`metrics`] facade only, which costs next to nothing when no
//! recorder is installed; installing one (Prometheus: `herald-otel`'s `prometheus` feature) is
//! the application's job. The names and labels are in [`names`]; the helpers below are the one
//! place that records them, for the router, the relay, the brokers, and for projections and
//! sagas.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::message::{Message, Metadata};

/// Metric names and label keys, in one place. Every name is prefixed `herald_`, counters end
/// in `_total` and durations are in seconds (Prometheus conventions).
pub mod names {
    /// Counter, labels `topic`: messages a broker accepted, counted by every publisher after
    /// a successful publish (through [`record_published`](super::record_published)).
    pub const MESSAGES_PUBLISHED: &str = "herald_messages_published_total";
    /// Counter, labels `topic`, `handler`: messages a router handler handled successfully
    /// (committed and acknowledged).
    pub const MESSAGES_HANDLED: &str = "herald_messages_handled_total";
    /// Counter, labels `topic`, `handler`, `kind` (`transient` or `permanent`): failed handling
    /// attempts. A transient failure is retried, so one message can fail several times.
    pub const MESSAGES_FAILED: &str = "herald_messages_failed_total";
    /// Counter, labels `topic`, `handler`: messages the router sent to the dead-letter topic
    /// (a permanent error, an unknown message on a strict route, or a transient error on the
    /// last allowed delivery).
    pub const MESSAGES_DEAD_LETTERED: &str = "herald_messages_dead_lettered_total";
    /// Histogram (seconds), labels `topic`, `handler`: time to handle one delivery, middleware,
    /// handler and commit included.
    pub const HANDLER_DURATION: &str = "herald_handler_duration_seconds";
    /// Gauge: messages waiting in the outbox, as last seen by the active relay.
    pub const OUTBOX_BACKLOG: &str = "herald_outbox_backlog";
    /// Gauge (seconds): age of the oldest message waiting in the outbox (0 when empty).
    pub const OUTBOX_OLDEST_AGE: &str = "herald_outbox_oldest_age_seconds";
    /// Counter: messages the outbox relay published.
    pub const OUTBOX_RELAYED: &str = "herald_outbox_relayed_total";
    /// Gauge, labels `topic`, `group`: messages of the topic the group has not settled yet —
    /// not yet delivered to it plus delivered and not yet acknowledged — sampled every
    /// [`CONSUMER_LAG_INTERVAL`](super::CONSUMER_LAG_INTERVAL) by each open subscription: the
    /// queue broker (memory, SQLite, PostgreSQL: the group's cursor and pending rows), NATS
    /// JetStream (`num_pending + num_ack_pending` of the group's consumer, summed over its
    /// partition consumers), Redis Streams (`XINFO GROUPS` `lag + pending`), RabbitMQ (the group
    /// queue's ready messages plus those this process holds unacknowledged; see `herald-amqp`),
    /// Kafka (high watermark less the group's committed offset, summed over the topic's
    /// partitions; see `herald-kafka`).
    pub const CONSUMER_LAG: &str = "herald_consumer_lag";
    /// Gauge, labels `topic` (the original topic), `group` (the group that failed them):
    /// archived dead letters neither replayed nor discarded yet. Set by
    /// [`DeadLetters`](crate::dead_letters::DeadLetters) after every change it commits (archive,
    /// replay, discard) and by [`DeadLetters::record_pending`](crate::dead_letters::DeadLetters::record_pending),
    /// which a process calls at start (or at each scrape) so that it reports the archive's
    /// count, not what it changed since it started. The archive is shared: every process that
    /// reports it reports the same number (aggregate with `max`, not `sum`).
    pub const DEAD_LETTERS_PENDING: &str = "herald_dead_letters_pending";
    /// Gauge, labels `projection`: events of the global log the projection has not applied yet
    /// (head position minus its checkpoint; `ProjectionStatus::events_behind`).
    pub const PROJECTION_LAG: &str = "herald_projection_lag";
    /// Gauge (seconds), labels `projection`: how far behind the newest event the projection's
    /// last applied event occurred (`ProjectionStatus::seconds_behind`).
    pub const PROJECTION_LAG_SECONDS: &str = "herald_projection_lag_seconds";
    /// Counter, labels `saga`: saga instances started.
    pub const SAGAS_STARTED: &str = "herald_sagas_started_total";
    /// Counter, labels `saga`: saga instances that ended successfully.
    pub const SAGAS_COMPLETED: &str = "herald_sagas_completed_total";
    /// Counter, labels `saga`: saga instances that ended after compensating.
    pub const SAGAS_COMPENSATED: &str = "herald_sagas_compensated_total";

    /// Label: the topic of the message.
    pub const TOPIC: &str = "topic";
    /// Label: the router's handler (route) name, which is the consumer group by default.
    pub const HANDLER: &str = "handler";
    /// Label: the consumer group.
    pub const GROUP: &str = "group";
    /// Label: `transient` or `permanent`.
    pub const KIND: &str = "kind";
    /// Label: the projection's name.
    pub const PROJECTION: &str = "projection";
    /// Label: the saga definition's name.
    pub const SAGA: &str = "saga";

    /// Every name above with its kind and description, for exporters that describe metrics.
    pub const ALL: &[(&str, &str, &str)] = &[
        (MESSAGES_PUBLISHED, "counter", "Messages accepted by a broker, per topic."),
        (MESSAGES_HANDLED, "counter", "Messages handled successfully, per topic and handler."),
        (MESSAGES_FAILED, "counter", "Failed handling attempts, per topic, handler and kind."),
        (MESSAGES_DEAD_LETTERED, "counter", "Messages dead-lettered by the router, per topic and handler."),
        (HANDLER_DURATION, "histogram", "Time to handle one delivery, in seconds."),
        (OUTBOX_BACKLOG, "gauge", "Messages waiting in the outbox."),
        (OUTBOX_OLDEST_AGE, "gauge", "Age of the oldest message waiting in the outbox, in seconds."),
        (OUTBOX_RELAYED, "counter", "Messages published by the outbox relay."),
        (CONSUMER_LAG, "gauge", "Messages not yet settled by a consumer group."),
        (DEAD_LETTERS_PENDING, "gauge", "Archived dead letters not yet replayed or discarded, per topic and group."),
        (PROJECTION_LAG, "gauge", "Events of the global log a projection has not applied yet."),
        (PROJECTION_LAG_SECONDS, "gauge", "How far behind the newest event a projection is, in seconds."),
        (SAGAS_STARTED, "counter", "Saga instances started."),
        (SAGAS_COMPLETED, "counter", "Saga instances completed."),
        (SAGAS_COMPENSATED, "counter", "Saga instances compensated."),
    ];
}

/// Registers every metric's description with the installed recorder (optional: the metrics
/// work without it; descriptions become `# HELP` lines in Prometheus output).
pub fn describe_metrics() {
    for &(name, kind, help) in names::ALL {
        match kind {
            "counter" => metrics::describe_counter!(name, help),
            "gauge" => metrics::describe_gauge!(name, help),
            _ => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
        }
    }
}

// --- metrics helpers -------------------------------------------------------------------------

/// Counts messages accepted by a broker, per topic. Broker adapters call it after a successful
/// publish.
pub fn record_published(messages: &[Message]) {
    // Batches are usually one topic: count runs instead of one increment per message.
    let mut i = 0;
    while i < messages.len() {
        let topic = &messages[i].topic;
        let run = messages[i..].iter().take_while(|m| &m.topic == topic).count();
        metrics::counter!(names::MESSAGES_PUBLISHED, names::TOPIC => topic.clone()).increment(run as u64);
        i += run;
    }
}

/// Counts `n` messages published to `topic` (for publishers that write many messages of one
/// topic outside [`record_published`], e.g. straight into a broker's table at commit).
pub fn record_published_to(topic: &str, n: u64) {
    metrics::counter!(names::MESSAGES_PUBLISHED, names::TOPIC => topic.to_owned()).increment(n);
}

/// How one delivery ended, for [`record_handled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleOutcome {
    /// Handled and acknowledged.
    Handled,
    /// Failed; will be retried.
    Retried,
    /// Failed transiently on its last allowed delivery; the broker dead-letters it.
    Exhausted,
    /// Failed permanently (or no handler on a strict route): dead-lettered now.
    DeadLettered,
}

/// The metrics of one handler on one topic, registered once (the router keeps one per route,
/// so handling a message allocates no label strings). Registration binds them to the recorder
/// installed at that time: install the recorder before running the router.
#[derive(Debug, Clone)]
pub struct HandlerMetrics {
    handled: metrics::Counter,
    transient: metrics::Counter,
    permanent: metrics::Counter,
    dead_lettered: metrics::Counter,
    duration: metrics::Histogram,
}

impl HandlerMetrics {
    /// Registers the metrics of `handler` on `topic` with the current recorder.
    pub fn new(topic: &str, handler: &str) -> Self {
        let labels = [(names::TOPIC, topic.to_owned()), (names::HANDLER, handler.to_owned())];
        let failed = |kind: &'static str| {
            let [topic, handler] = labels.clone();
            metrics::counter!(names::MESSAGES_FAILED, &[topic, handler, (names::KIND, kind.to_owned())])
        };
        Self {
            handled: metrics::counter!(names::MESSAGES_HANDLED, &labels),
            transient: failed("transient"),
            permanent: failed("permanent"),
            dead_lettered: metrics::counter!(names::MESSAGES_DEAD_LETTERED, &labels),
            duration: metrics::histogram!(names::HANDLER_DURATION, &labels),
        }
    }

    /// Records one delivery's outcome and how long it took.
    pub fn record(&self, outcome: HandleOutcome, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        match outcome {
            HandleOutcome::Handled => self.handled.increment(1),
            HandleOutcome::Retried => self.transient.increment(1),
            HandleOutcome::Exhausted => {
                self.transient.increment(1);
                self.dead_lettered.increment(1);
            }
            HandleOutcome::DeadLettered => {
                self.permanent.increment(1);
                self.dead_lettered.increment(1);
            }
        }
    }

    /// Records a message dead-lettered without being handled (no handler for it on a strict
    /// route): dead-lettered, but no failed attempt and no duration.
    pub fn record_unhandled_dead_letter(&self) {
        self.dead_lettered.increment(1);
    }
}

/// Records one delivery's outcome and duration for `handler` on `topic` (registering the
/// metrics each time: for occasional use; see [`HandlerMetrics`]).
pub fn record_handled(topic: &str, handler: &str, outcome: HandleOutcome, elapsed: Duration) {
    HandlerMetrics::new(topic, handler).record(outcome, elapsed);
}

/// Sets the outbox gauges: `backlog` messages waiting, the oldest for `oldest_age`.
pub fn record_outbox(backlog: u64, oldest_age: Duration) {
    metrics::gauge!(names::OUTBOX_BACKLOG).set(backlog as f64);
    metrics::gauge!(names::OUTBOX_OLDEST_AGE).set(oldest_age.as_secs_f64());
}

/// Counts messages published by the outbox relay.
pub fn record_relayed(n: usize) {
    metrics::counter!(names::OUTBOX_RELAYED).increment(n as u64);
}

/// Sets a consumer group's lag: messages of `topic` it has not settled yet.
pub fn record_consumer_lag(topic: &str, group: &str, lag: u64) {
    metrics::gauge!(names::CONSUMER_LAG, names::TOPIC => topic.to_owned(), names::GROUP => group.to_owned())
        .set(lag as f64);
}

/// How often an open subscription samples its group's consumer lag, on every broker: often
/// enough for a dashboard, and one cheap request (or query) per subscription per interval.
pub const CONSUMER_LAG_INTERVAL: Duration = Duration::from_secs(1);

/// Samples a group's consumer lag with `sample` every [`CONSUMER_LAG_INTERVAL`] (the first
/// at once) and records it ([`record_consumer_lag`]) until `stop` is cancelled: the task a
/// broker adapter runs beside each subscription, off the delivery path, ended with the
/// subscription. A sample of `Ok(None)` (the broker cannot tell just now) leaves the gauge as it
/// was; a failed one is logged at `debug` and retried at the next interval.
pub async fn sample_consumer_lag<F, Fut, E>(topic: String, group: String, stop: CancellationToken, mut sample: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<u64>, E>>,
    E: std::fmt::Display,
{
    let mut ticks = tokio::time::interval(CONSUMER_LAG_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sampled = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            sampled = async {
                ticks.tick().await;
                sample().await
            } => sampled,
        };
        match sampled {
            Ok(Some(lag)) => record_consumer_lag(&topic, &group, lag),
            Ok(None) => {}
            Err(e) => tracing::debug!(%topic, %group, error = %e, "sampling the consumer lag failed"),
        }
    }
}

/// Sets the number of archived dead letters of `topic` failed by `group` that are still
/// pending (neither replayed nor discarded).
pub fn record_dead_letters_pending(topic: &str, group: &str, pending: u64) {
    metrics::gauge!(names::DEAD_LETTERS_PENDING, names::TOPIC => topic.to_owned(), names::GROUP => group.to_owned())
        .set(pending as f64);
}

/// How many messages of its topic a new consumer group will never receive because it starts
/// at [`StartFrom::Latest`](crate::pubsub::StartFrom::Latest), as far as the adapter counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlierMessages {
    /// Exactly this many.
    Exactly(u64),
    /// At least this many: the adapter stopped counting there, to keep the check cheap.
    AtLeast(u64),
}

impl EarlierMessages {
    /// From a count that stops at `limit`: reaching it means "at least `limit`".
    pub fn counted(n: u64, limit: u64) -> Self {
        if n >= limit { Self::AtLeast(limit) } else { Self::Exactly(n) }
    }

    /// Whether there is any.
    pub fn any(self) -> bool {
        match self {
            Self::Exactly(n) | Self::AtLeast(n) => n > 0,
        }
    }
}

impl std::fmt::Display for EarlierMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exactly(n) => write!(f, "{n}"),
            Self::AtLeast(n) => write!(f, "at least {n}"),
        }
    }
}

/// For adapters that keep history: logs (once, at `warn`) that the consumer group `group`,
/// just created on `topic` at [`StartFrom::Latest`](crate::pubsub::StartFrom::Latest), skips
/// the `earlier` messages already on the topic. Nothing is logged when there are none. Call it
/// only when the subscription *created* the group: an existing group resumes where it was.
pub fn warn_new_group_skips_earlier_messages(topic: &str, group: &str, earlier: EarlierMessages) {
    if !earlier.any() {
        return;
    }
    tracing::warn!(
        topic,
        group,
        earlier_messages = %earlier,
        "new consumer group starts at Latest: {earlier} earlier messages on the topic will not be delivered to it \
         (use StartFrom::Beginning to read them)"
    );
}

/// Sets a projection's lag: global-log events it has not applied yet, and how far behind the
/// newest event it is in time.
pub fn record_projection_lag(projection: &str, events_behind: u64, seconds_behind: f64) {
    metrics::gauge!(names::PROJECTION_LAG, names::PROJECTION => projection.to_owned()).set(events_behind as f64);
    metrics::gauge!(names::PROJECTION_LAG_SECONDS, names::PROJECTION => projection.to_owned()).set(seconds_behind);
}

/// Counts a saga instance started.
pub fn record_saga_started(saga: &str) {
    metrics::counter!(names::SAGAS_STARTED, names::SAGA => saga.to_owned()).increment(1);
}

/// Counts a saga instance completed.
pub fn record_saga_completed(saga: &str) {
    metrics::counter!(names::SAGAS_COMPLETED, names::SAGA => saga.to_owned()).increment(1);
}

/// Counts a saga instance that ended compensated.
pub fn record_saga_compensated(saga: &str) {
    metrics::counter!(names::SAGAS_COMPENSATED, names::SAGA => saga.to_owned()).increment(1);
}

// --- spans -----------------------------------------------------------------------------------

/// The `handle` span for delivery `attempt` of `message` to `handler`, its parent being the
/// producer's span named by the message's trace context (with the `otel` feature).
pub fn handle_span(message: &Message, handler: &str, attempt: u32) -> tracing::Span {
    let span = tracing::info_span!(
        "handle",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        handler = %handler,
        message.name = %message.name,
        message.id = %message.id,
        message.topic = %message.topic,
        message.key = %message.key,
        attempt,
        correlation_id = %message.correlation_id(),
        causation_id = tracing::field::Empty,
        // Recorded only when the message has one: an empty `traceparent=""` on every span
        // is noise.
        traceparent = tracing::field::Empty,
    );
    if let Some(causation) = message.metadata.causation_id {
        span.record("causation_id", tracing::field::display(causation));
    }
    if let Some(traceparent) = message.metadata.traceparent.as_deref() {
        span.record("traceparent", traceparent);
    }
    set_remote_parent(&span, &message.metadata);
    span
}

/// Marks a span (one of Herald's, which declare `otel.status_code`) as failed.
pub fn mark_error(span: &tracing::Span) {
    span.record("otel.status_code", "error");
}

/// The `publish` span around handing `messages` to a publisher or an outbox.
pub fn publish_span(messages: &[Message]) -> tracing::Span {
    let topic = messages.first().map(|m| m.topic.as_str()).unwrap_or("");
    tracing::info_span!("publish", otel.kind = "producer", message.topic = %topic, messages = messages.len())
}

// --- trace context ---------------------------------------------------------------------------

/// A parsed W3C `traceparent` (version 00): `00-{trace id}-{span id}-{flags}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16 bytes, not all zero.
    pub trace_id: u128,
    /// 8 bytes, not all zero.
    pub span_id: u64,
    /// Bit 0: sampled.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header; `None` if it is malformed or names an invalid (zero) id.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four parts; a later version may append more (W3C: parse the
        // first four and ignore the rest), but never version ff.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !(hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
            return None;
        }
        let parsed = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.span_id != 0).then_some(parsed)
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// Writes the current span's trace context into `metadata`, replacing what was there. Does
/// nothing when there is no OpenTelemetry context (no `otel` feature, no layer, no span).
pub fn inject_current(metadata: &mut Metadata) {
    if let Some((parent, state)) = current_context() {
        metadata.traceparent = Some(parent);
        metadata.tracestate = state;
    }
}

/// Like [`inject_current`], but keeps a trace context that is already set.
pub fn fill_current(metadata: &mut Metadata) {
    if metadata.traceparent.is_none() {
        inject_current(metadata);
    }
}

/// The current span's `(traceparent, tracestate)`, if it has a valid OpenTelemetry context.
pub fn current_context() -> Option<(String, Option<String>)> {
    otel::span_context(&tracing::Span::current())
}

/// Makes the remote context in `metadata` the parent of `span` (which must not have been
/// entered yet). Without the `otel` feature, or with a malformed `traceparent`, does nothing.
pub fn set_remote_parent(span: &tracing::Span, metadata: &Metadata) {
    if let Some(traceparent) = metadata.traceparent.as_deref() {
        set_remote_parent_from(span, traceparent, metadata.tracestate.as_deref());
    }
}

/// Makes the W3C `traceparent` (and `tracestate`) of an incoming request — an HTTP or gRPC
/// header — the parent of `span` (not entered yet), so a caller's trace continues through this
/// process. Without the `otel` feature, or with a malformed `traceparent`, does nothing.
pub fn set_remote_parent_from(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    if otel::ENABLED
        && !span.is_disabled()
        && let Some(parent) = TraceParent::parse(traceparent)
    {
        otel::set_parent(span, parent, tracestate);
    }
}

/// Links `span` (not entered yet) to the contexts in `metadata` (e.g. a relay batch to the
/// messages in it), without making them its parent. Without the `otel` feature, does nothing.
pub fn add_link(span: &tracing::Span, metadata: &Metadata) {
    if otel::ENABLED
        && !span.is_disabled()
        && let Some(parent) = metadata.traceparent.as_deref().and_then(TraceParent::parse)
    {
        otel::add_link(span, parent, metadata.tracestate.as_deref());
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceParent;

    pub(super) const ENABLED: bool = true;

    fn remote(parent: TraceParent, state: Option<&str>) -> SpanContext {
        let state = state.and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
        SpanContext::new(
            TraceId::from(parent.trace_id),
            SpanId::from(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            state,
        )
    }

    pub(super) fn span_context(span: &tracing::Span) -> Option<(String, Option<String>)> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        let parent = TraceParent {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8(),
        };
        let state = sc.trace_state().header();
        Some((parent.to_string(), (!state.is_empty()).then_some(state)))
    }

    pub(super) fn set_parent(span: &tracing::Span, parent: TraceParent, state: Option<&str>) {
        let cx = opentelemetry::Context::new().with_remote_span_context(remote(parent, state));
        if let Err(e) = span.set_parent(cx) {
            tracing::trace!(error = %e, "no OpenTelemetry parent set on the handle span");
        }
    }

    pub(super) fn add_link(span: &tracing::Span, parent: TraceParent, state: Option<&str>) {
        span.add_link(remote(parent, state));
    }
}

#[cfg(not(feature = "otel"))]
mod otel {
    use super::TraceParent;

    pub(super) const ENABLED: bool = false;

    pub(super) fn span_context(_: &tracing::Span) -> Option<(String, Option<String>)> {
        None
    }

    pub(super) fn set_parent(_: &tracing::Span, _: TraceParent, _: Option<&str>) {}

    pub(super) fn add_link(_: &tracing::Span, _: TraceParent, _: Option<&str>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(header).expect("valid");
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), header);
    }

    #[test]
    fn malformed_or_zero_traceparents_are_ignored() {
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A future version may add fields after the four known ones.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
    }
}
