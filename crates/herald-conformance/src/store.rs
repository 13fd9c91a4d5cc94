//! The store scenarios: each function is one test of [`store_suite!`](crate::store_suite),
//! checking one promise of the contract in [`herald::store`] (the outbox ones live in
//! [`outbox`](crate::outbox)).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use herald::message::{Message, MessageId};
use herald::store::{
    ExpectedVersion, LogReader, NewEvent, RecordedEvent, SagaRecord, Snapshot, Store, StoreError, StreamAppend,
};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::StoreFixture;
use crate::support::{WAIT, event, join_all, reraise, rich_event, unique};

/// Every event of `stream` (up to a generous limit).
async fn read_all_of(store: &dyn Store, stream: &str) -> Vec<RecordedEvent> {
    store.read_stream(stream, 1, 100_000).await.unwrap_or_else(|e| panic!("reading {stream} failed: {e}"))
}

/// The whole global log after `after`, page by page.
async fn global_log(store: &dyn Store, after: u64) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::new();
    let mut after = after;
    loop {
        let page = store.read_all(after, 1_000).await.expect("read_all");
        match page.last() {
            None => return out,
            Some(last) => after = last.position,
        }
        out.extend(page);
    }
}

/// The position of the last event in the log now.
async fn log_head(store: &dyn Store) -> u64 {
    global_log(store, 0).await.last().map_or(0, |e| e.position)
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(e) if e.is_conflict() => {}
        other => panic!("{what} must fail with a conflict, got {other:?}"),
    }
}

/// Appends, then reads back: versions 1..n, increasing positions, every field intact, the same
/// in the stream, in the global log and inside a transaction.
pub async fn appended_events_read_back_with_versions_positions_and_metadata<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let stream = unique("order");
    let first: Vec<NewEvent> = (1..=3).map(rich_event).collect();
    let second: Vec<NewEvent> = (4..=5).map(rich_event).collect();

    let r = store.append(&stream, ExpectedVersion::NoStream, first.clone()).await.expect("first append");
    assert_eq!(r.next_expected_version, 3);
    let r = store.append(&stream, ExpectedVersion::Exact(3), second.clone()).await.expect("second append");
    assert_eq!(r.next_expected_version, 5);

    let sent: Vec<NewEvent> = first.into_iter().chain(second).collect();
    let read = read_all_of(store, &stream).await;
    assert_eq!(read.len(), 5, "five events read back");
    for (i, (got, sent)) in read.iter().zip(&sent).enumerate() {
        assert_eq!(got.stream, stream);
        assert_eq!(got.version, i as u64 + 1, "versions start at 1 and have no gaps");
        assert_eq!(got.id, sent.id, "id");
        assert_eq!(got.name, sent.name, "name");
        assert_eq!(got.payload, sent.payload, "payload");
        assert_eq!(got.metadata, sent.metadata, "metadata (correlation, causation, trace, time, headers)");
        assert!(got.position > 0, "positions are 1-based");
    }
    assert!(read.windows(2).all(|w| w[0].position < w[1].position), "positions increase with versions");

    let in_log: Vec<RecordedEvent> = global_log(store, 0).await.into_iter().filter(|e| e.stream == stream).collect();
    assert_eq!(in_log, read, "the global log holds the same events at the same positions");

    let mut tx = store.begin().await.expect("begin");
    let in_tx = tx.read_stream(&stream, 1, 100).await.expect("read in a transaction");
    assert_eq!(in_tx, read, "a transaction reads the same committed events");
}

/// `read_stream` starts at a version and stops at a limit.
pub async fn a_stream_can_be_read_from_a_version_and_with_a_limit<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let stream = unique("paged");
    store.append(&stream, ExpectedVersion::NoStream, (1..=10).map(event).collect()).await.expect("append");

    let versions = |events: Vec<RecordedEvent>| events.iter().map(|e| e.version).collect::<Vec<_>>();
    let name = stream.as_str();
    let read = move |from, limit| async move { store.read_stream(name, from, limit).await.expect("read_stream") };
    assert_eq!(versions(read(4, 3).await), vec![4, 5, 6], "from 4, limit 3");
    assert_eq!(versions(read(9, 100).await), vec![9, 10], "from 9 to the end");
    assert_eq!(versions(read(1, 1).await), vec![1], "limit 1");
    assert_eq!(versions(read(0, 2).await), vec![1, 2], "from 0 is from the start");
    assert!(read(11, 10).await.is_empty(), "past the end is empty");
    assert!(
        store.read_stream(&unique("missing"), 1, 10).await.expect("read a missing stream").is_empty(),
        "a stream that does not exist reads as empty"
    );
    let payloads: Vec<_> = read(4, 3).await.into_iter().map(|e| e.payload).collect();
    assert_eq!(payloads, vec![b"4".to_vec(), b"5".to_vec(), b"6".to_vec()], "the right events");

    let mut tx = store.begin().await.expect("begin");
    assert_eq!(versions(tx.read_stream(&stream, 4, 3).await.expect("read in tx")), vec![4, 5, 6]);
}

