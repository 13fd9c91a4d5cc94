//! The pub/sub scenarios: each function is one test of [`pubsub_suite!`](crate::pubsub_suite),
//! checking one promise of the contract in [`herald::pubsub`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use herald::memory::MemoryStore;
use herald::message::{Message, MessageId};
use herald::pubsub::{
    DLQ_ATTEMPTS, DLQ_GROUP, DLQ_ORIGINAL_ID, DLQ_ORIGINAL_TOPIC, DLQ_REASON, Delivery, PubSubError, Publisher,
    StartFrom, SubscribeOptions, Subscriber, Subscription,
};
use herald::store::Store;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::PubSubFixture;
use crate::support::{
    Acked, QUIET, WAIT, ack_all, capture_warnings, collect, collect_acking, consume, eventually_while_running,
    expect_nothing, join_all, next_delivery, numbered, rich_message, seq_of, supports, unique,
};

/// Subscribes or panics with the options that failed.
async fn subscribe(subscriber: &dyn Subscriber, options: SubscribeOptions) -> Subscription {
    let shown = format!("{options:?}");
    subscriber.subscribe(options).await.unwrap_or_else(|e| panic!("subscribe with {shown} failed: {e}"))
}

/// Publishes or panics.
async fn publish(publisher: &dyn Publisher, messages: &[Message]) {
    publisher
        .publish(messages)
        .await
        .unwrap_or_else(|e| panic!("publishing {} message(s) failed: {e}", messages.len()));
}

/// Publishes each message on its own, one after the other, so their order is unambiguous.
async fn publish_one_by_one(publisher: &dyn Publisher, messages: &[Message]) {
    for m in messages {
        publish(publisher, std::slice::from_ref(m)).await;
    }
}

fn ids(messages: &[Message]) -> BTreeSet<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

fn delivered_ids(deliveries: &[Delivery]) -> BTreeSet<MessageId> {
    deliveries.iter().map(|d| d.message.id).collect()
}

fn acked_ids(acked: &[Acked]) -> BTreeSet<MessageId> {
    acked.iter().map(|a| a.message.id).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler already fails the scenario; the data is still worth reading.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A message's name, key, payload and metadata arrive exactly as published, including empty
/// and absent values and a non-UTF-8 payload.
pub async fn a_published_message_arrives_intact<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let topic = unique("round-trip");
    let mut sub = subscribe(&*fx.subscriber, SubscribeOptions::new(&topic, unique("group"))).await;

    let rich = rich_message(&topic, "order-1");
    let plain = Message::new(&topic, "conformance.Empty.v1", Vec::new());
    publish(&*fx.publisher, &[rich.clone(), plain.clone()]).await;

    let got = collect(&mut sub, 2, WAIT).await;
    for sent in [&rich, &plain] {
        let d = got
            .iter()
            .find(|d| d.message.id == sent.id)
            .unwrap_or_else(|| panic!("message {} ({}) was not delivered", sent.id, sent.name));
        assert_eq!(d.attempt, 1, "a first delivery has attempt 1");
        let m = &d.message;
        assert_eq!(m.topic, sent.topic, "topic");
        assert_eq!(m.name, sent.name, "name");
        assert_eq!(m.key, sent.key, "key");
        assert_eq!(m.payload, sent.payload, "payload bytes");
        assert_eq!(m.metadata.correlation_id, sent.metadata.correlation_id, "correlation id");
        assert_eq!(m.metadata.causation_id, sent.metadata.causation_id, "causation id");
        assert_eq!(m.metadata.traceparent, sent.metadata.traceparent, "traceparent");
        assert_eq!(m.metadata.tracestate, sent.metadata.tracestate, "tracestate");
        assert_eq!(m.metadata.occurred_at, sent.metadata.occurred_at, "occurred_at");
        assert_eq!(m.metadata.content_type, sent.metadata.content_type, "content type");
        assert_eq!(m.metadata.headers, sent.metadata.headers, "headers");
        assert_eq!(m, sent, "the whole message");
    }
    ack_all(got).await;
    expect_nothing(&mut sub, QUIET, "acked messages are not delivered again").await;
}

/// A subscription receives the messages of its topic and none of another topic's, even when
/// the groups have the same name.
pub async fn subscribers_receive_only_their_own_topic<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let (topic_a, topic_b, group) = (unique("isolation-a"), unique("isolation-b"), unique("group"));
    let mut sub_a = subscribe(&*fx.subscriber, SubscribeOptions::new(&topic_a, &group)).await;
    let mut sub_b = subscribe(&*fx.subscriber, SubscribeOptions::new(&topic_b, &group)).await;

    let on_a: Vec<_> = (0..3).map(|i| numbered(&topic_a, "", i)).collect();
    let on_b: Vec<_> = (0..2).map(|i| numbered(&topic_b, "", i)).collect();
    let mut both = on_a.clone();
    both.extend(on_b.iter().cloned());
    publish(&*fx.publisher, &both).await;

    let got_a = collect(&mut sub_a, 3, WAIT).await;
    let got_b = collect(&mut sub_b, 2, WAIT).await;
    assert_eq!(delivered_ids(&got_a), ids(&on_a), "topic A's subscription gets exactly topic A's messages");
    assert_eq!(delivered_ids(&got_b), ids(&on_b), "topic B's subscription gets exactly topic B's messages");
    assert!(got_a.iter().all(|d| d.message.topic == topic_a));
    assert!(got_b.iter().all(|d| d.message.topic == topic_b));
    ack_all(got_a).await;
    ack_all(got_b).await;
    expect_nothing(&mut sub_a, QUIET, "nothing else was published to topic A").await;
    expect_nothing(&mut sub_b, QUIET, "nothing else was published to topic B").await;
}

