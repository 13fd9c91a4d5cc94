//! The outbox scenarios (part of [`store_suite!`](crate::store_suite)): rows appear at commit in
//! order, vanish on rollback, and the [`OutboxRelay`] loses nothing when it crashes between
//! commit and publish or between publish and remove. Scheduled messages are published once at
//! or after their time, never before, hold nothing back, and outlive a relay's restart.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald::memory::MemoryBroker;
use herald::message::{Message, MessageId};
use herald::outbox::{OutboxRelay, RelayError};
use herald::pubsub::{PubSubError, Publisher, StartFrom, SubscribeOptions, Subscriber};
use herald::store::{ExpectedVersion, OutboxRecord, Store};
use tokio_util::sync::CancellationToken;

use crate::StoreFixture;
use crate::support::{
    QUIET, WAIT, collect_acking, event, expect_nothing, next_delivery, numbered, rich_message, unique,
};

/// This scenario's pending outbox rows (other scenarios may share the store).
async fn pending_on(store: &dyn Store, topic: &str) -> Vec<OutboxRecord> {
    let all = store.outbox_pending(100_000).await.expect("outbox_pending");
    all.into_iter().filter(|r| r.message.topic == topic).collect()
}

/// Commits `messages` to the outbox in one transaction, alongside an event (the state change).
async fn commit_outbox(store: &dyn Store, messages: Vec<Message>) {
    let mut tx = store.begin().await.expect("begin");
    tx.append(&unique("outbox-state"), ExpectedVersion::NoStream, vec![event(1)]).await.expect("append");
    tx.enqueue(messages).await.expect("enqueue");
    tx.commit().await.expect("commit");
}

fn message_ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

/// Enqueued messages are invisible to the relay until commit, then listed oldest first with
/// increasing sequences and intact, and gone after `outbox_remove`.
pub async fn outbox_messages_are_invisible_before_commit_and_in_order_after<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let topic = unique("outbox");
    let first: Vec<Message> = (0..3).map(|i| numbered(&topic, "k", i)).chain([rich_message(&topic, "k")]).collect();
    let second: Vec<Message> = (10..12).map(|i| numbered(&topic, "k", i)).collect();

    let mut tx = store.begin().await.expect("begin");
    tx.enqueue(first[..2].to_vec()).await.expect("enqueue");
    tx.enqueue(first[2..].to_vec()).await.expect("enqueue again");
    assert!(pending_on(store, &topic).await.is_empty(), "nothing is visible before commit");
    tx.commit().await.expect("commit");

    commit_outbox(store, second.clone()).await;
    let pending = pending_on(store, &topic).await;
    let got: Vec<Message> = pending.iter().map(|r| r.message.clone()).collect();
    let expected: Vec<Message> = first.iter().chain(&second).cloned().collect();
    assert_eq!(message_ids(&got), message_ids(&expected), "commit order, then enqueue order");
    assert_eq!(got, expected, "messages intact");
    assert!(pending.windows(2).all(|w| w[0].sequence < w[1].sequence), "sequences increase");

    let oldest = store.outbox_pending(1).await.expect("outbox_pending(1)");
    assert_eq!(oldest.len(), 1, "the limit is honoured");

    // The relay's gauges: at least these rows (other scenarios may share the store), the oldest
    // enqueued no later than now.
    let stats = store.outbox_stats().await.expect("outbox_stats");
    assert!(stats.backlog >= pending.len() as u64, "backlog {} < {}", stats.backlog, pending.len());
    let enqueued = stats.oldest.expect("an oldest message");
    assert!(enqueued <= chrono::Utc::now() + chrono::Duration::seconds(1), "oldest {enqueued} is in the future");

    let (done, rest) = pending.split_at(2);
    let sequences: Vec<u64> = done.iter().map(|r| r.sequence).collect();
    store.outbox_remove(&sequences).await.expect("outbox_remove");
    let left: Vec<u64> = pending_on(store, &topic).await.iter().map(|r| r.sequence).collect();
    assert_eq!(left, rest.iter().map(|r| r.sequence).collect::<Vec<_>>(), "only the removed rows are gone");
    store.outbox_remove(&left).await.expect("outbox_remove the rest");
    assert!(pending_on(store, &topic).await.is_empty(), "all removed");
}

