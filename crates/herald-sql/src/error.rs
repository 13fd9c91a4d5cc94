//! The crate's own errors: opening and migrating a database, and the few things that can go
//! wrong between a row and a Herald type. The ports return herald's `StoreError` and
//! `PubSubError`; the errors below travel inside their `Backend` variant.

use std::time::Duration;

/// Errors from opening a database and from reading rows Herald did not write.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The configuration cannot work (empty URL, no connections…). Fix the configuration.
    #[error("invalid SQL configuration: {0}")]
    Config(String),
    /// The database could not be opened or configured.
    #[error("cannot open database `{url}`")]
    Open {
        /// The URL or path that was given.
        url: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The SQLite database could not be opened, configured or read at start-up.
    #[cfg(feature = "sqlite")]
    #[error("cannot open SQLite database `{url}`")]
    Sqlite {
        /// The URL or path that was given.
        url: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate database `{url}`")]
    Migrate {
        /// The URL or path that was given.
        url: String,
        /// What the migrator said.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// One of Herald's SQLite schema scripts failed.
    #[cfg(feature = "sqlite")]
    #[error("cannot migrate SQLite database `{url}`: script {version} ({description}) failed")]
    SqliteMigrate {
        /// The URL or path that was given.
        url: String,
        /// The script's version.
        version: i64,
        /// The script's name.
        description: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A row holds something Herald cannot have written (bad UUID, bad metadata JSON…).
    #[error("corrupt row in `{table}`: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A number does not fit the column or the Rust type (e.g. a position above `i64::MAX`).
    #[error("{what} = {value} is out of range")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value, as text.
        value: String,
    },
    /// A statement failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A SQLite statement failed.
    #[cfg(feature = "sqlite")]
    #[error("SQLite error")]
    Statement(#[from] rusqlite::Error),
    /// A query that must return a row returned none.
    #[error("no row returned")]
    RowNotFound,
    /// The group commit this unit of work was part of failed (its statements were rolled
    /// back with the group's).
    #[error("the group commit failed: {0}")]
    GroupCommit(String),
    /// The database was closed.
    #[error("the database is closed")]
    Closed,
    /// A row did not have the shape the caller asked for (an application query's
    /// [`FromRow`](crate::any::FromRow)).
    #[error("unexpected row: {0}")]
    Decode(String),
    /// Waited longer than the busy timeout for this process's turn to write; usually a
    /// transaction held open while starting another one on the same task.
    #[error("timed out after {0:?} waiting for the write lock")]
    WriteLockTimeout(Duration),
}

impl SqlError {
    /// Whether a statement broke a unique or primary-key constraint (another writer inserted
    /// the same key first), on either dialect.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Self::Database(e) => e.as_database_error().is_some_and(|d| d.is_unique_violation()),
            #[cfg(feature = "sqlite")]
            Self::Statement(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            _ => false,
        }
    }
}
