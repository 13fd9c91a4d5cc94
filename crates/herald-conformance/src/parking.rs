//! The parking-lot scenarios: each function is one test of
//! [`parking_suite!`](crate::parking_suite), checking one promise of the contract in
//! [`herald::parking`]: a key's sequence keeps its order and advances only from its head,
//! parking is transactional and happens once per message, keys and groups are independent.
//! (What the router does with a lot over a real broker is the pub/sub scenario
//! `a_dead_letter_parks_its_key_until_replayed_or_discarded`.)

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use herald::async_trait;
use herald::dead_letters::{DeadLetterFilter, DeadLetters, Page};
use herald::memory::{MemoryDeadLetterArchive, MemoryParkingLot, MemoryStore};
use herald::message::{Message, MessageId};
use herald::outbox::OutboxRelay;
use herald::parking::ParkingLot;
use herald::router::{Handler, HandlerContext, HandlerError, Retry, Route, Router};
use herald::store::Store;
use herald::{CancellationToken, SubscribeOptions};

use crate::PubSubFixture;
use crate::support::{QUIET, WAIT, eventually_that, numbered, rich_message, seq_of, supports, unique};

/// What a parking scenario runs against: a fresh lot and the store it lives in.
pub struct ParkingFixture {
    /// The store whose transactions the lot joins.
    pub store: Arc<dyn Store>,
    /// The lot under test.
    pub lot: Arc<dyn ParkingLot>,
    /// Keeps temp files / servers alive for the test's duration.
    pub guard: Box<dyn Any + Send>,
}

impl ParkingFixture {
    /// A fixture for `lot` in `store`.
    pub fn new(store: Arc<dyn Store>, lot: Arc<dyn ParkingLot>, guard: Box<dyn Any + Send>) -> Self {
        Self { store, lot, guard }
    }

    /// A fixture for a store that is its own lot (the SQL stores).
    pub fn on<S: Store + ParkingLot>(store: Arc<S>, guard: Box<dyn Any + Send>) -> Self {
        Self { store: store.clone(), lot: store, guard }
    }

    async fn head(&self, group: &str, key: &str) -> Option<MessageId> {
        let mut tx = self.store.begin().await.expect("begin");
        let head = self.lot.head(&mut *tx, group, key).await.expect("head");
        drop(tx);
        head
    }

    /// Parks and commits; whether it was new.
    async fn park(&self, group: &str, key: &str, id: MessageId, message: Option<&Message>) -> bool {
        let mut tx = self.store.begin().await.expect("begin");
        let added = self.lot.park(&mut *tx, group, key, id, message).await.expect("park");
        tx.commit().await.expect("commit");
        added
    }

    /// Advances and commits; the message to release.
    async fn advance(&self, group: &str, key: &str, head: MessageId) -> Option<Message> {
        let mut tx = self.store.begin().await.expect("begin");
        let next = self.lot.advance(&mut *tx, group, key, head).await.expect("advance");
        tx.commit().await.expect("commit");
        next
    }
}

impl fmt::Debug for ParkingFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParkingFixture").field("store", &self.store).field("lot", &self.lot).finish()
    }
}

/// A dead-lettered head and three parked messages come back one at a time, in the order they
/// were parked, each intact; then the key flows.
pub async fn a_parked_sequence_keeps_its_order_and_advances_from_its_head<F: Future<Output = ParkingFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let (group, key) = (unique("billing"), unique("order"));
    let topic = unique("orders");
    assert_eq!(fx.head(&group, &key).await, None, "a key with nothing parked flows");

    let dead = MessageId::new();
    assert!(fx.park(&group, &key, dead, None).await, "the dead-lettered message starts the sequence");
    let parked: Vec<Message> = (0..3).map(|_| rich_message(&topic, &key)).collect();
    for m in &parked {
        assert!(fx.park(&group, &key, m.id, Some(m)).await);
    }
    assert_eq!(fx.head(&group, &key).await, Some(dead), "the key waits for its dead letter");

    let mut head = dead;
    for expected in &parked {
        let next = fx.advance(&group, &key, head).await.expect("the next parked message, to release");
        assert_eq!(&next, expected, "released intact and in order");
        assert_eq!(fx.head(&group, &key).await, Some(next.id), "the released message is the new head");
        head = next.id;
    }
    assert_eq!(fx.advance(&group, &key, head).await, None, "nothing left to release");
    assert_eq!(fx.head(&group, &key).await, None, "the key flows again");
    assert!(fx.lot.parked(Some(&group)).await.expect("parked").is_empty());
}