/// An append whose expected version does not hold fails with a conflict and writes nothing.
pub async fn a_wrong_expected_version_conflicts_and_writes_nothing<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let stream = unique("contended");
    store.append(&stream, ExpectedVersion::Exact(0), vec![event(1), event(2)]).await.expect("Exact(0) creates");
    let head = log_head(store).await;

    for (what, expected) in [
        ("NoStream on an existing stream", ExpectedVersion::NoStream),
        ("Exact(0) on an existing stream", ExpectedVersion::Exact(0)),
        ("Exact(1) when the stream is at 2", ExpectedVersion::Exact(1)),
        ("Exact(5) when the stream is at 2", ExpectedVersion::Exact(5)),
    ] {
        assert_conflict(store.append(&stream, expected, vec![event(99)]).await, what);
    }
    let read = read_all_of(store, &stream).await;
    assert_eq!(read.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2], "nothing was written");
    assert_eq!(log_head(store).await, head, "nothing reached the global log");

    let r = store.append(&stream, ExpectedVersion::Any, vec![event(3)]).await.expect("Any appends");
    assert_eq!(r.next_expected_version, 3);
    let r = store.append(&stream, ExpectedVersion::Exact(3), vec![event(4)]).await.expect("the right version");
    assert_eq!(r.next_expected_version, 4);
    let fresh = unique("fresh");
    let r = store.append(&fresh, ExpectedVersion::NoStream, vec![event(1)]).await.expect("NoStream on a new stream");
    assert_eq!(r.next_expected_version, 1);
}

/// Appends that cannot be meant (empty stream name, no events) are refused as invalid.
pub async fn invalid_appends_are_refused<F: Future<Output = StoreFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let store = &*fx.store;
    match store.append("", ExpectedVersion::Any, vec![event(1)]).await {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("an empty stream name must be Invalid, got {other:?}"),
    }
    let stream = unique("empty-append");
    match store.append(&stream, ExpectedVersion::Any, Vec::new()).await {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("an append of no events must be Invalid, got {other:?}"),
    }
    assert!(read_all_of(store, &stream).await.is_empty());
}

/// Inside a transaction, `read_stream` includes the transaction's own appends, and the next
/// append continues from them.
pub async fn a_transaction_reads_its_own_appends<F: Future<Output = StoreFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let store = &*fx.store;
    let stream = unique("own-writes");
    store.append(&stream, ExpectedVersion::NoStream, vec![event(1)]).await.expect("append");

    let mut tx = store.begin().await.expect("begin");
    let r = tx.append(&stream, ExpectedVersion::Exact(1), vec![event(2), event(3)]).await.expect("append in tx");
    assert_eq!(r.next_expected_version, 3);
    let r = tx.append(&stream, ExpectedVersion::Exact(3), vec![event(4)]).await.expect("second append in tx");
    assert_eq!(r.next_expected_version, 4);
    assert_conflict(tx.append(&stream, ExpectedVersion::Exact(1), vec![event(9)]).await, "a stale version in the tx");
    let seen = tx.read_stream(&stream, 1, 100).await.expect("read in tx");
    assert_eq!(seen.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2, 3, 4], "own appends included");
    assert_eq!(seen[3].payload, b"4".to_vec());
    let tail = tx.read_stream(&stream, 3, 100).await.expect("read in tx from 3");
    assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), vec![3, 4]);
    tx.commit().await.expect("commit");
    assert_eq!(read_all_of(store, &stream).await.len(), 4);
}

/// Events appended in a transaction that is dropped are never written.
pub async fn an_append_in_a_dropped_transaction_writes_nothing<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let stream = unique("rolled-back");
    let head = log_head(store).await;
    {
        let mut tx = store.begin().await.expect("begin");
        tx.append(&stream, ExpectedVersion::NoStream, vec![event(1), event(2), event(3)]).await.expect("append");
        assert_eq!(tx.read_stream(&stream, 1, 10).await.expect("read in tx").len(), 3);
        // dropped without commit
    }
    assert!(read_all_of(store, &stream).await.is_empty(), "no events after rollback");
    assert_eq!(log_head(store).await, head, "nothing in the global log");
    let r = store.append(&stream, ExpectedVersion::NoStream, vec![event(1)]).await.expect("the stream is still new");
    assert_eq!(r.next_expected_version, 1);
}

