//! The application's own SQL on either dialect: one query text, run on SQLite or PostgreSQL,
//! inside a Herald [`Transaction`] or on the pool.
//!
//! Herald's ports cover events, outbox, inbox and checkpoints; an application also has tables
//! of its own (read models, state-stored aggregates) that must change in the *same*
//! transaction. [`SqliteTransaction::connection`] and [`PostgresTransaction::connection`] give
//! that access per dialect; this module removes the choice from application code so one
//! binary runs on the embedded SQLite file or on PostgreSQL:
//!
//! * [`AnyDatabase`]: a SQLite or PostgreSQL database, opened from a URL; Herald's store and
//!   SQL broker on it.
//! * [`Conn`]: where a [`Query`] runs: the connection of a Herald transaction
//!   ([`Conn::of`]), or the pool ([`From<&AnyDatabase>`](Conn#impl-From<%26AnyDatabase>-for-Conn<'a>))
//!   for reads outside a unit of work.
//! * [`query`]: the statement, written with `?` placeholders (renumbered to `$1, $2…` for
//!   PostgreSQL; `?` inside quotes is left alone), with [`Value`]s bound in order, and rows
//!   decoded into any type that both drivers can decode ([`AnyRow`]: tuples of `String`,
//!   `i64`, `f64`, `bool`, `Option<…>`, or a `#[derive(sqlx::FromRow)]` struct of those).
//! * [`migrate`]: versioned migrations for the application's tables, with a text per dialect
//!   where they differ, recorded in `herald_app_migrations`.
//!
//! The SQL itself must be portable: `INSERT … ON CONFLICT (…) DO UPDATE SET x = excluded.x`,
//! `BIGINT` columns for `i64` (PostgreSQL will not decode an `INTEGER` into `i64`), `BOOLEAN`
//! for `bool`, `CAST(SUM(…) AS BIGINT)` (PostgreSQL sums to `NUMERIC`). Where a dialect needs
//! its own text, branch on [`Conn::dialect`] / [`AnyDatabase::dialect`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_sql::any::{AnyDatabase, Conn, Migration, migrate, query};
//!
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}", dir.path().join("shop.db").display());
//! let db = AnyDatabase::open(&url).await?; // or "postgres://…"
//! migrate(&db, "shop", &[Migration::portable(1, "items", "CREATE TABLE items (id TEXT PRIMARY KEY, price BIGINT NOT NULL)")])
//!     .await?;
//!
//! // Writes join Herald's unit of work…
//! let mut tx = db.store().begin().await?;
//! query("INSERT INTO items (id, price) VALUES (?, ?)").bind("a").bind(250_i64).execute(Conn::of(&mut *tx)?).await?;
//! tx.commit().await?;
//!
//! // …reads can use the pool.
//! let price: Option<(i64,)> = query("SELECT price FROM items WHERE id = ?").bind("a").fetch_optional(&db).await?;
//! assert_eq!(price, Some((250,)));
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use herald::Transaction;
use herald::pubsub::Broker;
use herald::{Store, StoreError};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, AssertSqlSafe, FromRow, PgConnection, PgPool, SqliteConnection, SqlitePool};

use crate::{
    PostgresConfig, PostgresDatabase, PostgresTransaction, SqlError, SqliteConfig, SqliteDatabase, SqliteTransaction,
};

/// Which SQL dialect a database speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (the embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        })
    }
}

/// A SQLite or PostgreSQL database: Herald's store and SQL broker, and the pool for the
/// application's own queries.
#[derive(Clone, Debug)]
pub enum AnyDatabase {
    /// A SQLite file (or in-memory database).
    Sqlite(SqliteDatabase),
    /// A PostgreSQL schema.
    Postgres(PostgresDatabase),
}

impl AnyDatabase {
    /// Opens (and migrates) the database at `url`: `postgres://…` / `postgresql://…` is
    /// PostgreSQL in the default schema (see [`PostgresConfig`]); anything else is SQLite
    /// (`sqlite://path` or a plain path). For other settings open the dialect's
    /// config and convert with `into()`.
    pub async fn open(url: &str) -> Result<Self, SqlError> {
        match Self::dialect_of(url) {
            Dialect::Postgres => Ok(PostgresConfig::new(url).open().await?.into()),
            Dialect::Sqlite => Ok(SqliteConfig::new(url).open().await?.into()),
        }
    }