/// A transaction that is dropped, or fails on a conflict, leaves no outbox rows.
pub async fn a_rolled_back_transaction_leaves_no_outbox_rows<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let topic = unique("outbox-rollback");
    {
        let mut tx = store.begin().await.expect("begin");
        tx.enqueue((0..3).map(|i| numbered(&topic, "k", i)).collect()).await.expect("enqueue");
    }
    assert!(pending_on(store, &topic).await.is_empty(), "a dropped transaction leaves no rows");

    let stream = unique("outbox-conflict");
    store.append(&stream, ExpectedVersion::NoStream, vec![event(1)]).await.expect("prepare");
    {
        let mut tx = store.begin().await.expect("begin");
        tx.enqueue(vec![numbered(&topic, "k", 9)]).await.expect("enqueue");
        let conflicted = tx.append(&stream, ExpectedVersion::NoStream, vec![event(2)]).await;
        let failed = match conflicted {
            Err(e) => {
                assert!(e.is_conflict(), "a stale append conflicts: {e}");
                true
            }
            Ok(_) => tx.commit().await.is_err(),
        };
        assert!(failed, "the unit of work with a stale append must fail");
    }
    assert!(pending_on(store, &topic).await.is_empty(), "a failed unit of work leaves no rows");
}

/// The relay publishes committed messages in outbox order (in several batches) and removes them.
pub async fn the_relay_publishes_in_order_and_removes<F: Future<Output = StoreFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let broker = MemoryBroker::in_memory();
    let topic = unique("relayed");
    let mut sub = broker.subscribe(SubscribeOptions::new(&topic, "reader")).await.expect("subscribe");
    let sent: Vec<Message> = (0..10).map(|i| numbered(&topic, "order-1", i)).collect();
    commit_outbox(&*fx.store, sent[..4].to_vec()).await;
    commit_outbox(&*fx.store, sent[4..].to_vec()).await;

    let relay = OutboxRelay::new(fx.store.clone(), Arc::new(broker.clone())).batch(3);
    let published = relay.publish_pending().await.expect("publish_pending");
    assert!(published >= sent.len(), "published {published} of {} messages", sent.len());
    assert!(pending_on(&*fx.store, &topic).await.is_empty(), "published messages are removed");

    let got = collect_acking(&mut sub, sent.len(), WAIT).await;
    let got_messages: Vec<Message> = got.into_iter().map(|d| d.message).collect();
    assert_eq!(message_ids(&got_messages), message_ids(&sent), "published in outbox order");
    assert_eq!(got_messages, sent, "published intact");
    assert_eq!(relay.publish_pending().await.expect("second pass"), 0, "nothing left to publish");
    expect_nothing(&mut sub, QUIET, "each message was published once").await;
}

/// A publisher that fails, either before passing the messages on (the broker is down) or after
/// (the broker took them, then the relay "died" before it could remove them).
#[derive(Debug)]
struct Crashing {
    inner: MemoryBroker,
    forward_first: bool,
    calls: AtomicUsize,
}

#[async_trait]
impl Publisher for Crashing {
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.forward_first {
            self.inner.publish(messages).await?;
        }
        Err(PubSubError::backend(std::io::Error::other("simulated crash of the relay")))
    }

    async fn close(&self) -> Result<(), PubSubError> {
        Ok(())
    }
}

