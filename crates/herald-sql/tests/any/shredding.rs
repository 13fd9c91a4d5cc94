//! The crypto-shredding key store in the application's database: the `KeyStore` contract on
//! SQLite and PostgreSQL.

use std::sync::Arc;

use herald_sql::shredding::SqlKeyStore;

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_forgotten_subject_s_fields_read_as_forgotten_never_an_error_on_sqlite() {
    let (db, _dir) = crate::sqlite().await;
    let keys = Arc::new(SqlKeyStore::open(db.clone()).await.unwrap());
    SqlKeyStore::open(db).await.unwrap(); // opening again migrates nothing
    herald_conformance::shredding::a_forgotten_subject_s_fields_read_as_forgotten_never_an_error(keys).await;
}

#[tokio::test]
async fn a_forgotten_subject_s_fields_read_as_forgotten_never_an_error_on_postgres() {
    let Some(db) = crate::postgres().await else { return };
    let keys = Arc::new(SqlKeyStore::open(db).await.unwrap());
    herald_conformance::shredding::a_forgotten_subject_s_fields_read_as_forgotten_never_an_error(keys).await;
}
