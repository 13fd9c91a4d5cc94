//! Errors of the Kafka adapter.

use herald::pubsub::PubSubError;

/// What went wrong talking to Kafka, split by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The config cannot work; fix it.
    #[error("invalid Kafka config: {0}")]
    InvalidConfig(String),
    /// The brokers could not be reached; retry later or check `bootstrap_servers`.
    #[error("cannot connect to Kafka at {servers}")]
    Connect {
        /// The bootstrap servers tried (host:port only: the adapter takes no credentials).
        servers: String,
        /// Why.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A Kafka request failed (topic creation, produce, offsets); usually transient.
    #[error("Kafka {what} failed")]
    Request {
        /// What was being done, with the topic or group.
        what: String,
        /// Why.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl KafkaError {
    /// A failed Kafka operation described by `what`.
    pub(crate) fn request(what: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Self::Request { what: what.into(), source }
    }
}

impl From<KafkaError> for PubSubError {
    fn from(e: KafkaError) -> Self {
        match e {
            KafkaError::InvalidConfig(why) => PubSubError::InvalidOptions(why),
            other => PubSubError::backend(other),
        }
    }
}
