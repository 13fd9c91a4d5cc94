//! Errors of the Redis adapter.

use herald::pubsub::PubSubError;

/// What went wrong talking to Redis, split by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The config cannot work; fix it.
    #[error("invalid Redis config: {0}")]
    InvalidConfig(String),
    /// The server could not be reached; retry later or check the url.
    #[error("cannot connect to Redis at {url}")]
    Connect {
        /// The url tried.
        url: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// A command failed; usually transient.
    #[error("Redis {what} failed")]
    Command {
        /// What was being done, with the stream key.
        what: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// The server answered something the adapter did not expect.
    #[error("unexpected Redis reply to {what}: {detail}")]
    Reply {
        /// What was being done.
        what: String,
        /// What was wrong with the reply.
        detail: String,
    },
}

impl RedisError {
    /// A failed command described by `what`.
    pub(crate) fn command(what: impl Into<String>, source: redis::RedisError) -> Self {
        Self::Command { what: what.into(), source }
    }
}

impl From<RedisError> for PubSubError {
    fn from(e: RedisError) -> Self {
        match e {
            RedisError::InvalidConfig(why) => PubSubError::InvalidOptions(why),
            other => PubSubError::backend(other),
        }
    }
}
