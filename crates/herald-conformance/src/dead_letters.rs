//! The dead-letter archive scenarios: each function is one test of
//! [`dead_letter_suite!`](crate::dead_letter_suite), checking one promise of the contract in
//! [`herald::dead_letters`]: archiving is transactional and idempotent, listing filters and
//! pages in order, a pending dead letter is resolved once, and a replay commits with its outbox
//! message.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use herald::dead_letters::{
    DeadLetter, DeadLetterArchive, DeadLetterError, DeadLetterFilter, DeadLetterStatus, DeadLetters, Page,
    REPLAY_FOR_GROUP, REPLAY_OF, REPLAYED_DEAD_LETTER, Resolution,
};
use herald::message::{Message, MessageId};
use herald::observability::names;
use herald::queue::dead_letter_for;
use herald::store::{Store, StoreError};

use crate::support::{Gauges, rich_message, unique};

/// What a dead-letter scenario runs against: a fresh archive and the store it lives in.
pub struct DeadLetterFixture {
    /// The store whose transactions the archive joins (and whose outbox carries replays).
    pub store: Arc<dyn Store>,
    /// The archive under test.
    pub archive: Arc<dyn DeadLetterArchive>,
    /// Keeps temp files / servers alive for the test's duration.
    pub guard: Box<dyn Any + Send>,
}

impl DeadLetterFixture {
    /// A fixture for `archive` in `store`.
    pub fn new(store: Arc<dyn Store>, archive: Arc<dyn DeadLetterArchive>, guard: Box<dyn Any + Send>) -> Self {
        Self { store, archive, guard }
    }

    /// A fixture for a store that is its own archive (the SQL stores).
    pub fn on<S: Store + DeadLetterArchive>(store: Arc<S>, guard: Box<dyn Any + Send>) -> Self {
        Self { store: store.clone(), archive: store, guard }
    }

    fn api(&self) -> DeadLetters {
        DeadLetters::new(self.store.clone(), self.archive.clone())
    }
}

impl fmt::Debug for DeadLetterFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterFixture").field("store", &self.store).field("archive", &self.archive).finish()
    }
}

/// A dead letter of a rich message (key, payload, correlation, causation, trace, headers) on
/// `topic`, failed by `group`.
fn dead_letter(topic: &str, group: &str, attempts: u32) -> DeadLetter {
    let original = rich_message(topic, "key-1");
    let dead = dead_letter_for(&original, group, attempts, &format!("boom in {group}"), &format!("{topic}.{group}.dl"));
    let letter = DeadLetter::from_message(&dead);
    assert_eq!(letter.message, original, "DeadLetter::from_message gives back the original message");
    letter
}

async fn archive_committed(fx: &DeadLetterFixture, letter: &DeadLetter) -> bool {
    let mut tx = fx.store.begin().await.expect("begin");
    let added = fx.archive.archive(&mut *tx, letter).await.expect("archive");
    tx.commit().await.expect("commit");
    added
}

async fn get(fx: &DeadLetterFixture, id: MessageId) -> Option<DeadLetter> {
    fx.archive.get(id).await.expect("get")
}

/// Outbox messages of `topic`.
async fn outbox_of(store: &dyn Store, topic: &str) -> Vec<Message> {
    let all = store.outbox_pending(100_000).await.expect("outbox_pending");
    all.into_iter().map(|r| r.message).filter(|m| m.topic == topic).collect()
}

/// An archived dead letter reads back with every field intact — the original message with its
/// metadata, group, reason, attempts, time — as pending, and only after commit.
pub async fn an_archived_dead_letter_reads_back_intact_after_commit<F: Future<Output = DeadLetterFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let letter = dead_letter(&unique("orders"), "billing", 4);

    let mut tx = fx.store.begin().await.expect("begin");
    assert!(fx.archive.archive(&mut *tx, &letter).await.expect("archive"), "a new dead letter is archived");
    assert_eq!(get(&fx, letter.id).await, None, "invisible before commit");
    tx.commit().await.expect("commit");

    let got = get(&fx, letter.id).await.expect("the dead letter is archived");
    assert_eq!(got, letter, "every field reads back intact, status pending");
    assert_eq!(got.status, DeadLetterStatus::Pending);
    assert_eq!((got.attempts, got.reason.as_str(), got.group.as_str()), (4, "boom in billing", "billing"));
    assert_eq!(got.resolved_at, None);
    assert_eq!(got.replay_id, None);
}

