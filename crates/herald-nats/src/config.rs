//! [`NatsConfig`]: where the server is and how the adapter's streams are made. The config is the
//! factory: [`NatsConfig::connect`] builds a [`NatsBroker`].

use std::time::Duration;

use serde::Deserialize;

use crate::broker::NatsBroker;
use crate::error::NatsError;

/// The most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// The most replicas a JetStream stream may have.
pub const MAX_REPLICAS: usize = 5;

/// Where JetStream keeps a stream's messages.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk: survives a server restart. The default, and what "durable" means.
    #[default]
    File,
    /// In memory: faster, lost when the server restarts (tests, caches).
    Memory,
}

/// How to reach NATS and how the adapter creates its JetStream streams.
///
/// Every field has a default, so an empty TOML table is a valid config:
///
/// ```toml
/// url = "nats://127.0.0.1:4222"   # the default
/// stream_prefix = "herald-"       # the default
/// storage = "file"                # or "memory"
/// max_age_secs = 0                # 0 = keep messages until the stream's limits say otherwise
/// duplicate_window_secs = 120     # de-duplication on message id
/// partitions = 0                  # 0 = off; n > 0: per-key order across processes (ADR 0014)
/// claim_ttl_ms = 10000            # how long a dead member's partitions stay claimed
/// replicas = 1                    # copies of each stream in a JetStream cluster (1..=5)
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// The server, or the comma-separated servers of a cluster
    /// (`nats://a:4222,nats://b:4222,nats://c:4222`): the client connects to one of them and,
    /// when that one goes away, reconnects to another (servers the cluster announces are
    /// tried too). Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// Put in front of every stream name the adapter derives from a topic, so several
    /// applications (or test runs) can share a server without sharing streams. Default
    /// `herald-`. Only letters, digits, `-` and `_`.
    pub stream_prefix: String,
    /// Put in front of every topic to make its subject (`orders` → `<prefix>orders`), so
    /// applications that use the same topic names can share a server: a JetStream subject
    /// belongs to one stream only. Default empty (the subject is the topic). Ends with `.` when
    /// set, e.g. `shop1.`. Deliveries carry the topic without it. JetStream broker only.
    pub subject_prefix: String,
    /// Where the streams keep their messages. Default [`Storage::File`].
    pub storage: Storage,
    /// How long a stream keeps a message, in seconds; `0` (the default) keeps it until removed by
    /// other limits. This is retention, not delivery: a group that is slower than this loses
    /// messages.
    pub max_age_secs: u64,
    /// Within this many seconds, a second publish of the same message id is dropped by the
    /// server (publishing is at-least-once; this absorbs the retries). Default 120 (JetStream's
    /// own default).
    pub duplicate_window_secs: u64,
    /// Partitioned subjects and consumers, for per-key order across processes: `0` (the
    /// default) keeps one subject per topic and one competing consumer per group, without
    /// per-key order; `n > 0` publishes a message with key `K` to `<subject>.<p>`, where
    /// `p = fnv1a_64(K) % n` (messages without a key are spread by their id), and gives each
    /// group one durable consumer per partition, each pulled by one member of the group at a
    /// time, so the adapter can keep per-key order (see `docs/adr/0014-nats-partitioned-consumers.md`).
    ///
    /// It changes the wire format (subjects) and the streams' subjects, so every publisher and
    /// subscriber of an application must agree on it, and it cannot change for a stream that
    /// exists: use a new `stream_prefix` (and `subject_prefix`) to switch.
    pub partitions: u32,
    /// With [`partitions`](Self::partitions): how long, in milliseconds, a member's registration
    /// and partition claims live without a heartbeat. A member that dies without leaving
    /// (kill -9, lost network) has its partitions taken over by the others after about this
    /// long; a member that leaves cleanly hands them over at once. Members heartbeat every
    /// third of it. Default 10,000 (10 s); at least 300.
    pub claim_ttl_ms: u64,
    /// How many servers of a JetStream cluster keep a copy of each stream the adapter creates
    /// (its topics' streams, dead-letter topics included, and the partition-claims bucket):
    /// JetStream's `num_replicas`, `1..=5`, default `1`. With `3`, a stream survives the loss
    /// of one server (a majority of its replicas must be up to accept writes); it needs a
    /// cluster of at least that many JetStream servers, and a single server refuses to create
    /// a stream with more than one replica. Consumers inherit the stream's replicas. Like the
    /// other stream settings it applies when a stream is created; an existing stream keeps its
    /// own. List the cluster's servers in [`url`](Self::url) (comma-separated) so the client
    /// can reconnect to another server when one goes away.
    pub replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            stream_prefix: "herald-".to_owned(),
            subject_prefix: String::new(),
            storage: Storage::File,
            max_age_secs: 0,
            duplicate_window_secs: 120,
            partitions: 0,
            claim_ttl_ms: 10_000,
            replicas: 1,
        }
    }
}