/// A dropped transaction leaves no trace in any port: events, snapshot, outbox, inbox,
/// checkpoint, saga.
pub async fn a_dropped_transaction_writes_nothing_in_any_port<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let (stream, topic, handler, checkpoint, saga) =
        (unique("all-ports"), unique("topic"), unique("handler"), unique("checkpoint"), unique("saga"));
    let message = Message::new(&topic, "conformance.Rolled.v1", b"{}".to_vec());
    {
        let mut tx = store.begin().await.expect("begin");
        tx.append(&stream, ExpectedVersion::NoStream, vec![event(1)]).await.expect("append");
        tx.save_snapshot(Snapshot { stream: stream.clone(), version: 1, payload: b"s".to_vec() }).await.expect("snap");
        tx.enqueue(vec![message.clone()]).await.expect("enqueue");
        assert!(tx.record_handled(&handler, message.id).await.expect("record"));
        tx.save_checkpoint(&checkpoint, 7).await.expect("checkpoint");
        tx.save_saga(&saga_record(&saga, "1", 1)).await.expect("saga");
    }
    assert!(read_all_of(store, &stream).await.is_empty(), "no events");
    assert_eq!(store.load_snapshot(&stream).await.expect("load snapshot"), None, "no snapshot");
    let pending = store.outbox_pending(100_000).await.expect("outbox");
    assert!(pending.iter().all(|r| r.message.topic != topic), "no outbox row");
    assert_eq!(store.load_checkpoint(&checkpoint).await.expect("load checkpoint"), None, "no checkpoint");
    assert_eq!(store.load_saga(&saga, "1").await.expect("load saga"), None, "no saga");
    let mut tx = store.begin().await.expect("begin");
    assert!(tx.record_handled(&handler, message.id).await.expect("record"), "no inbox entry");
}

/// `on_commit` hooks run after a commit, and never for a dropped transaction.
pub async fn commit_hooks_run_only_after_a_commit<F: Future<Output = StoreFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let store = &*fx.store;
    let stream = unique("hooks");
    let ran_on_drop = Arc::new(AtomicBool::new(false));
    {
        let mut tx = store.begin().await.expect("begin");
        tx.append(&stream, ExpectedVersion::NoStream, vec![event(1)]).await.expect("append");
        let flag = ran_on_drop.clone();
        tx.on_commit(Box::new(move || flag.store(true, Ordering::SeqCst)));
    }
    assert!(!ran_on_drop.load(Ordering::SeqCst), "a dropped transaction's hook never runs");

    let ran = Arc::new(AtomicBool::new(false));
    let mut tx = store.begin().await.expect("begin");
    tx.append(&stream, ExpectedVersion::NoStream, vec![event(1)]).await.expect("append");
    let flag = ran.clone();
    tx.on_commit(Box::new(move || flag.store(true, Ordering::SeqCst)));
    assert!(!ran.load(Ordering::SeqCst), "not before commit");
    tx.commit().await.expect("commit");
    assert!(ran.load(Ordering::SeqCst), "the hook ran after commit");
}

/// Eight tasks append 20 events each to one stream with `Exact(current)`, retrying on conflict:
/// the stream ends at versions 1..=160 with no gaps or duplicates, every success reported the
/// right version, and every conflict was real (someone else had written).
pub async fn concurrent_appenders_to_one_stream_get_gapless_versions<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    const TASKS: u64 = 8;
    const EACH: u64 = 20;
    let fx = setup().await;
    let stream = Arc::new(unique("hot-stream"));
    let start = Arc::new(Barrier::new(TASKS as usize));
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let (store, stream, start, conflicts) = (fx.store.clone(), stream.clone(), start.clone(), conflicts.clone());
        tasks.spawn(async move {
            start.wait().await;
            let mut known = 0u64;
            let mut mine: Vec<(u64, MessageId)> = Vec::new();
            let mut i = 0;
            while i < EACH {
                let e = NewEvent::new("conformance.Raced.v1", format!("{t}:{i}").into_bytes());
                let id = e.id;
                match store.append(&stream, ExpectedVersion::Exact(known), vec![e]).await {
                    Ok(r) => {
                        assert_eq!(r.next_expected_version, known + 1, "task {t}: the reported version");
                        known += 1;
                        mine.push((known, id));
                        i += 1;
                    }
                    Err(e) if e.is_conflict() => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                        let newer = store.read_stream(&stream, known + 1, 100_000).await.expect("re-read");
                        let last = newer.last().map(|e| e.version).unwrap_or_else(|| {
                            panic!("task {t}: conflict expecting version {known}, but no one had written after it")
                        });
                        assert!(last > known, "task {t}: a real conflict moves the stream past {known}");
                        known = last;
                    }
                    Err(e) => panic!("task {t}: append failed with a non-conflict error: {e}"),
                }
                // Give the other tasks a chance to interleave on a 2-thread runtime.
                if fastrand::u8(0..4) == 0 {
                    tokio::task::yield_now().await;
                }
            }
            mine
        });
    }
    let mut reported: BTreeMap<u64, MessageId> = BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        for (version, id) in reraise(result).unwrap_or_default() {
            assert!(reported.insert(version, id).is_none(), "version {version} was reported to two appenders");
        }
    }
    let read = read_all_of(&*fx.store, &stream).await;
    let versions: Vec<u64> = read.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=TASKS * EACH).collect::<Vec<_>>(), "versions 1..=160, no gaps or duplicates");
    for e in &read {
        assert_eq!(
            reported.get(&e.version),
            Some(&e.id),
            "version {} holds the event its appender was told",
            e.version
        );
    }
    let payloads: HashSet<_> = read.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads.len(), read.len(), "every append landed once");
    println!("concurrent appenders: {} conflicts", conflicts.load(Ordering::Relaxed));
}

