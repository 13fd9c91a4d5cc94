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
//! * Where a [`Query`] runs ([`IntoConn`]): pass the Herald transaction itself — the
//!   `cx.tx()?` of a router handler, the `&mut *tx` of a projection, a
//!   `&mut Box<dyn Transaction>` — and the statement joins its unit of work; pass the database
//!   (`&db`) for work outside one. No downcast: this is the one way in, on either dialect, and
//!   `?` turns the [`SqlError`] into a `HandlerError` or `ProjectionError` (transient or
//!   permanent, [`SqlError::is_transient`]). ([`Conn`] is what they become; `&mut Conn` runs
//!   several statements on one.)
//! * [`query`]: the statement, written with `?` placeholders (renumbered to `$1, $2…` for
//!   PostgreSQL; `?` inside quotes is left alone), with [`Value`]s bound in order, and rows
//!   decoded into any [`FromRow`] type: tuples of `String`, `i64`, `i32`, `f64`, `bool` and
//!   `Option`s of those, or a struct that reads its fields by name ([`Row::get`]).
//! * [`migrate`]: versioned migrations for the application's tables, with a text per dialect
//!   where they differ, recorded in `herald_app_migrations`.
//!
//! The SQL itself must be portable: `INSERT … ON CONFLICT (…) DO UPDATE SET x = excluded.x`,
//! `BIGINT` columns for `i64` (PostgreSQL will not decode an `INTEGER` into `i64`), `BOOLEAN`
//! for `bool`, `CAST(SUM(…) AS BIGINT)` (PostgreSQL sums to `NUMERIC`). Where a dialect needs
//! its own text, branch on [`Conn::dialect`] / [`AnyDatabase::dialect`].
//!
//! ```
//! # #[cfg(feature = "sqlite")] // (the example opens a SQLite file)
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald::router::{HandlerContext, HandlerError};
//! use herald_sql::any::{AnyDatabase, Migration, migrate, query};
//!
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}", dir.path().join("shop.db").display());
//! let db = AnyDatabase::open(&url).await?; // or "postgres://…"
//! migrate(&db, "shop", &[Migration::portable(1, "items", "CREATE TABLE items (id TEXT PRIMARY KEY, price BIGINT NOT NULL)")])
//!     .await?;
//!
//! // In a router handler, writes join the handler's unit of work; `?` classifies the error.
//! async fn price_item(cx: &mut HandlerContext) -> Result<(), HandlerError> {
//!     query("INSERT INTO items (id, price) VALUES (?, ?)").bind("b").bind(90_i64).execute(cx.tx()?).await?;
//!     Ok(())
//! }
//!
//! // The same call on a transaction of your own…
//! let mut tx = db.store().begin().await?;
//! query("INSERT INTO items (id, price) VALUES (?, ?)").bind("a").bind(250_i64).execute(&mut tx).await?;
//! tx.commit().await?;
//!
//! // …and reads on the pool.
//! let price: Option<(i64,)> = query("SELECT price FROM items WHERE id = ?").bind("a").fetch_optional(&db).await?;
//! assert_eq!(price, Some((250,)));
//! # let _ = price_item;
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))] fn main() {}
//! ```
//!
//! In a projection (`async fn handle(&self, tx: &mut dyn Transaction, ..) -> Result<(),
//! ProjectionError>`) it is `query(..).execute(&mut *tx).await?`.
//!
//! On SQLite a unit of work takes the write lock at its first statement and keeps it until it
//! ends; from inside one, run statements through it, not through the pool: a write on the
//! pool from the task that holds the lock fails at once with [`SqlError::WriteLockHeld`]
//! (reads on the pool are fine, but do not see the transaction's uncommitted changes).

use std::fmt;
use std::sync::Arc;

use herald::Transaction;
use herald::pubsub::Broker;
use herald::{Store, StoreError};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, AssertSqlSafe, Column as _, PgConnection, PgPool, Row as _, TypeInfo as _};