impl NatsConfig {
    /// The default config for a server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// Sets the stream prefix.
    #[must_use]
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream_prefix = prefix.into();
        self
    }

    /// Sets the subject prefix (see [`subject_prefix`](Self::subject_prefix)).
    #[must_use]
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Sets the storage.
    #[must_use]
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets the maximum age of a stream's messages (`Duration::ZERO`: unlimited).
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age_secs = max_age.as_secs();
        self
    }

    /// Partitions per topic (`0`: off; see [`partitions`](Self::partitions)).
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets how long a partition claim lives without a heartbeat (see
    /// [`claim_ttl_ms`](Self::claim_ttl_ms)); rounded down to milliseconds.
    #[must_use]
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets the number of stream replicas in a JetStream cluster (see
    /// [`replicas`](Self::replicas)).
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// The claim TTL as a duration.
    pub fn claim_ttl_duration(&self) -> Duration {
        Duration::from_millis(self.claim_ttl_ms)
    }

    /// The maximum age as a duration (`Duration::ZERO`: unlimited).
    pub fn max_age_duration(&self) -> Duration {
        Duration::from_secs(self.max_age_secs)
    }

    /// The duplicate window as a duration.
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }

    /// The servers of [`url`](Self::url): split at commas, trimmed, empty entries left out.
    pub fn servers(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
    }

    /// Checks the config, so a mistake is an error at start-up rather than a failing publish.
    pub fn validate(&self) -> Result<(), NatsError> {
        if self.servers().is_empty() {
            return Err(NatsError::InvalidConfig("url is empty".to_owned()));
        }
        if !self.stream_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(NatsError::InvalidConfig(format!(
                "stream_prefix {:?} may only hold letters, digits, '-' and '_'",
                self.stream_prefix
            )));
        }
        let prefix = &self.subject_prefix;
        let valid_prefix = match prefix.strip_suffix('.') {
            None => prefix.is_empty(),
            Some(tokens) => {
                tokens.split('.').all(|t| !t.is_empty())
                    && !prefix.chars().any(|c| c.is_whitespace() || c == '*' || c == '>')
            }
        };
        if !valid_prefix {
            return Err(NatsError::InvalidConfig(format!(
                "subject_prefix {prefix:?} must be subject tokens ending with '.' (e.g. \"shop1.\"), without spaces, '*' or '>'"
            )));
        }
        if self.duplicate_window_secs == 0 {
            return Err(NatsError::InvalidConfig("duplicate_window_secs must be at least 1".to_owned()));
        }
        if self.max_age_secs != 0 && self.duplicate_window_secs > self.max_age_secs {
            return Err(NatsError::InvalidConfig(
                "duplicate_window_secs cannot be longer than max_age_secs".to_owned(),
            ));
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(NatsError::InvalidConfig(format!(
                "replicas must be between 1 and {MAX_REPLICAS} (JetStream's limit), not {}",
                self.replicas
            )));
        }
        if self.partitions > MAX_PARTITIONS {
            return Err(NatsError::InvalidConfig(format!("partitions must be at most {MAX_PARTITIONS}")));
        }
        if self.partitions > 0 && self.claim_ttl_ms < 300 {
            return Err(NatsError::InvalidConfig("claim_ttl_ms must be at least 300".to_owned()));
        }
        Ok(())
    }

    /// Connects and builds the broker (one connection; clones of the broker share it).
    pub async fn connect(&self) -> Result<NatsBroker, NatsError> {
        self.validate()?;
        let client = async_nats::ConnectOptions::new()
            .name("herald")
            .connect(self.servers())
            .await
            .map_err(|e| NatsError::Connect { url: self.url.clone(), source: e })?;
        Ok(NatsBroker::new(client, self.clone()))
    }

    /// Connects in core NATS mode (no JetStream: fire-and-forget, queue groups). Only the url
    /// applies; the stream settings do not.
    pub async fn connect_core(&self) -> Result<crate::NatsCoreBroker, NatsError> {
        self.validate()?;
        let client = async_nats::ConnectOptions::new()
            .name("herald-core")
            .connect(self.servers())
            .await
            .map_err(|e| NatsError::Connect { url: self.url.clone(), source: e })?;
        Ok(crate::NatsCoreBroker::new(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_gives_the_documented_defaults() {
        let config: NatsConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(config, NatsConfig::default());
        assert_eq!(config.url, "nats://127.0.0.1:4222");
        assert_eq!(config.storage, Storage::File);
        assert!(config.validate().is_ok());
        assert_eq!((config.partitions, config.claim_ttl_ms), (0, 10_000), "partitioning is opt-in");
    }

    #[test]
    fn partition_settings_are_checked() {
        assert!(NatsConfig::default().partitions(8).claim_ttl(Duration::from_secs(2)).validate().is_ok());
        assert!(NatsConfig::default().partitions(8).claim_ttl(Duration::from_millis(100)).validate().is_err());
        assert!(NatsConfig::default().partitions(MAX_PARTITIONS + 1).validate().is_err());
    }

    #[test]
    fn a_cluster_is_a_comma_separated_list_of_servers() {
        let config = NatsConfig::new("nats://127.0.0.1:4222, nats://127.0.0.1:4223,,nats://127.0.0.1:4224");
        assert_eq!(config.servers(), ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]);
        assert_eq!(NatsConfig::default().servers(), ["nats://127.0.0.1:4222"]);
        assert!(NatsConfig::new(" , ").validate().is_err());
    }

    #[test]
    fn replicas_are_checked() {
        assert_eq!(NatsConfig::default().replicas, 1, "one replica unless asked");
        for ok in 1..=MAX_REPLICAS {
            assert!(NatsConfig::default().replicas(ok).validate().is_ok(), "{ok} replicas");
        }
        for bad in [0, MAX_REPLICAS + 1, 100] {
            let err = NatsConfig::default().replicas(bad).validate().expect_err("invalid replicas");
            assert!(err.to_string().contains("replicas"), "{err}");
        }
        let config: NatsConfig = serde_json::from_str(r#"{"replicas": 3}"#).expect("replicas in a table");
        assert_eq!(config.replicas, 3);
    }

    #[test]
    fn a_prefix_with_a_dot_is_refused() {
        let err = NatsConfig::default().stream_prefix("a.b").validate().expect_err("invalid prefix");
        assert!(err.to_string().contains("stream_prefix"));
    }
}