/// `ExpectedVersion::Any` never conflicts: eight tasks append to one stream at once, half of
/// them in a unit of work that does a little more work between append and commit, half through
/// the store's one-call `append`, and every append commits; the stream ends at versions 1..=80
/// with no gaps.
pub async fn concurrent_appends_expecting_any_version_all_succeed<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    const TASKS: u64 = 8;
    const EACH: u64 = 10;
    let fx = setup().await;
    let stream = Arc::new(unique("any-stream"));
    let start = Arc::new(Barrier::new(TASKS as usize));
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let (store, stream, start) = (fx.store.clone(), stream.clone(), start.clone());
        tasks.spawn(async move {
            start.wait().await;
            for i in 0..EACH {
                let e = NewEvent::new("conformance.Any.v1", format!("{t}:{i}").into_bytes());
                if t % 2 == 0 {
                    store
                        .append(&stream, ExpectedVersion::Any, vec![e])
                        .await
                        .unwrap_or_else(|e| panic!("task {t}: a one-call append expecting Any failed: {e}"));
                    continue;
                }
                let mut tx = store.begin().await.expect("begin");
                tx.append(&stream, ExpectedVersion::Any, vec![e])
                    .await
                    .unwrap_or_else(|e| panic!("task {t}: an append expecting Any failed: {e}"));
                // The rest of the unit of work (other tables, the outbox…) takes a moment.
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.commit()
                    .await
                    .unwrap_or_else(|e| panic!("task {t}: committing an append expecting Any failed: {e}"));
            }
        });
    }
    join_all(tasks).await;
    let read = read_all_of(&*fx.store, &stream).await;
    let versions: Vec<u64> = read.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=TASKS * EACH).collect::<Vec<_>>(), "every append landed, versions without gaps");
}

/// With 8+ concurrent writers (some writing several events or streams at once), a reader that
/// started before them sees every event exactly once, positions increasing by exactly 1, and
/// each stream's versions in order.
pub async fn a_live_reader_sees_the_whole_global_log_in_order_under_concurrent_writers<
    F: Future<Output = StoreFixture>,
>(
    setup: impl FnOnce() -> F,
) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 250;
    const STREAMS_PER_WRITER: usize = 5;
    const TOTAL: usize = WRITERS * PER_WRITER;
    let fx = setup().await;
    let prefix = unique("log");

    // The reader starts from 0 before any writer, and reads until it has seen every event of
    // this scenario's streams, keeping everything it saw (other scenarios' events included).
    let mut reader_task = JoinSet::new();
    {
        let (store, prefix) = (fx.store.clone(), prefix.clone());
        reader_task.spawn(async move {
            let mut reader = LogReader::new(store, 0);
            let mut seen = Vec::new();
            let mut mine = 0;
            while mine < TOTAL {
                match tokio::time::timeout(WAIT, reader.next()).await {
                    Ok(Ok(e)) => {
                        if e.stream.starts_with(&prefix) {
                            mine += 1;
                        }
                        assert_eq!(reader.position(), e.position, "the reader's position follows what it returned");
                        seen.push(e);
                    }
                    Ok(Err(e)) => panic!("the log reader failed after {mine} events: {e}"),
                    Err(_) => panic!("the log reader saw only {mine} of {TOTAL} events within {WAIT:?}"),
                }
            }
            seen
        });
    }

    let start = Arc::new(Barrier::new(WRITERS));
    let mut writers = JoinSet::new();
    for w in 0..WRITERS {
        let (store, prefix, start) = (fx.store.clone(), prefix.clone(), start.clone());
        writers.spawn(async move {
            let streams: Vec<String> = (0..STREAMS_PER_WRITER).map(|s| format!("{prefix}-w{w}-s{s}")).collect();
            let mut versions = [0u64; STREAMS_PER_WRITER];
            let mut written: HashMap<String, Vec<MessageId>> = HashMap::new();
            let mut n = 0;
            start.wait().await;
            while n < PER_WRITER {
                let s = fastrand::usize(0..STREAMS_PER_WRITER);
                let size = fastrand::usize(1..=4).min(PER_WRITER - n);
                let events: Vec<NewEvent> = (0..size).map(|i| event((n + i) as u64)).collect();
                if fastrand::u8(0..5) == 0 && size >= 2 {
                    // Two streams in one transaction.
                    let other = (s + 1) % STREAMS_PER_WRITER;
                    let (a, b) = events.split_at(size / 2);
                    let batch = vec![
                        StreamAppend {
                            stream: streams[s].clone(),
                            expected: ExpectedVersion::Exact(versions[s]),
                            events: a.to_vec(),
                        },
                        StreamAppend {
                            stream: streams[other].clone(),
                            expected: ExpectedVersion::Exact(versions[other]),
                            events: b.to_vec(),
                        },
                    ];
                    store.append_many(batch).await.unwrap_or_else(|e| panic!("writer {w}: append_many failed: {e}"));
                    versions[s] += a.len() as u64;
                    versions[other] += b.len() as u64;
                    written.entry(streams[s].clone()).or_default().extend(a.iter().map(|e| e.id));
                    written.entry(streams[other].clone()).or_default().extend(b.iter().map(|e| e.id));
                } else {
                    let ids: Vec<MessageId> = events.iter().map(|e| e.id).collect();
                    store
                        .append(&streams[s], ExpectedVersion::Exact(versions[s]), events)
                        .await
                        .unwrap_or_else(|e| panic!("writer {w}: append failed: {e}"));
                    versions[s] += size as u64;
                    written.entry(streams[s].clone()).or_default().extend(ids);
                }
                n += size;
                if fastrand::u8(0..3) == 0 {
                    tokio::task::yield_now().await;
                }
            }
            written
        });
    }
    let mut written: HashMap<String, Vec<MessageId>> = HashMap::new();
    while let Some(result) = writers.join_next().await {
        written.extend(reraise(result).unwrap_or_default());
    }
    assert_eq!(written.values().map(Vec::len).sum::<usize>(), TOTAL);

    let seen = match reader_task.join_next().await {
        Some(result) => reraise(result).expect("the reader was not cancelled"),
        None => unreachable!("one reader was spawned"),
    };
    // Started from 0, the reader must see positions 1, 2, 3… with none skipped or repeated.
    for (expected_position, e) in (1u64..).zip(&seen) {
        assert_eq!(e.position, expected_position, "the reader skipped or repeated a position (event {})", e.id);
    }
    let mut by_stream: HashMap<String, Vec<&RecordedEvent>> = HashMap::new();
    for e in seen.iter().filter(|e| e.stream.starts_with(&prefix)) {
        by_stream.entry(e.stream.clone()).or_default().push(e);
    }
    for (stream, ids) in &written {
        let got = by_stream.get(stream).cloned().unwrap_or_default();
        let versions: Vec<u64> = got.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=ids.len() as u64).collect::<Vec<_>>(), "{stream}: versions in order");
        let got_ids: Vec<MessageId> = got.iter().map(|e| e.id).collect();
        assert_eq!(&got_ids, ids, "{stream}: exactly the events written, in order");
    }
    assert_eq!(by_stream.len(), written.len(), "no stray streams");

    let last = seen.last().map_or(0, |e| e.position);
    let after: Vec<RecordedEvent> = global_log(&*fx.store, last).await;
    assert!(
        after.iter().all(|e| !e.stream.starts_with(&prefix)),
        "the log holds events of this scenario the reader never saw"
    );
    let replay = global_log(&*fx.store, 0).await;
    assert_eq!(&replay[..seen.len()], &seen[..], "read_all replays exactly what the live reader saw");
}