use crate::{PostgresConfig, PostgresDatabase, PostgresTransaction, SqlError};
#[cfg(feature = "sqlite")]
use crate::{SqliteConfig, SqliteDatabase, SqliteTransaction};

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
    /// A SQLite file.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteDatabase),
    /// A PostgreSQL schema.
    Postgres(PostgresDatabase),
}

impl AnyDatabase {
    /// Opens (and migrates) the database at `url`: `postgres://…` / `postgresql://…` is
    /// PostgreSQL in the default schema (see [`PostgresConfig`]); anything else is SQLite
    /// (`sqlite://path` or a plain path; [`SqlError::Config`] without the `sqlite` feature).
    /// For other settings open the dialect's config and convert with `into()`.
    pub async fn open(url: &str) -> Result<Self, SqlError> {
        match Self::dialect_of(url) {
            Dialect::Postgres => Ok(PostgresConfig::new(url).open().await?.into()),
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => Ok(SqliteConfig::new(url).open().await?.into()),
            #[cfg(not(feature = "sqlite"))]
            Dialect::Sqlite => Err(SqlError::Config(format!(
                "`{url}` is a SQLite database, and herald-sql was built without its `sqlite` feature"
            ))),
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
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Herald's store on this database.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(db) => Arc::new(db.store()),
            Self::Postgres(db) => Arc::new(db.store()),
        }
    }

    /// Herald's SQL broker on this database (the same tables whichever process opens them).
    pub fn broker(&self) -> Arc<dyn Broker> {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(db) => Arc::new(db.broker()),
            Self::Postgres(db) => Arc::new(db.broker()),
        }
    }

    /// The dead-letter API on this database (its store is also the archive, so archiving and
    /// replays commit with the rest of a unit of work).
    pub fn dead_letters(&self) -> herald::dead_letters::DeadLetters {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(db) => herald::dead_letters::DeadLetters::on(Arc::new(db.store())),
            Self::Postgres(db) => herald::dead_letters::DeadLetters::on(Arc::new(db.store())),
        }
    }

    /// Checks that the database answers (for readiness probes).
    pub async fn ping(&self) -> Result<(), SqlError> {
        query("SELECT 1").fetch_one::<(i64,)>(self).await.map(drop)
    }

    /// Closes the pool (waits for checked-out connections to come back).
    pub async fn close(&self) {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(db) => db.close().await,
            Self::Postgres(db) => db.close().await,
        }
    }
}

#[cfg(feature = "sqlite")]
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

