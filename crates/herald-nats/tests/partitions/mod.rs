//! Partitioned groups across processes (`NatsConfig::partitions`): a member that dies without
//! leaving has its partitions taken over, a member that joins gets a share, a member that
//! leaves cleanly hands its partitions over at once; per-key order holds throughout.
//!
//! Each member has its own connection. A "dead" member runs on its own Tokio runtime, which is
//! shut down without running any of its clean-up (no release of claims, connection dropped):
//! what a `kill -9` leaves behind.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::Message;
use herald::message::MessageId;
use herald::pubsub::{Delivery, PubSubError, Publisher, SubscribeOptions, Subscriber, Subscription};
use herald_nats::{NatsConfig, Storage};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, eventually_explained, group_report, lock, round as messages};

const URL: &str = "nats://127.0.0.1:4222";

fn config(claim_ttl: Duration) -> NatsConfig {
    let run = fastrand::u32(..);
    NatsConfig::new(URL)
        .stream_prefix(format!("hk{run:08x}-"))
        .subject_prefix(format!("hk{run:08x}."))
        .storage(Storage::Memory)
        .max_age(Duration::from_secs(600))
        .partitions(8)
        .claim_ttl(claim_ttl)
}

/// What the members did, as an application with an inbox sees it: a message is *handled* the
/// first time it is delivered (later deliveries are duplicates the inbox would skip).
#[derive(Default)]
struct Ledger {
    /// Per key, the sequence numbers in the order they were first handled.
    handled: HashMap<String, Vec<u64>>,
    handled_ids: HashSet<MessageId>,
    acked: HashSet<MessageId>,
    /// Messages first handled by each member.
    by_member: HashMap<&'static str, u64>,
    /// Keys each member handled.
    keys_by_member: HashMap<&'static str, HashSet<String>>,
    /// Per key, the members handling a message of it right now.
    in_flight: HashMap<String, Vec<&'static str>>,
    violations: Vec<String>,
    duplicates: u64,
    lease_lost: u64,
}

type Shared = Arc<Mutex<Ledger>>;

fn seq_of(m: &Message) -> u64 {
    String::from_utf8_lossy(&m.payload).parse().expect("a numeric payload")
}

/// Handles one delivery: records it (checking per-key exclusivity and order), works a little,
/// acks.
async fn handle(member: &'static str, d: Delivery, ledger: Shared) {
    let (key, seq, id) = (d.message.key.clone(), seq_of(&d.message), d.message.id);
    {
        let mut guard = lock(&ledger);
        let l = &mut *guard;
        let holders = l.in_flight.entry(key.clone()).or_default();
        holders.push(member);
        if holders.len() > 1 {
            l.violations
                .push(format!("{member}: key {key} seq {seq} delivered while another of the key was unsettled"));
        }
        if l.handled_ids.insert(id) {
            let order = l.handled.entry(key.clone()).or_default();
            let expected = order.last().map_or(0, |last| last + 1);
            if seq != expected {
                l.violations.push(format!("{member}: key {key} handled seq {seq}, expected {expected}"));
            }
            order.push(seq);
            *l.by_member.entry(member).or_default() += 1;
            l.keys_by_member.entry(member).or_default().insert(key.clone());
        } else {
            l.duplicates += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=6))).await;
    if let Some(holders) = lock(&ledger).in_flight.get_mut(&key)
        && let Some(i) = holders.iter().position(|m| *m == member)
    {
        holders.remove(i);
    }
    match d.ack().await {
        Ok(()) => {
            lock(&ledger).acked.insert(id);
        }
        Err(PubSubError::LeaseLost) => lock(&ledger).lease_lost += 1,
        Err(e) => panic!("{member}: ack of key {key} seq {seq} failed: {e}"),
    }
}

/// Consumes `sub` with concurrent handlers until `stop` (then finishes what it took and drops
/// the subscription: a clean leave) or the subscription ends.
async fn consume(member: &'static str, mut sub: Subscription, ledger: Shared, stop: CancellationToken) {
    let mut handlers = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = sub.next() => next,
        };
        let Some(d) = next else { break };
        handlers.spawn(handle(member, d, ledger.clone()));
    }
    while let Some(joined) = handlers.join_next().await {
        joined.expect("a handler panicked");
    }
    drop(sub);
}

