//! Errors of the NATS adapter.

use herald::pubsub::PubSubError;

/// What went wrong talking to NATS, split by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The config cannot work; fix it.
    #[error("invalid NATS config: {0}")]
    InvalidConfig(String),
    /// The server could not be reached; retry later or check the url.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// The url tried.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream request failed (stream or consumer creation, publish, ack); usually
    /// transient.
    #[error("JetStream {what} failed")]
    JetStream {
        /// What was being done, with the stream or subject.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl NatsError {
    /// A failed JetStream operation described by `what`.
    pub(crate) fn jetstream(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::JetStream { what: what.into(), source: source.into() }
    }
}

impl From<NatsError> for PubSubError {
    fn from(e: NatsError) -> Self {
        match e {
            NatsError::InvalidConfig(why) => PubSubError::InvalidOptions(why),
            other => PubSubError::backend(other),
        }
    }
}