/// Two groups on one topic each receive every message (fan-out).
pub async fn every_group_receives_every_message<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "groups", caps.groups) {
        return;
    }
    let topic = unique("fan-out");
    let mut first = subscribe(&*fx.subscriber, SubscribeOptions::new(&topic, unique("group-1"))).await;
    let mut second = subscribe(&*fx.other_subscriber, SubscribeOptions::new(&topic, unique("group-2"))).await;

    let sent: Vec<_> = (0..20).map(|i| numbered(&topic, &format!("k{}", i % 4), i)).collect();
    publish(&*fx.publisher, &sent).await;

    for (name, sub) in [("first group", &mut first), ("second group", &mut second)] {
        let got = collect_acking(sub, sent.len(), WAIT).await;
        assert_eq!(acked_ids(&got), ids(&sent), "the {name} receives every message");
    }
    expect_nothing(&mut first, QUIET, "each group gets each message once").await;
    expect_nothing(&mut second, QUIET, "each group gets each message once").await;
}

/// Two subscriptions of one group (on independent subscribers) split the group's messages:
/// each gets some, together they get all, and no message is acked twice.
pub async fn subscriptions_in_one_group_share_the_work<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "groups", caps.groups) {
        return;
    }
    let (topic, group) = (unique("competing"), unique("workers"));
    let options = SubscribeOptions::new(&topic, &group).max_in_flight(4);
    let subs = [subscribe(&*fx.subscriber, options.clone()).await, subscribe(&*fx.other_subscriber, options).await];

    #[derive(Default)]
    struct Tally {
        by_consumer: [HashSet<MessageId>; 2],
        acks: HashMap<MessageId, u32>,
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut consumers = JoinSet::new();
    for (i, sub) in subs.into_iter().enumerate() {
        let tally = tally.clone();
        consumers.spawn(consume(sub, move |d: Delivery| {
            let tally = tally.clone();
            async move {
                // A little work, so one consumer cannot drain the topic before the other starts.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let id = d.message.id;
                d.ack().await.unwrap_or_else(|e| panic!("ack of {id} failed: {e}"));
                let mut t = lock(&tally);
                t.by_consumer[i].insert(id);
                *t.acks.entry(id).or_default() += 1;
            }
        }));
    }

    let sent: Vec<_> = (0..200).map(|i| numbered(&topic, "", i)).collect();
    for batch in sent.chunks(10) {
        publish(&*fx.publisher, batch).await;
    }
    eventually_while_running(&mut consumers, WAIT, "all 200 messages to be acked", || {
        let done = lock(&tally).acks.len() == sent.len();
        async move { done }
    })
    .await;
    tokio::time::sleep(QUIET).await; // room for a wrongful duplicate to show up

    let t = lock(&tally);
    let twice: Vec<_> = t.acks.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "messages acked more than once: {twice:?}");
    let union: BTreeSet<_> = t.by_consumer[0].union(&t.by_consumer[1]).copied().collect();
    assert_eq!(union, ids(&sent), "together the consumers handled every message");
    assert!(
        !t.by_consumer[0].is_empty() && !t.by_consumer[1].is_empty(),
        "both consumers got work: {} and {}",
        t.by_consumer[0].len(),
        t.by_consumer[1].len()
    );
}

/// A nacked message comes back with the next attempt number, and not before its delay.
pub async fn a_nacked_message_is_redelivered_after_its_delay<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    let topic = unique("nack");
    let mut sub = subscribe(&*fx.subscriber, SubscribeOptions::new(&topic, unique("group"))).await;
    let sent = rich_message(&topic, "k");
    publish(&*fx.publisher, std::slice::from_ref(&sent)).await;

    let first = next_delivery(&mut sub, WAIT, "the first delivery").await;
    assert_eq!((first.message.id, first.attempt), (sent.id, 1));
    let delayed = supports(caps, "delayed_nack (redelivery is still checked, its delay is not)", caps.delayed_nack);
    let delay = if delayed { Duration::from_millis(300) } else { Duration::ZERO };
    let nacked_at = Instant::now();
    first.nack(delay).await.expect("nack");

    let again = next_delivery(&mut sub, WAIT, "the redelivery after a nack").await;
    let waited = nacked_at.elapsed();
    assert_eq!(again.message, sent, "the redelivered message is the same message");
    assert_eq!(again.attempt, 2, "the redelivery is attempt 2");
    if delayed {
        assert!(waited >= Duration::from_millis(250), "redelivered {waited:?} after a nack with a 300 ms delay");
    }
    again.ack().await.expect("ack");
    expect_nothing(&mut sub, QUIET, "an acked message is not delivered again").await;
}

/// A delivery held without a settlement past its ack wait is delivered again.
pub async fn a_message_not_acked_within_ack_wait_is_redelivered<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "ack_wait_redelivery", caps.ack_wait_redelivery) {
        return;
    }
    let topic = unique("ack-wait");
    let options = SubscribeOptions::new(&topic, unique("group")).ack_wait(Duration::from_millis(300));
    let mut sub = subscribe(&*fx.subscriber, options).await;
    let sent = numbered(&topic, "k", 1);
    publish(&*fx.publisher, std::slice::from_ref(&sent)).await;

    let held = next_delivery(&mut sub, WAIT, "the first delivery").await;
    let received_at = Instant::now();
    assert_eq!((held.message.id, held.attempt), (sent.id, 1));
    let again = next_delivery(&mut sub, WAIT, "the redelivery after the ack wait").await;
    let waited = received_at.elapsed();
    assert_eq!((again.message.id, again.attempt), (sent.id, 2), "the same message, attempt 2");
    assert!(waited >= Duration::from_millis(250), "redelivered {waited:?} after delivery with a 300 ms ack wait");
    again.ack().await.expect("acking the redelivery");
    drop(held);
    expect_nothing(&mut sub, Duration::from_millis(600), "the redelivery was acked").await;
}

