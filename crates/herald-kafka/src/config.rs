//! [`KafkaConfig`]: where the brokers are and how the adapter makes its topics and groups. The
//! config is the factory: [`KafkaConfig::connect`] builds a [`KafkaBroker`].

use std::time::Duration;

use serde::Deserialize;

use crate::broker::KafkaBroker;
use crate::error::KafkaError;

/// The most partitions the adapter gives a topic it creates.
pub const MAX_PARTITIONS: u32 = 1024;

/// How to reach Kafka and how the adapter creates its topics.
///
/// Every field has a default, so an empty TOML table is a valid config:
///
/// ```toml
/// bootstrap_servers = "127.0.0.1:9092"  # the default; comma-separated host:port
/// topic_prefix = ""                     # put in front of every topic and group id
/// partitions = 8                        # for the topics the adapter creates
/// replication_factor = 1                # for the topics the adapter creates
/// session_timeout_ms = 10000            # a consumer silent this long leaves its group
/// commit_interval_ms = 200              # how often settled offsets are committed
/// linger_ms = 1                         # how long the producer waits to fill a batch
/// request_timeout_ms = 10000            # connect check, topic creation, offset look-ups
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// The brokers to start from, comma-separated `host:port` (the client learns the rest of
    /// the cluster from them). Default `127.0.0.1:9092`. No credentials: the adapter speaks
    /// plaintext Kafka only (no TLS or SASL).
    pub bootstrap_servers: String,
    /// Put in front of every Kafka topic and consumer group id the adapter derives, so several
    /// applications (or test runs) can share a cluster: `orders` → `<prefix>orders`. Default
    /// empty. Only letters, digits, `.`, `_` and `-` (what Kafka allows in topic names).
    /// Deliveries carry the topic without it.
    pub topic_prefix: String,
    /// Partitions of each topic the adapter creates (a topic that exists keeps its own). A
    /// group's members share the partitions, so this is the most members of one group that
    /// get work at once. Default 8.
    pub partitions: u32,
    /// Replicas of each partition of the topics the adapter creates. Default 1 (a single
    /// broker); 3 on a production cluster.
    pub replication_factor: u16,
    /// A group member that sends no heartbeat for this long (a crashed process) is removed
    /// and its partitions go to the others. Default 10,000 ms.
    pub session_timeout_ms: u64,
    /// How often the offsets of settled messages are committed (each commit is the lowest
    /// unsettled offset of a partition; they are committed at once when a partition is revoked
    /// and when a subscription ends). Default 200 ms.
    pub commit_interval_ms: u64,
    /// How long the producer waits for more messages before it sends a batch. Default 1 ms:
    /// `publish` waits for every message to be stored, so a longer linger only adds latency.
    pub linger_ms: u64,
    /// The bound on each request the adapter waits for by itself: the connection check, topic
    /// creation, committed-offset and watermark look-ups. Default 10,000 ms.
    pub request_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            topic_prefix: String::new(),
            partitions: 8,
            replication_factor: 1,
            session_timeout_ms: 10_000,
            commit_interval_ms: 200,
            linger_ms: 1,
            request_timeout_ms: 10_000,
        }
    }
}

impl KafkaConfig {
    /// The default config for the brokers at `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self { bootstrap_servers: bootstrap_servers.into(), ..Self::default() }
    }

    /// Sets the topic prefix (see [`topic_prefix`](Self::topic_prefix)).
    #[must_use]
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// Sets the partitions of the topics the adapter creates.
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets the session timeout (see [`session_timeout_ms`](Self::session_timeout_ms)).
    #[must_use]
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The servers of [`bootstrap_servers`](Self::bootstrap_servers): split at commas, trimmed,
    /// empty entries left out.
    pub fn servers(&self) -> Vec<&str> {
        self.bootstrap_servers.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
    }

    /// Checks the config, so a mistake is an error at start-up rather than a failing publish.
    pub fn validate(&self) -> Result<(), KafkaError> {
        let bad = |why: String| Err(KafkaError::InvalidConfig(why));
        if self.servers().is_empty() {
            return bad("bootstrap_servers is empty".to_owned());
        }
        if let Some(server) = self.servers().into_iter().find(|s| s.contains('@') || s.contains("://")) {
            // Kafka takes host:port; a URL (perhaps with a password in it) is a mistake, and
            // the error must not repeat it.
            let _ = server;
            return bad("bootstrap_servers must be host:port entries, not URLs".to_owned());
        }
        if !self.topic_prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return bad(format!(
                "topic_prefix {:?} may only hold letters, digits, '.', '_' and '-'",
                self.topic_prefix
            ));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return bad(format!("partitions must be between 1 and {MAX_PARTITIONS}, not {}", self.partitions));
        }
        if self.replication_factor == 0 {
            return bad("replication_factor must be at least 1".to_owned());
        }
        if self.session_timeout_ms < 1_000 {
            return bad("session_timeout_ms must be at least 1000".to_owned());
        }
        if self.commit_interval_ms == 0 {
            return bad("commit_interval_ms must be at least 1".to_owned());
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms must be at least 1".to_owned());
        }
        Ok(())
    }

    /// Checks the config, connects (asking the cluster for its metadata, so an unreachable
    /// broker fails here, naming the servers) and builds the broker.
    pub async fn connect(&self) -> Result<KafkaBroker, KafkaError> {
        self.validate()?;
        KafkaBroker::connect(self.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_gives_the_documented_defaults() {
        let config: KafkaConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(config, KafkaConfig::default());
        assert_eq!(config.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!((config.partitions, config.replication_factor), (8, 1));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn mistakes_are_refused_with_the_field_named() {
        let cases = [
            ("bootstrap_servers", KafkaConfig::new(" , ")),
            ("host:port", KafkaConfig::new("kafka://user:secret@host:9092")),
            ("topic_prefix", KafkaConfig::default().topic_prefix("a b")),
            ("partitions", KafkaConfig::default().partitions(0)),
            ("partitions", KafkaConfig::default().partitions(MAX_PARTITIONS + 1)),
        ];
        for (field, config) in cases {
            let err = config.validate().expect_err(field).to_string();
            assert!(err.contains(field), "{err}");
            assert!(!err.contains("secret"), "an error never repeats a password: {err}");
        }
    }

    #[test]
    fn servers_are_a_comma_separated_list() {
        let config = KafkaConfig::new("a:9092, b:9092,,c:9092");
        assert_eq!(config.servers(), ["a:9092", "b:9092", "c:9092"]);
    }
}