/// Committed outbox rows survive a relay that never ran and one whose broker was down; a new
/// relay on the same store publishes all of them.
pub async fn a_crash_between_commit_and_publish_loses_nothing<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let topic = unique("crash-before-publish");
    let sent: Vec<Message> = (0..5).map(|i| numbered(&topic, "k", i)).collect();
    commit_outbox(&*fx.store, sent.clone()).await;

    // A relay that is created and "killed" before its first pass.
    drop(OutboxRelay::new(fx.store.clone(), Arc::new(MemoryBroker::in_memory())));

    // A relay whose broker refuses everything. (Every relay here has one stable name, as a
    // restarted relay process would: it takes its own lease back at once.)
    let down =
        Arc::new(Crashing { inner: MemoryBroker::in_memory(), forward_first: false, calls: AtomicUsize::new(0) });
    match OutboxRelay::new(fx.store.clone(), down.clone()).holder("relay-a").publish_pending().await {
        Err(RelayError::Publish(_)) => {}
        other => panic!("a relay whose publisher fails must report it, got {other:?}"),
    }
    assert!(down.calls.load(Ordering::SeqCst) >= 1);
    assert_eq!(pending_on(&*fx.store, &topic).await.len(), sent.len(), "nothing left the outbox");

    // Restart: a fresh relay and broker.
    let broker = MemoryBroker::in_memory();
    let mut sub =
        broker.subscribe(SubscribeOptions::new(&topic, "reader").start(StartFrom::Beginning)).await.expect("subscribe");
    let relay = OutboxRelay::new(fx.store.clone(), Arc::new(broker.clone())).holder("relay-a");
    relay.publish_pending().await.expect("publish_pending after restart");
    let got = collect_acking(&mut sub, sent.len(), WAIT).await;
    let got_ids: Vec<MessageId> = got.iter().map(|d| d.message.id).collect();
    assert_eq!(got_ids, message_ids(&sent), "every committed message is published, in order");
    assert!(pending_on(&*fx.store, &topic).await.is_empty(), "and removed");
}

/// The broker accepted a batch but the relay died before removing it: a second relay publishes
/// the same ids again, and a consumer using the store's inbox handles each exactly once.
pub async fn a_crash_between_publish_and_remove_is_absorbed_by_the_inbox<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let broker = MemoryBroker::in_memory();
    let topic = unique("crash-after-publish");
    let mut sub = broker.subscribe(SubscribeOptions::new(&topic, "consumer")).await.expect("subscribe");
    let sent: Vec<Message> = (0..5).map(|i| numbered(&topic, "k", i)).collect();
    commit_outbox(store, sent.clone()).await;

    let dying = Arc::new(Crashing { inner: broker.clone(), forward_first: true, calls: AtomicUsize::new(0) });
    match OutboxRelay::new(fx.store.clone(), dying).holder("relay-a").publish_pending().await {
        Err(RelayError::Publish(_)) => {}
        other => panic!("the dying relay must fail its pass, got {other:?}"),
    }
    assert_eq!(pending_on(store, &topic).await.len(), sent.len(), "not removed: the relay died first");

    let restarted = OutboxRelay::new(fx.store.clone(), Arc::new(broker.clone())).holder("relay-a");
    restarted.publish_pending().await.expect("second relay");
    assert!(pending_on(store, &topic).await.is_empty(), "the second relay removed them");

    let handler = unique("inbox-handler");
    let mut handled: HashMap<MessageId, u32> = HashMap::new();
    let mut published: HashMap<MessageId, u32> = HashMap::new();
    for n in 0..sent.len() * 2 {
        // One at a time: the copies share a key, so each waits for the previous settlement.
        let d = next_delivery(&mut sub, WAIT, &format!("delivery {} of {}", n + 1, sent.len() * 2)).await;
        let id = d.message.id;
        *published.entry(id).or_default() += 1;
        let mut tx = store.begin().await.expect("begin");
        if tx.record_handled(&handler, id).await.expect("record_handled") {
            tx.commit().await.expect("commit");
            *handled.entry(id).or_default() += 1;
        }
        d.ack().await.expect("ack");
    }
    let expected: BTreeSet<MessageId> = sent.iter().map(|m| m.id).collect();
    assert!(published.values().all(|n| *n == 2), "each message was published twice (same id): {published:?}");
    assert_eq!(handled.keys().copied().collect::<BTreeSet<_>>(), expected, "every message handled");
    assert!(handled.values().all(|n| *n == 1), "none handled twice: {handled:?}");
    expect_nothing(&mut sub, QUIET, "no third copy").await;
}