/// Where a [`Query`] runs: a Herald transaction's connection or the database. Usually made for
/// you from what [`IntoConn`] accepts.
#[derive(Debug)]
pub enum Conn<'a> {
    /// A [`SqliteTransaction`] (its statements run on its connection).
    #[cfg(feature = "sqlite")]
    Sqlite(&'a mut SqliteTransaction),
    /// A SQLite database (each statement on a reader connection; no transaction).
    #[cfg(feature = "sqlite")]
    SqliteDatabase(&'a SqliteDatabase),
    /// The connection of a [`PostgresTransaction`].
    Postgres(&'a mut PgConnection),
    /// A PostgreSQL pool.
    PostgresPool(&'a PgPool),
}

impl<'a> Conn<'a> {
    /// The connection of a Herald transaction from this crate's stores, so the application's
    /// statements commit (or roll back) with the events, outbox rows and inbox record.
    ///
    /// Passing the transaction to a query does this for you (`query(..).execute(cx.tx()?)`,
    /// see [`IntoConn`]); `Conn::of` is for running several statements on one `Conn`.
    ///
    /// # Errors
    /// [`SqlError::Config`] if the transaction comes from another store (the in-memory one…).
    pub fn of(tx: &'a mut dyn Transaction) -> Result<Self, SqlError> {
        #[cfg(feature = "sqlite")]
        if tx.as_any_mut().is::<SqliteTransaction>() {
            return match tx.as_any_mut().downcast_mut::<SqliteTransaction>() {
                Some(tx) => Ok(Self::Sqlite(tx)),
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
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) | Self::SqliteDatabase(_) => Dialect::Sqlite,
            Self::Postgres(_) | Self::PostgresPool(_) => Dialect::Postgres,
        }
    }
}

fn not_sql() -> SqlError {
    SqlError::Config("the transaction is not a herald-sql transaction (SQLite or PostgreSQL)".into())
}

/// Anything a [`Query`] runs on: a Herald transaction as a handler or projection is given it
/// (`&mut dyn Transaction`, `&mut Box<dyn Transaction>`: its connection, inside the unit of
/// work), a database ([`&AnyDatabase`](AnyDatabase), `&SqliteDatabase`, `&PostgresDatabase`:
/// outside any unit of work), or a [`Conn`] (`&mut Conn` reborrows it for several statements).
///
/// It is what makes one call work everywhere:
///
/// ```ignore
/// query("UPDATE …").execute(cx.tx()?).await?;   // in a router handler
/// query("UPDATE …").execute(&mut *tx).await?;   // in a projection (`tx: &mut dyn Transaction`)
/// query("SELECT …").fetch_all(&db).await?;      // a read on the pool
/// ```
///
/// and `?` turns the [`SqlError`] into the caller's `HandlerError` or `ProjectionError`,
/// transient or permanent by [`SqlError::is_transient`].
pub trait IntoConn<'c> {
    /// The connection.
    ///
    /// # Errors
    /// [`SqlError::Config`] for a transaction that is not a herald-sql one (the in-memory
    /// store's…).
    fn into_conn(self) -> Result<Conn<'c>, SqlError>;
}

impl<'c> IntoConn<'c> for Conn<'c> {
    fn into_conn(self) -> Result<Conn<'c>, SqlError> {
        Ok(self)
    }
}

impl<'c> IntoConn<'c> for &'c mut Conn<'_> {
    fn into_conn(self) -> Result<Conn<'c>, SqlError> {
        Ok(self.into())
    }
}

/// (Generic over the object's lifetime, so `&mut *tx` reborrows only for the statement.)
impl<'c, 't: 'c> IntoConn<'c> for &'c mut (dyn Transaction + 't) {
    fn into_conn(self) -> Result<Conn<'c>, SqlError> {
        Conn::of(self)
    }
}

impl<'c> IntoConn<'c> for &'c mut Box<dyn Transaction> {
    fn into_conn(self) -> Result<Conn<'c>, SqlError> {
        Conn::of(&mut **self)
    }
}

impl<'c> IntoConn<'c> for &'c AnyDatabase {
    fn into_conn(self) -> Result<Conn<'c>, SqlError> {
        Ok(self.into())
    }
}

#[cfg(feature = "sqlite")]
impl<'c> IntoConn<'c> for &'c SqliteDatabase {
    fn into_conn(self) -> Result<Conn<'c>, SqlError> {
        Ok(self.into())
    }
}

#[cfg(feature = "sqlite")]
impl<'c> IntoConn<'c> for &'c mut SqliteTransaction {
    fn into_conn(self) -> Result<Conn<'c>, SqlError> {
        Ok(self.into())
    }
}

impl<'c> IntoConn<'c> for &'c PostgresDatabase {
    fn into_conn(self) -> Result<Conn<'c>, SqlError> {
        Ok(self.into())
    }
}

impl<'c> IntoConn<'c> for &'c mut PgConnection {
    fn into_conn(self) -> Result<Conn<'c>, SqlError> {
        Ok(self.into())
    }
}

/// Reborrows, so one `Conn` runs several statements: `query(…).execute(&mut conn)`.
impl<'b> From<&'b mut Conn<'_>> for Conn<'b> {
    fn from(conn: &'b mut Conn<'_>) -> Self {
        match conn {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(c) => Conn::Sqlite(c),
            #[cfg(feature = "sqlite")]
            Conn::SqliteDatabase(d) => Conn::SqliteDatabase(d),
            Conn::Postgres(c) => Conn::Postgres(c),
            Conn::PostgresPool(p) => Conn::PostgresPool(p),
        }
    }
}

