//! [`AmqpConfig`]: where the server is and how the adapter names its exchange and queues. The
//! config is the factory: [`AmqpConfig::connect`] builds an [`AmqpBroker`].

use std::time::Duration;

use serde::Deserialize;

use crate::broker::AmqpBroker;
use crate::error::AmqpError;

/// How to reach RabbitMQ and how the adapter names what it declares.
///
/// Every field has a default, so an empty TOML table is a valid config:
///
/// ```toml
/// url = "amqp://guest:guest@127.0.0.1:5672/%2f"   # the default (vhost "/")
/// prefix = "herald."                              # the default
/// queue_expires_secs = 0                          # 0 = group queues never expire
/// auto_delete_exchange = false                    # the default
/// confirm_timeout_ms = 30000                      # the default
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// The server, as an AMQP URI (the vhost URL-encoded: `%2f` is `/`). Default
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// Put in front of the exchange (`<prefix>topics`) and of every queue the adapter declares,
    /// so several applications (or test runs) can share a server without sharing queues.
    /// Default `herald.`.
    pub prefix: String,
    /// A group queue (and the dead-letter queue kept for it) unused for this many seconds (no
    /// consumer, not re-declared) is deleted by the server, with its messages; `0` (the default)
    /// keeps group queues forever. Meant for tests and throw-away groups.
    pub queue_expires_secs: u64,
    /// Declare the exchange auto-delete: the server deletes it when its last queue goes. Only for
    /// tests (with `queue_expires_secs`), so a shared server does not collect exchanges; a
    /// publish after the exchange is gone fails. Default `false`.
    pub auto_delete_exchange: bool,
    /// How long a publish waits for the server's confirms before it fails, in milliseconds, so
    /// a stalled or lost connection is an error rather than a hang. Default 30000.
    pub confirm_timeout_ms: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            prefix: "herald.".to_owned(),
            queue_expires_secs: 0,
            auto_delete_exchange: false,
            confirm_timeout_ms: 30_000,
        }
    }
}

impl AmqpConfig {
    /// The default config for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// Sets the name prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how long an unused group queue lives (`Duration::ZERO`: forever).
    #[must_use]
    pub fn queue_expires(mut self, after: Duration) -> Self {
        self.queue_expires_secs = after.as_secs();
        self
    }

    /// Declares the exchange auto-delete (tests only, see the field).
    #[must_use]
    pub fn auto_delete_exchange(mut self, yes: bool) -> Self {
        self.auto_delete_exchange = yes;
        self
    }

    /// Sets how long a publish waits for confirms (and any AMQP operation for its answer).
    #[must_use]
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The confirm timeout as a duration.
    pub fn confirm_timeout_duration(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }

    /// The exchange every topic is published to.
    pub fn exchange(&self) -> String {
        format!("{}topics", self.prefix)
    }

    /// Checks the config, so a mistake is an error at start-up rather than a failing publish.
    pub fn validate(&self) -> Result<(), AmqpError> {
        if self.url.trim().is_empty() {
            return Err(AmqpError::InvalidConfig("url is empty".to_owned()));
        }
        if self.prefix.len() > 100 || self.prefix.chars().any(char::is_control) {
            return Err(AmqpError::InvalidConfig(format!(
                "prefix {:?} must be at most 100 bytes without control characters",
                self.prefix
            )));
        }
        if self.confirm_timeout_ms == 0 {
            return Err(AmqpError::InvalidConfig("confirm_timeout_ms must be at least 1".to_owned()));
        }
        if self.queue_expires_secs > u64::from(u32::MAX) / 1000 {
            return Err(AmqpError::InvalidConfig("queue_expires_secs is too large".to_owned()));
        }
        Ok(())
    }

    /// Connects and builds the broker (one connection: a confirm channel for publishing, a
    /// channel for declarations and one channel per subscription; clones of the broker share
    /// it). Declares the exchange.
    pub async fn connect(&self) -> Result<AmqpBroker, AmqpError> {
        self.validate()?;
        AmqpBroker::connect(self.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_gives_the_documented_defaults() {
        let config: AmqpConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(config, AmqpConfig::default());
        assert_eq!(config.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(config.exchange(), "herald.topics");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_zero_confirm_timeout_is_refused() {
        let config = AmqpConfig { confirm_timeout_ms: 0, ..AmqpConfig::default() };
        let err = config.validate().expect_err("invalid timeout");
        assert!(err.to_string().contains("confirm_timeout_ms"));
    }
}