/// Settling a delivery whose lease expired and whose message went out again is refused with
/// `LeaseLost`; the current delivery's settlement counts.
pub async fn a_settlement_after_the_lease_was_lost_is_refused<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "ack_wait_redelivery", caps.ack_wait_redelivery) {
        return;
    }
    let topic = unique("lease-lost");
    let options = SubscribeOptions::new(&topic, unique("group")).ack_wait(Duration::from_millis(300));
    let mut sub = subscribe(&*fx.subscriber, options).await;
    let sent = numbered(&topic, "k", 1);
    publish(&*fx.publisher, std::slice::from_ref(&sent)).await;

    let stale = next_delivery(&mut sub, WAIT, "the first delivery").await;
    let current = next_delivery(&mut sub, WAIT, "the redelivery after the ack wait").await;
    assert_eq!((current.message.id, current.attempt), (sent.id, 2));
    match stale.ack().await {
        Err(PubSubError::LeaseLost) => {}
        other => panic!("acking a delivery whose lease was lost must give LeaseLost, got {other:?}"),
    }
    current.ack().await.expect("acking the current delivery");
    expect_nothing(&mut sub, Duration::from_millis(600), "the current delivery was acked").await;
}

/// Acks settled at the same time, of two groups and mixed with acks of deliveries whose lease
/// was lost, each get their own outcome (brokers may write concurrent acks together).
pub async fn concurrent_acks_each_get_their_own_outcome<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "groups", caps.groups) || !supports(caps, "ack_wait_redelivery", caps.ack_wait_redelivery) {
        return;
    }
    let topic = unique("concurrent-acks");
    let lapsing = SubscribeOptions::new(&topic, unique("lapsing")).ack_wait(Duration::from_secs(1));
    let steady = SubscribeOptions::new(&topic, unique("steady")).ack_wait(Duration::from_secs(30));
    let (mut lapsing, mut steady) =
        (subscribe(&*fx.subscriber, lapsing).await, subscribe(&*fx.other_subscriber, steady).await);
    let sent: Vec<_> = (0..20).map(|i| numbered(&topic, &format!("k{i}"), i)).collect();
    publish(&*fx.publisher, &sent).await;

    let stale = collect(&mut lapsing, sent.len(), WAIT).await;
    let current = collect(&mut lapsing, sent.len(), WAIT).await; // after the 1 s ack wait
    assert!(current.iter().all(|d| d.attempt == 2), "the second round is the redelivery");
    let fresh = collect(&mut steady, sent.len(), WAIT).await;
    assert_eq!(delivered_ids(&fresh), ids(&sent));

    let mut acks = JoinSet::new();
    for (kind, deliveries) in [("stale", stale), ("current", current), ("fresh", fresh)] {
        for d in deliveries {
            acks.spawn(async move { (kind, d.message.id, d.ack().await) });
        }
    }
    let mut acked = HashMap::<&str, usize>::new();
    while let Some(joined) = acks.join_next().await {
        let Some((kind, id, outcome)) = crate::support::reraise(joined) else { continue };
        match (kind, outcome) {
            ("stale", Err(PubSubError::LeaseLost)) | ("current" | "fresh", Ok(())) => {
                *acked.entry(kind).or_default() += 1;
            }
            (kind, outcome) => panic!("ack of {kind} delivery of {id}: unexpected {outcome:?}"),
        }
    }
    assert_eq!(acked, HashMap::from([("stale", 20), ("current", 20), ("fresh", 20)]));
    expect_nothing(&mut lapsing, Duration::from_millis(1500), "every current delivery was acked").await;
    expect_nothing(&mut steady, QUIET, "every delivery was acked").await;
}

/// A consumer that goes away holding unacked deliveries does not lose them: another
/// subscription of the group (on another subscriber) receives them.
pub async fn a_dropped_consumers_messages_are_redelivered_to_another<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "groups", caps.groups) || !supports(caps, "ack_wait_redelivery", caps.ack_wait_redelivery) {
        return;
    }
    let topic = unique("dropped-consumer");
    let options = SubscribeOptions::new(&topic, unique("group")).ack_wait(Duration::from_millis(300));
    let mut first = subscribe(&*fx.subscriber, options.clone()).await;
    let sent: Vec<_> = (0..5).map(|i| numbered(&topic, &format!("k{i}"), i)).collect();
    publish(&*fx.publisher, &sent).await;

    let taken = collect(&mut first, sent.len(), WAIT).await;
    assert_eq!(delivered_ids(&taken), ids(&sent));
    drop(taken);
    drop(first); // "crash": the consumer disappears without settling anything

    let mut second = subscribe(&*fx.other_subscriber, options).await;
    let got = collect(&mut second, sent.len(), WAIT).await;
    assert_eq!(delivered_ids(&got), ids(&sent), "every unacked message reaches the other consumer");
    for d in &got {
        // At least 2: dropped deliveries are released at once, so the first subscription may
        // itself have re-claimed some before it was dropped.
        assert!(d.attempt >= 2, "message {} is a redelivery (attempt {})", d.message.id, d.attempt);
    }
    ack_all(got).await;
    expect_nothing(&mut second, Duration::from_millis(600), "all were acked").await;
}

