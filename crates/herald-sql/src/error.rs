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
    /// Waited longer than the busy timeout for this process's turn to write (another process
    /// or a long unit of work held SQLite's write lock).
    #[error("timed out after {0:?} waiting for the write lock")]
    WriteLockTimeout(Duration),
    /// The task asking for SQLite's write lock already holds it in an open transaction, so it
    /// would wait for itself. Refused at once; a bug in the caller, not a passing condition.
    #[error(
        "this task already holds SQLite's write lock in an open transaction (a handler's unit of work?); \
         run the statement through that transaction — `query(..).execute(cx.tx()?)` — instead of the \
         database pool or a second transaction, or finish that transaction first; waiting would deadlock"
    )]
    WriteLockHeld,
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

impl SqlError {
    /// Whether trying again later may succeed: the database was busy or locked, a connection,
    /// the pool or the disk failed, PostgreSQL aborted a transaction for a serialization
    /// failure or a deadlock, a group commit failed, the database was closed (shutting down).
    /// Not transient: constraint violations, SQL that does not parse or names what is not
    /// there, rows that do not decode, configuration, corrupt data, and
    /// [`WriteLockHeld`](Self::WriteLockHeld) (the caller's bug).
    ///
    /// This is how the `?` conversions into [`HandlerError`](herald::router::HandlerError)
    /// and [`ProjectionError`](herald::projection::ProjectionError) classify.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) | Self::Open { source: e, .. } => sqlx_is_transient(e),
            #[cfg(feature = "sqlite")]
            Self::Statement(e) | Self::Sqlite { source: e, .. } => sqlite_is_transient(e),
            Self::GroupCommit(_) | Self::Closed | Self::WriteLockTimeout(_) => true,
            #[cfg(feature = "sqlite")]
            Self::SqliteMigrate { .. } => false,
            Self::Config(_)
            | Self::Migrate { .. }
            | Self::Corrupt { .. }
            | Self::OutOfRange { .. }
            | Self::RowNotFound
            | Self::Decode(_)
            | Self::WriteLockHeld => false,
        }
    }
}

/// Transient sqlx errors: I/O, TLS, the pool, and PostgreSQL's SQLSTATEs that mean "not now"
/// (class 08 connection, 40 transaction rollback — serialization failure, deadlock —, 53
/// insufficient resources, 57 operator intervention — shutdown, statement timeout —, 58
/// system error, 55P03 lock not available, 25P03 idle-in-transaction timeout).
fn sqlx_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|code| {
            let class = code.get(..2).unwrap_or_default();
            matches!(class, "08" | "40" | "53" | "57" | "58") || matches!(&*code, "55P03" | "25P03")
        }),
        _ => false,
    }
}

/// Transient SQLite errors: busy or locked, I/O, a full disk, out of memory, interrupted, a
/// schema changed under a prepared statement, a file that cannot be opened now.
#[cfg(feature = "sqlite")]
fn sqlite_is_transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::SystemIoFailure
                | C::DiskFull
                | C::OutOfMemory
                | C::OperationInterrupted
                | C::OperationAborted
                | C::SchemaChanged
                | C::CannotOpen
                | C::FileLockingProtocolFailed
        )
    )
}

/// `?` in a router handler: transient errors are retried with backoff, the others
/// dead-letter the message at once (see [`SqlError::is_transient`]).
impl From<SqlError> for herald::router::HandlerError {
    fn from(e: SqlError) -> Self {
        if e.is_transient() { Self::transient(e) } else { Self::permanent(e) }
    }
}

/// `?` in a projection: transient errors retry the batch, the others stop the runner at the
/// failing event (see [`SqlError::is_transient`]).
impl From<SqlError> for herald::projection::ProjectionError {
    fn from(e: SqlError) -> Self {
        if e.is_transient() { Self::transient(e) } else { Self::permanent(e) }
    }
}

#[cfg(test)]
mod tests {
    use herald::projection::ProjectionError;
    use herald::router::HandlerError;

    use super::*;

    fn handler(e: SqlError) -> HandlerError {
        // What `?` does in a handler.
        let run = || -> Result<(), HandlerError> { Err(e)? };
        run().expect_err("an error")
    }

    fn projection(e: SqlError) -> ProjectionError {
        let run = || -> Result<(), ProjectionError> { Err(e)? };
        run().expect_err("an error")
    }

    #[cfg(feature = "sqlite")]
    fn sqlite(code: std::ffi::c_int) -> SqlError {
        SqlError::Statement(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn transient_sql_errors_become_retryable_handler_and_projection_errors() {
        let transient = || {
            let mut v = vec![
                SqlError::WriteLockTimeout(Duration::from_secs(5)),
                SqlError::GroupCommit("disk I/O error".into()),
                SqlError::Closed,
                SqlError::Database(sqlx::Error::PoolTimedOut),
                SqlError::Database(sqlx::Error::Io(std::io::Error::other("reset"))),
            ];
            #[cfg(feature = "sqlite")]
            v.extend([
                sqlite(rusqlite::ffi::SQLITE_BUSY),
                sqlite(rusqlite::ffi::SQLITE_LOCKED),
                sqlite(rusqlite::ffi::SQLITE_IOERR),
            ]);
            v
        };
        for e in transient() {
            let shown = e.to_string();
            assert!(!handler(e).is_permanent(), "{shown} should be retried");
        }
        for e in transient() {
            let shown = e.to_string();
            assert!(projection(e).is_transient(), "{shown} should be retried");
        }
    }

    #[test]
    fn permanent_sql_errors_dead_letter_and_stop_projections() {
        let permanent = || {
            let mut v = vec![
                SqlError::WriteLockHeld,
                SqlError::Decode("expected text".into()),
                SqlError::RowNotFound,
                SqlError::Config("not a herald-sql transaction".into()),
                SqlError::Database(sqlx::Error::ColumnNotFound("x".into())),
            ];
            #[cfg(feature = "sqlite")]
            v.extend([
                sqlite(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE),
                sqlite(rusqlite::ffi::SQLITE_ERROR),
                SqlError::Statement(rusqlite::Error::InvalidColumnIndex(3)),
            ]);
            v
        };
        for e in permanent() {
            let shown = e.to_string();
            assert!(handler(e).is_permanent(), "{shown} should dead-letter");
        }
        for e in permanent() {
            let shown = e.to_string();
            assert!(!projection(e).is_transient(), "{shown} should stop the runner");
        }
    }
}
