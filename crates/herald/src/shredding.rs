//! Crypto-shredding: personal data in immutable events that can still be erased.
//!
//! Events are never rewritten, so a customer's name in `CustomerRegistered` would stay in the
//! event store, in every broker's retained stream and in every replay forever. Instead, chosen
//! fields are *sealed*: encrypted with a key that belongs to one **subject** (a customer, a
//! user) and is kept in a [`KeyStore`]. Forgetting the subject deletes its key; from then on
//! every copy of every field sealed with it — in the store, on brokers, in backups of either —
//! is noise, and opening it yields [`Opened::Forgotten`] (rendered [`FORGOTTEN`]), **never an
//! error**, so projections, replays and read-model rebuilds run on and simply lose the data.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald::shredding::ShredError> {
//! use std::sync::Arc;
//! use herald::shredding::{MemoryKeyStore, Opened, Shredder};
//!
//! let shredder = Shredder::new(Arc::new(MemoryKeyStore::default()));
//! let name = shredder.seal("customer-7", "Ada Lovelace").await?; // goes into the event
//! assert_eq!(shredder.open(&name).await?, Opened::Plain("Ada Lovelace".into()));
//! shredder.forget("customer-7").await?;
//! assert_eq!(shredder.open(&name).await?, Opened::Forgotten);
//! assert_eq!(shredder.open(&name).await?.or_forgotten(), "[forgotten]");
//! # Ok(()) }
//! ```
//!
//! A [`Sealed`] value is a string (it travels in JSON payloads like any other field):
//! `herald:sealed:v1:<subject>:<key id>:<nonce + ciphertext>`, base64url. The cipher is
//! XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`): 24-byte random nonces, so no nonce
//! bookkeeping; the subject and key id are bound in as associated data, so a sealed value moved
//! to another subject does not open. A subject that registers again after being forgotten gets
//! a new key (a new key id): its old values stay forgotten, its new ones open.
//!
//! A string that is not a sealed value opens as itself ([`Opened::Plain`]): data written
//! before a field was sealed keeps reading.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// What a forgotten field reads as, once rendered ([`Opened::or_forgotten`]).
pub const FORGOTTEN: &str = "[forgotten]";

const PREFIX: &str = "herald:sealed:v1:";
const NONCE_LEN: usize = 24;

/// A subject's key: 32 random bytes and an id that changes when the key is recreated.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey {
    /// Names this key among the subject's keys over time (a new key after a forget).
    pub id: String,
    /// The XChaCha20-Poly1305 key.
    pub secret: [u8; 32],
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectKey").field("id", &self.id).finish_non_exhaustive() // never the secret
    }
}

impl SubjectKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let secret: [u8; 32] = chacha20poly1305::Key::generate().into();
        Self { id: uuid::Uuid::now_v7().simple().to_string(), secret }
    }
}

/// Where subjects' keys live. Contract (the conformance suite `herald_conformance::shredding`
/// checks it on every implementation):
///
/// * [`key_for`](Self::key_for) returns the subject's key, creating it on first use; concurrent
///   first uses agree on one key.
/// * [`existing_key`](Self::existing_key) returns it only if it exists (`None` for a subject
///   never seen or forgotten), and never creates one.
/// * [`forget`](Self::forget) deletes the key for good (`true` if there was one); the next
///   `key_for` creates a new key with another id.
#[async_trait]
pub trait KeyStore: Send + Sync + fmt::Debug + 'static {
    /// The subject's key, created on first use.
    async fn key_for(&self, subject: &str) -> Result<SubjectKey, StoreError>;
    /// The subject's current key, if it has one.
    async fn existing_key(&self, subject: &str) -> Result<Option<SubjectKey>, StoreError>;
    /// Deletes the subject's key; `true` if it had one.
    async fn forget(&self, subject: &str) -> Result<bool, StoreError>;
}

/// Keys in memory (tests, examples, embedded use without durability).
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    keys: Mutex<HashMap<String, SubjectKey>>,
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn key_for(&self, subject: &str) -> Result<SubjectKey, StoreError> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(keys.entry(subject.to_owned()).or_insert_with(SubjectKey::generate).clone())
    }
    async fn existing_key(&self, subject: &str) -> Result<Option<SubjectKey>, StoreError> {
        Ok(self.keys.lock().unwrap_or_else(PoisonError::into_inner).get(subject).cloned())
    }
    async fn forget(&self, subject: &str) -> Result<bool, StoreError> {
        Ok(self.keys.lock().unwrap_or_else(PoisonError::into_inner).remove(subject).is_some())
    }
}

