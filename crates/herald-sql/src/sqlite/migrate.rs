//! Herald's SQLite schema, brought up to date when a database is opened.
//!
//! The scripts are `migrations/sqlite/*.sql`, embedded at compile time and applied in version
//! order, each once, recorded in `herald_schema_migrations`. Files written by earlier versions of
//! Herald (which migrated through sqlx) have their applied versions in `_sqlx_migrations`;
//! those count as applied too.

use rusqlite::OptionalExtension;

use super::SqliteDatabase;
use crate::error::SqlError;
use crate::rows::now_millis;

/// One schema version: never edit or renumber an applied one.
struct Script {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

macro_rules! script {
    ($version:literal, $file:literal) => {
        Script {
            version: $version,
            description: $file,
            sql: include_str!(concat!("../../migrations/sqlite/", $file, ".sql")),
        }
    };
}

const SCRIPTS: &[Script] = &[
    script!(1, "0001_herald"),
    script!(2, "0002_outbox_lease"),
    script!(4, "0004_saga_deadlines"),
    script!(5, "0005_dead_letters"),
    script!(7, "0007_named_leases"),
    script!(8, "0008_scheduled_outbox"),
    script!(9, "0009_parked"),
];

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS herald_schema_migrations \
     (version INTEGER PRIMARY KEY NOT NULL, description TEXT NOT NULL, applied_at INTEGER NOT NULL)";

/// Applies the scripts not applied yet, all in one write transaction (which also keeps two
/// processes opening a new file at once from both migrating it).
pub(super) async fn run(db: &SqliteDatabase, url: &str) -> Result<(), SqlError> {
    let failed = |source| SqlError::Sqlite { url: url.to_owned(), source };
    let write = db.begin_write().await.map_err(|e| match e {
        SqlError::Statement(source) => failed(source),
        other => other,
    })?;
    let conn = write.conn();
    conn.execute_batch(CREATE_TABLE).map_err(failed)?;
    let mut applied: Vec<i64> = {
        let mut stmt = conn.prepare("SELECT version FROM herald_schema_migrations").map_err(failed)?;
        stmt.query_map([], |r| r.get(0)).map_err(failed)?.collect::<Result<_, _>>().map_err(failed)?
    };
    let legacy: Option<String> = conn
        .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(failed)?;
    if legacy.is_some() {
        let mut stmt = conn.prepare("SELECT version FROM _sqlx_migrations WHERE success").map_err(failed)?;
        let old: Vec<i64> =
            stmt.query_map([], |r| r.get(0)).map_err(failed)?.collect::<Result<_, _>>().map_err(failed)?;
        applied.extend(old);
    }
    for script in SCRIPTS.iter().filter(|s| !applied.contains(&s.version)) {
        conn.execute_batch(script.sql).map_err(|source| SqlError::SqliteMigrate {
            url: url.to_owned(),
            version: script.version,
            description: script.description,
            source,
        })?;
        conn.execute(
            "INSERT INTO herald_schema_migrations (version, description, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![script.version, script.description, now_millis()],
        )
        .map_err(failed)?;
        tracing::debug!(url, version = script.version, "applied SQLite migration");
    }
    write.commit().await.map_err(|e| match e {
        SqlError::Statement(source) => failed(source),
        other => other,
    })?;
    Ok(())
}
