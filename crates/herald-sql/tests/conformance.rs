//! The universal conformance suites against the SQLite store and the SQL broker.
//!
//! Each test gets its own database file in a temporary directory. The "other" subscriber opens
//! a second handle (its own connection pool) on the same file, as a second process would.

use std::sync::Arc;

use herald_conformance::{DeadLetterFixture, ParkingFixture, PubSubFixture, StoreFixture};
use herald_sql::SqliteDatabase;

async fn open(dir: &tempfile::TempDir) -> SqliteDatabase {
    let path = dir.path().join("herald.db");
    SqliteDatabase::open(path.to_str().expect("utf-8 temp path")).await.expect("open SQLite database")
}

async fn sql_broker() -> PubSubFixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open(&dir).await;
    let other = open(&dir).await;
    PubSubFixture::new(Arc::new(db.broker()), Arc::new(db.broker()), Arc::new(other.broker()), Box::new(dir))
        .with_store(Arc::new(db.store()))
}

async fn sqlite_store() -> StoreFixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open(&dir).await;
    let other = open(&dir).await;
    StoreFixture::new(Arc::new(db.store()), Box::new(dir)).with_other(Arc::new(other.store()))
}

herald_conformance::pubsub_suite!(sql_broker);
herald_conformance::store_suite!(sqlite_store);

herald_conformance::saga_suite!(sql_broker);

async fn sqlite_dead_letters() -> DeadLetterFixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open(&dir).await;
    DeadLetterFixture::on(Arc::new(db.store()), Box::new(dir))
}

herald_conformance::dead_letter_suite!(sqlite_dead_letters);

async fn sqlite_parking() -> ParkingFixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = open(&dir).await;
    ParkingFixture::on(Arc::new(db.store()), Box::new(dir))
}

herald_conformance::parking_suite!(sqlite_parking);
