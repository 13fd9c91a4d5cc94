//! The application's own SQL through `herald_sql::any`, the same code on SQLite and on
//! PostgreSQL (a fresh schema; skipped loudly without a server, a failure with `CI` set):
//! migrations apply once and atomically, statements join Herald's transaction (rollback
//! undoes them with the events), typed nulls, booleans, doubles, and sums bind and decode alike.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[path = "any/changes.rs"]
mod changes;
#[path = "any/shredding.rs"]
mod shredding;

use herald::projection::ProjectionError;
use herald::router::HandlerError;
use herald::{ExpectedVersion, NewEvent, Store, Transaction};
use herald_sql::PostgresConfig;
#[cfg(feature = "sqlite")]
use herald_sql::SqliteConfig;
use herald_sql::any::{AnyDatabase, Conn, Dialect, Migration, migrate, query};

/// What a router handler writes: `cx.tx()?` is a `&mut dyn Transaction`, and `?` turns the
/// `SqlError` into a `HandlerError`.
async fn deposit_like_a_handler(tx: &mut dyn Transaction, id: &str, amount: i64) -> Result<(), HandlerError> {
    query("UPDATE accounts SET balance = balance + ? WHERE id = ?").bind(amount).bind(id).execute(&mut *tx).await?;
    let (balance,): (i64,) = query("SELECT balance FROM accounts WHERE id = ?").bind(id).fetch_one(tx).await?;
    if balance < 0 {
        return Err(HandlerError::permanent("overdrawn"));
    }
    Ok(())
}

/// What a projection writes: the same call on its `&mut dyn Transaction`, `?` into a
/// `ProjectionError`.
async fn count_like_a_projection(tx: &mut dyn Transaction) -> Result<i64, ProjectionError> {
    query("INSERT INTO rates (rate) VALUES (?)").bind(1.5).execute(&mut *tx).await?;
    let (n,): (i64,) = query("SELECT COUNT(*) FROM rates").fetch_one(&mut *tx).await?;
    Ok(n)
}

const SCHEMA: &[Migration] = &[
    Migration::portable(
        1,
        "accounts",
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, owner TEXT, balance BIGINT NOT NULL, open BOOLEAN NOT NULL);
         CREATE INDEX accounts_by_owner ON accounts (owner)",
    ),
    Migration::per_dialect(
        2,
        "rates",
        "CREATE TABLE rates (id INTEGER PRIMARY KEY AUTOINCREMENT, rate REAL NOT NULL)",
        "CREATE TABLE rates (id BIGSERIAL PRIMARY KEY, rate DOUBLE PRECISION NOT NULL)",
    ),
];

#[cfg(feature = "sqlite")]
async fn sqlite() -> (AnyDatabase, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    (SqliteConfig::new(url).open().await.unwrap().into(), dir)
}

async fn postgres() -> Option<AnyDatabase> {
    if !herald_conformance::support::server_available(("PostgreSQL", "127.0.0.1:5432")) {
        return None;
    }
    let url = std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = herald_conformance::support::unique("any").replace('-', "_");
    Some(PostgresConfig::new(url).with_schema(schema).open().await.unwrap().into())
}