/// Archiving an archived dead letter again changes nothing; an archive in a rolled-back
/// transaction leaves nothing.
pub async fn archiving_is_idempotent_and_rolls_back_with_its_transaction<F: Future<Output = DeadLetterFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let topic = unique("orders");
    let letter = dead_letter(&topic, "billing", 1);
    assert!(archive_committed(&fx, &letter).await);
    let mut changed = letter.clone();
    changed.reason = "another reason".into();
    assert!(!archive_committed(&fx, &changed).await, "the same id again is a duplicate");
    assert_eq!(get(&fx, letter.id).await.expect("archived").reason, letter.reason, "the first one is kept");

    let dropped = dead_letter(&topic, "billing", 1);
    {
        let mut tx = fx.store.begin().await.expect("begin");
        assert!(fx.archive.archive(&mut *tx, &dropped).await.expect("archive"));
        // dropped without commit: rolled back
    }
    assert_eq!(get(&fx, dropped.id).await, None, "a rolled-back archive leaves nothing");
    assert!(archive_committed(&fx, &dropped).await, "and it can be archived later");
    let all = fx.archive.list(&DeadLetterFilter::all().topic(&topic), &Page::first(100)).await.expect("list");
    assert_eq!(all.len(), 2);
}

/// Listing filters by original topic, group and status, returns archive order (oldest first),
/// and pages without skipping or repeating; `count` agrees.
pub async fn listing_filters_and_pages_in_archive_order<F: Future<Output = DeadLetterFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let (orders, payments) = (unique("orders"), unique("payments"));
    let mut letters = Vec::new();
    for (topic, group) in [
        (&orders, "billing"),
        (&orders, "shipping"),
        (&payments, "billing"),
        (&orders, "billing"),
        (&orders, "billing"),
    ] {
        let l = dead_letter(topic, group, 2);
        assert!(archive_committed(&fx, &l).await);
        letters.push(l);
    }
    let ids = |ls: &[DeadLetter]| ls.iter().map(|l| l.id).collect::<Vec<_>>();
    let list = |filter: DeadLetterFilter, page: Page| {
        let archive = fx.archive.clone();
        async move { archive.list(&filter, &page).await.expect("list") }
    };

    let orders_all = list(DeadLetterFilter::all().topic(&orders), Page::first(100)).await;
    assert_eq!(ids(&orders_all), vec![letters[0].id, letters[1].id, letters[3].id, letters[4].id], "oldest first");
    let billing = list(DeadLetterFilter::all().topic(&orders).group("billing"), Page::first(100)).await;
    assert_eq!(ids(&billing), vec![letters[0].id, letters[3].id, letters[4].id]);
    assert_eq!(ids(&list(DeadLetterFilter::all().topic(&payments), Page::first(100)).await), vec![letters[2].id]);
    assert_eq!(fx.archive.count(&DeadLetterFilter::all().topic(&orders)).await.expect("count"), 4);
    assert_eq!(fx.archive.count(&DeadLetterFilter::all().topic(&orders).group("shipping")).await.expect("count"), 1);

    // Pages of two: no gap, no repeat.
    let first = list(DeadLetterFilter::all().topic(&orders), Page::first(2)).await;
    assert_eq!(ids(&first), vec![letters[0].id, letters[1].id]);
    let second = list(DeadLetterFilter::all().topic(&orders), Page::after(first[1].id, 2)).await;
    assert_eq!(ids(&second), vec![letters[3].id, letters[4].id]);
    let third = list(DeadLetterFilter::all().topic(&orders), Page::after(second[1].id, 2)).await;
    assert!(third.is_empty(), "nothing after the last page");

    // Status.
    let mut tx = fx.store.begin().await.expect("begin");
    let r = fx.archive.resolve(&mut *tx, letters[3].id, DeadLetterStatus::Discarded, None).await.expect("resolve");
    assert!(matches!(r, Resolution::Resolved(_)), "{r:?}");
    tx.commit().await.expect("commit");
    let pending = list(DeadLetterFilter::pending().topic(&orders).group("billing"), Page::first(100)).await;
    assert_eq!(ids(&pending), vec![letters[0].id, letters[4].id], "a discarded one leaves the pending list");
    let discarded = DeadLetterFilter::all().topic(&orders).status(DeadLetterStatus::Discarded);
    assert_eq!(ids(&list(discarded.clone(), Page::first(100)).await), vec![letters[3].id]);
    assert_eq!(fx.archive.count(&discarded).await.expect("count"), 1);
}