/// Parking and advancing are part of the caller's transaction: invisible before commit, gone on
/// rollback.
pub async fn parking_commits_and_rolls_back_with_its_transaction<F: Future<Output = ParkingFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let (group, key) = (unique("billing"), unique("order"));
    let dead = MessageId::new();

    let mut tx = fx.store.begin().await.expect("begin");
    assert!(fx.lot.park(&mut *tx, &group, &key, dead, None).await.expect("park"));
    drop(tx);
    assert_eq!(fx.head(&group, &key).await, None, "a rolled-back park leaves nothing");

    let mut tx = fx.store.begin().await.expect("begin");
    assert!(fx.lot.park(&mut *tx, &group, &key, dead, None).await.expect("park"));
    tx.commit().await.expect("commit");
    assert_eq!(fx.head(&group, &key).await, Some(dead));

    let waiting = rich_message(&unique("orders"), &key);
    assert!(fx.park(&group, &key, waiting.id, Some(&waiting)).await);
    let mut tx = fx.store.begin().await.expect("begin");
    assert_eq!(fx.lot.advance(&mut *tx, &group, &key, dead).await.expect("advance"), Some(waiting.clone()));
    drop(tx);
    assert_eq!(fx.head(&group, &key).await, Some(dead), "a rolled-back advance leaves the head");
    assert_eq!(fx.advance(&group, &key, dead).await, Some(waiting));
}

/// A message already in its key's sequence (a redelivery of a parked message) is parked once.
pub async fn parking_a_message_twice_changes_nothing<F: Future<Output = ParkingFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let (group, key) = (unique("billing"), unique("order"));
    let dead = MessageId::new();
    let m = rich_message(&unique("orders"), &key);
    assert!(fx.park(&group, &key, dead, None).await);
    assert!(fx.park(&group, &key, m.id, Some(&m)).await);
    assert!(!fx.park(&group, &key, m.id, Some(&m)).await, "a second park of one id is refused");
    assert!(!fx.park(&group, &key, dead, None).await, "the head too");
    let parked = fx.lot.parked(Some(&group)).await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].key.as_str(), parked[0].head, parked[0].entries), (key.as_str(), dead, 2));
    assert_eq!(fx.advance(&group, &key, dead).await, Some(m.clone()));
    assert_eq!(fx.advance(&group, &key, m.id).await, None);
    assert_eq!(fx.head(&group, &key).await, None);
}

/// `advance` with an id that is not the key's head changes nothing.
pub async fn advancing_from_anything_but_the_head_changes_nothing<F: Future<Output = ParkingFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let (group, key) = (unique("billing"), unique("order"));
    let dead = MessageId::new();
    let m = rich_message(&unique("orders"), &key);
    assert_eq!(fx.advance(&group, &key, dead).await, None, "no sequence: nothing happens");
    assert!(fx.park(&group, &key, dead, None).await);
    assert!(fx.park(&group, &key, m.id, Some(&m)).await);
    assert_eq!(fx.advance(&group, &key, m.id).await, None, "the second entry is not the head");
    assert_eq!(fx.advance(&group, &key, MessageId::new()).await, None, "an unknown id is not the head");
    assert_eq!(fx.head(&group, &key).await, Some(dead));
    assert_eq!(fx.lot.parked(Some(&group)).await.expect("parked")[0].entries, 2);
}

/// Sequences of other keys and other groups are independent; `parked` lists them by group.
pub async fn keys_and_groups_are_independent<F: Future<Output = ParkingFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let (billing, shipping) = (unique("billing"), unique("shipping"));
    let (a, b) = (unique("a"), unique("b"));
    let (dead_a, dead_b, dead_s) = (MessageId::new(), MessageId::new(), MessageId::new());
    assert!(fx.park(&billing, &a, dead_a, None).await);
    assert!(fx.park(&billing, &b, dead_b, None).await);
    assert!(fx.park(&shipping, &a, dead_s, None).await);

    assert_eq!(fx.head(&billing, &a).await, Some(dead_a));
    assert_eq!(fx.head(&billing, &b).await, Some(dead_b));
    assert_eq!(fx.head(&shipping, &a).await, Some(dead_s));
    let keys: Vec<_> = fx.lot.parked(Some(&billing)).await.expect("parked").into_iter().map(|p| p.key).collect();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(keys, expected, "billing's keys, by key");
    let all = fx.lot.parked(None).await.expect("parked");
    assert!(all.iter().any(|p| p.group == shipping && p.key == a && p.head == dead_s));

    assert_eq!(fx.advance(&billing, &a, dead_a).await, None);
    assert_eq!(fx.head(&billing, &a).await, None);
    assert_eq!(fx.head(&billing, &b).await, Some(dead_b), "another key of the group is untouched");
    assert_eq!(fx.head(&shipping, &a).await, Some(dead_s), "the same key in another group is untouched");
}