fn check_order(ledger: &Ledger, keys: u64, per_key: u64) {
    assert!(ledger.violations.is_empty(), "per-key order broken: {:#?}", ledger.violations);
    let expected: Vec<u64> = (0..per_key).collect();
    for k in 0..keys {
        let key = format!("key-{k}");
        assert_eq!(ledger.handled.get(&key).cloned().unwrap_or_default(), expected, "handled order of {key}");
    }
}

fn options(topic: &str, group: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic, group).max_in_flight(16).ack_wait(Duration::from_secs(3))
}

/// Two members on two connections share N keys × M messages; one dies mid-stream (its runtime
/// is shut down: no clean-up, claims left to expire); the survivor takes its partitions over
/// within a few seconds and every message ends up acked, each key handled in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_s_partitions_are_taken_over_in_key_order() {
    let _one_at_a_time = crate::one_at_a_time().await;
    crate::support::init_logs();
    const KEYS: u64 = 16;
    const PER_KEY: u64 = 40;
    const TTL: Duration = Duration::from_secs(2);
    if !herald_conformance::support::server_available(("NATS", "127.0.0.1:4222")) {
        return;
    }
    let config = config(TTL);
    let (topic, group) = ("orders.events", "billing");
    let publisher = config.connect().await.expect("connect");
    let survivor = config.connect().await.expect("connect");
    let ledger = Shared::default();

    // The member that dies: its own runtime on its own thread, shut down from outside.
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel::<()>();
    let doomed = {
        let (config, ledger) = (config.clone(), ledger.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            runtime.spawn(async move {
                let broker = config.connect().await.expect("connect");
                let sub = broker.subscribe(options(topic, group)).await.expect("subscribe");
                let _ = subscribed_tx.send(());
                consume("doomed", sub, ledger, CancellationToken::new()).await;
                drop(broker);
            });
            kill_rx.recv().expect("the kill signal");
            // kill -9: the member's tasks are dropped, not run to their end (no release of
            // claims, no settlement); this waits only until its threads have stopped.
            runtime.shutdown_timeout(Duration::from_secs(5));
        })
    };
    subscribed_rx.await.expect("the doomed member subscribed");
    let sub = survivor.subscribe(options(topic, group)).await.expect("subscribe");
    let survivor_task = tokio::spawn(consume("survivor", sub, ledger.clone(), CancellationToken::new()));

    let mut sent = Vec::new();
    for round in 0..PER_KEY {
        let batch = messages(topic, KEYS, round);
        publisher.publish(&batch).await.expect("publish");
        sent.extend(batch.iter().map(|m| m.id));
        if round == PER_KEY / 3 {
            eventually(Duration::from_secs(20), "both members to handle messages", || {
                let l = lock(&ledger);
                l.by_member.get("doomed").is_some_and(|n| *n > 0) && l.by_member.get("survivor").is_some_and(|n| *n > 0)
            })
            .await;
            kill_tx.send(()).expect("killing");
            doomed.join().expect("the doomed member's thread");
            // A dead process handles nothing: its handlers that were cut off hold no key.
            for holders in lock(&ledger).in_flight.values_mut() {
                holders.retain(|m| *m != "doomed");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    let doomed_keys = lock(&ledger).keys_by_member.get("doomed").cloned().unwrap_or_default();
    for round in (PER_KEY / 3 + 1)..PER_KEY {
        let batch = messages(topic, KEYS, round);
        publisher.publish(&batch).await.expect("publish");
        sent.extend(batch.iter().map(|m| m.id));
    }
    // The survivor takes the dead member's partitions within a few seconds: claims expire after
    // the TTL, and what the dead member held comes back at once (the consumer restarts at its
    // ack floor).
    eventually(Duration::from_secs(15), "the survivor to handle a key the dead member had", || {
        lock(&ledger).keys_by_member.get("survivor").is_some_and(|keys| keys.iter().any(|k| doomed_keys.contains(k)))
    })
    .await;
    let took_over = killed_at.elapsed();
    let stream = publisher.stream_name(topic);
    eventually_explained(
        Duration::from_secs(30),
        "every message to be acked",
        || {
            let l = lock(&ledger);
            sent.iter().all(|id| l.acked.contains(id))
        },
        async || {
            let missing = {
                let l = lock(&ledger);
                crate::support::missing(&sent, &l.acked, &l.handled, &l.by_member)
            };
            format!("{missing}\n{}", group_report(URL, &config.stream_prefix, &stream, group, 8).await)
        },
    )
    .await;
    let l = lock(&ledger);
    println!(
        "took over after {took_over:?}; handled: {:?}; duplicates {}, lease lost {}",
        l.by_member, l.duplicates, l.lease_lost
    );
    check_order(&l, KEYS, PER_KEY);
    assert!(took_over < TTL * 4, "partitions taken over {took_over:?} after the death (claim TTL {TTL:?})");
    drop(l);
    survivor_task.abort();
}

/// A member that joins gets partitions (both handle messages afterwards), and a member that
/// leaves cleanly hands its partitions over at once: long before its claims could expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_gets_partitions_and_a_leaving_one_hands_them_over_at_once() {
    let _one_at_a_time = crate::one_at_a_time().await;
    const KEYS: u64 = 16;
    const TTL: Duration = Duration::from_secs(30);
    if !herald_conformance::support::server_available(("NATS", "127.0.0.1:4222")) {
        return;
    }
    let config = config(TTL);
    let (topic, group) = ("orders.events", "billing");
    let (publisher, first, second) =
        (config.connect().await.unwrap(), config.connect().await.unwrap(), config.connect().await.unwrap());
    let ledger = Shared::default();
    let first_task = tokio::spawn(consume(
        "first",
        first.subscribe(options(topic, group)).await.unwrap(),
        ledger.clone(),
        CancellationToken::new(),
    ));
    let mut sent = Vec::new();
    let mut round = 0;
    let mut publish_rounds = async |n: u64, sent: &mut Vec<MessageId>| {
        for _ in 0..n {
            let batch = messages(topic, KEYS, round);
            publisher.publish(&batch).await.unwrap();
            sent.extend(batch.iter().map(|m| m.id));
            round += 1;
        }
    };
    let all_acked = |sent: &[MessageId]| {
        let l = lock(&ledger);
        sent.iter().all(|id| l.acked.contains(id))
    };

    publish_rounds(5, &mut sent).await;
    eventually(Duration::from_secs(20), "the first member alone to ack everything", || all_acked(&sent)).await;
    assert_eq!(lock(&ledger).by_member.get("second"), None);

    // Join: `subscribe` returns once the new member owns its share.
    let leave = CancellationToken::new();
    let second_task = tokio::spawn(consume(
        "second",
        second.subscribe(options(topic, group)).await.unwrap(),
        ledger.clone(),
        leave.clone(),
    ));
    let before = lock(&ledger).by_member.clone();
    publish_rounds(10, &mut sent).await;
    eventually(Duration::from_secs(20), "both members to ack the messages after the join", || all_acked(&sent)).await;
    {
        let l = lock(&ledger);
        let gained = |m: &str| l.by_member.get(m).copied().unwrap_or(0) - before.get(m).copied().unwrap_or(0);
        assert!(
            gained("first") > 0 && gained("second") > 0,
            "both members handled messages after the join: {:?}",
            l.by_member
        );
    }

    // Clean leave: the second member stops, its partitions go to the first at once.
    leave.cancel();
    second_task.await.unwrap();
    let left_at = Instant::now();
    let before = lock(&ledger).by_member.clone();
    publish_rounds(5, &mut sent).await;
    eventually(Duration::from_secs(10), "the first member to ack everything after the leave", || all_acked(&sent))
        .await;
    let handed_over = left_at.elapsed();
    let l = lock(&ledger);
    assert_eq!(l.by_member.get("second"), before.get("second"), "the member that left handles nothing more");
    assert!(handed_over < Duration::from_secs(8), "handed over in {handed_over:?}, not after the {TTL:?} TTL");
    check_order(&l, KEYS, round);
    assert_eq!(l.duplicates, 0, "clean handovers deliver nothing twice");
    println!("handed over in {handed_over:?}; handled: {:?}", l.by_member);
    drop(l);
    first_task.abort();
}

/// Fencing: a member whose claim was taken (here: overwritten behind its back, as a member that
/// claimed the partition after this one's claim lapsed would) stops the partition, and its
/// settlement of a delivery it still holds is refused with `LeaseLost` instead of reaching the
/// server. Once the foreign claim expires, the partition is taken over and the message delivered
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_claim_was_taken_cannot_settle() {
    let _one_at_a_time = crate::one_at_a_time().await;
    const TTL: Duration = Duration::from_secs(2);
    if !herald_conformance::support::server_available(("NATS", "127.0.0.1:4222")) {
        return;
    }
    let config = config(TTL).partitions(1);
    let (topic, group) = ("orders.events", "billing");
    let broker = config.connect().await.unwrap();
    let mut sub =
        broker.subscribe(SubscribeOptions::new(topic, group).ack_wait(Duration::from_secs(60))).await.unwrap();
    let sent = Message::new(topic, "Numbered.v1", b"0".to_vec()).with_key("k");
    broker.publish(std::slice::from_ref(&sent)).await.unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
    assert_eq!(held.message.id, sent.id);

    // Someone else's claim, written unconditionally over this member's.
    let js = async_nats::jetstream::new(async_nats::connect(URL).await.unwrap());
    let bucket = js.get_key_value(format!("{}partitions", config.stream_prefix)).await.unwrap();
    let claim = format!("{}.billing.p.0", broker.stream_name(topic));
    assert!(bucket.entry(&claim).await.unwrap().is_some(), "the member claimed partition 0 as {claim}");
    let intruded_at = Instant::now();
    bucket.put(&claim, "intruder".into()).await.unwrap();
    // From here no refresh of the member succeeds, so within 90% of the TTL its lease is over
    // (sooner: the first failed refresh ends it).
    tokio::time::sleep_until(intruded_at + TTL * 9 / 10).await;
    match held.ack().await {
        Err(PubSubError::LeaseLost) => {}
        other => panic!("a settlement after the claim was taken must be refused with LeaseLost, got {other:?}"),
    }
    // The foreign claim is never refreshed: it expires, the member takes the partition over and
    // the unacknowledged message comes again.
    let again = tokio::time::timeout(Duration::from_secs(15), sub.next()).await.expect("redelivered").unwrap();
    assert_eq!(again.message.id, sent.id);
    again.ack().await.expect("acking the redelivery");
    broker.close().await.unwrap();
}

/// A connection lost with a delivery on its way: JetStream counts the message delivered (and
/// redelivers it only after its ack wait), the member reconnects and pulls the key's next
/// message. The member sees the gap in the consumer's delivery numbers (or, when the next
/// message was lost with the connection too, an empty pull after the reconnect finds the
/// server counting more deliveries than it received), hands out nothing more, and reopens the
/// partition from its ack floor: the key's messages are handled in order, without waiting for
/// the ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_lost_with_its_connection_does_not_let_the_key_s_next_message_pass() {
    use crate::support::Proxy;
    crate::support::init_logs();
    if !herald_conformance::support::server_available(("NATS", "127.0.0.1:4222")) {
        return;
    }
    let proxy = Proxy::start("127.0.0.1:4222").await;
    let config = config(Duration::from_secs(30)).partitions(1);
    let publisher = config.connect().await.unwrap();
    let member = NatsConfig { url: proxy.url.clone(), ..config.clone() }.connect().await.unwrap();
    let (topic, group) = ("orders.events", "billing");
    // A long ack wait: the lost message would come back only after it.
    let sub = member.subscribe(SubscribeOptions::new(topic, group).ack_wait(Duration::from_secs(30))).await.unwrap();
    let ledger = Shared::default();
    let task = tokio::spawn(consume("member", sub, ledger.clone(), CancellationToken::new()));
    let send = async |seq: u64| {
        let message = Message::new(topic, "Numbered.v1", seq.to_string().into_bytes()).with_key("key-0");
        publisher.publish(&[message]).await.unwrap();
    };
    let acked = |n: usize| {
        let ledger = ledger.clone();
        move || lock(&ledger).acked.len() >= n
    };

    send(0).await;
    eventually(Duration::from_secs(10), "the first message to be handled", acked(1)).await;
    // The next message leaves the server and is lost with the connection.
    proxy.hold();
    send(1).await;
    let js = async_nats::jetstream::new(async_nats::connect(URL).await.unwrap());
    let stream = js.get_stream(publisher.stream_name(topic)).await.unwrap();
    let delivered =
        async || stream.consumer_info("billing-p0").await.map(|i| i.delivered.consumer_sequence).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered().await < 2 {
        assert!(Instant::now() < deadline, "the server never sent the second message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    send(2).await;
    eventually(Duration::from_secs(20), "the three messages to be handled", acked(3)).await;
    let l = lock(&ledger);
    check_order(&l, 1, 3);
    drop(l);
    task.abort();
}