/// `append_many` with a conflicting last step writes nothing from any step; a valid one writes
/// every step.
pub async fn a_multi_stream_append_is_all_or_nothing<F: Future<Output = StoreFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let store = &*fx.store;
    let (a, b, c) = (unique("many-a"), unique("many-b"), unique("many-c"));
    store.append(&c, ExpectedVersion::NoStream, vec![event(1)]).await.expect("prepare c");
    let head = log_head(store).await;

    let step = |stream: &str, expected, events| StreamAppend { stream: stream.to_owned(), expected, events };
    let batch = vec![
        step(&a, ExpectedVersion::NoStream, vec![event(1), event(2)]),
        step(&b, ExpectedVersion::NoStream, vec![event(1)]),
        step(&c, ExpectedVersion::NoStream, vec![event(2)]), // c exists: conflict
    ];
    assert_conflict(store.append_many(batch).await, "append_many with a conflicting last step");
    assert!(read_all_of(store, &a).await.is_empty(), "the first step was not written");
    assert!(read_all_of(store, &b).await.is_empty(), "the second step was not written");
    assert_eq!(read_all_of(store, &c).await.len(), 1, "the conflicting stream is unchanged");
    assert_eq!(log_head(store).await, head, "nothing reached the global log");

    let batch = vec![
        step(&a, ExpectedVersion::NoStream, vec![event(1), event(2)]),
        step(&b, ExpectedVersion::NoStream, vec![event(1)]),
        step(&c, ExpectedVersion::Exact(1), vec![event(2)]),
    ];
    let results = store.append_many(batch).await.expect("a valid append_many");
    let versions: Vec<u64> = results.iter().map(|r| r.next_expected_version).collect();
    assert_eq!(versions, vec![2, 1, 2]);
    assert_eq!(read_all_of(store, &a).await.len(), 2);
    assert_eq!(read_all_of(store, &b).await.len(), 1);
    assert_eq!(read_all_of(store, &c).await.len(), 2);
}