impl<'a> From<&'a AnyDatabase> for Conn<'a> {
    fn from(db: &'a AnyDatabase) -> Self {
        match db {
            #[cfg(feature = "sqlite")]
            AnyDatabase::Sqlite(db) => Self::SqliteDatabase(db),
            AnyDatabase::Postgres(db) => Self::PostgresPool(db.pool()),
        }
    }
}

#[cfg(feature = "sqlite")]
impl<'a> From<&'a SqliteDatabase> for Conn<'a> {
    fn from(db: &'a SqliteDatabase) -> Self {
        Self::SqliteDatabase(db)
    }
}

#[cfg(feature = "sqlite")]
impl<'a> From<&'a mut SqliteTransaction> for Conn<'a> {
    fn from(tx: &'a mut SqliteTransaction) -> Self {
        Self::Sqlite(tx)
    }
}

impl<'a> From<&'a mut PgConnection> for Conn<'a> {
    fn from(conn: &'a mut PgConnection) -> Self {
        Self::Postgres(conn)
    }
}

impl<'a> From<&'a PostgresDatabase> for Conn<'a> {
    fn from(db: &'a PostgresDatabase) -> Self {
        Self::PostgresPool(db.pool())
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

impl Value {
    /// Whether the value is SQL `NULL`.
    pub fn is_null(&self) -> bool {
        match self {
            Self::Text(v) => v.is_none(),
            Self::Int(v) => v.is_none(),
            Self::Float(v) => v.is_none(),
            Self::Bool(v) => v.is_none(),
        }
    }
}

#[cfg(feature = "sqlite")]
impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Text(v) => v.to_sql(),
            Self::Int(v) => v.to_sql(),
            Self::Float(v) => v.to_sql(),
            Self::Bool(v) => v.to_sql(),
        }
    }
}

/// A row of a query's result: its values by column name or position.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// The value of column `name`, decoded.
    ///
    /// # Errors
    /// [`SqlError::Decode`] if there is no such column or its value is not a `T`.
    pub fn get<T: FromValue>(&self, name: &str) -> Result<T, SqlError> {
        let i =
            self.columns.iter().position(|c| c == name).ok_or_else(|| {
                SqlError::Decode(format!("no column `{name}` (columns: {})", self.columns.join(", ")))
            })?;
        T::from_value(&self.values[i]).map_err(|e| SqlError::Decode(format!("column `{name}`: {e}")))
    }

    /// The value of the `i`-th column (from 0), decoded.
    ///
    /// # Errors
    /// [`SqlError::Decode`] if there is no such column or its value is not a `T`.
    pub fn get_at<T: FromValue>(&self, i: usize) -> Result<T, SqlError> {
        let value = self.values.get(i).ok_or_else(|| SqlError::Decode(format!("no column {i}")))?;
        T::from_value(value).map_err(|e| SqlError::Decode(format!("column {i}: {e}")))
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A Rust value a column decodes into, on either dialect.
pub trait FromValue: Sized {
    /// The value, or why it is not one of these.
    ///
    /// # Errors
    /// A description of the mismatch.
    fn from_value(value: &Value) -> Result<Self, String>;
}

fn mismatch(want: &str, got: &Value) -> String {
    format!("expected {want}, found {got:?}")
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(Some(s)) => Ok(s.clone()),
            other => Err(mismatch("text", other)),
        }
    }
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Int(Some(n)) => Ok(*n),
            other => Err(mismatch("an integer", other)),
        }
    }
}