/// Counts how many relays publish at the same moment (the lease allows one).
#[derive(Debug)]
struct Overlap {
    inner: MemoryBroker,
    now: AtomicUsize,
    most: AtomicUsize,
}

#[async_trait]
impl Publisher for Overlap {
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            // Also when the relay's task is aborted mid-publish.
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        let _leave = Leave(&self.now);
        self.most.fetch_max(now, Ordering::SeqCst);
        // Long enough for a second relay to collide if nothing kept it out.
        tokio::time::sleep(Duration::from_millis(3)).await;
        self.inner.publish(messages).await
    }

    async fn close(&self) -> Result<(), PubSubError> {
        Ok(())
    }
}

/// Three relays (two on a second store handle, as other processes) run at once while messages
/// are committed: one publishes at a time, so every message arrives in outbox order per key;
/// the relay that dies without releasing is replaced when its lease runs out, and one that
/// stops cleanly hands over at once. Nothing is lost.
pub async fn several_relays_take_turns_and_a_standby_takes_over_from_a_dead_one<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let broker = MemoryBroker::in_memory();
    let topic = unique("several-relays");
    let mut sub = broker.subscribe(SubscribeOptions::new(&topic, "reader")).await.expect("subscribe");
    let publisher = Arc::new(Overlap { inner: broker.clone(), now: AtomicUsize::new(0), most: AtomicUsize::new(0) });
    let ttl = Duration::from_millis(500);
    let relay = |store: &Arc<dyn Store>, name: &str| {
        OutboxRelay::new(store.clone(), publisher.clone()).holder(name).lease_ttl(ttl).batch(7)
    };
    let stop_all = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = tokio::spawn(relay(&fx.store, "relay-a").run(stop_all.clone()));
    let b = tokio::spawn(relay(&fx.other, "relay-b").run(stop_b.clone()));
    let c = tokio::spawn(relay(&fx.other, "relay-c").run(stop_all.clone()));

    let keys = ["k0", "k1", "k2"];
    let mut sent = Vec::new();
    for round in 0..60u64 {
        let batch: Vec<Message> = keys.iter().map(|k| numbered(&topic, k, round)).collect();
        sent.extend(batch.iter().cloned());
        commit_outbox(&*fx.store, batch).await;
        match round {
            // One relay dies without a word (its lease is left to run out) ...
            20 => a.abort(),
            // ... and one stops cleanly (releasing the lease).
            40 => stop_b.cancel(),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut first_seen: Vec<MessageId> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while first_seen.len() < sent.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let d = next_delivery(&mut sub, left, &format!("message {} of {}", first_seen.len() + 1, sent.len())).await;
        if !first_seen.contains(&d.message.id) {
            first_seen.push(d.message.id);
        }
        d.ack().await.expect("ack");
    }
    stop_all.cancel();
    let _ = a.await;
    b.await.expect("relay b stopped cleanly");
    c.await.expect("relay c stopped cleanly");

    assert_eq!(publisher.most.load(Ordering::SeqCst), 1, "never more than one relay publishing at a time");
    for key in keys {
        let expected: Vec<MessageId> = sent.iter().filter(|m| m.key == key).map(|m| m.id).collect();
        let got: Vec<MessageId> = first_seen.iter().copied().filter(|id| expected.contains(id)).collect();
        assert_eq!(got, expected, "key {key}: every message, first seen in commit order");
    }
    assert!(pending_on(&*fx.store, &topic).await.is_empty(), "the outbox is empty");
}