/// Checks a dead letter against its original.
fn assert_dead_letter(dead: &Message, original: &Message, dlq: &str, group: &str, attempts: u32) {
    assert_eq!(dead.topic, dlq, "the dead letter is on the dead-letter topic");
    assert_ne!(dead.id, original.id, "a dead letter has its own id");
    assert_eq!(dead.name, original.name, "name kept");
    assert_eq!(dead.key, original.key, "key kept");
    assert_eq!(dead.payload, original.payload, "payload kept");
    let (d, o) = (&dead.metadata, &original.metadata);
    assert_eq!(d.correlation_id, o.correlation_id, "correlation id kept");
    assert_eq!(d.causation_id, o.causation_id, "causation id kept");
    assert_eq!(d.traceparent, o.traceparent, "traceparent kept");
    assert_eq!(d.tracestate, o.tracestate, "tracestate kept");
    assert_eq!(d.occurred_at, o.occurred_at, "occurred_at kept");
    assert_eq!(d.content_type, o.content_type, "content type kept");
    for (k, v) in &o.headers {
        assert_eq!(dead.header(k), Some(v.as_str()), "original header {k} kept");
    }
    assert_eq!(dead.header(DLQ_ATTEMPTS), Some(attempts.to_string().as_str()), "{DLQ_ATTEMPTS}");
    assert_eq!(dead.header(DLQ_ORIGINAL_TOPIC), Some(original.topic.as_str()), "{DLQ_ORIGINAL_TOPIC}");
    assert_eq!(dead.header(DLQ_GROUP), Some(group), "{DLQ_GROUP}");
    assert_eq!(dead.header(DLQ_ORIGINAL_ID), Some(original.id.to_string().as_str()), "{DLQ_ORIGINAL_ID}");
}

/// After `max_deliveries` nacks the message goes to the dead-letter topic with the last nack's
/// reason, the attempt count, group, original topic and id, and leaves the group.
pub async fn a_message_that_keeps_failing_becomes_a_dead_letter_with_the_reason<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "dead_letters", caps.dead_letters) {
        return;
    }
    let (topic, group, dlq) = (unique("failing"), unique("group"), unique("dead-letters"));
    let mut dead_letters = subscribe(&*fx.other_subscriber, SubscribeOptions::new(&dlq, unique("dlq-reader"))).await;
    let options = SubscribeOptions::new(&topic, &group).max_deliveries(3).dead_letter_topic(&dlq);
    let mut sub = subscribe(&*fx.subscriber, options).await;
    let sent = rich_message(&topic, "poisoned-key");
    publish(&*fx.publisher, std::slice::from_ref(&sent)).await;

    for attempt in 1..=3 {
        let d = next_delivery(&mut sub, WAIT, &format!("delivery {attempt}")).await;
        assert_eq!((d.message.id, d.attempt), (sent.id, attempt));
        d.nack_with_reason(Duration::from_millis(10), format!("boom #{attempt}: handler failed")).await.expect("nack");
    }
    let dead = next_delivery(&mut dead_letters, WAIT, "the dead letter").await;
    assert_dead_letter(&dead.message, &sent, &dlq, &group, 3);
    let reason = dead.message.header(DLQ_REASON).unwrap_or_default().to_owned();
    assert!(reason.contains("boom #3"), "{DLQ_REASON} carries the last nack's reason, got {reason:?}");
    dead.ack().await.expect("ack the dead letter");
    expect_nothing(&mut sub, QUIET, "a dead-lettered message leaves the group").await;
}

/// A message delivered `max_deliveries` times without ever being settled is dead-lettered too.
pub async fn a_message_never_settled_becomes_a_dead_letter_after_max_deliveries<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "dead_letters", caps.dead_letters)
        || !supports(caps, "ack_wait_redelivery", caps.ack_wait_redelivery)
    {
        return;
    }
    let (topic, group) = (unique("never-settled"), unique("group"));
    let options = SubscribeOptions::new(&topic, &group).max_deliveries(2).ack_wait(Duration::from_millis(200));
    let dlq = options.effective_dead_letter_topic();
    let mut dead_letters = subscribe(&*fx.other_subscriber, SubscribeOptions::new(&dlq, unique("dlq-reader"))).await;
    let mut sub = subscribe(&*fx.subscriber, options).await;
    let sent = rich_message(&topic, "k");
    publish(&*fx.publisher, std::slice::from_ref(&sent)).await;

    for attempt in 1..=2 {
        let d = next_delivery(&mut sub, WAIT, &format!("delivery {attempt}")).await;
        assert_eq!((d.message.id, d.attempt), (sent.id, attempt));
        drop(d); // never settled
    }
    let dead = next_delivery(&mut dead_letters, WAIT, "the dead letter").await;
    assert_dead_letter(&dead.message, &sent, &dlq, &group, 2);
    let reason = dead.message.header(DLQ_REASON).unwrap_or_default();
    assert!(!reason.trim().is_empty(), "{DLQ_REASON} says why even without a nack");
    dead.ack().await.expect("ack the dead letter");
    expect_nothing(&mut sub, Duration::from_millis(500), "a dead-lettered message leaves the group").await;
}

/// `dead_letter(reason)` moves the message to the (default) dead-letter topic at once, with
/// exactly that reason.
pub async fn dead_letter_moves_a_message_at_once_with_the_reason<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "dead_letters", caps.dead_letters) {
        return;
    }
    let (topic, group) = (unique("poison"), unique("group"));
    let options = SubscribeOptions::new(&topic, &group);
    let dlq = options.effective_dead_letter_topic();
    let mut dead_letters = subscribe(&*fx.other_subscriber, SubscribeOptions::new(&dlq, unique("dlq-reader"))).await;
    let mut sub = subscribe(&*fx.subscriber, options).await;
    let sent = rich_message(&topic, "k");
    publish(&*fx.publisher, std::slice::from_ref(&sent)).await;

    let d = next_delivery(&mut sub, WAIT, "the delivery").await;
    d.dead_letter("poison: cannot decode the payload").await.expect("dead_letter");
    let dead = next_delivery(&mut dead_letters, WAIT, "the dead letter").await;
    assert_dead_letter(&dead.message, &sent, &dlq, &group, 1);
    assert_eq!(dead.message.header(DLQ_REASON), Some("poison: cannot decode the payload"), "{DLQ_REASON}");
    dead.ack().await.expect("ack the dead letter");
    expect_nothing(&mut sub, QUIET, "a dead-lettered message leaves the group").await;
}