/// A pending dead letter is resolved once: a second resolution sees it not pending, an unknown
/// id is not found, "pending" is not a resolution, and a rolled-back resolution changes nothing.
pub async fn a_pending_dead_letter_is_resolved_once<F: Future<Output = DeadLetterFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let letter = dead_letter(&unique("orders"), "billing", 3);
    assert!(archive_committed(&fx, &letter).await);

    {
        let mut tx = fx.store.begin().await.expect("begin");
        let r = fx.archive.resolve(&mut *tx, letter.id, DeadLetterStatus::Discarded, None).await.expect("resolve");
        assert!(matches!(r, Resolution::Resolved(_)), "{r:?}");
        // dropped: rolled back
    }
    assert_eq!(get(&fx, letter.id).await.expect("archived").status, DeadLetterStatus::Pending, "rolled back");

    let replay_id = MessageId::new();
    let mut tx = fx.store.begin().await.expect("begin");
    let r = fx.archive.resolve(&mut *tx, letter.id, DeadLetterStatus::Replayed, Some(replay_id)).await;
    let Resolution::Resolved(resolved) = r.expect("resolve") else { panic!("a pending dead letter is resolved") };
    assert_eq!((resolved.status, resolved.replay_id), (DeadLetterStatus::Replayed, Some(replay_id)));
    assert!(resolved.resolved_at.is_some());
    tx.commit().await.expect("commit");

    let got = get(&fx, letter.id).await.expect("archived");
    assert_eq!((got.status, got.replay_id), (DeadLetterStatus::Replayed, Some(replay_id)));
    assert!(got.resolved_at.is_some_and(|t| t >= letter.dead_lettered_at), "resolution time recorded");
    assert_eq!(got.message, letter.message, "the original message is untouched");

    let mut tx = fx.store.begin().await.expect("begin");
    let again = fx.archive.resolve(&mut *tx, letter.id, DeadLetterStatus::Discarded, None).await.expect("resolve");
    assert_eq!(again, Resolution::NotPending(DeadLetterStatus::Replayed));
    let unknown = fx.archive.resolve(&mut *tx, MessageId::new(), DeadLetterStatus::Discarded, None).await;
    assert_eq!(unknown.expect("resolve"), Resolution::NotFound);
    let pending = fx.archive.resolve(&mut *tx, letter.id, DeadLetterStatus::Pending, None).await;
    assert!(matches!(pending, Err(StoreError::Invalid(_))), "pending is not a resolution: {pending:?}");
    drop(tx);
}