async fn the_same_code_runs_on(db: AnyDatabase) {
    assert_eq!(migrate(&db, "bank", SCHEMA).await.unwrap(), vec![1, 2]);
    assert!(migrate(&db, "bank", SCHEMA).await.unwrap().is_empty(), "applied twice");

    // A failing migration leaves nothing behind, and says which one failed.
    let broken = [Migration::portable(3, "half", "CREATE TABLE half (id TEXT); CREATE TABLE nonsense (")];
    let err = migrate(&db, "bank", &broken).await.unwrap_err();
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        chain = format!("{chain}: {e}");
        source = e.source();
    }
    assert!(chain.contains("migration 3 (half) of `bank` failed"), "{chain}");
    let half: Vec<(i64,)> =
        query("SELECT COUNT(*) FROM herald_app_migrations WHERE version = 3").fetch_all(&db).await.unwrap();
    assert_eq!(half, vec![(0,)]);
    assert!(query("SELECT id FROM half").fetch_all::<(String,)>(&db).await.is_err(), "half a migration applied");

    // Writes commit with Herald's events…
    let store = db.store();
    let mut tx = store.begin().await.unwrap();
    tx.append("account-a", ExpectedVersion::NoStream, vec![NewEvent::new("Opened.v1", b"{}".to_vec())]).await.unwrap();
    let inserted = query("INSERT INTO accounts (id, owner, balance, open) VALUES (?, ?, ?, ?), (?, ?, ?, ?)")
        .bind("a")
        .bind("ann")
        .bind(100_i64)
        .bind(true)
        .bind("b")
        .bind(None::<String>)
        .bind(-5_i64)
        .bind(false)
        .execute(&mut tx) // the `Box<dyn Transaction>` itself
        .await
        .unwrap();
    assert_eq!(inserted, 2);
    query("INSERT INTO rates (rate) VALUES (?)").bind(0.25).execute(Conn::of(&mut *tx).unwrap()).await.unwrap();
    // The forms a handler and a projection use, in the same unit of work.
    deposit_like_a_handler(&mut *tx, "a", 50).await.unwrap();
    assert_eq!(count_like_a_projection(&mut *tx).await.unwrap(), 2);
    // A statement's error converts by its kind: a broken constraint will not pass on retry.
    let duplicate = async {
        query("INSERT INTO accounts (id, balance, open) VALUES ('a', 0, ?)").bind(true).execute(&mut *tx).await?;
        Ok::<_, HandlerError>(())
    };
    assert!(duplicate.await.unwrap_err().is_permanent(), "a unique violation is permanent");
    if db.dialect() == Dialect::Sqlite {
        // (On PostgreSQL the failed statement aborted the transaction; SQLite goes on.)
        query("UPDATE accounts SET balance = balance - 50 WHERE id = 'a'").execute(&mut *tx).await.unwrap();
        query("DELETE FROM rates WHERE rate = 1.5").execute(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
    } else {
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        tx.append("account-a", ExpectedVersion::NoStream, vec![NewEvent::new("Opened.v1", b"{}".to_vec())])
            .await
            .unwrap();
        query("INSERT INTO accounts (id, owner, balance, open) VALUES ('a', 'ann', 100, TRUE), ('b', NULL, -5, FALSE)")
            .execute(&mut *tx)
            .await
            .unwrap();
        query("INSERT INTO rates (rate) VALUES (?)").bind(0.25).execute(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    // …and roll back with them.
    let mut tx = store.begin().await.unwrap();
    tx.append("account-c", ExpectedVersion::NoStream, vec![NewEvent::new("Opened.v1", b"{}".to_vec())]).await.unwrap();
    query("INSERT INTO accounts (id, owner, balance, open) VALUES ('c', 'cy', 1, ?)")
        .bind(true)
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx); // rolls back
    assert_eq!(store.read_all(0, 10).await.unwrap().len(), 1);

    let rows: Vec<(String, Option<String>, i64, bool)> =
        query("SELECT id, owner, balance, open FROM accounts ORDER BY id").fetch_all(&db).await.unwrap();
    assert_eq!(rows, vec![("a".into(), Some("ann".into()), 100, true), ("b".into(), None, -5, false)]);
    let (total,): (i64,) = query("SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT) FROM accounts WHERE open = ?")
        .bind(true)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(total, 100);
    let owner: Option<(Option<String>,)> =
        query("SELECT owner FROM accounts WHERE id = ?").bind("b").fetch_optional(&db).await.unwrap();
    assert_eq!(owner, Some((None,)));
    let rate: (f64,) = query("SELECT rate FROM rates").fetch_one(&db).await.unwrap();
    assert!((rate.0 - 0.25).abs() < f64::EPSILON);
    // A `?` inside a literal is text, not a placeholder (on PostgreSQL too).
    let q: (String,) = query("SELECT 'why?' FROM accounts WHERE id = ?").bind("a").fetch_one(&db).await.unwrap();
    assert_eq!(q.0, "why?");
    // Dynamic filters.
    let mut q = query("SELECT id FROM accounts WHERE 1 = 1");
    q = q.push(" AND balance > ?").bind(0_i64).push(" AND owner = ?").bind("ann");
    assert_eq!(q.fetch_all::<(String,)>(&db).await.unwrap(), vec![("a".to_owned(),)]);
    db.ping().await.unwrap();
    db.close().await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn on_sqlite() {
    let (db, _dir) = sqlite().await;
    assert_eq!(db.dialect(), Dialect::Sqlite);
    the_same_code_runs_on(db).await;
}

#[tokio::test]
async fn on_postgres() {
    let Some(db) = postgres().await else { return };
    assert_eq!(db.dialect(), Dialect::Postgres);
    the_same_code_runs_on(db).await;
}

#[tokio::test]
async fn a_transaction_of_another_store_is_refused() {
    let store = herald::memory::MemoryStore::new();
    let mut tx = store.begin().await.unwrap();
    assert!(Conn::of(&mut *tx).is_err());
    // Through the one call too, and `?` makes it permanent: retrying cannot help.
    let err = deposit_like_a_handler(&mut *tx, "a", 1).await.unwrap_err();
    assert!(err.is_permanent() && err.to_string().contains("not a herald-sql transaction"), "{err}");
    let err = count_like_a_projection(&mut *tx).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
}