/// Within a group, messages of one key are acked strictly in order even with two consumers,
/// parallel handlers, random handling times and nacks; different keys are in flight at once.
pub async fn messages_of_one_key_are_handled_in_order_while_keys_run_concurrently<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    const KEYS: u64 = 20;
    const PER_KEY: u64 = 25;
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "per_key_order", caps.per_key_order) {
        return;
    }
    let (topic, group) = (unique("per-key"), unique("group"));
    let options = SubscribeOptions::new(&topic, &group).max_in_flight(8);
    let mut subs = vec![subscribe(&*fx.subscriber, options.clone()).await];
    if supports(caps, "groups (per-key order checked with one consumer only)", caps.groups) {
        subs.push(subscribe(&*fx.other_subscriber, options).await);
    }

    #[derive(Default)]
    struct State {
        in_flight: HashMap<String, u32>,
        max_keys_in_flight: usize,
        violations: Vec<String>,
        acked: HashMap<String, Vec<u64>>,
        acked_total: u64,
        nacked: u64,
    }
    let state = Arc::new(Mutex::new(State::default()));
    let mut consumers = JoinSet::new();
    for sub in subs {
        let state = state.clone();
        consumers.spawn(consume(sub, move |d: Delivery| {
            let state = state.clone();
            async move {
                let key = d.message.key.clone();
                let seq = seq_of(&d.message);
                {
                    let mut s = lock(&state);
                    let n = s.in_flight.entry(key.clone()).or_default();
                    *n += 1;
                    if *n > 1 {
                        let v =
                            format!("key {key}: seq {seq} delivered while another message of the key was unsettled");
                        s.violations.push(v);
                    }
                    let keys_now = s.in_flight.values().filter(|n| **n > 0).count();
                    s.max_keys_in_flight = s.max_keys_in_flight.max(keys_now);
                }
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=4))).await;
                let nack = d.attempt == 1 && fastrand::u32(0..8) == 0;
                {
                    // Recorded before settling: the next message of the key cannot be delivered
                    // before this settlement, so the recorded order is the acked order.
                    let mut s = lock(&state);
                    if let Some(n) = s.in_flight.get_mut(&key) {
                        *n -= 1;
                    }
                    if nack {
                        s.nacked += 1;
                    } else {
                        s.acked.entry(key.clone()).or_default().push(seq);
                        s.acked_total += 1;
                    }
                }
                let result = if nack { d.nack(Duration::ZERO).await } else { d.ack().await };
                result.unwrap_or_else(|e| panic!("settling key {key} seq {seq} failed: {e}"));
            }
        }));
    }

    for seq in 0..PER_KEY {
        let batch: Vec<_> = (0..KEYS).map(|k| numbered(&topic, &format!("key-{k}"), seq)).collect();
        publish(&*fx.publisher, &batch).await;
    }
    eventually_while_running(&mut consumers, WAIT, "every message to be acked", || {
        let done = lock(&state).acked_total >= KEYS * PER_KEY;
        async move { done }
    })
    .await;
    tokio::time::sleep(QUIET).await; // room for a wrongful extra delivery to show up

    let s = lock(&state);
    assert!(s.violations.is_empty(), "per-key exclusivity broken: {:#?}", s.violations);
    let expected: Vec<u64> = (0..PER_KEY).collect();
    for k in 0..KEYS {
        let key = format!("key-{k}");
        let acked = s.acked.get(&key).cloned().unwrap_or_default();
        assert_eq!(acked, expected, "acked order of {key} (must be strictly increasing, each once)");
    }
    assert!(s.nacked > 0, "the scenario nacked some first attempts");
    assert!(s.max_keys_in_flight >= 2, "different keys were handled concurrently (max {})", s.max_keys_in_flight);
}

/// A key whose message keeps failing holds back only its own later messages; other keys flow.
pub async fn a_failing_key_does_not_block_other_keys<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    let (topic, group) = (unique("failing-key"), unique("group"));
    let options = SubscribeOptions::new(&topic, &group).max_in_flight(8).max_deliveries(100_000);
    let sub = subscribe(&*fx.subscriber, options).await;

    #[derive(Default)]
    struct State {
        a_deliveries: Vec<(u64, u32)>,
        b_acked: Vec<u64>,
    }
    let state = Arc::new(Mutex::new(State::default()));
    let mut consumers = JoinSet::new();
    {
        let state = state.clone();
        consumers.spawn(consume(sub, move |d: Delivery| {
            let state = state.clone();
            async move {
                let seq = seq_of(&d.message);
                if d.message.key == "A" {
                    lock(&state).a_deliveries.push((seq, d.attempt));
                    d.nack_with_reason(Duration::from_millis(20), "key A always fails").await.expect("nack");
                } else {
                    lock(&state).b_acked.push(seq);
                    d.ack().await.expect("ack");
                }
            }
        }));
    }
    let mut sent: Vec<_> = (0..3).map(|i| numbered(&topic, "A", i)).collect();
    sent.extend((0..20).map(|i| numbered(&topic, "B", i)));
    publish(&*fx.publisher, &sent).await;

    eventually_while_running(&mut consumers, WAIT, "every message of key B to be acked", || {
        let done = lock(&state).b_acked.len() >= 20;
        async move { done }
    })
    .await;
    let s = lock(&state);
    assert!(!s.a_deliveries.is_empty(), "key A's first message was delivered");
    if caps.per_key_order {
        assert_eq!(s.b_acked, (0..20).collect::<Vec<_>>(), "key B in order");
        let overtaking: Vec<_> = s.a_deliveries.iter().filter(|(seq, _)| *seq != 0).collect();
        assert!(overtaking.is_empty(), "later messages of key A overtook its failing first one: {overtaking:?}");
    } else {
        let b: BTreeSet<_> = s.b_acked.iter().copied().collect();
        assert_eq!(b, (0..20).collect(), "every message of key B");
    }
}

