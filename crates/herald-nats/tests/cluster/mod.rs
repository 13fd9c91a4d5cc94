//! A three-node JetStream cluster losing a server mid-stream: replicated streams
//! (`NatsConfig::replicas(3)`) and partitioned groups keep every message and per-key order.
//!
//! The test starts three PRIVATE `nats-server -js` processes (their own free client and route
//! ports, their own temporary store directories, one cluster name, routes to each other; the
//! shared server on 4222 is never touched), waits until the cluster has a JetStream meta leader
//! (a probe stream with three replicas can be created), and connects Herald to all three URLs
//! with three replicas and four partitions. A publisher sends N keys × M numbered messages
//! (a message counts as sent when `publish` returned `Ok`; on an error the same messages, same
//! ids, are published again, so JetStream's duplicate window absorbs one that did land) while a
//! group of two subscriptions (two connections) consumes. Midway one server is SIGKILLed; the
//! clients reconnect to the others, and the test keeps publishing. It asserts, within a bounded
//! time, that every message sent was acked by the group at least once and that per key the
//! first handlings came in strictly increasing order.
//!
//! Without `nats-server` (`HERALD_NATS_SERVER`, on `PATH` or in `/usr/sbin`) the test skips
//! loudly, and fails when `CI` is set.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::Message;
use herald::message::MessageId;
use herald::pubsub::{Delivery, Publisher, SubscribeOptions, Subscriber, Subscription};
use herald_conformance::faults::{PrivateServer, ServerArgs, Stop, find_binary, free_port};
use herald_nats::{NatsConfig, Storage};
use tokio::time::Instant;

use crate::support::{eventually, eventually_explained, group_report, lock, round};

const KEYS: u64 = 16;
const PER_KEY: u64 = 30;
const TTL: Duration = Duration::from_secs(2);

/// Three `nats-server -js` processes routed to each other as the cluster `herald-test`; `None`
/// (after a loud skip, or a panic under `CI`) when `nats-server` is missing. Dropping them kills
/// the processes and removes their directories.
fn cluster() -> Option<Vec<PrivateServer>> {
    let binary = find_binary("HERALD_NATS_SERVER", "nats-server", &["/usr/sbin", "/usr/local/bin"]);
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers = Vec::new();
    for i in 0..3 {
        let routes = routes.clone();
        let args: ServerArgs = Box::new(move |port: u16, dir: &Path| {
            let others: Vec<String> =
                (0..3).filter(|j| *j != i).map(|j| format!("nats://127.0.0.1:{}", routes[j])).collect();
            let mut args: Vec<OsString> = Vec::new();
            for arg in [
                "-a".to_owned(),
                "127.0.0.1".to_owned(),
                "-p".to_owned(),
                port.to_string(),
                "-n".to_owned(),
                format!("herald-node-{i}"),
                "-js".to_owned(),
                "--cluster_name".to_owned(),
                "herald-test".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", routes[i]),
                "--routes".to_owned(),
                others.join(","),
                "-sd".to_owned(),
            ] {
                args.push(arg.into());
            }
            args.push(dir.join("jetstream").into_os_string());
            args
        });
        servers.push(PrivateServer::start_new("nats-server", binary.clone(), args)?);
    }
    Some(servers)
}

fn urls(servers: &[PrivateServer]) -> String {
    servers.iter().map(|s| format!("nats://127.0.0.1:{}", s.port())).collect::<Vec<_>>().join(",")
}

/// Waits until the cluster can create (and so has a meta leader for) a stream with three
/// replicas, then removes the probe.
async fn wait_for_meta_leader(urls: &str, servers: &[PrivateServer]) {
    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>()).await.expect("connect to the cluster");
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = async_nats::jetstream::stream::Config {
            name: "herald-probe".to_owned(),
            subjects: vec!["herald-probe".to_owned()],
            num_replicas: 3,
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(3), js.get_or_create_stream(probe)).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) if Instant::now() >= deadline => {
                let logs: Vec<String> = servers.iter().map(PrivateServer::log_tail).collect();
                panic!("the cluster has no JetStream meta leader after 30 s: {e}\n{}", logs.join("\n---\n"));
            }
            _ => {
                assert!(Instant::now() < deadline, "the cluster has no JetStream meta leader after 30 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    js.delete_stream("herald-probe").await.expect("delete the probe stream");
}

/// What the group did: a message is *handled* the first time it is delivered.
#[derive(Default)]
struct Ledger {
    /// Per key, the sequence numbers in the order they were first handled.
    handled: HashMap<String, Vec<u64>>,
    handled_ids: HashSet<MessageId>,
    acked: HashSet<MessageId>,
    by_member: HashMap<&'static str, u64>,
    violations: Vec<String>,
    duplicates: u64,
    settle_errors: u64,
}

type Shared = Arc<Mutex<Ledger>>;

async fn handle(member: &'static str, d: Delivery, ledger: Shared) {
    let (key, id) = (d.message.key.clone(), d.message.id);
    let seq: u64 = String::from_utf8_lossy(&d.message.payload).parse().expect("a numeric payload");
    {
        let mut guard = lock(&ledger);
        let l = &mut *guard;
        if l.handled_ids.insert(id) {
            let order = l.handled.entry(key.clone()).or_default();
            if let Some(last) = order.last()
                && seq <= *last
            {
                l.violations.push(format!("{member}: key {key} first handled seq {seq} after {last}"));
            }
            order.push(seq);
            *l.by_member.entry(member).or_default() += 1;
        } else {
            l.duplicates += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=4))).await;
    // An ack can fail while a server dies (connection lost, lease lost to a takeover): the
    // message then comes again; only confirmed acks count.
    match d.ack().await {
        Ok(()) => {
            lock(&ledger).acked.insert(id);
        }
        Err(_) => lock(&ledger).settle_errors += 1,
    }
}

