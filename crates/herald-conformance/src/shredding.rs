//! The [`KeyStore`] contract (crypto-shredding), run against every implementation: in memory,
//! SQLite and PostgreSQL. Through a [`Shredder`], as applications use it.

use std::sync::Arc;

use herald::shredding::{FORGOTTEN, KeyStore, Opened, Shredder};

/// Keys are created on first use and shared by concurrent first uses; forgetting deletes the
/// key, so every value sealed with it opens as forgotten — never an error — and a new key (a
/// new id) serves the subject afterwards; other subjects are untouched.
pub async fn a_forgotten_subject_s_fields_read_as_forgotten_never_an_error(keys: Arc<dyn KeyStore>) {
    let subject = crate::support::unique("subject");
    let other = crate::support::unique("other");
    assert!(keys.existing_key(&subject).await.expect("existing_key").is_none(), "never created by a read");

    // Concurrent first uses agree on one key.
    let firsts = futures::future::join_all((0..8).map(|_| keys.key_for(&subject))).await;
    let first = firsts[0].as_ref().expect("key_for").clone();
    assert!(firsts.iter().all(|k| k.as_ref().expect("key_for") == &first), "one key per subject");
    assert_eq!(keys.existing_key(&subject).await.expect("existing_key").as_ref(), Some(&first));

    let shredder = Shredder::new(keys.clone());
    let name = shredder.seal(&subject, "Ada Lovelace").await.expect("seal");
    let sms = shredder.seal(&subject, "+44 20 7946 0000").await.expect("seal");
    let bystander = shredder.seal(&other, "Bob").await.expect("seal");
    assert_eq!(shredder.open(&name).await.expect("open"), Opened::Plain("Ada Lovelace".into()));

    assert!(shredder.forget(&subject).await.expect("forget"));
    assert!(!shredder.forget(&subject).await.expect("forget again"), "idempotent");
    assert!(keys.existing_key(&subject).await.expect("existing_key").is_none());
    assert_eq!(shredder.open(&name).await.expect("open"), Opened::Forgotten);
    assert_eq!(shredder.reveal(&sms).await.expect("reveal"), FORGOTTEN);
    assert_eq!(shredder.reveal(&bystander).await.expect("reveal"), "Bob", "other subjects keep their data");

    // The subject comes back: a new key; the old values stay forgotten.
    let again = shredder.seal(&subject, "Ada").await.expect("seal");
    assert_ne!(keys.existing_key(&subject).await.expect("existing_key").expect("a key").id, first.id);
    assert_eq!(shredder.reveal(&again).await.expect("reveal"), "Ada");
    assert_eq!(shredder.open(&name).await.expect("open"), Opened::Forgotten);
}