    /// The dialect a URL names (PostgreSQL for `postgres:`/`postgresql:`, else SQLite).
    pub fn dialect_of(url: &str) -> Dialect {
        let url = url.trim_start();
        if url.starts_with("postgres:") || url.starts_with("postgresql:") { Dialect::Postgres } else { Dialect::Sqlite }
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite(_) => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Herald's store on this database.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(db) => Arc::new(db.store()),
            Self::Postgres(db) => Arc::new(db.store()),
        }
    }

    /// Herald's SQL broker on this database (the same tables whichever process opens them).
    pub fn broker(&self) -> Arc<dyn Broker> {
        match self {
            Self::Sqlite(db) => Arc::new(db.broker()),
            Self::Postgres(db) => Arc::new(db.broker()),
        }
    }

    /// The dead-letter API on this database (its store is also the archive, so archiving and
    /// replays commit with the rest of a unit of work).
    pub fn dead_letters(&self) -> herald::dead_letters::DeadLetters {
        match self {
            Self::Sqlite(db) => herald::dead_letters::DeadLetters::on(Arc::new(db.store())),
            Self::Postgres(db) => herald::dead_letters::DeadLetters::on(Arc::new(db.store())),
        }
    }

    /// Checks that the database answers (for readiness probes).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        query("SELECT 1").fetch_one::<(i32,)>(self).await.map(drop)
    }

    /// Closes the pool (waits for checked-out connections to come back).
    pub async fn close(&self) {
        match self {
            Self::Sqlite(db) => db.close().await,
            Self::Postgres(db) => db.close().await,
        }
    }
}

impl From<SqliteDatabase> for AnyDatabase {
    fn from(db: SqliteDatabase) -> Self {
        Self::Sqlite(db)
    }
}

impl From<PostgresDatabase> for AnyDatabase {
    fn from(db: PostgresDatabase) -> Self {
        Self::Postgres(db)
    }
}

/// Where a [`Query`] runs: a Herald transaction's connection or a pool.
#[derive(Debug)]
pub enum Conn<'a> {
    /// The connection of a [`SqliteTransaction`].
    Sqlite(&'a mut SqliteConnection),
    /// A SQLite pool (each statement on its own connection; no transaction).
    SqlitePool(&'a SqlitePool),
    /// The connection of a [`PostgresTransaction`].
    Postgres(&'a mut PgConnection),
    /// A PostgreSQL pool.
    PostgresPool(&'a PgPool),
}

impl<'a> Conn<'a> {
    /// The connection of a Herald transaction from this crate's stores, so the application's
    /// statements commit (or roll back) with the events, outbox rows and inbox record.
    ///
    /// # Errors
    /// [`SqlError::Config`] if the transaction comes from another store (the in-memory one…).
    pub fn of(tx: &'a mut dyn Transaction) -> Result<Self, SqlError> {
        if tx.as_any_mut().is::<SqliteTransaction>() {
            return match tx.as_any_mut().downcast_mut::<SqliteTransaction>() {
                Some(tx) => Ok(Self::Sqlite(tx.connection())),
                None => Err(not_sql()),
            };
        }
        tx.as_any_mut()
            .downcast_mut::<PostgresTransaction>()
            .map(|tx| Self::Postgres(tx.connection()))
            .ok_or_else(not_sql)
    }

    /// The dialect of this connection.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite(_) | Self::SqlitePool(_) => Dialect::Sqlite,
            Self::Postgres(_) | Self::PostgresPool(_) => Dialect::Postgres,
        }
    }
}

fn not_sql() -> SqlError {
    SqlError::Config("the transaction is not a herald-sql transaction (SQLite or PostgreSQL)".into())
}

/// Reborrows, so one `Conn` runs several statements: `query(…).execute(&mut conn)`.
impl<'b> From<&'b mut Conn<'_>> for Conn<'b> {
    fn from(conn: &'b mut Conn<'_>) -> Self {
        match conn {
            Conn::Sqlite(c) => Conn::Sqlite(c),
            Conn::SqlitePool(p) => Conn::SqlitePool(p),
            Conn::Postgres(c) => Conn::Postgres(c),
            Conn::PostgresPool(p) => Conn::PostgresPool(p),
        }
    }
}

impl<'a> From<&'a AnyDatabase> for Conn<'a> {
    fn from(db: &'a AnyDatabase) -> Self {
        match db {
            AnyDatabase::Sqlite(db) => Self::SqlitePool(db.pool()),
            AnyDatabase::Postgres(db) => Self::PostgresPool(db.pool()),
        }
    }
}