/// Commits `messages` scheduled for `at`, alongside an event (the state change).
async fn commit_scheduled(store: &dyn Store, messages: Vec<Message>, at: DateTime<Utc>) {
    let mut tx = store.begin().await.expect("begin");
    tx.append(&unique("scheduled-state"), ExpectedVersion::NoStream, vec![event(1)]).await.expect("append");
    tx.schedule(messages, at).await.expect("schedule");
    tx.commit().await.expect("commit");
}

/// How far ahead the timing scenarios schedule: long enough to look at the outbox before the
/// time, short enough to keep the suite quick.
const AHEAD: Duration = Duration::from_millis(1500);

/// A message scheduled for a time is not listed, counted or published before it, even by a
/// running relay woken by the commit; at its time the relay publishes it, intact, once, and
/// nothing is left scheduled.
pub async fn a_scheduled_message_is_published_once_at_its_time_not_before<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let broker = MemoryBroker::in_memory();
    let topic = unique("scheduled");
    let mut sub = broker.subscribe(SubscribeOptions::new(&topic, "reader")).await.expect("subscribe");
    let stop = CancellationToken::new();
    let relay = tokio::spawn(OutboxRelay::new(fx.store.clone(), Arc::new(broker.clone())).run(stop.clone()));

    let message = rich_message(&topic, "k");
    let at = Utc::now() + AHEAD;
    commit_scheduled(&*fx.store, vec![message.clone()], at).await;

    let listed = pending_on(&*fx.store, &topic).await;
    let stats = fx.store.outbox_stats().await.expect("outbox_stats");
    let next = fx.store.next_scheduled().await.expect("next_scheduled");
    if Utc::now() < at {
        // Every read above ran before the time, by any clock in step with this one.
        assert!(listed.is_empty(), "listed before its time: {listed:?}");
        assert_eq!(stats.backlog, 0, "a message waiting for its time is no backlog: {stats:?}");
        let next = next.expect("the scheduled message's due time");
        // Stores may keep due times in whole milliseconds (rounded up, so never early) and
        // read their clock floored: up to two milliseconds of slack, never more.
        let slack = Duration::from_millis(2);
        assert!(next <= AHEAD + slack, "due in {next:?}, scheduled {AHEAD:?} ahead");
    }

    let delivery = next_delivery(&mut sub, WAIT, "the scheduled message").await;
    let received = Utc::now();
    assert!(received >= at, "published at {received}, before its time {at}");
    assert_eq!(delivery.message, message, "published intact");
    delivery.ack().await.expect("ack");
    expect_nothing(&mut sub, QUIET, "a scheduled message is published once").await;
    assert!(pending_on(&*fx.store, &topic).await.is_empty(), "removed once published");
    assert_eq!(fx.store.next_scheduled().await.expect("next_scheduled"), None, "nothing left scheduled");
    stop.cancel();
    relay.await.expect("the relay stopped cleanly");
}