/// Through the API: a replay marks the dead letter replayed and puts the replay in the outbox in
/// one commit — a new id, the original topic, key, payload and metadata, and the replay headers
/// naming the original id, the group and the dead letter. Replaying it again, or an unknown id,
/// is a typed error; a discarded one leaves the pending list.
pub async fn a_replay_commits_with_its_outbox_message<F: Future<Output = DeadLetterFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let api = fx.api();
    let topic = unique("orders");
    let letter = dead_letter(&topic, "billing", 5);
    let other = dead_letter(&topic, "shipping", 5);
    assert!(archive_committed(&fx, &letter).await);
    assert!(archive_committed(&fx, &other).await);
    assert!(outbox_of(&*fx.store, &topic).await.is_empty());

    let inspected = api.get(letter.id).await.expect("inspect");
    assert_eq!(inspected, letter);

    let replay = api.replay(letter.id).await.expect("replay");
    let outbox = outbox_of(&*fx.store, &topic).await;
    assert_eq!(outbox, vec![replay.clone()], "the replay is in the outbox, committed");
    assert_ne!(replay.id, letter.message.id, "a new transport id, so brokers do not drop it as a duplicate");
    assert_eq!(
        (&replay.topic, &replay.name, &replay.key, &replay.payload),
        (&letter.message.topic, &letter.message.name, &letter.message.key, &letter.message.payload)
    );
    let o = &letter.message.metadata;
    let r = &replay.metadata;
    assert_eq!((r.correlation_id, r.causation_id), (o.correlation_id, o.causation_id), "same conversation");
    assert_eq!((&r.traceparent, &r.tracestate), (&o.traceparent, &o.tracestate), "same trace");
    assert_eq!(r.occurred_at, o.occurred_at);
    assert_eq!(replay.header(REPLAY_OF), Some(letter.message.id.to_string().as_str()));
    assert_eq!(replay.header(REPLAY_FOR_GROUP), Some("billing"));
    assert_eq!(replay.header(REPLAYED_DEAD_LETTER), Some(letter.id.to_string().as_str()));

    let got = api.get(letter.id).await.expect("inspect");
    assert_eq!((got.status, got.replay_id), (DeadLetterStatus::Replayed, Some(replay.id)));

    match api.replay(letter.id).await {
        Err(DeadLetterError::NotPending { id, status: DeadLetterStatus::Replayed }) => assert_eq!(id, letter.id),
        other => panic!("replaying twice must be refused, got {other:?}"),
    }
    let unknown = MessageId::new();
    assert!(matches!(api.replay(unknown).await, Err(DeadLetterError::NotFound(id)) if id == unknown));
    assert!(matches!(api.get(unknown).await, Err(DeadLetterError::NotFound(_))));
    assert!(matches!(api.discard(unknown).await, Err(DeadLetterError::NotFound(_))));
    assert_eq!(outbox_of(&*fx.store, &topic).await.len(), 1, "refused replays enqueue nothing");

    let discarded = api.discard(other.id).await.expect("discard");
    assert_eq!(discarded.status, DeadLetterStatus::Discarded);
    let pending = api.list(&DeadLetterFilter::pending().topic(&topic), &Page::default()).await.expect("list");
    assert!(pending.is_empty(), "nothing pending: one replayed, one discarded");
    assert!(matches!(api.replay(other.id).await, Err(DeadLetterError::NotPending { .. })));
}

/// `replay_all` replays exactly the pending dead letters matching the filter, each once.
pub async fn replay_all_replays_each_matching_pending_dead_letter_once<F: Future<Output = DeadLetterFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let api = fx.api();
    let topic = unique("orders");
    let billing: Vec<_> = (0..5).map(|_| dead_letter(&topic, "billing", 1)).collect();
    let shipping = dead_letter(&topic, "shipping", 1);
    for l in billing.iter().chain([&shipping]) {
        assert!(archive_committed(&fx, l).await);
    }
    api.discard(billing[1].id).await.expect("discard");

    let n = api.replay_all(&DeadLetterFilter::all().topic(&topic).group("billing")).await.expect("replay_all");
    assert_eq!(n, 4, "the four pending billing dead letters");
    let (notices, replays): (Vec<_>, Vec<_>) =
        outbox_of(&*fx.store, &topic).await.into_iter().partition(herald::parking::is_discard_notice);
    assert_eq!(replays.len(), 4);
    assert!(replays.iter().all(|m| m.header(REPLAY_FOR_GROUP) == Some("billing")));
    // The discard of a keyed message tells its group, in the same transaction, that the key may
    // flow again (sequence-aware parking).
    assert_eq!(notices.len(), 1, "one discard notice");
    assert_eq!(notices[0].header(REPLAY_FOR_GROUP), Some("billing"));
    assert_eq!(notices[0].header(REPLAY_OF), Some(billing[1].message.id.to_string().as_str()));
    assert_eq!(notices[0].key, billing[1].message.key);
    assert_eq!(api.get(shipping.id).await.expect("get").status, DeadLetterStatus::Pending, "other groups untouched");
    assert_eq!(api.get(billing[1].id).await.expect("get").status, DeadLetterStatus::Discarded);
    assert_eq!(api.replay_all(&DeadLetterFilter::all().topic(&topic).group("billing")).await.expect("again"), 0);
}