/// A sealed field as it travels in a payload: a string (see the [module docs](self)).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// The encoded value.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a string read from a payload (sealed or not: a plain string opens as itself).
    pub fn from_stored(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The subject it was sealed for, if it is a sealed value.
    pub fn subject(&self) -> Option<String> {
        Envelope::parse(&self.0).map(|e| e.subject)
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sealed values are opaque; a plain legacy value might be personal data: show neither.
        match self.subject() {
            Some(subject) => write!(f, "Sealed(subject {subject})"),
            None => f.write_str("Sealed(<plain>)"),
        }
    }
}

/// What opening a [`Sealed`] gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// The value.
    Plain(String),
    /// Its subject was forgotten (or the value is damaged): the data is gone.
    Forgotten,
}

impl Opened {
    /// The value, or [`FORGOTTEN`].
    pub fn or_forgotten(self) -> String {
        match self {
            Self::Plain(value) => value,
            Self::Forgotten => FORGOTTEN.to_owned(),
        }
    }

    /// Whether the data is gone.
    pub fn is_forgotten(&self) -> bool {
        matches!(self, Self::Forgotten)
    }
}

/// Why sealing or opening failed: only the key store can fail (transient: retry), never the
/// data.
#[derive(Debug, thiserror::Error)]
pub enum ShredError {
    /// The key store could not be reached or refused.
    #[error("key store: {0}")]
    Keys(#[from] StoreError),
    /// The cipher refused to encrypt (does not happen for values under 256 GiB).
    #[error("sealing failed")]
    Seal,
}

impl From<ShredError> for crate::router::HandlerError {
    fn from(e: ShredError) -> Self {
        match e {
            ShredError::Keys(e) => e.into(),
            ShredError::Seal => Self::permanent(e),
        }
    }
}

/// Seals and opens fields with the subjects' keys from a [`KeyStore`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shredder {
    keys: Arc<dyn KeyStore>,
}

impl Shredder {
    /// Seals with keys from `keys`.
    pub fn new(keys: Arc<dyn KeyStore>) -> Self {
        Self { keys }
    }

    /// Creates `subject`'s key now if it has none. Call it before a unit of work that will seal
    /// for a new subject when the key store shares a single-writer database with that unit
    /// (SQLite): creating the key inside it would wait for the unit's own write lock.
    pub async fn prepare(&self, subject: &str) -> Result<(), ShredError> {
        self.keys.key_for(subject).await?;
        Ok(())
    }

    /// Encrypts `value` with `subject`'s key (creating the key on first use).
    pub async fn seal(&self, subject: &str, value: &str) -> Result<Sealed, ShredError> {
        let key = self.keys.key_for(subject).await?;
        let cipher = XChaCha20Poly1305::new(&key.secret.into());
        let nonce = XNonce::generate();
        let aad = associated_data(subject, &key.id);
        let ciphertext =
            cipher.encrypt(&nonce, Payload { msg: value.as_bytes(), aad: &aad }).map_err(|_| ShredError::Seal)?;
        let mut body = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&ciphertext);
        Ok(Sealed(format!("{PREFIX}{}:{}:{}", URL_SAFE_NO_PAD.encode(subject), key.id, URL_SAFE_NO_PAD.encode(body))))
    }

    /// Decrypts `sealed`: the value, or [`Opened::Forgotten`] when its subject's key is gone
    /// (or was replaced, or the value does not decrypt). A string that is not a sealed value
    /// opens as itself. Fails only when the key store fails.
    pub async fn open(&self, sealed: &Sealed) -> Result<Opened, ShredError> {
        if !sealed.0.starts_with(PREFIX) {
            return Ok(Opened::Plain(sealed.0.clone()));
        }
        let Some(envelope) = Envelope::parse(&sealed.0) else {
            return Ok(Opened::Forgotten); // damaged beyond reading
        };
        let Some(key) = self.keys.existing_key(&envelope.subject).await? else {
            return Ok(Opened::Forgotten);
        };
        if key.id != envelope.key_id || envelope.body.len() < NONCE_LEN {
            return Ok(Opened::Forgotten);
        }
        let cipher = XChaCha20Poly1305::new(&key.secret.into());
        let (nonce, ciphertext) = envelope.body.split_at(NONCE_LEN);
        let Ok(nonce) = <[u8; NONCE_LEN]>::try_from(nonce) else {
            return Ok(Opened::Forgotten);
        };
        let aad = associated_data(&envelope.subject, &key.id);
        let opened = cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: ciphertext, aad: &aad })
            .ok()
            .and_then(|plain| String::from_utf8(plain).ok());
        Ok(opened.map_or(Opened::Forgotten, Opened::Plain))
    }

    /// [`open`](Self::open), rendered: the value or [`FORGOTTEN`].
    pub async fn reveal(&self, sealed: &Sealed) -> Result<String, ShredError> {
        Ok(self.open(sealed).await?.or_forgotten())
    }

    /// Forgets `subject`: deletes its key, so everything sealed for it reads as forgotten from
    /// now on, everywhere. Idempotent; `true` if there was a key.
    pub async fn forget(&self, subject: &str) -> Result<bool, ShredError> {
        Ok(self.keys.forget(subject).await?)
    }
}