impl<'a> From<&'a mut SqliteConnection> for Conn<'a> {
    fn from(conn: &'a mut SqliteConnection) -> Self {
        Self::Sqlite(conn)
    }
}

impl<'a> From<&'a mut PgConnection> for Conn<'a> {
    fn from(conn: &'a mut PgConnection) -> Self {
        Self::Postgres(conn)
    }
}

/// A value bound to a `?`. Typed even when null, because PostgreSQL checks a parameter's type
/// against the column's.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text (`TEXT`).
    Text(Option<String>),
    /// A 64-bit integer (`BIGINT`; SQLite's `INTEGER`).
    Int(Option<i64>),
    /// A double (`DOUBLE PRECISION`; SQLite's `REAL`).
    Float(Option<f64>),
    /// A boolean (`BOOLEAN`; SQLite stores 0/1).
    Bool(Option<bool>),
}

macro_rules! value_from {
    ($variant:ident: $($t:ty => $conv:expr),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                #[allow(clippy::redundant_closure_call)]
                Self::$variant(Some(($conv)(v)))
            }
        }
        impl From<Option<$t>> for Value {
            fn from(v: Option<$t>) -> Self {
                #[allow(clippy::redundant_closure_call)]
                Self::$variant(v.map($conv))
            }
        }
    )*};
}

value_from!(Text: String => |v| v, &str => str::to_owned, &String => String::clone);
value_from!(Int: i64 => |v| v, &i64 => |v: &i64| *v, i32 => i64::from, u32 => i64::from);
value_from!(Float: f64 => |v| v);
value_from!(Bool: bool => |v| v, &bool => |v: &bool| *v);

impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        Self::Text(v.clone())
    }
}

/// A row type both drivers decode: tuples and `#[derive(sqlx::FromRow)]` structs of `String`,
/// `i64`, `f64`, `bool` and their `Option`s.
pub trait AnyRow: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

impl<T> AnyRow for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

/// A statement with `?` placeholders and its bound values. Build with [`query`], extend with
/// [`push`](Self::push) (dynamic filters), run with one of the `fetch_*`/`execute` methods.
#[derive(Clone, Debug)]
#[must_use = "a query does nothing until it is run"]
pub struct Query {
    sql: String,
    values: Vec<Value>,
}

/// A statement to run on either dialect; see the [module docs](self).
pub fn query(sql: impl Into<String>) -> Query {
    Query { sql: sql.into(), values: Vec::new() }
}

/// Runs `$body` with `$args` (the values as the dialect's arguments), `$sql` (the statement
/// in the dialect's placeholders) and `$e` (the executor) for whichever [`Conn`] it is.
macro_rules! dispatch {
    ($query:expr, $conn:expr, |$sql:ident, $args:ident, $e:ident| $body:expr) => {{
        let Query { sql, values } = $query;
        match $conn {
            Conn::Sqlite($e) => {
                let ($sql, $args) = (AssertSqlSafe(sql), arguments::<SqliteArguments>(values)?);
                $body
            }
            Conn::SqlitePool($e) => {
                let ($sql, $args) = (AssertSqlSafe(sql), arguments::<SqliteArguments>(values)?);
                $body
            }
            Conn::Postgres($e) => {
                let ($sql, $args) = (AssertSqlSafe(numbered(&sql)), arguments::<PgArguments>(values)?);
                $body
            }
            Conn::PostgresPool($e) => {
                let ($sql, $args) = (AssertSqlSafe(numbered(&sql)), arguments::<PgArguments>(values)?);
                $body
            }
        }
    }};
}

