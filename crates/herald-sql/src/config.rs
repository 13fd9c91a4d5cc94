//! [`SqliteConfig`] and [`PostgresConfig`]: the settings of a database, and the factories that
//! open them.

use std::time::Duration;

use serde::Deserialize;

use crate::error::SqlError;
use crate::postgres::PostgresDatabase;
#[cfg(feature = "sqlite")]
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
#[cfg(feature = "sqlite")]
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file: `sqlite://path/to/file.db` (URL query options such as `?mode=rwc`
    /// are honoured) or a plain path. The file is created if missing. In-memory databases are
    /// refused: every pooled connection would get its own, empty one.
    /// Default: [`SqliteConfig::DEFAULT_URL`].
    pub url: String,
    /// Reader connections kept open (readers run in parallel with the one writer connection,
    /// WAL; each read borrows one for its own duration, and one is opened when none is idle).
    /// Writers take turns on their own connection whatever this is. Default:
    /// [`SqliteConfig::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// How long a writer waits for its turn (behind this process's other writers and other
    /// processes' locks) before failing, in milliseconds. Generous, because a burst of writers
    /// queues rather than fails. Default: [`SqliteConfig::DEFAULT_BUSY_TIMEOUT_MS`].
    pub busy_timeout_ms: u64,
    /// Whether this database's SQL broker ([`SqliteDatabase::broker`]) is the application's
    /// broker. Then every store of the database writes enqueued messages straight into the
    /// broker's table in the unit of work instead of into the outbox: they are published when
    /// the transaction commits (atomically with it, in commit order), and no outbox relay is
    /// needed (two write transactions and a hop fewer per message). Keep it off with any other
    /// broker. Default: `false`.
    pub publish_to_sql_broker: bool,
}

#[cfg(feature = "sqlite")]
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

    /// Sets [`publish_to_sql_broker`](Self::publish_to_sql_broker).
    #[must_use]
    pub fn publish_to_sql_broker(mut self, on: bool) -> Self {
        self.publish_to_sql_broker = on;
        self
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

#[cfg(feature = "sqlite")]
impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            url: Self::DEFAULT_URL.to_owned(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            busy_timeout_ms: Self::DEFAULT_BUSY_TIMEOUT_MS,
            publish_to_sql_broker: false,
        }
    }
}

/// How to open a PostgreSQL database. Deserialise it from the application's configuration, then
/// call [`open`](Self::open).
///
/// ```toml
/// [database]
/// url = "postgres://herald@db.internal/mallbots"
/// schema = "ordering"
/// max_connections = 16
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// The server and database: `postgres://user:password@host:port/database` (URL query
    /// options such as `?sslmode=require` are honoured). Default:
    /// [`PostgresConfig::DEFAULT_URL`].
    pub url: String,
    /// The schema holding Herald's tables (created and migrated if missing), set as every
    /// connection's `search_path`: one schema per module lets several modules share a database.
    /// A plain lower-case identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes). Default:
    /// [`PostgresConfig::DEFAULT_SCHEMA`].
    pub schema: String,
    /// Connections in the pool. Each open unit of work holds one. Default:
    /// [`PostgresConfig::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// How long to wait for a free connection before failing, in milliseconds. Default:
    /// [`PostgresConfig::DEFAULT_ACQUIRE_TIMEOUT_MS`].
    pub acquire_timeout_ms: u64,
    /// Whether to `LISTEN` for other processes' commits (one pooled connection), so their
    /// events and messages wake this process's readers at once instead of at the next poll
    /// (a fallback, once a second). Default: `true`.
    pub listen: bool,
    /// The name every connection shows in `pg_stat_activity.application_name`, so an operator
    /// can tell whose connections they are (e.g. one name per service). Default: none (the
    /// URL's `?application_name=…`, if it has one).
    pub application_name: Option<String>,
}

impl PostgresConfig {
    /// The default server and database.
    pub const DEFAULT_URL: &str = "postgres://localhost/herald";
    /// The default schema.
    pub const DEFAULT_SCHEMA: &str = "herald";
    /// The default pool size.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;
    /// The default acquire timeout: 30 s.
    pub const DEFAULT_ACQUIRE_TIMEOUT_MS: u64 = 30_000;

