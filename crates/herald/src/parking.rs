//! Sequence-aware parking: once a message of a key is dead-lettered, the later messages of that
//! key in that group wait ("are parked") until the dead letter is replayed or discarded, then
//! flow in their order. Opt-in per route ([`Route::park_behind_dead_letters`]); ADR 0025.
//!
//! ```text
//! key k:  m1 ✗ dead-lettered ─► archive ─► replay(m1) ─┐
//!         m2, m3 arrive ─► parked (acked, kept in the lot)  │
//!                                                            ▼
//!         m1 handled ─► m2 released (outbox) ─► m2 handled ─► m3 released ─► m3 handled ─► k flows
//! ```
//!
//! # Why
//!
//! Per-key order ([`Capabilities::per_key_order`](crate::Capabilities)) holds a key's later
//! messages back only while its failing message is being *retried*. Once that message is
//! dead-lettered, it leaves the group's queue, and the key's next message is delivered: a
//! consumer can apply `OrderCanceled` for an order whose `OrderCreated` it never applied. For a
//! route whose handlers depend on the order of a key's messages (state machines, projections of
//! one entity), a dead letter must stop its key, not only its message.
//!
//! # How the router parks (the lot's contract is below)
//!
//! For a parking route, a key's **sequence** in the [`ParkingLot`] is the list of its messages
//! held back, oldest first. Its *head* is the message the key waits for: the dead letter, or the
//! released message on its way back. Each delivery of a keyed message on a parking route, in the
//! unit of work of its handler:
//!
//! * the key has no sequence: the message is handled as on any route;
//! * the message *is* the head (a replay of the dead letter, or a released message, compared by
//!   the id it is handled under, see [`as_handled`](crate::dead_letters::as_handled)): it is
//!   handled, and in the same transaction the head is removed and the next parked message, if
//!   any, becomes the head and is **released**: enqueued in the outbox again for this group only
//!   (a replay-shaped copy, see [`release_message`]), so it comes back through the broker behind
//!   whatever is in flight and keeps its turn;
//! * otherwise the message is **parked**: appended to the sequence and acknowledged, not handled.
//!
//! A message that fails for good (a permanent error, its last attempt, no handler, a failing
//! upcaster) starts its key's sequence — recorded and committed *before* the broker is told to
//! dead-letter it, so no later message can slip past; if recording fails, the delivery is
//! nacked instead. Discarding the dead letter ([`DeadLetters::discard`]) sends a **discard
//! notice** ([`DISCARD_NOTICE`]) to the failing group through the outbox: the router removes the
//! head without handling it and releases the next. Either way, the parked messages then flow in
//! the order they arrived. Discard notices reach routes that do not park too: they acknowledge
//! and skip them (consumers not using the router must do the same).
//!
//! Parking needs per-key order from the broker (one consumer of a key at a time); on a broker
//! without it, order between processes is not kept anyway. Messages without a key are never
//! parked.
//!
//! # Contract of [`ParkingLot`] (checked by `herald-conformance`'s `parking_suite!`)
//!
//! * **Transactional.** [`park`](ParkingLot::park) and [`advance`](ParkingLot::advance) are part
//!   of the caller's [`Transaction`] (a transaction of the store the lot lives in): visible after
//!   commit, gone on rollback.
//! * **Ordered per key.** A key's sequence in a group is kept in the order its entries were
//!   parked; keys and groups are independent.
//! * **Once.** Parking a message id already in the key's sequence changes nothing and returns
//!   `false` (a redelivery of a parked message).
//! * **Advance only from the head.** `advance(head)` removes `head` only if it is the key's first
//!   entry, and returns the stored message of the entry that is first after it (the one to
//!   release); it returns `None` and changes nothing when `head` is not first.
//!
//! [`Route::park_behind_dead_letters`]: crate::router::Route::park_behind_dead_letters
//! [`DeadLetters::discard`]: crate::dead_letters::DeadLetters::discard

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::dead_letters::{REPLAY_FOR_GROUP, REPLAY_OF, as_handled, is_dead_letter};
use crate::message::{Message, MessageId};
use crate::store::{StoreError, Transaction};

/// The name of a discard notice: a dead letter of this key and group was discarded, so the key's
/// parked messages may flow (see the [module docs](self)). Its payload is empty (`{}`), its key
/// and topic those of the discarded message; [`REPLAY_OF`] names the discarded message's id and
/// [`REPLAY_FOR_GROUP`] the group.
pub const DISCARD_NOTICE: &str = "herald.DeadLetterDiscarded.v1";
/// Header on a discard notice: the id of the discarded dead letter.
pub const DISCARDED_DEAD_LETTER: &str = "herald-discarded-dead-letter";
/// Header on a released message: it was parked behind a dead letter (value: the group).
pub const UNPARKED: &str = "herald-unparked";

/// Whether `message` is a discard notice (and so never handled, only acknowledged — or, by a
/// parking route of its group, used to let the key flow).
pub fn is_discard_notice(message: &Message) -> bool {
    !is_dead_letter(message) && message.header(DISCARDED_DEAD_LETTER).is_some()
}

