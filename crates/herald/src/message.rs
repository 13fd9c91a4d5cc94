//! The unit that travels: [`Message`] and its [`Metadata`].
//!
//! A message is an immutable fact (an event) or a request (a command) on its way from a producer
//! to consumers. Its payload is opaque bytes so that every broker can carry it unchanged; typed
//! events are encoded into and decoded from it by the [`codec`](crate::codec).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The globally unique id of a message. UUIDv7, so ids sort by creation time, which keeps
/// database indexes on them append-mostly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses the hyphenated text form.
    pub fn parse(text: &str) -> Result<Self, uuid::Error> {
        Uuid::parse_str(text).map(Self)
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Content type of a JSON payload, the default codec.
pub const JSON: &str = "application/json";

/// What travels with a payload: where it came from and how it relates to other messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Groups every message caused, directly or not, by one original request. Kept unchanged when
    /// a message is derived from another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<MessageId>,
    /// The id of the message that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<MessageId>,
    /// W3C trace context `traceparent` header, so one trace follows a request across brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C trace context `tracestate` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// When the fact happened (not when it was published or stored).
    pub occurred_at: DateTime<Utc>,
    /// How the payload is encoded, e.g. `application/json` (the default, left out of the
    /// encoded metadata: absent and default fields are not written, to keep every message small).
    #[serde(default = "json_content_type", skip_serializing_if = "is_json")]
    pub content_type: String,
    /// Anything else: saga ids, reply topics, dead-letter reasons. Sorted, so output is stable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn json_content_type() -> String {
    JSON.to_owned()
}

fn is_json(content_type: &str) -> bool {
    content_type == JSON
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            occurred_at: now_millis(),
            content_type: JSON.to_owned(),
            headers: BTreeMap::new(),
        }
    }
}

impl Metadata {
    /// Records `cause` as the direct cause: causation becomes its id, correlation is kept from it
    /// (or starts at its id). Unless a trace context is already set, it becomes the current
    /// span's (with the `otel` feature and an OpenTelemetry layer: the span handling `cause`, a
    /// descendant of the span that produced it, so the trace goes on with a precise parent), or
    /// else the cause's, carried on unchanged.
    pub fn continue_from(&mut self, cause: &Message) {
        self.causation_id = Some(cause.id);
        self.correlation_id = Some(cause.correlation_id());
        if self.traceparent.is_none() {
            crate::observability::inject_current(self);
        }
        if self.traceparent.is_none() {
            self.traceparent.clone_from(&cause.metadata.traceparent);
            self.tracestate.clone_from(&cause.metadata.tracestate);
        }
    }
}

/// Now, truncated to milliseconds: every backend stores milliseconds, so a round trip through
/// any of them gives back an equal value.
pub fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// A message: an event or a command with its routing and metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id; brokers and the inbox de-duplicate on it.
    pub id: MessageId,
    /// The message's type name, e.g. `ordering.OrderCreated.v1`; handlers are chosen by it.
    pub name: String,
    /// Where it is published.
    pub topic: String,
    /// Ordering key (usually the aggregate id). Messages with the same key are handled in order
    /// within a consumer group; an empty key means "no ordering constraint".
    pub key: String,
    /// Encoded payload, see `metadata.content_type`.
    pub payload: Vec<u8>,
    /// Correlation, causation, trace context, time, headers.
    pub metadata: Metadata,
}

impl Message {
    /// A new message with a fresh id, no key and default metadata (now, JSON).
    pub fn new(topic: impl Into<String>, name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            id: MessageId::new(),
            name: name.into(),
            topic: topic.into(),
            key: String::new(),
            payload: payload.into(),
            metadata: Metadata::default(),
        }
    }

    /// A message carrying a typed event, command or reply, named and encoded by its codec.
    pub fn encode<E: crate::codec::EventSet>(
        topic: impl Into<String>,
        event: &E,
    ) -> Result<Self, crate::codec::CodecError> {
        Ok(Self::new(topic, event.event_name(), event.encode()?))
    }

    /// Sets the ordering key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.headers.insert(name.into(), value.into());
        self
    }

    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata.headers.get(name).map(String::as_str)
    }

    /// Makes this message a consequence of `cause`: causation becomes the cause's id, correlation
    /// is kept from the cause (or starts at the cause's id) and the trace context is carried on.
    #[must_use]
    pub fn caused_by(mut self, cause: &Message) -> Self {
        self.metadata.continue_from(cause);
        self
    }

    /// Carries the current span's trace context (W3C `traceparent` / `tracestate`), so that
    /// whoever handles this message continues the current trace. Needs the `otel` feature and
    /// an OpenTelemetry layer; otherwise the message is unchanged. See
    /// [`observability`](crate::observability).
    #[must_use]
    pub fn with_current_trace(mut self) -> Self {
        crate::observability::inject_current(&mut self.metadata);
        self
    }

    /// The correlation id, or this message's own id when it starts a conversation.
    pub fn correlation_id(&self) -> MessageId {
        self.metadata.correlation_id.unwrap_or(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deriving_a_message_sets_causation_and_keeps_correlation() {
        let first = Message::new("t", "First", b"{}".to_vec());
        let mut second = Message::new("t", "Second", b"{}".to_vec()).caused_by(&first);
        second.metadata.traceparent = Some("00-abc-def-01".into());
        let third = Message::new("t", "Third", b"{}".to_vec()).caused_by(&second);

        assert_eq!(second.metadata.causation_id, Some(first.id));
        assert_eq!(second.metadata.correlation_id, Some(first.id));
        assert_eq!(third.metadata.causation_id, Some(second.id));
        assert_eq!(third.metadata.correlation_id, Some(first.id));
        assert_eq!(third.metadata.traceparent.as_deref(), Some("00-abc-def-01"));
    }

    #[test]
    fn message_ids_sort_by_creation_time() {
        let ids: Vec<_> = (0..100).map(|_| MessageId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn default_metadata_encodes_only_the_time_and_older_full_encodings_still_decode() {
        let m = Metadata::default();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, format!("{{\"occurredAt\":{}}}", serde_json::to_string(&m.occurred_at).unwrap()));
        assert_eq!(serde_json::from_str::<Metadata>(&json).unwrap(), m);
        let older = r#"{"correlationId":null,"causationId":null,"occurredAt":"2026-01-01T00:00:00Z","contentType":"application/json"}"#;
        let back: Metadata = serde_json::from_str(older).unwrap();
        assert_eq!((back.correlation_id, back.content_type.as_str()), (None, JSON));
        let other = Metadata { content_type: "application/protobuf".into(), ..Metadata::default() };
        assert_eq!(serde_json::from_str::<Metadata>(&serde_json::to_string(&other).unwrap()).unwrap(), other);
    }

    #[test]
    fn metadata_round_trips_through_json() {
        let m = Message::new("t", "N", b"x".to_vec()).with_header("a", "b");
        let json = serde_json::to_string(&m.metadata).unwrap();
        let back: Metadata = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m.metadata);
    }
}
