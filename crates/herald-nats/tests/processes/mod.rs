//! Partitioned groups across real processes: two `partitioned_consumer` example processes (the
//! binary `cargo test` builds next to this test binary, in `<target>/debug/examples/`) form a
//! group on the shared NATS server (`127.0.0.1:4222`); the test publishes N keys × M numbered
//! messages, SIGKILLs one process midway and keeps publishing. Each process appends
//! `<unix ns> <key> <seq> <id>` to its own file for every delivery, before acking; both run on
//! this machine, so the system clock orders the lines of both files. The test asserts, within a
//! bounded time, that every message was handled at least once, that per key the first
//! handlings (over both files, by time) are strictly increasing, and that the group's
//! partition consumers end with nothing pending or unacknowledged.
//!
//! Without the example binary (e.g. `cargo test --test conformance`, which does not build
//! examples: run `cargo test -p herald-nats` or `cargo build -p herald-nats --example
//! partitioned_consumer`) the test skips loudly, and fails when `CI` is set.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use herald::Message;
use herald::pubsub::Publisher;
use herald_nats::{NatsConfig, Storage};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::support::eventually;

const URL: &str = "nats://127.0.0.1:4222";
const KEYS: u64 = 16;
const PER_KEY: u64 = 30;
const PARTITIONS: u32 = 8;
const TTL: Duration = Duration::from_secs(2);

/// `<target>/debug/examples/partitioned_consumer`, next to this test binary's `deps/`.
fn example_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path =
        exe.parent()?.parent()?.join("examples").join(format!("partitioned_consumer{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

/// One handling, as a line of an output file.
#[derive(Debug)]
struct Handling {
    at: u128,
    key: String,
    seq: u64,
    id: String,
    process: usize,
}

/// The complete lines of `path` (a process killed mid-write may leave a partial last line).
fn read_handlings(path: &Path, process: usize) -> Vec<Handling> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let handling = Handling {
                at: fields.next()?.parse().ok()?,
                key: fields.next()?.to_owned(),
                seq: fields.next()?.parse().ok()?,
                id: fields.next()?.to_owned(),
                process,
            };
            fields.next().is_none().then_some(handling)
        })
        .collect()
}

fn spawn_member(binary: &Path, prefix: &str, output: &Path) -> Child {
    Command::new(binary)
        .args([URL, prefix, "orders.events", "billing"])
        .arg(output)
        .args([TTL.as_millis().to_string(), PARTITIONS.to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the partitioned_consumer example")
}

/// Whether the members are alive; panics with the exit status when one ended by itself.
fn assert_running(members: &mut [Child]) {
    for (i, member) in members.iter_mut().enumerate() {
        if let Ok(Some(status)) = member.try_wait() {
            panic!("member {i} exited by itself with {status}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_members_in_separate_processes_keep_key_order_when_one_is_killed() {
    let _one_at_a_time = crate::one_at_a_time().await;
    if !herald_conformance::support::server_available(("NATS", "127.0.0.1:4222")) {
        return;
    }
    let Some(binary) = example_binary() else {
        herald_conformance::faults::required(
            "the partitioned_consumer example binary (built by `cargo test -p herald-nats`)",
            false,
        );
        return;
    };
    let run = fastrand::u32(..);
    let prefix = format!("hx{run:08x}");
    let config = NatsConfig::new(URL)
        .stream_prefix(format!("{prefix}-"))
        .subject_prefix(format!("{prefix}."))
        .storage(Storage::Memory)
        .max_age(Duration::from_secs(600))
        .partitions(PARTITIONS)
        .claim_ttl(TTL);
    let topic = "orders.events";
    let publisher = config.connect().await.expect("connect");
    let dir = tempfile::Builder::new().prefix("herald-partitioned-").tempdir().expect("temp dir");
    let outputs = [dir.path().join("member-0.log"), dir.path().join("member-1.log")];
    // The first member creates the group's consumers; the second joins and takes its share.
    let mut members = vec![spawn_member(&binary, &prefix, &outputs[0])];
    eventually(Duration::from_secs(20), "the first member to subscribe", || outputs[0].exists()).await;
    members.push(spawn_member(&binary, &prefix, &outputs[1]));
    eventually(Duration::from_secs(20), "the second member to subscribe", || outputs[1].exists()).await;

    let started = Instant::now();
    let mut sent: Vec<String> = Vec::new();
    let mut killed_at = None;
    for round in 0..PER_KEY {
        let batch: Vec<Message> = (0..KEYS)
            .map(|k| Message::new(topic, "Numbered.v1", round.to_string().into_bytes()).with_key(format!("key-{k}")))
            .collect();
        publisher.publish(&batch).await.expect("publish");
        sent.extend(batch.iter().map(|m| m.id.to_string()));
        if round == PER_KEY / 3 {
            assert_running(&mut members);
            eventually(Duration::from_secs(20), "both members to handle messages", || {
                outputs.iter().enumerate().all(|(i, o)| !read_handlings(o, i).is_empty())
            })
            .await;
            members[0].kill().await.expect("SIGKILL member 0");
            killed_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let read_all = || -> Vec<Handling> {
        let mut all: Vec<Handling> = outputs.iter().enumerate().flat_map(|(i, o)| read_handlings(o, i)).collect();
        all.sort_by_key(|h| h.at);
        all
    };
    eventually(Duration::from_secs(30), "every message to be handled", || {
        let handled: HashSet<String> = read_all().into_iter().map(|h| h.id).collect();
        sent.iter().all(|id| handled.contains(id))
    })
    .await;
    let all_handled = killed_at.map(|k| k.elapsed());
    assert_running(&mut members[1..]);

    // The survivor acks everything: the group's partition consumers end up with nothing
    // pending (not yet delivered) or unacknowledged.
    let js = async_nats::jetstream::new(async_nats::connect(URL).await.expect("connect"));
    let stream = js.get_stream(publisher.stream_name(topic)).await.expect("the topic's stream");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut outstanding = 0;
        for p in 0..PARTITIONS {
            let info = stream.consumer_info(format!("billing-p{p}")).await.expect("a partition consumer");
            outstanding += info.num_pending + info.num_ack_pending as u64;
        }
        if outstanding == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{outstanding} messages still pending or unacknowledged after 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let all = read_all();
    let mut first_seen = HashSet::new();
    let mut order: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut by_process = [0u64; 2];
    for h in &all {
        if first_seen.insert(h.id.as_str()) {
            order.entry(h.key.as_str()).or_default().push(h.seq);
            by_process[h.process] += 1;
        }
    }
    println!(
        "processes: {} messages, {} handlings ({} duplicates); first handled by member {by_process:?}; \
         member 0 killed {:?} in, everything handled {all_handled:?} after the kill",
        sent.len(),
        all.len(),
        all.len() - first_seen.len(),
        killed_at.map(|k| k - started),
    );
    assert!(by_process.iter().all(|n| *n > 0), "both processes handled messages: {by_process:?}");
    let expected: Vec<u64> = (0..PER_KEY).collect();
    for k in 0..KEYS {
        let key = format!("key-{k}");
        let seqs = order.get(key.as_str()).cloned().unwrap_or_default();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "first handlings of {key} not strictly increasing: {seqs:?}");
        assert_eq!(seqs, expected, "first handlings of {key}");
    }
    for member in &mut members {
        let _ = member.kill().await;
    }
    js.delete_stream(publisher.stream_name(topic)).await.expect("delete the stream");
}