impl Query {
    /// Binds the next `?`.
    pub fn bind(mut self, value: impl Into<Value>) -> Self {
        self.values.push(value.into());
        self
    }

    /// Appends SQL text (with its own `?`s, bound next).
    pub fn push(mut self, sql: &str) -> Self {
        self.sql.push_str(sql);
        self
    }

    /// The statement as written (with `?`).
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Runs the statement; returns the number of rows it changed.
    pub async fn execute<'c>(self, conn: impl Into<Conn<'c>>) -> Result<u64, sqlx::Error> {
        dispatch!(self, conn.into(), |sql, args, e| {
            Ok(sqlx::query_with(sql, args).execute(e).await?.rows_affected())
        })
    }

    /// Every row.
    pub async fn fetch_all<'c, T: AnyRow>(self, conn: impl Into<Conn<'c>>) -> Result<Vec<T>, sqlx::Error> {
        dispatch!(self, conn.into(), |sql, args, e| sqlx::query_as_with(sql, args).fetch_all(e).await)
    }

    /// The first row, if any.
    pub async fn fetch_optional<'c, T: AnyRow>(self, conn: impl Into<Conn<'c>>) -> Result<Option<T>, sqlx::Error> {
        dispatch!(self, conn.into(), |sql, args, e| sqlx::query_as_with(sql, args).fetch_optional(e).await)
    }

    /// The first row; [`sqlx::Error::RowNotFound`] if there is none.
    pub async fn fetch_one<'c, T: AnyRow>(self, conn: impl Into<Conn<'c>>) -> Result<T, sqlx::Error> {
        dispatch!(self, conn.into(), |sql, args, e| sqlx::query_as_with(sql, args).fetch_one(e).await)
    }
}

/// The values as one dialect's arguments.
fn arguments<A>(values: Vec<Value>) -> Result<A, sqlx::Error>
where
    A: Arguments,
    for<'t> Option<String>: sqlx::Encode<'t, A::Database> + sqlx::Type<A::Database>,
    for<'t> Option<i64>: sqlx::Encode<'t, A::Database> + sqlx::Type<A::Database>,
    for<'t> Option<f64>: sqlx::Encode<'t, A::Database> + sqlx::Type<A::Database>,
    for<'t> Option<bool>: sqlx::Encode<'t, A::Database> + sqlx::Type<A::Database>,
{
    let mut args = A::default();
    for value in values {
        match value {
            Value::Text(v) => args.add(v),
            Value::Int(v) => args.add(v),
            Value::Float(v) => args.add(v),
            Value::Bool(v) => args.add(v),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}

/// `?` placeholders renumbered `$1, $2…` for PostgreSQL, skipping quoted text, quoted
/// identifiers and `--` comments.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '-') if chars.peek() == Some(&'-') => quote = Some('\n'),
            (None, '?') => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
                continue;
            }
            (None, _) => {}
        }
        out.push(c);
    }
    out
}

/// One version of the application's schema: the statements to run (several, separated by
/// `;`), with a text per dialect where they differ.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Applied in ascending order, once each; never renumber or edit an applied one.
    pub version: u32,
    /// What it does (kept in the migrations table).
    pub description: &'static str,
    /// The SQLite text.
    pub sqlite: &'static str,
    /// The PostgreSQL text.
    pub postgres: &'static str,
}

impl Migration {
    /// A migration with one text for both dialects.
    pub const fn portable(version: u32, description: &'static str, sql: &'static str) -> Self {
        Self { version, description, sqlite: sql, postgres: sql }
    }

    /// A migration with a text per dialect.
    pub const fn per_dialect(
        version: u32,
        description: &'static str,
        sqlite: &'static str,
        postgres: &'static str,
    ) -> Self {
        Self { version, description, sqlite, postgres }
    }
}

