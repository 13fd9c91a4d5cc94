//! [`RedisConfig`]: where the server is and how topics map to keys. The config is the factory:
//! [`RedisConfig::connect`] builds a [`RedisBroker`].

use std::time::Duration;

use serde::Deserialize;

use crate::broker::RedisBroker;
use crate::error::RedisError;

/// How to reach Redis and how the adapter names its keys.
///
/// Every field has a default, so an empty TOML table is a valid config:
///
/// ```toml
/// url = "redis://127.0.0.1:6379"   # the default
/// key_prefix = "herald:"           # the default
/// response_timeout_ms = 5000       # the default
/// max_len = 1000000                # default: unset (streams grow until trimmed elsewhere)
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// The server. Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Put in front of every key the adapter derives from a topic (`<key_prefix><topic>`), so
    /// several applications (or test runs) can share a server. Default `herald:`.
    pub key_prefix: String,
    /// How long a command may take before it fails, in milliseconds. Default 5000.
    pub response_timeout_ms: u64,
    /// Keep each topic's stream at about this many entries (`XADD … MAXLEN ~ n`: Redis trims
    /// whole nodes, so a few more may stay). Trimming does not wait for consumer groups: an
    /// entry a slow group has not read yet can be trimmed away, so size it above the largest
    /// backlog you accept. Default unset: streams are never trimmed by the adapter.
    pub max_len: Option<u64>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "herald:".to_owned(),
            response_timeout_ms: 5000,
            max_len: None,
        }
    }
}

impl RedisConfig {
    /// The default config for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// Sets the key prefix.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Trims each topic's stream to about `n` entries (see [`RedisConfig::max_len`]).
    #[must_use]
    pub fn max_len(mut self, n: u64) -> Self {
        self.max_len = Some(n);
        self
    }

    /// The response timeout as a duration.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    /// Checks the config, so a mistake is an error at start-up rather than a failing publish.
    pub fn validate(&self) -> Result<(), RedisError> {
        if self.url.trim().is_empty() {
            return Err(RedisError::InvalidConfig("url is empty".to_owned()));
        }
        if self.response_timeout_ms == 0 {
            return Err(RedisError::InvalidConfig("response_timeout_ms must be at least 1".to_owned()));
        }
        Ok(())
    }

    /// Connects and builds the broker (one multiplexed connection for publishing and settling;
    /// each subscription opens its own for its blocking reads).
    pub async fn connect(&self) -> Result<RedisBroker, RedisError> {
        self.validate()?;
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| RedisError::Connect { url: self.url.clone(), source: e })?;
        let broker = RedisBroker::connect(client, self.clone()).await?;
        Ok(broker)
    }

    /// Connects in Redis Pub/Sub mode (fire-and-forget channels, no groups): one multiplexed
    /// connection for publishing, one connection per subscription.
    pub async fn connect_channels(&self) -> Result<crate::RedisChannels, RedisError> {
        self.validate()?;
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| RedisError::Connect { url: self.url.clone(), source: e })?;
        crate::RedisChannels::connect(client, self.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_gives_the_documented_defaults() {
        let config: RedisConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(config, RedisConfig::default());
        assert_eq!(config.url, "redis://127.0.0.1:6379");
        assert!(config.validate().is_ok());
    }
}