/// The discard notice for a discarded dead letter of `original` (the message as it was
/// delivered) failed by `group`; `dead_letter` is the archived dead letter's id.
pub fn discard_notice(original: &Message, group: &str, dead_letter: MessageId) -> Message {
    let mut notice =
        Message::new(original.topic.clone(), DISCARD_NOTICE, b"{}".to_vec()).with_key(original.key.clone());
    notice.metadata.continue_from(original);
    let headers = &mut notice.metadata.headers;
    headers.insert(REPLAY_OF.to_owned(), as_handled(original).id.to_string());
    headers.insert(REPLAY_FOR_GROUP.to_owned(), group.to_owned());
    headers.insert(DISCARDED_DEAD_LETTER.to_owned(), dead_letter.to_string());
    notice
}

/// The copy of a parked message that goes out again when its turn comes: a new transport id
/// (brokers de-duplicate on ids), handled under the parked message's id ([`REPLAY_OF`]), for
/// `group` only ([`REPLAY_FOR_GROUP`]), marked [`UNPARKED`]. Metadata — correlation, causation,
/// trace context — is kept.
pub fn release_message(parked: &Message, group: &str) -> Message {
    let handled_as = as_handled(parked).id;
    let mut m = parked.clone();
    m.id = MessageId::new();
    let headers = &mut m.metadata.headers;
    headers.insert(REPLAY_OF.to_owned(), handled_as.to_string());
    headers.insert(REPLAY_FOR_GROUP.to_owned(), group.to_owned());
    headers.insert(UNPARKED.to_owned(), group.to_owned());
    m
}

/// A key with a parked sequence (see [`ParkingLot::parked`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedKey {
    /// The consumer group.
    pub group: String,
    /// The message key.
    pub key: String,
    /// The id of the message the key waits for (its head: a dead letter or a released message).
    pub head: MessageId,
    /// Entries in the sequence, the head included.
    pub entries: u64,
    /// When its head was parked.
    pub since: DateTime<Utc>,
}

/// Where parking routes keep the messages held back behind a dead letter, per group and key.
/// See the [module docs](self) for the contract.
#[async_trait]
pub trait ParkingLot: Send + Sync + fmt::Debug + 'static {
    /// The id of the first entry of `key`'s sequence in `group` (the message the key waits for),
    /// read in `tx`; `None` when the key has no sequence and flows.
    async fn head(&self, tx: &mut dyn Transaction, group: &str, key: &str) -> Result<Option<MessageId>, StoreError>;

    /// In `tx`: appends `id` to `key`'s sequence in `group`, with `message` to release when its
    /// turn comes (`None` for a dead-lettered message starting the sequence: it comes back as a
    /// replay, or a discard notice). `false` if `id` is already in the sequence.
    async fn park(
        &self,
        tx: &mut dyn Transaction,
        group: &str,
        key: &str,
        id: MessageId,
        message: Option<&Message>,
    ) -> Result<bool, StoreError>;

    /// In `tx`: removes `head` if it is the first entry of `key`'s sequence in `group`, and
    /// returns the message stored with the entry that is now first (to release). `None` if the
    /// sequence is now empty, the new first entry has no message, or `head` was not first
    /// (nothing changes then).
    async fn advance(
        &self,
        tx: &mut dyn Transaction,
        group: &str,
        key: &str,
        head: MessageId,
    ) -> Result<Option<Message>, StoreError>;

    /// The keys with a parked sequence, of `group` or of every group, by group and key.
    async fn parked(&self, group: Option<&str>) -> Result<Vec<ParkedKey>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letters::{DeadLetter, is_replay_for_another_group};
    use crate::queue::dead_letter_for;

    #[test]
    fn a_released_message_is_handled_under_its_parked_id_by_its_group_only() {
        let parked = Message::new("orders", "OrderCanceled.v1", b"{}".to_vec()).with_key("o-1");
        let released = release_message(&parked, "billing");
        assert_ne!(released.id, parked.id, "a new transport id");
        assert_eq!(as_handled(&released).id, parked.id);
        assert!(is_replay_for_another_group(&released, "shipping"));
        assert!(!is_replay_for_another_group(&released, "billing"));
        assert_eq!(released.header(UNPARKED), Some("billing"));
        // Parked again (behind a newer dead letter) and released again: still the first id.
        assert_eq!(as_handled(&release_message(&released, "billing")).id, parked.id);
    }

    #[test]
    fn a_discard_notice_names_the_discarded_message_and_its_group() {
        let original = Message::new("orders", "OrderPlaced.v1", b"{\"x\":1}".to_vec()).with_key("o-1");
        let letter = DeadLetter::from_message(&dead_letter_for(&original, "billing", 3, "boom", "dlt"));
        let notice = discard_notice(&letter.message, &letter.group, letter.id);
        assert!(is_discard_notice(&notice));
        assert!(!is_discard_notice(&original));
        assert_eq!((notice.topic.as_str(), notice.key.as_str()), ("orders", "o-1"));
        assert_eq!(as_handled(&notice).id, original.id);
        assert!(is_replay_for_another_group(&notice, "shipping"));
        assert_eq!(notice.header(DISCARDED_DEAD_LETTER), Some(letter.id.to_string().as_str()));
        assert_eq!(notice.payload, b"{}");
    }
}
