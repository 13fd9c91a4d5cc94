//! The application's own tables (each module declares its own, see
//! [`Module::migrations`](crate::module::Module)), beside Herald's in the same database, and
//! the bridge from a Herald [`Transaction`] to its connection so that they change in the
//! same unit of work as events, outbox rows and inbox records.

use herald::Transaction;
use herald_sql::AnyDatabase;
use herald_sql::any::{self, Conn, Migration};

use crate::error::{AppError, AppResult};
use crate::module::Module;

/// The table every module with creating endpoints needs: the first response to each
/// `Idempotency-Key` and route. In every module's database (so in each PostgreSQL schema; once
/// in the shared SQLite file), recorded as the app `mallbots-http`.
const HTTP_MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "http_idempotency",
    "CREATE TABLE IF NOT EXISTS http_idempotency (
        key TEXT NOT NULL, route TEXT NOT NULL, fingerprint TEXT NOT NULL,
        status BIGINT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (key, route))",
)];

/// Creates or updates `module`'s tables (and the shared HTTP table) in `db`. Tables are
/// prefixed by their module; `IF NOT EXISTS` because databases made before each module
/// recorded its own migrations (as the app `mallbots`) already have them.
pub async fn migrate(db: &AnyDatabase, module: &Module) -> AppResult<()> {
    for (app, migrations) in
        [("mallbots-http".to_owned(), HTTP_MIGRATIONS), (format!("mallbots-{}", module.name), module.migrations)]
    {
        if migrations.is_empty() {
            continue;
        }
        let applied = any::migrate(db, &app, migrations).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, app, "tables migrated");
        }
    }
    Ok(())
}

/// The connection of a Herald transaction, for the application's own tables: statements on it
/// commit or roll back with the transaction's events, outbox rows and inbox record.
pub fn conn(tx: &mut dyn Transaction) -> AppResult<Conn<'_>> {
    Conn::of(tx).map_err(AppError::internal)
}

/// A new id for something created (time-ordered, so listings by id follow creation).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