impl FromValue for i32 {
    fn from_value(value: &Value) -> Result<Self, String> {
        let n = i64::from_value(value)?;
        i32::try_from(n).map_err(|_| format!("{n} does not fit an i32"))
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Float(Some(x)) => Ok(*x),
            #[allow(clippy::cast_precision_loss)] // SQLite keeps whole REALs as integers
            Value::Int(Some(n)) => Ok(*n as f64),
            other => Err(mismatch("a number", other)),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bool(Some(b)) => Ok(*b),
            // SQLite keeps booleans as 0/1.
            Value::Int(Some(n @ (0 | 1))) => Ok(*n == 1),
            other => Err(mismatch("a boolean", other)),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        if value.is_null() { Ok(None) } else { T::from_value(value).map(Some) }
    }
}

/// A type a [`Row`] decodes into: tuples of [`FromValue`]s (by position), or a struct of the
/// application's that reads its fields by name:
///
/// ```
/// use herald_sql::any::{FromRow, Row};
/// use herald_sql::SqlError;
///
/// struct Store { id: String, name: String, participating: bool }
///
/// impl FromRow for Store {
///     fn from_row(row: &Row) -> Result<Self, SqlError> {
///         Ok(Self { id: row.get("id")?, name: row.get("name")?, participating: row.get("participating")? })
///     }
/// }
/// ```
pub trait FromRow: Sized + Send {
    /// Decodes one row.
    ///
    /// # Errors
    /// [`SqlError::Decode`] when the row does not have the expected shape.
    fn from_row(row: &Row) -> Result<Self, SqlError>;
}

impl FromRow for Row {
    fn from_row(row: &Row) -> Result<Self, SqlError> {
        Ok(row.clone())
    }
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: FromValue + Send),+> FromRow for ($($t,)+) {
            fn from_row(row: &Row) -> Result<Self, SqlError> {
                Ok(($(row.get_at::<$t>($i)?,)+))
            }
        }
    };
}

tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// The rows of a SQLite statement, as [`Row`]s.
#[cfg(feature = "sqlite")]
fn sqlite_rows(conn: &rusqlite::Connection, sql: &str, values: &[Value]) -> Result<Vec<Row>, SqlError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let columns: Arc<[String]> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            use rusqlite::types::ValueRef;
            values.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Text(None),
                ValueRef::Integer(n) => Value::Int(Some(n)),
                ValueRef::Real(x) => Value::Float(Some(x)),
                ValueRef::Text(t) => Value::Text(Some(String::from_utf8_lossy(t).into_owned())),
                ValueRef::Blob(_) => {
                    return Err(SqlError::Decode(format!("column `{}` is a BLOB; select it as text", columns[i])));
                }
            });
        }
        out.push(Row { columns: columns.clone(), values });
    }
    Ok(out)
}

/// A PostgreSQL row as a [`Row`].
fn pg_row(row: &PgRow, columns: &Arc<[String]>) -> Result<Row, SqlError> {
    let mut values = Vec::with_capacity(columns.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_info().name();
        values.push(match ty {
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => Value::Text(row.try_get(i)?),
            "INT8" => Value::Int(row.try_get(i)?),
            "INT4" => Value::Int(row.try_get::<Option<i32>, _>(i)?.map(i64::from)),
            "INT2" => Value::Int(row.try_get::<Option<i16>, _>(i)?.map(i64::from)),
            "FLOAT8" => Value::Float(row.try_get(i)?),
            "FLOAT4" => Value::Float(row.try_get::<Option<f32>, _>(i)?.map(f64::from)),
            "BOOL" => Value::Bool(row.try_get(i)?),
            other => {
                return Err(SqlError::Decode(format!(
                    "column `{}` is {other}; cast it to TEXT, BIGINT, DOUBLE PRECISION or BOOLEAN",
                    column.name()
                )));
            }
        });
    }
    Ok(Row { columns: columns.clone(), values })
}