/// A new group starting from the beginning receives messages published before it existed.
pub async fn a_new_group_can_start_from_the_beginning<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "start_from_beginning", caps.start_from_beginning) {
        return;
    }
    let topic = unique("from-beginning");
    let sent: Vec<_> = (0..3).map(|i| numbered(&topic, "k", i)).collect();
    publish_one_by_one(&*fx.publisher, &sent).await;

    let options = SubscribeOptions::new(&topic, unique("late-group")).start(StartFrom::Beginning);
    let mut sub = subscribe(&*fx.subscriber, options).await;
    let got = collect_acking(&mut sub, sent.len(), WAIT).await;
    assert_eq!(acked_ids(&got), ids(&sent), "the retained history");
    expect_nothing(&mut sub, QUIET, "only what was published").await;
}

/// A new group subscribed with the default options receives the messages published before it
/// existed: `SubscribeOptions::new` starts a new group at the beginning, so a consumer started
/// a moment after its producer loses nothing.
pub async fn a_new_group_with_default_options_receives_earlier_messages<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "start_from_beginning", caps.start_from_beginning) {
        return;
    }
    let topic = unique("default-start");
    let earlier: Vec<_> = (0..6).map(|i| numbered(&topic, "k", i)).collect();
    publish_one_by_one(&*fx.publisher, &earlier).await;

    let mut sub = subscribe(&*fx.subscriber, SubscribeOptions::new(&topic, unique("late-group"))).await;
    let later = numbered(&topic, "k", 6);
    publish(&*fx.publisher, std::slice::from_ref(&later)).await;

    let mut sent = earlier;
    sent.push(later);
    let got = collect_acking(&mut sub, sent.len(), WAIT).await;
    assert_eq!(acked_ids(&got), ids(&sent), "the messages published before the group existed, and after");
    expect_nothing(&mut sub, QUIET, "only what was published").await;
}

/// A new group asking for the beginning is never refused: where the broker keeps no history
/// it means "everything from now on".
pub async fn a_new_group_starting_at_the_beginning_is_never_refused<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let topic = unique("beginning-accepted");
    let options = SubscribeOptions::new(&topic, unique("group")).start(StartFrom::Beginning);
    let mut sub = subscribe(&*fx.subscriber, options).await;
    let sent: Vec<_> = (0..3).map(|i| numbered(&topic, "k", i)).collect();
    publish_one_by_one(&*fx.publisher, &sent).await;

    let got = collect_acking(&mut sub, sent.len(), WAIT).await;
    assert_eq!(acked_ids(&got), ids(&sent), "the messages published after subscribing");
    expect_nothing(&mut sub, QUIET, "only what was published").await;
}

/// A new group starting at latest receives only messages published after it was created.
pub async fn a_new_group_starting_at_latest_sees_only_new_messages<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let topic = unique("from-latest");
    let old: Vec<_> = (0..3).map(|i| numbered(&topic, "k", i)).collect();
    publish_one_by_one(&*fx.publisher, &old).await;

    let options = SubscribeOptions::new(&topic, unique("group")).start(StartFrom::Latest);
    let mut sub = subscribe(&*fx.subscriber, options).await;
    let new: Vec<_> = (3..5).map(|i| numbered(&topic, "k", i)).collect();
    publish_one_by_one(&*fx.publisher, &new).await;

    let got = collect_acking(&mut sub, new.len(), WAIT).await;
    assert_eq!(acked_ids(&got), ids(&new), "only the messages published after subscribing");
    expect_nothing(&mut sub, QUIET, "older messages are not delivered").await;
}

/// The warning a broker with history logs when a new group starts at latest over earlier
/// messages (see [`herald::observability::warn_new_group_skips_earlier_messages`]).
const SKIPS_WARNING: &str = "new consumer group starts at Latest";

/// A broker that keeps history warns, once, when a *new* group starts at latest while its topic
/// already holds messages (they will never reach it), naming the topic, the group and how many;
/// a group that already exists resumes without the warning, and so does a new group on an
/// empty topic.
pub async fn a_new_group_starting_at_latest_over_earlier_messages_is_logged<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    // Without history there is nothing to skip; the group must outlive its subscription.
    if !supports(caps, "start_from_beginning", caps.start_from_beginning) || !supports(caps, "groups", caps.groups) {
        return;
    }
    let (topic, group) = (unique("latest-warning"), unique("late-group"));
    let earlier: Vec<_> = (0..3).map(|i| numbered(&topic, "k", i)).collect();
    publish_one_by_one(&*fx.publisher, &earlier).await;

    let options = SubscribeOptions::new(&topic, &group).start(StartFrom::Latest);
    let (sub, logged) = capture_warnings(subscribe(&*fx.subscriber, options.clone())).await;
    let line = logged.lines().find(|l| l.contains(SKIPS_WARNING)).unwrap_or_else(|| {
        panic!("a new group at latest over 3 earlier messages must log a warning; logged: {logged:?}")
    });
    assert!(line.contains("WARN"), "at warn level: {line}");
    assert!(line.contains(&topic), "the warning names the topic: {line}");
    assert!(line.contains(&group), "the warning names the group: {line}");
    assert!(line.contains("3 earlier messages"), "the warning says how many messages are skipped: {line}");
    assert_eq!(logged.matches(SKIPS_WARNING).count(), 1, "logged once: {logged:?}");
    drop(sub);

    let (sub, logged) = capture_warnings(subscribe(&*fx.other_subscriber, options)).await;
    assert!(!logged.contains(SKIPS_WARNING), "an existing group resumes without the warning; logged: {logged:?}");
    drop(sub);

    let empty = SubscribeOptions::new(unique("latest-empty"), unique("group")).start(StartFrom::Latest);
    let (sub, logged) = capture_warnings(subscribe(&*fx.subscriber, empty)).await;
    assert!(!logged.contains(SKIPS_WARNING), "a new group on an empty topic skips nothing; logged: {logged:?}");
    drop(sub);

    let beginning = SubscribeOptions::new(&topic, unique("group"));
    let (_sub, logged) = capture_warnings(subscribe(&*fx.subscriber, beginning)).await;
    assert!(!logged.contains(SKIPS_WARNING), "a new group at the beginning skips nothing; logged: {logged:?}");
}