/// Scheduled messages hold nothing back: a message scheduled for later stays put while
/// messages enqueued after it (same key) are published; one scheduled in the past is due at
/// once, in outbox order among the due; one scheduled in a dropped unit of work never exists.
pub async fn a_scheduled_message_holds_back_nothing_and_a_past_time_means_now<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let broker = MemoryBroker::in_memory();
    let topic = unique("scheduled-order");
    let mut sub = broker.subscribe(SubscribeOptions::new(&topic, "reader")).await.expect("subscribe");
    let relay = OutboxRelay::new(fx.store.clone(), Arc::new(broker.clone())).holder("relay-a");

    {
        let mut tx = store.begin().await.expect("begin");
        tx.schedule(vec![numbered(&topic, "k", 0)], Utc::now()).await.expect("schedule");
    }
    assert_eq!(store.next_scheduled().await.expect("next_scheduled"), None, "a dropped unit schedules nothing");

    let later = numbered(&topic, "k", 1);
    commit_scheduled(store, vec![later.clone()], Utc::now() + chrono::Duration::hours(1)).await;
    let immediate: Vec<Message> = (2..4).map(|i| numbered(&topic, "k", i)).collect();
    commit_outbox(store, immediate.clone()).await;
    assert_eq!(relay.publish_pending().await.expect("publish_pending"), immediate.len(), "only the due messages");
    let got = collect_acking(&mut sub, immediate.len(), WAIT).await;
    let got: Vec<Message> = got.into_iter().map(|a| a.message).collect();
    assert_eq!(message_ids(&got), message_ids(&immediate), "enqueued after it, published before it");
    assert!(pending_on(store, &topic).await.is_empty(), "the later one is not listed");
    assert_eq!(store.outbox_stats().await.expect("outbox_stats").backlog, 0, "nor counted");
    let next = store.next_scheduled().await.expect("next_scheduled").expect("still scheduled");
    assert!(next > Duration::from_secs(3000), "due in about an hour, not {next:?}");

    // A past time means now, and the outbox order holds among due messages.
    let past = numbered(&topic, "k", 4);
    commit_scheduled(store, vec![past.clone()], Utc::now() - chrono::Duration::hours(1)).await;
    let after = numbered(&topic, "k", 5);
    commit_outbox(store, vec![after.clone()]).await;
    let listed: Vec<Message> = pending_on(store, &topic).await.into_iter().map(|r| r.message).collect();
    assert_eq!(message_ids(&listed), message_ids(&[past.clone(), after.clone()]), "due at once, in outbox order");
    assert_eq!(store.outbox_stats().await.expect("outbox_stats").backlog, 2, "both count as backlog");
    relay.publish_pending().await.expect("publish_pending");
    let got: Vec<Message> = collect_acking(&mut sub, 2, WAIT).await.into_iter().map(|a| a.message).collect();
    assert_eq!(message_ids(&got), message_ids(&[past, after]), "published in outbox order");
    expect_nothing(&mut sub, QUIET, "the hour-later message stays scheduled").await;
    let next = store.next_scheduled().await.expect("next_scheduled").expect("the later one is left");
    assert!(next > Duration::from_secs(3000), "the later one is left, due in {next:?}");
}

/// Scheduled messages are durable: scheduled through one handle, with the relay there stopped
/// before their time, a relay started later on another handle (a restarted process) publishes
/// them at their time, each once.
pub async fn a_scheduled_message_survives_a_restart<F: Future<Output = StoreFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let broker = MemoryBroker::in_memory();
    let topic = unique("scheduled-restart");
    let mut sub = broker.subscribe(SubscribeOptions::new(&topic, "reader")).await.expect("subscribe");
    let stop_first = CancellationToken::new();
    let first = tokio::spawn(OutboxRelay::new(fx.store.clone(), Arc::new(broker.clone())).run(stop_first.clone()));

    let sent: Vec<Message> = (0..3).map(|i| numbered(&topic, &format!("k{i}"), i)).collect();
    let at = Utc::now() + AHEAD;
    commit_scheduled(&*fx.store, sent.clone(), at).await;
    stop_first.cancel();
    first.await.expect("the first relay stopped cleanly");
    let stopped = Utc::now();

    let stop = CancellationToken::new();
    let restarted = tokio::spawn(OutboxRelay::new(fx.other.clone(), Arc::new(broker.clone())).run(stop.clone()));
    let got = collect_acking(&mut sub, sent.len(), WAIT).await;
    let received = Utc::now();
    assert!(received >= at, "published at {received}, before its time {at}");
    let got: Vec<Message> = got.into_iter().map(|a| a.message).collect();
    assert_eq!(message_ids(&got), message_ids(&sent), "every scheduled message, in outbox order");
    expect_nothing(&mut sub, QUIET, "each published once").await;
    assert!(
        stopped < at || fx.store.next_scheduled().await.expect("next_scheduled").is_none(),
        "the messages outlived the first relay"
    );
    assert_eq!(fx.other.next_scheduled().await.expect("next_scheduled"), None, "nothing left scheduled");
    stop.cancel();
    restarted.await.expect("the restarted relay stopped cleanly");
}