/// A snapshot reads back as saved; a newer one replaces the older; one saved in a dropped
/// transaction is never seen.
pub async fn snapshots_round_trip_and_the_newest_replaces_the_older<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let stream = unique("snapshotted");
    assert_eq!(store.load_snapshot(&stream).await.expect("load"), None, "no snapshot yet");

    let save = |version: u64, payload: &[u8]| Snapshot { stream: stream.clone(), version, payload: payload.to_vec() };
    let v3 = save(3, &[0, 1, 2, 0xff]);
    let mut tx = store.begin().await.expect("begin");
    tx.save_snapshot(v3.clone()).await.expect("save");
    tx.commit().await.expect("commit");
    assert_eq!(store.load_snapshot(&stream).await.expect("load"), Some(v3), "round trip");

    let v7 = save(7, b"{\"total\":7}");
    let mut tx = store.begin().await.expect("begin");
    tx.save_snapshot(v7.clone()).await.expect("save newer");
    tx.commit().await.expect("commit");
    assert_eq!(store.load_snapshot(&stream).await.expect("load"), Some(v7.clone()), "the newer replaces the older");
    let mut tx = store.begin().await.expect("begin");
    assert_eq!(tx.load_snapshot(&stream).await.expect("load in tx"), Some(v7.clone()));
    drop(tx);

    {
        let mut tx = store.begin().await.expect("begin");
        tx.save_snapshot(save(9, b"rolled back")).await.expect("save");
    }
    assert_eq!(store.load_snapshot(&stream).await.expect("load"), Some(v7), "a rolled-back snapshot is not visible");
    assert_eq!(store.load_snapshot(&unique("other")).await.expect("load"), None, "snapshots are per stream");
}

/// `load_stream` (what an aggregate load reads) returns the latest snapshot and the events after
/// it, with a limit, the same inside a unit of work (own appends included) and outside one.
pub async fn load_stream_returns_the_snapshot_and_the_events_after_it<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let stream = unique("loaded");
    let (snapshot, events) = store.load_stream(&stream, 100).await.expect("load empty");
    assert_eq!((snapshot, events.len()), (None, 0), "a stream that does not exist");

    let new = |i: u64| NewEvent::new("Loaded.v1", format!("{{\"i\":{i}}}").into_bytes());
    let mut tx = store.begin().await.expect("begin");
    tx.append(&stream, ExpectedVersion::NoStream, (1..=5).map(new).collect()).await.expect("append");
    tx.commit().await.expect("commit");
    let (snapshot, events) = store.load_stream(&stream, 100).await.expect("load without snapshot");
    assert_eq!(snapshot, None);
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5], "from version 1");
    assert!(events.iter().all(|e| e.stream == stream), "events of the stream: {events:?}");

    let snap = Snapshot { stream: stream.clone(), version: 3, payload: b"{\"at\":3}".to_vec() };
    let mut tx = store.begin().await.expect("begin");
    tx.save_snapshot(snap.clone()).await.expect("save snapshot");
    tx.commit().await.expect("commit");
    let (snapshot, events) = store.load_stream(&stream, 100).await.expect("load with snapshot");
    assert_eq!(snapshot.as_ref(), Some(&snap));
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![4, 5], "only the events after the snapshot");
    assert_eq!(events[0].payload, b"{\"i\":4}".to_vec());
    let (_, events) = store.load_stream(&stream, 1).await.expect("load with a limit");
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![4], "the limit holds");

    let mut tx = store.begin().await.expect("begin");
    tx.append(&stream, ExpectedVersion::Exact(5), vec![new(6)]).await.expect("append in tx");
    let (snapshot, events) = tx.load_stream(&stream, 100).await.expect("load in tx");
    assert_eq!(snapshot, Some(snap.clone()));
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![4, 5, 6], "its own append included");
    drop(tx);

    let snap = Snapshot { stream: stream.clone(), version: 5, payload: b"{\"at\":5}".to_vec() };
    let mut tx = store.begin().await.expect("begin");
    tx.save_snapshot(snap.clone()).await.expect("save snapshot at the head");
    tx.commit().await.expect("commit");
    let (snapshot, events) = store.load_stream(&stream, 100).await.expect("load at the head");
    assert_eq!((snapshot, events.len()), (Some(snap), 0), "a snapshot with nothing after it");
}

/// A reader started after some commits first catches up on them, then follows new commits live,
/// in order.
pub async fn a_reader_catches_up_then_follows_live_commits<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = fx.store.clone();
    let stream = unique("catch-up");
    let head = log_head(&*store).await;
    let before: Vec<NewEvent> = (1..=10).map(event).collect();
    for e in &before {
        store.append(&stream, ExpectedVersion::Any, vec![e.clone()]).await.expect("append before");
    }

    let mut reader = LogReader::new(store.clone(), head);
    let mut seen: Vec<RecordedEvent> = Vec::new();
    async fn next_of(reader: &mut LogReader, stream: &str) -> RecordedEvent {
        loop {
            match tokio::time::timeout(WAIT, reader.next()).await {
                Ok(Ok(e)) if e.stream == stream => return e,
                Ok(Ok(_)) => {} // another scenario's event on a shared store
                Ok(Err(e)) => panic!("the log reader failed: {e}"),
                Err(_) => panic!("the log reader saw nothing new within {WAIT:?}"),
            }
        }
    }
    for _ in 0..10 {
        seen.push(next_of(&mut reader, &stream).await);
    }

    // Live: the reader is now waiting; commits made while it waits must reach it.
    let after: Vec<NewEvent> = (11..=20).map(event).collect();
    let mut writer = JoinSet::new();
    {
        let (store, stream, after) = (store.clone(), stream.clone(), after.clone());
        writer.spawn(async move {
            for e in after {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=5))).await;
                store.append(&stream, ExpectedVersion::Any, vec![e]).await.expect("append after");
            }
        });
    }
    for _ in 0..10 {
        seen.push(next_of(&mut reader, &stream).await);
    }
    join_all(writer).await;

    let ids: Vec<MessageId> = seen.iter().map(|e| e.id).collect();
    let expected: Vec<MessageId> = before.iter().chain(&after).map(|e| e.id).collect();
    assert_eq!(ids, expected, "every event, in commit order");
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position), "positions increase");
    assert_eq!(seen.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
}