fn associated_data(subject: &str, key_id: &str) -> Vec<u8> {
    format!("{subject}\u{0}{key_id}").into_bytes()
}

struct Envelope {
    subject: String,
    key_id: String,
    body: Vec<u8>,
}

impl Envelope {
    fn parse(value: &str) -> Option<Self> {
        let rest = value.strip_prefix(PREFIX)?;
        let mut parts = rest.splitn(3, ':');
        let subject = String::from_utf8(URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok()?;
        let key_id = parts.next()?.to_owned();
        let body = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
        Some(Self { subject, key_id, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shredder() -> Shredder {
        Shredder::new(Arc::new(MemoryKeyStore::default()))
    }

    #[tokio::test]
    async fn a_sealed_value_opens_until_its_subject_is_forgotten() {
        let s = shredder();
        let sealed = s.seal("c-1", "Ada").await.expect("seals");
        assert!(!sealed.as_str().contains("Ada"), "{}", sealed.as_str());
        assert_eq!(sealed.subject().as_deref(), Some("c-1"));
        assert_eq!(s.open(&sealed).await.expect("opens"), Opened::Plain("Ada".into()));
        assert!(s.forget("c-1").await.expect("forgets"));
        assert!(!s.forget("c-1").await.expect("idempotent"), "nothing left to forget");
        assert_eq!(s.open(&sealed).await.expect("opens"), Opened::Forgotten);
        assert_eq!(s.reveal(&sealed).await.expect("reveals"), FORGOTTEN);
    }

    #[tokio::test]
    async fn a_subject_sealed_again_after_forgetting_gets_a_new_key_and_old_values_stay_forgotten() {
        let s = shredder();
        let old = s.seal("c-1", "Ada").await.expect("seals");
        s.forget("c-1").await.expect("forgets");
        let new = s.seal("c-1", "Ada again").await.expect("seals");
        assert_eq!(s.open(&old).await.expect("opens"), Opened::Forgotten);
        assert_eq!(s.open(&new).await.expect("opens"), Opened::Plain("Ada again".into()));
    }

    #[tokio::test]
    async fn damaged_moved_or_plain_values_never_fail_to_open() {
        let s = shredder();
        let sealed = s.seal("c-1", "Ada").await.expect("seals");
        s.seal("c-2", "Bob").await.expect("seals");
        // The body moved to another subject: the associated data no longer matches.
        let moved = sealed.as_str().replacen(&URL_SAFE_NO_PAD.encode("c-1"), &URL_SAFE_NO_PAD.encode("c-2"), 1);
        assert_eq!(s.open(&Sealed::from_stored(moved)).await.expect("opens"), Opened::Forgotten);
        let mut damaged = sealed.as_str().to_owned();
        damaged.pop();
        assert_eq!(s.open(&Sealed::from_stored(damaged)).await.expect("opens"), Opened::Forgotten);
        for junk in ["herald:sealed:v1:", "herald:sealed:v1:!!:x:y", "herald:sealed:v1:YQ:id:"] {
            assert_eq!(s.open(&Sealed::from_stored(junk)).await.expect("opens"), Opened::Forgotten, "{junk}");
        }
        let legacy = Sealed::from_stored("Plain Name");
        assert_eq!(s.open(&legacy).await.expect("opens"), Opened::Plain("Plain Name".into()));
        assert_eq!(format!("{legacy:?}"), "Sealed(<plain>)", "no personal data in logs");
        assert_eq!(serde_json::to_string(&sealed).expect("json"), format!("\"{}\"", sealed.as_str()));
    }
}
