//! [`SqliteConfig`]: the settings of a SQLite database, and the factory that opens it.

use std::time::Duration;

use serde::Deserialize;

use crate::error::SqlError;
use crate::sqlite::SqliteDatabase;

/// How to open a SQLite database. Deserialise it from the application's configuration, then
/// call [`open`](Self::open).
///
/// ```toml
/// [database]
/// url = "sqlite://mallbots.db"
/// max_connections = 8
/// busy_timeout_ms = 30000
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file: `sqlite://path/to/file.db` (URL query options such as `?mode=rwc`
    /// are honoured) or a plain path. The file is created if missing. In-memory databases are
    /// refused: every pooled connection would get its own, empty one.
    /// Default: [`SqliteConfig::DEFAULT_URL`].
    pub url: String,
    /// Connections in the pool. Readers run in parallel (WAL); writers take turns whatever
    /// the pool size, so a few connections are enough. Default:
    /// [`SqliteConfig::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// How long a writer waits for its turn (behind this process's other writers and other
    /// processes' locks) before failing, in milliseconds. Generous, because a burst of writers
    /// queues rather than fails. Default: [`SqliteConfig::DEFAULT_BUSY_TIMEOUT_MS`].
    pub busy_timeout_ms: u64,
}

impl SqliteConfig {
    /// The default database file.
    pub const DEFAULT_URL: &str = "sqlite://herald.db";
    /// The default pool size.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;
    /// The default busy timeout: 30 s.
    pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 30_000;

    /// The defaults, on `url` (a `sqlite://` URL or a path).
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// The busy timeout as a duration.
    pub fn busy_timeout(&self) -> Duration {
        Duration::from_millis(self.busy_timeout_ms)
    }

    /// Checks the settings, so a mistake fails at start-up with the reason.
    pub fn validate(&self) -> Result<(), SqlError> {
        let url = self.url.trim();
        if url.is_empty() {
            return Err(SqlError::Config("url is empty".into()));
        }
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(SqlError::Config(format!(
                "`{url}` is an in-memory database; use a file (e.g. in a temporary directory)"
            )));
        }
        if self.max_connections == 0 {
            return Err(SqlError::Config("max_connections must be at least 1".into()));
        }
        if self.busy_timeout_ms == 0 {
            return Err(SqlError::Config("busy_timeout_ms must be positive".into()));
        }
        Ok(())
    }

    /// Opens (creating if needed) and migrates the database.
    pub async fn open(&self) -> Result<SqliteDatabase, SqlError> {
        self.validate()?;
        SqliteDatabase::connect(self).await
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            url: Self::DEFAULT_URL.to_owned(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            busy_timeout_ms: Self::DEFAULT_BUSY_TIMEOUT_MS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_their_defaults() -> Result<(), serde_json::Error> {
        let c: SqliteConfig = serde_json::from_str(r#"{"url": "sqlite://x.db"}"#)?;
        assert_eq!(c, SqliteConfig::new("sqlite://x.db"));
        assert_eq!(c.busy_timeout(), Duration::from_secs(30));
        Ok(())
    }

    #[test]
    fn nonsense_settings_are_refused_with_the_reason() {
        let err = |c: SqliteConfig| c.validate().map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(err(SqliteConfig::new("")).contains("url is empty"));
        assert!(err(SqliteConfig::new("sqlite::memory:")).contains("in-memory"));
        assert!(err(SqliteConfig { max_connections: 0, ..SqliteConfig::default() }).contains("max_connections"));
        assert!(SqliteConfig::default().validate().is_ok());
    }
}