/// Two concurrent resolutions of one dead letter (a replay and a discard): exactly one wins, and
/// the outbox holds a replay only if the replay won (a discard notice only if the discard won).
pub async fn of_two_concurrent_resolutions_exactly_one_wins<F: Future<Output = DeadLetterFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let api = fx.api();
    let topic = unique("orders");
    for _ in 0..5 {
        let letter = dead_letter(&topic, "billing", 1);
        assert!(archive_committed(&fx, &letter).await);
        let before = outbox_of(&*fx.store, &topic).await.len();
        let (a, b) = (api.clone(), api.clone());
        let (replayed, discarded) = tokio::join!(
            tokio::spawn(async move { a.replay(letter.id).await.map(|_| ()) }),
            tokio::spawn(async move { b.discard(letter.id).await.map(|_| ()) }),
        );
        let (replayed, discarded) = (replayed.expect("task"), discarded.expect("task"));
        let refused = |r: &Result<(), DeadLetterError>| {
            matches!(r, Err(DeadLetterError::NotPending { .. } | DeadLetterError::Store(StoreError::Conflict { .. })))
        };
        let status = api.get(letter.id).await.expect("get").status;
        let after = outbox_of(&*fx.store, &topic).await.len();
        match (&replayed, &discarded) {
            (Ok(()), d) if refused(d) => {
                assert_eq!(status, DeadLetterStatus::Replayed);
                assert_eq!(after, before + 1);
            }
            (r, Ok(())) if refused(r) => {
                assert_eq!(status, DeadLetterStatus::Discarded);
                assert_eq!(after, before + 1, "a losing replay enqueues nothing (the discard its notice)");
                let last = outbox_of(&*fx.store, &topic).await.pop().expect("the discard notice");
                assert!(herald::parking::is_discard_notice(&last), "only the discard's notice: {last:?}");
            }
            other => panic!("exactly one resolution must win, got {other:?}"),
        }
    }
}

/// `herald_dead_letters_pending{topic,group}` follows the archive: archiving a dead letter
/// raises its pair's count, a replay and a discard lower it, `replay_all` brings it to 0, and a
/// fresh sample (what a restarted process takes at start) reports the archive's count, also for
/// changes this process did not make.
pub async fn pending_dead_letters_gauge_follows_archive_replay_and_discard<F: Future<Output = DeadLetterFixture>>(
    setup: impl FnOnce() -> F,
) {
    // `run` polls the scenario on this thread, and the dead-letter API records from it.
    let gauges = Gauges::new();
    let _local = metrics::set_default_local_recorder(&gauges);
    let fx = setup().await;
    let api = fx.api();
    let topic = unique("orders");
    let dead = |group: &str| {
        let original = rich_message(&topic, "key-1");
        dead_letter_for(&original, group, 3, "boom", &format!("{topic}.{group}.dl"))
    };
    let pending = |group: &str| gauges.get(names::DEAD_LETTERS_PENDING, &topic, group);

    let billing: Vec<Message> = (0..3).map(|_| dead("billing")).collect();
    for d in &billing {
        assert!(api.archive_message(d).await.expect("archive"));
    }
    assert!(!api.archive_message(&billing[0]).await.expect("archive again"), "a duplicate is not archived");
    assert!(api.archive_message(&dead("shipping")).await.expect("archive"));
    assert_eq!(pending("billing"), Some(3.0), "each archived dead letter counts once");
    assert_eq!(pending("shipping"), Some(1.0), "per group");

    api.replay(billing[0].id).await.expect("replay");
    assert_eq!(pending("billing"), Some(2.0), "a replayed dead letter is no longer pending");
    api.discard(billing[1].id).await.expect("discard");
    assert_eq!(pending("billing"), Some(1.0), "nor is a discarded one");

    // Another process resolves one behind this process's back: only a sample sees it.
    let mut tx = fx.store.begin().await.expect("begin");
    let resolved = fx.archive.resolve(&mut *tx, billing[2].id, DeadLetterStatus::Discarded, None).await;
    assert!(matches!(resolved.expect("resolve"), Resolution::Resolved(_)));
    tx.commit().await.expect("commit");
    assert_eq!(pending("billing"), Some(1.0), "unchanged until sampled");
    let counts = fx.archive.pending_counts().await.expect("pending_counts");
    let mine: Vec<_> = counts.iter().filter(|c| c.topic == topic).map(|c| (c.group.as_str(), c.pending)).collect();
    assert_eq!(mine, vec![("shipping", 1)], "pending_counts leaves out pairs with nothing pending");
    api.record_pending().await.expect("record_pending");
    assert_eq!(pending("billing"), Some(0.0), "a pair with nothing pending left is reported as 0");
    assert_eq!(pending("shipping"), Some(1.0));

    assert_eq!(api.replay_all(&DeadLetterFilter::all().topic(&topic)).await.expect("replay_all"), 1);
    assert_eq!(pending("shipping"), Some(0.0), "replay_all updates the gauge too");
}