    /// The defaults, on `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// The same settings in another schema.
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The acquire timeout as a duration.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }

    /// Checks the settings, so a mistake fails at start-up with the reason.
    pub fn validate(&self) -> Result<(), SqlError> {
        let url = self.url.trim();
        if url.is_empty() {
            return Err(SqlError::Config("url is empty".into()));
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(SqlError::Config(format!("`{url}` is not a postgres:// URL")));
        }
        let schema = &self.schema;
        let plain = schema
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()));
        if schema.is_empty() || schema.len() > 63 || !plain {
            return Err(SqlError::Config(format!(
                "schema `{schema}` must be a plain lower-case identifier ([a-z_][a-z0-9_]*, at most 63 bytes)"
            )));
        }
        if self.max_connections == 0 {
            return Err(SqlError::Config("max_connections must be at least 1".into()));
        }
        if self.acquire_timeout_ms == 0 {
            return Err(SqlError::Config("acquire_timeout_ms must be positive".into()));
        }
        // PostgreSQL truncates longer names to 63 bytes; a NUL cannot travel in a start-up packet.
        if let Some(name) = &self.application_name
            && (name.len() > 63 || name.contains('\0'))
        {
            return Err(SqlError::Config(format!(
                "application_name `{}` must be at most 63 bytes without NUL",
                name.escape_debug()
            )));
        }
        Ok(())
    }

    /// Connects, creates the schema if missing and migrates it.
    pub async fn open(&self) -> Result<PostgresDatabase, SqlError> {
        self.validate()?;
        PostgresDatabase::connect(self).await
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: Self::DEFAULT_URL.to_owned(),
            schema: Self::DEFAULT_SCHEMA.to_owned(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            acquire_timeout_ms: Self::DEFAULT_ACQUIRE_TIMEOUT_MS,
            listen: true,
            application_name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sqlite")]
    #[test]
    fn missing_fields_take_their_defaults() -> Result<(), serde_json::Error> {
        let c: SqliteConfig = serde_json::from_str(r#"{"url": "sqlite://x.db"}"#)?;
        assert_eq!(c, SqliteConfig::new("sqlite://x.db"));
        assert_eq!(c.busy_timeout(), Duration::from_secs(30));
        Ok(())
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn nonsense_settings_are_refused_with_the_reason() {
        let err = |c: SqliteConfig| c.validate().map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(err(SqliteConfig::new("")).contains("url is empty"));
        assert!(err(SqliteConfig::new("sqlite::memory:")).contains("in-memory"));
        assert!(err(SqliteConfig { max_connections: 0, ..SqliteConfig::default() }).contains("max_connections"));
        assert!(SqliteConfig::default().validate().is_ok());
    }

    #[test]
    fn postgres_settings_default_and_refuse_nonsense() -> Result<(), serde_json::Error> {
        let c: PostgresConfig = serde_json::from_str(r#"{"url": "postgres://h/db", "schema": "ordering"}"#)?;
        assert_eq!(c, PostgresConfig::new("postgres://h/db").with_schema("ordering"));
        assert!(c.validate().is_ok());
        let err = |c: PostgresConfig| c.validate().map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(err(PostgresConfig::new("sqlite://x.db")).contains("not a postgres"));
        assert!(err(PostgresConfig::default().with_schema("Bad-Name")).contains("schema"));
        assert!(err(PostgresConfig::default().with_schema("1x")).contains("schema"));
        assert!(err(PostgresConfig::default().with_schema("")).contains("schema"));
        assert!(err(PostgresConfig { max_connections: 0, ..PostgresConfig::default() }).contains("max_connections"));
        let named = |name: &str| PostgresConfig { application_name: Some(name.into()), ..PostgresConfig::default() };
        assert!(named("mallbots:ordering").validate().is_ok());
        assert!(err(named(&"x".repeat(64))).contains("application_name"));
        assert!(err(named("a\0b")).contains("application_name"));
        Ok(())
    }
}
