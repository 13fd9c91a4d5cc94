//! Errors of the RabbitMQ adapter.

use herald::pubsub::PubSubError;

/// What went wrong talking to RabbitMQ, split by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The config cannot work; fix it.
    #[error("invalid RabbitMQ config: {0}")]
    InvalidConfig(String),
    /// The server could not be reached; retry later or check the url.
    #[error("cannot connect to RabbitMQ at {url}")]
    Connect {
        /// The url tried (without its password).
        url: String,
        /// Why.
        #[source]
        source: lapin::Error,
    },
    /// An AMQP operation failed (declaration, publish, ack); a lost connection shows up here.
    /// Usually transient.
    #[error("AMQP {what} failed")]
    Amqp {
        /// What was being done, with the exchange or queue.
        what: String,
        /// Why.
        #[source]
        source: lapin::Error,
    },
    /// The server refused to take a published message (a negative confirm); retry.
    #[error("RabbitMQ refused {what} (negative publisher confirm)")]
    Nacked {
        /// What was published.
        what: String,
    },
    /// A message published to a queue of the adapter's own was returned: the queue is gone.
    #[error("RabbitMQ returned {what}: no such queue")]
    Unroutable {
        /// What was published.
        what: String,
    },
    /// The server did not answer in time; the connection may be lost.
    #[error("RabbitMQ did not answer {what} within {timeout:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: std::time::Duration,
    },
}

impl AmqpError {
    /// A failed AMQP operation described by `what`.
    pub(crate) fn amqp(what: impl Into<String>, source: lapin::Error) -> Self {
        Self::Amqp { what: what.into(), source }
    }
}

impl From<AmqpError> for PubSubError {
    fn from(e: AmqpError) -> Self {
        match e {
            AmqpError::InvalidConfig(why) => PubSubError::InvalidOptions(why),
            other => PubSubError::backend(other),
        }
    }
}