fn pg_rows(rows: &[PgRow]) -> Result<Vec<Row>, SqlError> {
    let Some(first) = rows.first() else { return Ok(Vec::new()) };
    let columns: Arc<[String]> = first.columns().iter().map(|c| c.name().to_owned()).collect();
    rows.iter().map(|r| pg_row(r, &columns)).collect()
}

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
    ///
    /// # Errors
    /// What the database said (see [`SqlError::is_unique_violation`]).
    pub async fn execute<'c>(self, conn: impl IntoConn<'c>) -> Result<u64, SqlError> {
        let conn = conn.into_conn()?;
        let Query { sql, values } = self;
        #[cfg(feature = "sqlite")]
        let sqlite = |c: &rusqlite::Connection| -> Result<u64, SqlError> {
            let n = c.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(&values))?;
            Ok(n as u64)
        };
        match conn {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(tx) => sqlite(tx.connection().await?),
            #[cfg(feature = "sqlite")]
            Conn::SqliteDatabase(db) => db.statement(&sql, sqlite).await,
            Conn::Postgres(c) => Ok(pg_query(&sql, values)?.execute(c).await?.rows_affected()),
            Conn::PostgresPool(p) => Ok(pg_query(&sql, values)?.execute(p).await?.rows_affected()),
        }
    }

    /// Every row.
    ///
    /// # Errors
    /// What the database said, or [`SqlError::Decode`] for a row that is not a `T`.
    pub async fn fetch_all<'c, T: FromRow>(self, conn: impl IntoConn<'c>) -> Result<Vec<T>, SqlError> {
        let conn = conn.into_conn()?;
        let Query { sql, values } = self;
        let rows = match conn {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(tx) => sqlite_rows(tx.connection().await?, &sql, &values)?,
            #[cfg(feature = "sqlite")]
            Conn::SqliteDatabase(db) => db.statement(&sql, |c| sqlite_rows(c, &sql, &values)).await?,
            Conn::Postgres(c) => pg_rows(&pg_query(&sql, values)?.fetch_all(c).await?)?,
            Conn::PostgresPool(p) => pg_rows(&pg_query(&sql, values)?.fetch_all(p).await?)?,
        };
        rows.iter().map(T::from_row).collect()
    }

    /// The first row, if any.
    ///
    /// # Errors
    /// As [`fetch_all`](Self::fetch_all).
    pub async fn fetch_optional<'c, T: FromRow>(self, conn: impl IntoConn<'c>) -> Result<Option<T>, SqlError> {
        Ok(self.fetch_all(conn).await?.into_iter().next())
    }

    /// The first row.
    ///
    /// # Errors
    /// [`SqlError::RowNotFound`] if there is none; else as [`fetch_all`](Self::fetch_all).
    pub async fn fetch_one<'c, T: FromRow>(self, conn: impl IntoConn<'c>) -> Result<T, SqlError> {
        self.fetch_optional(conn).await?.ok_or(SqlError::RowNotFound)
    }
}

/// The statement for PostgreSQL: `$n` placeholders, the values as its arguments.
fn pg_query(
    sql: &str,
    values: Vec<Value>,
) -> Result<sqlx::query::Query<'static, sqlx::Postgres, PgArguments>, SqlError> {
    let mut args = PgArguments::default();
    for value in values {
        match value {
            Value::Text(v) => args.add(v),
            Value::Int(v) => args.add(v),
            Value::Float(v) => args.add(v),
            Value::Bool(v) => args.add(v),
        }
        .map_err(|e| SqlError::Database(sqlx::Error::Encode(e)))?;
    }
    Ok(sqlx::query_with(AssertSqlSafe(numbered(sql)), args))
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
async fn run_script(conn: &mut Conn<'_>, text: &'static str) -> Result<(), SqlError> {
    let script = sqlx::raw_sql(AssertSqlSafe(text));
    match conn {
        #[cfg(feature = "sqlite")]
        Conn::Sqlite(tx) => Ok(tx.connection().await?.execute_batch(text)?),
        #[cfg(feature = "sqlite")]
        Conn::SqliteDatabase(db) => db.script(text).await,
        Conn::Postgres(c) => Ok(script.execute(&mut **c).await.map(drop)?),
        Conn::PostgresPool(p) => Ok(script.execute(*p).await.map(drop)?),
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
    source: SqlError,
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