/// Brings `app`'s tables up to date: runs each migration not yet recorded for `app` in
/// `herald_app_migrations`, in version order, all in one transaction (so a failing migration
/// leaves none applied), serialised against other processes migrating at the same time (the
/// SQLite write lock; a PostgreSQL advisory lock). Returns the versions applied now.
///
/// # Errors
/// A failing statement (with the migration's version and description in the message), or a
/// database that cannot be reached.
pub async fn migrate(db: &AnyDatabase, app: &str, migrations: &[Migration]) -> Result<Vec<u32>, StoreError> {
    let mut sorted: Vec<&Migration> = migrations.iter().collect();
    sorted.sort_by_key(|m| m.version);
    let mut tx = db.store().begin().await?;
    let mut conn = Conn::of(&mut *tx).map_err(StoreError::backend)?;
    let dialect = conn.dialect();
    if dialect == Dialect::Postgres {
        // SQLite's write transaction already serialises migrating processes.
        query("SELECT pg_advisory_xact_lock(hashtext('herald_app_migrations'))")
            .execute(&mut conn)
            .await
            .map_err(StoreError::backend)?;
    }
    query(
        "CREATE TABLE IF NOT EXISTS herald_app_migrations (app TEXT NOT NULL, version BIGINT NOT NULL, \
         description TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (app, version))",
    )
    .execute(&mut conn)
    .await
    .map_err(StoreError::backend)?;
    let applied: Vec<(i64,)> = query("SELECT version FROM herald_app_migrations WHERE app = ?")
        .bind(app)
        .fetch_all(&mut conn)
        .await
        .map_err(StoreError::backend)?;
    let mut done = Vec::new();
    for m in sorted.into_iter().filter(|m| !applied.iter().any(|(v,)| *v == i64::from(m.version))) {
        let text = match dialect {
            Dialect::Sqlite => m.sqlite,
            Dialect::Postgres => m.postgres,
        };
        run_script(&mut conn, text).await.map_err(|e| {
            StoreError::backend(MigrationFailed {
                app: app.to_owned(),
                version: m.version,
                description: m.description,
                source: e,
            })
        })?;
        query("INSERT INTO herald_app_migrations (app, version, description, applied_at) VALUES (?, ?, ?, ?)")
            .bind(app)
            .bind(m.version)
            .bind(m.description)
            .bind(chrono::Utc::now().to_rfc3339())
            .execute(&mut conn)
            .await
            .map_err(StoreError::backend)?;
        done.push(m.version);
    }
    tx.commit().await?;
    Ok(done)
}

/// Runs several `;`-separated statements without parameters (a migration's text).
async fn run_script(conn: &mut Conn<'_>, text: &'static str) -> Result<(), sqlx::Error> {
    let script = sqlx::raw_sql(AssertSqlSafe(text));
    match conn {
        Conn::Sqlite(c) => script.execute(&mut **c).await.map(drop),
        Conn::SqlitePool(p) => script.execute(*p).await.map(drop),
        Conn::Postgres(c) => script.execute(&mut **c).await.map(drop),
        Conn::PostgresPool(p) => script.execute(*p).await.map(drop),
    }
}

/// A migration's statement failed.
#[derive(Debug, thiserror::Error)]
#[error("migration {version} ({description}) of `{app}` failed")]
struct MigrationFailed {
    app: String,
    version: u32,
    description: &'static str,
    #[source]
    source: sqlx::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes_and_comments() {
        assert_eq!(numbered("SELECT a FROM t WHERE a = ? AND b = ?"), "SELECT a FROM t WHERE a = $1 AND b = $2");
        assert_eq!(numbered("SELECT '?', \"?\" FROM t WHERE x = ?"), "SELECT '?', \"?\" FROM t WHERE x = $1");
        assert_eq!(numbered("SELECT 'it''s ?' WHERE a = ?"), "SELECT 'it''s ?' WHERE a = $1");
        assert_eq!(numbered("SELECT 1 -- why?\nWHERE a = ?"), "SELECT 1 -- why?\nWHERE a = $1");
    }

    #[test]
    fn urls_name_their_dialect() {
        assert_eq!(AnyDatabase::dialect_of("postgres://localhost/test"), Dialect::Postgres);
        assert_eq!(AnyDatabase::dialect_of("postgresql://localhost/test"), Dialect::Postgres);
        assert_eq!(AnyDatabase::dialect_of("sqlite://x.db"), Dialect::Sqlite);
        assert_eq!(AnyDatabase::dialect_of("x.db"), Dialect::Sqlite);
    }
}