/// The router over a real broker (a pub/sub scenario, run where the subscriber declares per-key
/// order and dead letters): a key whose message is dead-lettered on a parking route has its
/// later messages parked, not handled, while other keys flow; replaying the dead letter lets
/// the key's messages through in their order; discarding it does the same without it; then the
/// keys flow again.
pub async fn a_dead_letter_parks_its_key_until_replayed_or_discarded<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "per-key order (parking keeps the order the broker gives)", caps.per_key_order)
        || !supports(caps, "dead letters", caps.dead_letters)
    {
        return;
    }
    let (topic, group) = (unique("parking"), unique("group"));
    let store = Arc::new(MemoryStore::new());
    let lot = Arc::new(MemoryParkingLot::new());
    let api = DeadLetters::new(store.clone(), Arc::new(MemoryDeadLetterArchive::new()));
    let handled = Arc::new(Mutex::new(Handled::default()));
    let options = SubscribeOptions::new(&topic, &group).max_deliveries(2).ack_wait(Duration::from_secs(5));
    let route = Route::new(options.clone())
        .retry(Retry::exponential(Duration::from_millis(20)).attempts(2))
        .park_behind_dead_letters()
        .on_name(NAME, Recorder(handled.clone()));
    let shutdown = CancellationToken::new();
    let router = Router::new(fx.subscriber.clone())
        .store(store.clone())
        .parking(lot.clone())
        .route(route)
        .routes(api.archive_routes_for(&[&options], &unique("archive")))
        .start(shutdown.clone())
        .await
        .expect("router starts");
    let relay = tokio::spawn(OutboxRelay::new(store.clone(), fx.publisher.clone()).run(shutdown.child_token()));

    let poison = |m: Message| m.with_header(POISON, "yes");
    let mut sent = vec![poison(numbered(&topic, "A", 0)), poison(numbered(&topic, "B", 0))];
    for seq in 1..3 {
        sent.extend(["A", "B", "C"].map(|key| numbered(&topic, key, seq)));
    }
    sent.push(numbered(&topic, "C", 0));
    for m in &sent {
        fx.publisher.publish(std::slice::from_ref(m)).await.expect("publish");
    }

    eventually_that(WAIT, "A's and B's first messages dead-lettered and archived, their later ones parked", || {
        let api = api.clone();
        let parked = router.stats().parked;
        async move { parked >= 4 && api.count(&DeadLetterFilter::pending()).await.expect("count") >= 2 }
    })
    .await;
    eventually_that(WAIT, "key C handled (it is not held back)", || {
        let n = lock(&handled).of("C").len();
        async move { n == 3 }
    })
    .await;
    tokio::time::sleep(QUIET).await; // room for a parked message to be (wrongly) handled
    {
        let h = lock(&handled);
        assert!(h.of("A").is_empty() && h.of("B").is_empty(), "nothing of A or B handled yet: {:?}", h.order);
    }
    let parked = lot.parked(Some(&group)).await.expect("parked");
    assert_eq!(parked.iter().map(|p| (p.key.as_str(), p.entries)).collect::<Vec<_>>(), [("A", 3), ("B", 3)]);

    // A is fixed and its dead letter replayed; B's is discarded.
    lock(&handled).healed = true;
    let letters = api.list(&DeadLetterFilter::pending(), &Page::default()).await.expect("list");
    let of = |key: &str| letters.iter().find(|l| l.message.key == key).expect("a dead letter of the key").id;
    api.replay(of("A")).await.expect("replay A");
    api.discard(of("B")).await.expect("discard B");
    eventually_that(WAIT, "A's three messages and B's two later ones handled", || {
        let h = lock(&handled);
        let done = h.of("A").len() == 3 && h.of("B").len() == 2;
        async move { done }
    })
    .await;

    // Released and drained: the keys flow again.
    for key in ["A", "B"] {
        fx.publisher.publish(&[numbered(&topic, key, 3)]).await.expect("publish");
    }
    eventually_that(WAIT, "the next messages of A and B handled directly", || {
        let h = lock(&handled);
        let done = h.of("A").len() == 4 && h.of("B").len() == 3;
        async move { done }
    })
    .await;
    tokio::time::sleep(QUIET).await;
    {
        let h = lock(&handled);
        assert_eq!(h.of("A"), [0, 1, 2, 3], "A in order, its replayed first message first");
        assert_eq!(h.of("B"), [1, 2, 3], "B in order, its discarded first message never");
        assert_eq!(h.of("C").len(), 3, "C once each");
    }
    assert!(lot.parked(Some(&group)).await.expect("parked").is_empty(), "nothing left parked");
    shutdown.cancel();
    router.wait().await;
    relay.await.expect("relay");
}

const NAME: &str = "conformance.Numbered.v1";
/// Header making [`Recorder`] fail (permanently) until it is healed.
const POISON: &str = "poison";

#[derive(Debug, Default)]
struct Handled {
    /// (key, seq) in the order handled.
    order: Vec<(String, u64)>,
    healed: bool,
}

impl Handled {
    fn of(&self, key: &str) -> Vec<u64> {
        self.order.iter().filter(|(k, _)| k == key).map(|(_, s)| *s).collect()
    }
}

fn lock(h: &Mutex<Handled>) -> MutexGuard<'_, Handled> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records what it handles; a poisoned message fails for good until healed.
struct Recorder(Arc<Mutex<Handled>>);

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let m = cx.message();
        let mut h = lock(&self.0);
        if m.header(POISON).is_some() && !h.healed {
            return Err(HandlerError::permanent("poisoned"));
        }
        h.order.push((m.key.clone(), seq_of(m)));
        Ok(())
    }
}