/// A new group starting at a position receives the messages at that position and after.
pub async fn a_new_group_can_start_from_a_position<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    if !supports(caps, "start_from_position", caps.start_from_position) {
        return;
    }
    let topic = unique("from-position");
    let mut probe = subscribe(&*fx.subscriber, SubscribeOptions::new(&topic, unique("probe"))).await;
    let sent: Vec<_> = (0..5).map(|i| numbered(&topic, "k", i)).collect();
    publish_one_by_one(&*fx.publisher, &sent).await;

    let seen = collect_acking(&mut probe, sent.len(), WAIT).await;
    let mut positions: Vec<(u64, MessageId)> = seen
        .iter()
        .map(|d| {
            let p = d.position.unwrap_or_else(|| {
                panic!("a subscriber declaring start_from_position must give deliveries a position")
            });
            (p, d.message.id)
        })
        .collect();
    positions.sort();
    positions.dedup_by_key(|(p, _)| *p);
    assert_eq!(positions.len(), sent.len(), "each message has its own position: {positions:?}");
    let start = positions[2].0;
    let expected: BTreeSet<_> = positions.iter().filter(|(p, _)| *p >= start).map(|(_, id)| *id).collect();

    let options = SubscribeOptions::new(&topic, unique("group")).start(StartFrom::Position(start));
    let mut sub = subscribe(&*fx.subscriber, options).await;
    let got = collect_acking(&mut sub, expected.len(), WAIT).await;
    assert_eq!(acked_ids(&got), expected, "the messages at position {start} and after");
    for d in &got {
        assert!(d.position.is_some_and(|p| p >= start), "delivery at {:?} is before {start}", d.position);
    }
    expect_nothing(&mut sub, QUIET, "messages before the start position are not delivered").await;
}

/// A group that already exists ignores `start` and resumes after what it acked.
pub async fn an_existing_group_resumes_where_it_was<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    // Messages published while the group has no subscription are kept only by a durable broker.
    if !supports(caps, "groups", caps.groups) || !supports(caps, "durable", caps.durable) {
        return;
    }
    let (topic, group) = (unique("resume"), unique("group"));
    // A short ack wait: whether a dropped subscription stops fetching at once is checked by
    // `a_dropped_subscription_stops_fetching`; here only the group's position matters.
    let options = SubscribeOptions::new(&topic, &group).ack_wait(Duration::from_secs(2));
    let mut sub = subscribe(&*fx.subscriber, options.clone()).await;
    let first: Vec<_> = (0..3).map(|i| numbered(&topic, "k", i)).collect();
    publish_one_by_one(&*fx.publisher, &first).await;
    let got = collect_acking(&mut sub, first.len(), WAIT).await;
    assert_eq!(acked_ids(&got), ids(&first));
    drop(sub);

    let second: Vec<_> = (3..5).map(|i| numbered(&topic, "k", i)).collect();
    publish_one_by_one(&*fx.publisher, &second).await;
    let mut sub = subscribe(&*fx.other_subscriber, options.start(StartFrom::Beginning)).await;
    let got = collect_acking(&mut sub, second.len(), WAIT).await;
    assert_eq!(acked_ids(&got), ids(&second), "the group resumes after what it acked");
    expect_nothing(&mut sub, QUIET, "acked messages are not replayed to an existing group").await;
}

/// Dropping a subscription stops its fetching at once: a message published after the drop goes
/// to the group's next subscription as a first delivery, not to the dropped one (where it would
/// sit leased until its ack wait expired).
pub async fn a_dropped_subscription_stops_fetching<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    const ROUNDS: u64 = 40;
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    // The message is published while the group has no subscription: only a durable broker keeps it.
    if !supports(caps, "groups", caps.groups) || !supports(caps, "durable", caps.durable) {
        return;
    }
    let (topic, group) = (unique("dropped-subscription"), unique("group"));
    // Long enough that a message leased by the dropped subscription shows as attempt 2.
    let options = SubscribeOptions::new(&topic, &group).ack_wait(Duration::from_secs(3));
    let mut expected: Option<MessageId> = None;
    for round in 0..ROUNDS {
        let subscriber = if round % 2 == 0 { &fx.subscriber } else { &fx.other_subscriber };
        let mut sub = subscribe(&**subscriber, options.clone()).await;
        if let Some(id) = expected {
            let d =
                next_delivery(&mut sub, WAIT, &format!("round {round}: the message published after the drop")).await;
            assert_eq!(d.message.id, id, "round {round}: the next message of the group");
            assert_eq!(
                d.attempt, 1,
                "round {round}: the message was first leased by the subscription dropped before it was published \
                 (dropping a subscription must stop fetching)"
            );
            d.ack().await.expect("ack");
        }
        drop(sub);
        let m = numbered(&topic, "", round);
        expected = Some(m.id);
        publish(&*fx.publisher, &[m]).await;
    }
}