/// `record_handled` is true the first time, false for the same pair later in the transaction
/// and after commit; handlers and message ids are independent.
pub async fn the_inbox_records_a_message_once_per_handler<F: Future<Output = StoreFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let store = &*fx.store;
    let (handler, other_handler) = (unique("handler"), unique("other-handler"));
    let (id, other_id) = (MessageId::new(), MessageId::new());

    let mut tx = store.begin().await.expect("begin");
    assert!(tx.record_handled(&handler, id).await.expect("record"), "the first record is true");
    assert!(!tx.record_handled(&handler, id).await.expect("record again"), "again in the same transaction: false");
    tx.commit().await.expect("commit");

    let mut tx = store.begin().await.expect("begin");
    assert!(!tx.record_handled(&handler, id).await.expect("record"), "after commit: false");
    assert!(tx.record_handled(&other_handler, id).await.expect("record"), "another handler is independent");
    assert!(tx.record_handled(&handler, other_id).await.expect("record"), "another message is independent");
    tx.commit().await.expect("commit");

    let mut tx = store.begin().await.expect("begin");
    assert!(!tx.record_handled(&other_handler, id).await.expect("record"));
    assert!(!tx.record_handled(&handler, other_id).await.expect("record"));
}

/// A record in a rolled-back transaction does not count: the message can still be handled.
pub async fn a_rolled_back_inbox_record_does_not_count<F: Future<Output = StoreFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let store = &*fx.store;
    let (handler, id) = (unique("handler"), MessageId::new());
    {
        let mut tx = store.begin().await.expect("begin");
        assert!(tx.record_handled(&handler, id).await.expect("record"));
    }
    let mut tx = store.begin().await.expect("begin");
    assert!(tx.record_handled(&handler, id).await.expect("record"), "the rolled-back record did not count");
    tx.commit().await.expect("commit");
    let mut tx = store.begin().await.expect("begin");
    assert!(!tx.record_handled(&handler, id).await.expect("record"));
}

/// Two transactions recording the same `(handler, message id)` at the same time: at most one
/// commits having recorded it first.
pub async fn of_two_concurrent_inbox_records_at_most_one_commits<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    const ROUNDS: usize = 30;
    let fx = setup().await;
    let handler = Arc::new(unique("handler"));
    let mut overlapped = 0;
    for round in 0..ROUNDS {
        let id = MessageId::new();
        let barrier = Arc::new(Barrier::new(2));
        let mut racers = JoinSet::new();
        for _ in 0..2 {
            let (store, handler, barrier) = (fx.store.clone(), handler.clone(), barrier.clone());
            racers.spawn(async move {
                barrier.wait().await;
                let mut tx = store.begin().await.expect("begin");
                let first = match tx.record_handled(&handler, id).await {
                    Ok(first) => first,
                    Err(e) if e.is_conflict() => return (false, false),
                    Err(e) => panic!("record_handled failed: {e}"),
                };
                // Hold the transaction open a moment so the two overlap.
                tokio::time::sleep(Duration::from_millis(2)).await;
                match tx.commit().await {
                    Ok(()) => (first, true),
                    Err(e) if e.is_conflict() => (first, false),
                    Err(e) => panic!("commit failed with a non-conflict error: {e}"),
                }
            });
        }
        let mut outcomes = Vec::new();
        while let Some(result) = racers.join_next().await {
            outcomes.extend(reraise(result));
        }
        let winners = outcomes.iter().filter(|(first, committed)| *first && *committed).count();
        assert!(winners <= 1, "round {round}: both transactions committed a first record: {outcomes:?}");
        if outcomes.iter().all(|(first, _)| *first) {
            overlapped += 1;
        }
        let mut tx = fx.store.begin().await.expect("begin");
        let recorded = !tx.record_handled(&handler, id).await.expect("record");
        assert_eq!(recorded, winners == 1, "round {round}: the inbox holds the pair iff one transaction committed it");
    }
    println!("concurrent inbox records: {overlapped} of {ROUNDS} rounds had both record first");
}

/// Checkpoints save, load, overwrite; a rolled-back save leaves the old value; names are
/// independent.
pub async fn checkpoints_are_saved_overwritten_and_rolled_back<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let (name, other) = (unique("projection"), unique("other-projection"));
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), None, "unknown checkpoint");

    let save = |name: String, position: u64| async move {
        let mut tx = store.begin().await.expect("begin");
        tx.save_checkpoint(&name, position).await.expect("save");
        tx.commit().await.expect("commit");
    };
    save(name.clone(), 10).await;
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(10));
    let mut tx = store.begin().await.expect("begin");
    assert_eq!(tx.load_checkpoint(&name).await.expect("load in tx"), Some(10));
    drop(tx);

    save(name.clone(), 20).await;
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(20), "overwritten");
    {
        let mut tx = store.begin().await.expect("begin");
        tx.save_checkpoint(&name, 30).await.expect("save");
    }
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(20), "rollback keeps the old value");

    save(other.clone(), 5).await;
    assert_eq!(store.load_checkpoint(&other).await.expect("load"), Some(5));
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(20), "names are independent");
    save(name.clone(), 0).await;
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(0), "0 is a position, not 'none'");
}

