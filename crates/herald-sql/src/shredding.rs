//! Subjects' keys for crypto-shredding ([`herald::shredding`]) in the application's SQLite or
//! PostgreSQL database, one row per subject in `herald_subject_keys`. Forgetting a subject
//! deletes its row: the only copy of the key (back the table up separately from the events,
//! or not at all, if backups must forget too).

use std::fmt::Write as _;

use async_trait::async_trait;
use herald::shredding::{KeyStore, SubjectKey};
use herald::store::StoreError;

use crate::any::{AnyDatabase, Migration, migrate, query};

const MIGRATIONS: &[Migration] = &[Migration::portable(
    1,
    "subjects' keys",
    "CREATE TABLE herald_subject_keys (
         subject    TEXT   PRIMARY KEY,
         key_id     TEXT   NOT NULL,
         secret     TEXT   NOT NULL,
         created_at BIGINT NOT NULL
     )",
)];

/// Keys in `herald_subject_keys` (created by [`SqlKeyStore::open`]).
#[derive(Clone, Debug)]
pub struct SqlKeyStore {
    db: AnyDatabase,
}

impl SqlKeyStore {
    /// Opens the key store on `db`, creating its table if needed (its own migration history,
    /// `herald-subject-keys`, beside the application's).
    pub async fn open(db: AnyDatabase) -> Result<Self, StoreError> {
        migrate(&db, "herald-subject-keys", MIGRATIONS).await?;
        Ok(Self { db })
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn key_of(key_id: String, secret: &str) -> Result<SubjectKey, StoreError> {
    let mut bytes = [0u8; 32];
    let valid = secret.len() == 64
        && bytes.iter_mut().enumerate().all(|(i, b)| match u8::from_str_radix(&secret[2 * i..2 * i + 2], 16) {
            Ok(v) => {
                *b = v;
                true
            }
            Err(_) => false,
        });
    if !valid {
        return Err(StoreError::backend(std::io::Error::other(format!(
            "key {key_id} in herald_subject_keys is damaged"
        ))));
    }
    Ok(SubjectKey { id: key_id, secret: bytes })
}

#[async_trait]
impl KeyStore for SqlKeyStore {
    async fn key_for(&self, subject: &str) -> Result<SubjectKey, StoreError> {
        if let Some(key) = self.existing_key(subject).await? {
            return Ok(key);
        }
        // Concurrent first uses: one insert wins, everyone reads the winner's key.
        let fresh = SubjectKey::generate();
        query(
            "INSERT INTO herald_subject_keys (subject, key_id, secret, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subject)
        .bind(fresh.id.clone())
        .bind(to_hex(&fresh.secret))
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(&self.db)
        .await
        .map_err(StoreError::backend)?;
        self.existing_key(subject)
            .await?
            .ok_or_else(|| StoreError::backend(std::io::Error::other(format!("the key of {subject} vanished"))))
    }

    async fn existing_key(&self, subject: &str) -> Result<Option<SubjectKey>, StoreError> {
        let row: Option<(String, String)> = query("SELECT key_id, secret FROM herald_subject_keys WHERE subject = ?")
            .bind(subject)
            .fetch_optional(&self.db)
            .await
            .map_err(StoreError::backend)?;
        row.map(|(id, secret)| key_of(id, &secret)).transpose()
    }

    async fn forget(&self, subject: &str) -> Result<bool, StoreError> {
        let deleted = query("DELETE FROM herald_subject_keys WHERE subject = ?")
            .bind(subject)
            .execute(&self.db)
            .await
            .map_err(StoreError::backend)?;
        Ok(deleted > 0)
    }
}