async fn consume(member: &'static str, mut sub: Subscription, ledger: Shared) {
    let mut handlers = tokio::task::JoinSet::new();
    while let Some(d) = sub.next().await {
        handlers.spawn(handle(member, d, ledger.clone()));
        while handlers.try_join_next().is_some() {}
    }
}

/// Publishes `batch` until `publish` returns `Ok` (same ids every time), within 30 s.
async fn publish_until_ok(publisher: &impl Publisher, batch: &[Message]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    while let Err(e) = publisher.publish(batch).await {
        failures += 1;
        assert!(Instant::now() < deadline, "publishing to the cluster still fails after 30 s: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    failures
}

async fn scenario(servers: &mut [PrivateServer]) {
    let urls = urls(servers);
    wait_for_meta_leader(&urls, servers).await;
    let config = NatsConfig::new(urls)
        .stream_prefix("cluster-")
        .subject_prefix("cluster.")
        .storage(Storage::File)
        .replicas(3)
        .partitions(4)
        .claim_ttl(TTL);
    let (topic, group) = ("orders.events", "billing");
    let publisher = config.connect().await.expect("connect the publisher");
    let (one, two) = (config.connect().await.expect("connect"), config.connect().await.expect("connect"));
    let ledger = Shared::default();
    let options = || SubscribeOptions::new(topic, group).max_in_flight(16).ack_wait(Duration::from_secs(3));
    let first = tokio::spawn(consume("one", one.subscribe(options()).await.expect("subscribe"), ledger.clone()));
    let second = tokio::spawn(consume("two", two.subscribe(options()).await.expect("subscribe"), ledger.clone()));

    // The stream really is replicated: three replicas, on a cluster.
    let js = async_nats::jetstream::new(async_nats::connect(config.servers()).await.expect("connect"));
    let mut stream = js.get_stream(publisher.stream_name(topic)).await.expect("the topic's stream");
    let info = stream.info().await.expect("stream info").clone();
    assert_eq!(info.config.num_replicas, 3, "the topic's stream has three replicas");
    assert_eq!(info.cluster.as_ref().map(|c| c.replicas.len()), Some(2), "a leader and two followers: {info:?}");

    let started = Instant::now();
    let mut sent = Vec::new();
    let mut failures = 0;
    let mut killed_at = None;
    for r in 0..PER_KEY {
        let batch = round(topic, KEYS, r);
        failures += publish_until_ok(&publisher, &batch).await;
        sent.extend(batch.iter().map(|m| m.id));
        if r == PER_KEY / 3 {
            eventually(Duration::from_secs(20), "both members to handle messages", || {
                let l = lock(&ledger);
                l.by_member.get("one").is_some_and(|n| *n > 0) && l.by_member.get("two").is_some_and(|n| *n > 0)
            })
            .await;
            tokio::task::block_in_place(|| servers[0].stop(Stop::Kill));
            killed_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_sent = Instant::now();
    let report_urls = config.servers().join(",");
    let stream = publisher.stream_name(topic);
    // Every message handled, and the group's consumers with nothing pending or unacknowledged:
    // an ack sent while a server died may have landed without its confirmation (the test then
    // saw an error), so the server, not the test's count of confirmed acks, says "all acked".
    eventually_explained(
        Duration::from_secs(40),
        "every message sent to be handled",
        || {
            let l = lock(&ledger);
            sent.iter().all(|id| l.handled_ids.contains(id))
        },
        async || {
            let missing = {
                let l = lock(&ledger);
                crate::support::missing(&sent, &l.acked, &l.handled, &l.by_member)
            };
            format!("{missing}\n{}", group_report(&report_urls, "cluster-", &stream, group, 4).await)
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while !crate::support::group_settled(&report_urls, &stream, group, 4).await {
        if Instant::now() >= deadline {
            panic!(
                "timed out after 40 s waiting for the group to ack everything\n{}",
                group_report(&report_urls, "cluster-", &stream, group, 4).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = lock(&ledger);
    println!(
        "cluster: {} messages sent ({failures} failed publishes retried) in {:?}, all acked {:?} later \
         (server killed {:?} in); handled by member {:?}; duplicates {}, failed settlements {}",
        sent.len(),
        all_sent - started,
        all_sent.elapsed(),
        killed_at.map(|k| k - started),
        l.by_member,
        l.duplicates,
        l.settle_errors,
    );
    assert!(l.violations.is_empty(), "per-key order broken: {:#?}", l.violations);
    for k in 0..KEYS {
        let key = format!("key-{k}");
        assert_eq!(l.handled.get(&key).map(Vec::len), Some(PER_KEY as usize), "every message of {key} handled");
    }
    drop(l);
    first.abort();
    second.abort();
}

#[test]
fn a_three_node_cluster_losing_a_server_keeps_every_message_and_per_key_order() {
    let _one_at_a_time =
        if std::env::var_os("NO_FAILOVER_LOCK").is_some() { None } else { Some(crate::FAILOVER.blocking_lock()) };
    crate::support::init_logs();
    let Some(mut servers) = cluster() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let limit = Duration::from_secs(90);
    let outcome = runtime.block_on(async { tokio::time::timeout(limit, scenario(&mut servers)).await });
    runtime.shutdown_timeout(Duration::from_secs(5));
    if outcome.is_err() {
        let logs: Vec<String> = servers.iter().map(PrivateServer::log_tail).collect();
        panic!("the cluster scenario did not finish within {limit:?}\n{}", logs.join("\n---\n"));
    }
    // Dropping the servers kills the two that still run and removes the three directories.
    drop(servers);
}