fn saga_record(name: &str, id: &str, version: u64) -> SagaRecord {
    SagaRecord {
        name: name.to_owned(),
        id: id.to_owned(),
        version,
        step: version as i64 - 1,
        compensating: version.is_multiple_of(2),
        done: false,
        data: format!("{{\"v\":{version}}}").into_bytes(),
        deadline: None,
    }
}

/// Sagas save as version 1, then 2; a stale or skipping version conflicts (at save or commit)
/// and changes nothing; unknown sagas load as `None`.
pub async fn sagas_are_versioned_and_a_stale_save_conflicts<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let name = unique("create-order");
    let save = |record: SagaRecord| async move {
        let mut tx = store.begin().await?;
        tx.save_saga(&record).await?;
        tx.commit().await
    };

    assert_eq!(store.load_saga(&name, "order-1").await.expect("load"), None, "unknown saga");
    assert_conflict(save(saga_record(&name, "order-1", 2)).await, "a new saga saved as version 2");

    let v1 = saga_record(&name, "order-1", 1);
    save(v1.clone()).await.expect("save version 1");
    assert_eq!(store.load_saga(&name, "order-1").await.expect("load"), Some(v1.clone()));
    let mut tx = store.begin().await.expect("begin");
    assert_eq!(tx.load_saga(&name, "order-1").await.expect("load in tx"), Some(v1));
    drop(tx);

    let mut v2 = saga_record(&name, "order-1", 2);
    v2.done = true;
    v2.data = vec![0, 0xff, 7];
    save(v2.clone()).await.expect("save version 2");
    assert_eq!(store.load_saga(&name, "order-1").await.expect("load"), Some(v2.clone()));

    assert_conflict(save(saga_record(&name, "order-1", 2)).await, "saving version 2 again (stale)");
    assert_conflict(save(saga_record(&name, "order-1", 1)).await, "saving version 1 (stale)");
    assert_conflict(save(saga_record(&name, "order-1", 4)).await, "skipping a version");
    assert_eq!(store.load_saga(&name, "order-1").await.expect("load"), Some(v2), "conflicts change nothing");

    assert_eq!(store.load_saga(&name, "order-2").await.expect("load"), None, "unknown id");
    assert_eq!(store.load_saga(&unique("other-saga"), "order-1").await.expect("load"), None, "unknown name");
    save(saga_record(&name, "order-2", 1)).await.expect("another instance starts at 1");
}

/// `due_sagas` lists the instances of one saga whose deadline has passed and that are not
/// done, earliest deadline first, up to the limit; deadlines round-trip and can be cleared.
pub async fn overdue_sagas_are_listed_earliest_first<F: Future<Output = StoreFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let store = &*fx.store;
    let (name, other) = (unique("timeouts"), unique("other-saga"));
    let with = |name: &str, id: &str, deadline: Option<u64>, done: bool| SagaRecord {
        deadline,
        done,
        ..saga_record(name, id, 1)
    };
    let mut tx = store.begin().await.expect("begin");
    for record in [
        with(&name, "late", Some(3_000), false),
        with(&name, "later", Some(5_000), false),
        with(&name, "earliest", Some(1_000), false),
        with(&name, "future", Some(9_000), false),
        with(&name, "finished", Some(500), true),
        with(&name, "no-deadline", None, false),
        with(&other, "other", Some(100), false),
    ] {
        tx.save_saga(&record).await.expect("save");
    }
    tx.commit().await.expect("commit");

    let ids = |records: Vec<SagaRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let due = store.due_sagas(&name, 5_000, 100).await.expect("due_sagas");
    assert_eq!(ids(due.clone()), ["earliest", "late", "later"], "overdue, not done, this saga only, earliest first");
    assert_eq!(due[0].deadline, Some(1_000), "the deadline round-trips");
    assert_eq!(ids(store.due_sagas(&name, 5_000, 2).await.expect("due_sagas")), ["earliest", "late"], "limit");
    assert!(store.due_sagas(&name, 999, 100).await.expect("due_sagas").is_empty(), "nothing due yet");

    let mut tx = store.begin().await.expect("begin");
    tx.save_saga(&SagaRecord { version: 2, ..with(&name, "earliest", None, false) }).await.expect("clear deadline");
    tx.commit().await.expect("commit");
    assert_eq!(ids(store.due_sagas(&name, 5_000, 100).await.expect("due_sagas")), ["late", "later"]);
    assert_eq!(store.load_saga(&name, "earliest").await.expect("load").and_then(|r| r.deadline), None);
}