/// Closing twice is fine; after close, subscriptions end and publishing fails with `Closed`.
pub async fn closing_is_idempotent_and_ends_publishing_and_subscriptions<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let topic = unique("close");
    let mut sub = subscribe(&*fx.subscriber, SubscribeOptions::new(&topic, unique("group"))).await;

    fx.subscriber.close().await.expect("closing the subscriber");
    fx.subscriber.close().await.expect("closing the subscriber again");
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(None) => {}
        Ok(Some(d)) => panic!("a delivery after close: {}", d.message.id),
        Err(_) => panic!("the subscription did not end within {WAIT:?} of close"),
    }
    match fx.subscriber.subscribe(SubscribeOptions::new(&topic, unique("group"))).await {
        Err(_) => {}
        Ok(mut late) => {
            let ended = tokio::time::timeout(WAIT, late.next()).await;
            assert!(matches!(ended, Ok(None)), "a subscription opened after close must end at once");
        }
    }

    fx.publisher.close().await.expect("closing the publisher");
    fx.publisher.close().await.expect("closing the publisher again");
    match fx.publisher.publish(&[numbered(&topic, "k", 1)]).await {
        Err(PubSubError::Closed) => {}
        other => panic!("publishing after close must fail with Closed, got {other:?}"),
    }
}

/// 10,000 messages from 8 concurrent publishers, consumed by two subscriptions of one group
/// through the inbox: none is lost and none is handled twice.
pub async fn ten_thousand_concurrent_messages_are_handled_exactly_once_with_the_inbox<
    F: Future<Output = PubSubFixture>,
>(
    setup: impl FnOnce() -> F,
) {
    const PUBLISHERS: u64 = 8;
    const PER_PUBLISHER: u64 = 1_250;
    const TOTAL: usize = (PUBLISHERS * PER_PUBLISHER) as usize;
    let fx = setup().await;
    let caps = fx.subscriber.capabilities();
    let store: Arc<dyn Store> = fx.store.clone().unwrap_or_else(|| Arc::new(MemoryStore::new()));
    let (topic, group, handler) = (unique("ten-thousand"), unique("group"), unique("inbox-handler"));
    let options = SubscribeOptions::new(&topic, &group).max_in_flight(64);
    let mut subs = vec![subscribe(&*fx.subscriber, options.clone()).await];
    if supports(caps, "groups (consumed with one subscription only)", caps.groups) {
        subs.push(subscribe(&*fx.other_subscriber, options).await);
    }

    #[derive(Default)]
    struct State {
        handled: HashMap<MessageId, u32>,
        deliveries: u64,
    }
    let state = Arc::new(Mutex::new(State::default()));
    let handler = Arc::new(handler);
    let mut consumers = JoinSet::new();
    for sub in subs {
        let (state, store, handler) = (state.clone(), store.clone(), handler.clone());
        consumers.spawn(consume(sub, move |d: Delivery| {
            let (state, store, handler) = (state.clone(), store.clone(), handler.clone());
            async move {
                let id = d.message.id;
                let mut tx = store.begin().await.expect("begin");
                let first = tx.record_handled(&handler, id).await.expect("record_handled");
                if first {
                    match tx.commit().await {
                        Ok(()) => *lock(&state).handled.entry(id).or_default() += 1,
                        // Another consumer recorded it concurrently: not handled here.
                        Err(e) if e.is_conflict() => {}
                        Err(e) => panic!("commit failed: {e}"),
                    }
                } else {
                    drop(tx);
                }
                lock(&state).deliveries += 1;
                d.ack().await.unwrap_or_else(|e| panic!("ack of {id} failed: {e}"));
            }
        }));
    }

    let published = Arc::new(Mutex::new(Vec::with_capacity(TOTAL)));
    let mut publishers = JoinSet::new();
    for p in 0..PUBLISHERS {
        let (publisher, published, topic) = (fx.publisher.clone(), published.clone(), topic.clone());
        publishers.spawn(async move {
            let mut n = 0;
            while n < PER_PUBLISHER {
                let size = fastrand::u64(1..=25).min(PER_PUBLISHER - n);
                let batch: Vec<_> = (n..n + size).map(|i| numbered(&topic, "", p * PER_PUBLISHER + i)).collect();
                publish(&*publisher, &batch).await;
                lock(&published).extend(batch.iter().map(|m| m.id));
                n += size;
            }
        });
    }
    join_all(publishers).await;
    let published: BTreeSet<MessageId> = lock(&published).iter().copied().collect();
    assert_eq!(published.len(), TOTAL);

    eventually_while_running(&mut consumers, WAIT, "all 10,000 messages to be handled", || {
        let n = lock(&state).handled.len();
        async move { n >= TOTAL }
    })
    .await;
    tokio::time::sleep(QUIET).await; // room for a duplicate to be (wrongly) handled

    let s = lock(&state);
    let twice: Vec<_> = s.handled.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "handled more than once despite the inbox: {twice:?}");
    let handled: BTreeSet<MessageId> = s.handled.keys().copied().collect();
    let lost: Vec<_> = published.difference(&handled).take(10).collect();
    assert!(
        lost.is_empty(),
        "{} messages never handled, e.g. {lost:?}",
        published.len() - handled.len().min(published.len())
    );
    assert_eq!(handled, published, "handled exactly what was published");
    assert!(s.deliveries >= TOTAL as u64);
}

/// Options that cannot work are refused with `InvalidOptions` instead of a silent subscription.
pub async fn invalid_subscribe_options_are_refused<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let (topic, group) = (unique("invalid"), unique("group"));
    let cases = [
        ("an empty topic", SubscribeOptions::new("", &group)),
        ("a blank group", SubscribeOptions::new(&topic, "  ")),
        ("zero max_in_flight", SubscribeOptions::new(&topic, &group).max_in_flight(0)),
        ("zero max_deliveries", SubscribeOptions::new(&topic, &group).max_deliveries(0)),
        ("a zero ack_wait", SubscribeOptions::new(&topic, &group).ack_wait(Duration::ZERO)),
    ];
    for (what, options) in cases {
        match fx.subscriber.subscribe(options).await {
            Err(PubSubError::InvalidOptions(_)) => {}
            other => panic!("subscribing with {what} must fail with InvalidOptions, got {other:?}"),
        }
    }
}
