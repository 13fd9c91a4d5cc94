//! Smoke tests of herald-sql on a real SQLite file. The full contract is checked by the
//! universal conformance suite (`tests/conformance.rs`); these cover what is specific to SQL:
//! real transactions, concurrency between connections, and data surviving a reopen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use herald::pubsub::{
    DLQ_ATTEMPTS, DLQ_ORIGINAL_ID, DLQ_REASON, Delivery, PubSubError, Publisher, StartFrom, SubscribeOptions,
    Subscriber, Subscription,
};
use herald::store::{LogReader, SagaRecord, Snapshot};
use herald::{ExpectedVersion, Message, MessageId, NewEvent, Store};
use herald_sql::{SqliteConfig, SqliteDatabase, SqliteTransaction};
use tempfile::TempDir;

/// A fresh database file in its own temporary directory (kept alive by the returned guard).
async fn database() -> Result<(SqliteDatabase, TempDir)> {
    let dir = tempfile::tempdir()?;
    let db = SqliteDatabase::open(&format!("sqlite://{}", dir.path().join("herald.db").display())).await?;
    Ok((db, dir))
}

fn event(name: &str) -> NewEvent {
    NewEvent::new(name, format!(r#"{{"event":"{name}"}}"#).into_bytes())
}

async fn next(sub: &mut Subscription) -> Result<Delivery> {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .context("no delivery within 10 s")?
        .context("subscription ended")
}

async fn nothing_within(sub: &mut Subscription, wait: Duration) -> Result<()> {
    if let Ok(Some(d)) = tokio::time::timeout(wait, sub.next()).await {
        bail!("unexpected delivery of {} (attempt {})", d.message.name, d.attempt);
    }
    Ok(())
}

fn options(topic: &str, group: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic, group).start(StartFrom::Beginning)
}

// --- event store ---

#[tokio::test]
async fn appended_events_are_read_back_from_their_stream_and_the_global_log() -> Result<()> {
    let (db, _dir) = database().await?;
    let store = db.store();
    let first = store.append("order-1", ExpectedVersion::NoStream, vec![event("A"), event("B")]).await?;
    assert_eq!(first.next_expected_version, 2);
    store.append("order-2", ExpectedVersion::Any, vec![event("C")]).await?;
    let third = store.append("order-1", ExpectedVersion::Exact(2), vec![event("D")]).await?;
    assert_eq!(third.next_expected_version, 3);

    let stream = store.read_stream("order-1", 1, 100).await?;
    let names: Vec<_> = stream.iter().map(|e| (e.version, e.name.as_str())).collect();
    assert_eq!(names, [(1, "A"), (2, "B"), (3, "D")]);
    assert_eq!(store.read_stream("order-1", 2, 1).await?[0].name, "B");

    let all = store.read_all(0, 100).await?;
    let log: Vec<_> = all.iter().map(|e| (e.position, e.stream.as_str(), e.name.as_str())).collect();
    assert_eq!(log, [(1, "order-1", "A"), (2, "order-1", "B"), (3, "order-2", "C"), (4, "order-1", "D")]);
    assert_eq!(store.read_all(2, 1).await?[0].name, "C");
    assert_eq!(all[0].payload, br#"{"event":"A"}"#);
    Ok(())
}

#[tokio::test]
async fn an_append_expecting_a_stale_version_is_a_conflict_and_writes_nothing() -> Result<()> {
    let (db, _dir) = database().await?;
    let store = db.store();
    store.append("s", ExpectedVersion::NoStream, vec![event("A")]).await?;

    let err = store.append("s", ExpectedVersion::NoStream, vec![event("B")]).await.err().context("no conflict")?;
    assert!(err.is_conflict(), "{err}");
    let err = store.append("s", ExpectedVersion::Exact(5), vec![event("B")]).await.err().context("no conflict")?;
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.read_all(0, 100).await?.len(), 1);

    let invalid = store.append("s", ExpectedVersion::Any, vec![]).await.err().context("empty append accepted")?;
    assert!(matches!(invalid, herald::StoreError::Invalid(_)));
    Ok(())
}

#[tokio::test]
async fn of_concurrent_appends_expecting_the_same_version_exactly_one_commits() -> Result<()> {
    let (db, _dir) = database().await?;
    let store = db.store();
    store.append("s", ExpectedVersion::NoStream, vec![event("A")]).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move { store.append("s", ExpectedVersion::Exact(1), vec![event("B")]).await });
    }
    let (mut ok, mut conflicts) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result? {
            Ok(_) => ok += 1,
            Err(e) if e.is_conflict() => conflicts += 1,
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!((ok, conflicts), (1, 7));
    assert_eq!(store.read_stream("s", 1, 10).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn the_global_log_never_skips_while_many_writers_append() -> Result<()> {
    let (db, _dir) = database().await?;
    let store: Arc<dyn Store> = Arc::new(db.store());
    const WRITERS: usize = 8;
    const APPENDS: usize = 25;
    let total = (WRITERS * APPENDS) as u64;

    // A reader following the log while the writers run: it must see 1, 2, 3… with no gap.
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut log = LogReader::new(store, 0);
            let mut expected = 1;
            while expected <= total {
                let e = log.next().await?;
                ensure!(e.position == expected, "saw position {} after {}", e.position, expected - 1);
                expected += 1;
            }
            Ok(())
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            for i in 0..APPENDS {
                let mut tx = store.begin().await?;
                tx.append(&format!("writer-{w}"), ExpectedVersion::Exact(i as u64), vec![event("E")]).await?;
                tx.commit().await?;
            }
            Ok::<_, herald::StoreError>(())
        });
    }
    while let Some(result) = writers.join_next().await {
        result??;
    }
    tokio::time::timeout(Duration::from_secs(20), reader).await.context("reader stalled")???;
    Ok(())
}

// --- the unit of work ---

#[tokio::test]
async fn a_dropped_transaction_leaves_nothing_behind() -> Result<()> {
    let (db, _dir) = database().await?;
    let store = db.store();
    {
        let mut tx = store.begin().await?;
        tx.append("s", ExpectedVersion::NoStream, vec![event("A")]).await?;
        tx.enqueue(vec![Message::new("t", "N", b"{}".to_vec())]).await?;
        tx.save_checkpoint("p", 7).await?;
        assert_eq!(tx.read_stream("s", 1, 10).await?.len(), 1, "a transaction sees its own appends");
    }
    assert!(store.read_all(0, 10).await?.is_empty());
    assert!(store.outbox_pending(10).await?.is_empty());
    assert_eq!(store.load_checkpoint("p").await?, None);
    // The turn was given back: the next writer is not blocked.
    store.append("s", ExpectedVersion::NoStream, vec![event("A")]).await?;
    Ok(())
}

#[tokio::test]
async fn the_handlers_own_tables_join_the_transaction_and_hooks_run_after_commit() -> Result<()> {
    let (db, _dir) = database().await?;
    db.read(|c| c.execute_batch("CREATE TABLE basket (id TEXT PRIMARY KEY, items INTEGER NOT NULL)"))?;
    let store = db.store();
    let committed = Arc::new(AtomicBool::new(false));

    let mut tx = store.begin().await?;
    let sqlite = tx.as_any_mut().downcast_mut::<SqliteTransaction>().context("not a SqliteTransaction")?;
    sqlite.connection().await?.execute("INSERT INTO basket (id, items) VALUES ('b-1', 3)", [])?;
    tx.append("basket-b-1", ExpectedVersion::NoStream, vec![event("ItemAdded")]).await?;
    let flag = committed.clone();
    tx.on_commit(Box::new(move || flag.store(true, Ordering::SeqCst)));
    assert!(!committed.load(Ordering::SeqCst));
    tx.commit().await?;
    assert!(committed.load(Ordering::SeqCst));

    let items: i64 = db.read(|c| c.query_row("SELECT items FROM basket WHERE id = 'b-1'", [], |r| r.get(0)))?;
    assert_eq!(items, 3);

    // And a rolled-back unit of work takes the handler's rows with it.
    let mut tx = store.begin_sqlite().await?;
    tx.connection().await?.execute("INSERT INTO basket (id, items) VALUES ('b-2', 1)", [])?;
    drop(tx);
    let rows: i64 = db.read(|c| c.query_row("SELECT COUNT(*) FROM basket", [], |r| r.get(0)))?;
    assert_eq!(rows, 1);
    Ok(())
}

#[tokio::test]
async fn a_cached_statement_is_not_prepared_again_when_its_parameters_change() -> Result<()> {
    // SQLite with STAT4 re-prepares a statement whose plan looked at a bound value (any
    // `LIMIT ?`) each time that parameter is bound, unless the connection asks for stable plans.
    let (db, _dir) = database().await?;
    let store = db.store();
    store.append("s", ExpectedVersion::NoStream, vec![event("A"), event("B"), event("C")]).await?;
    let sql = "SELECT version FROM herald_events WHERE stream = ?1 AND version >= ?2 ORDER BY version LIMIT ?3";
    let check = |c: &rusqlite::Connection| -> Result<i32, rusqlite::Error> {
        let mut stmt = c.prepare_cached(sql)?;
        for limit in 1..=3_i64 {
            let n = stmt.query_map(rusqlite::params!["s", 1, limit], |r| r.get::<_, i64>(0))?.count();
            assert_eq!(i64::try_from(n).unwrap(), limit);
        }
        Ok(stmt.get_status(rusqlite::StatementStatus::RePrepare))
    };
    ensure!(db.read(check)? == 0, "a reader connection re-prepared the statement");
    let mut tx = store.begin_sqlite().await?;
    ensure!(check(tx.connection().await?)? == 0, "the writer connection re-prepared the statement");
    Ok(())
}

#[tokio::test]
async fn committed_pages_reach_the_database_file_while_writers_keep_committing() -> Result<()> {
    // Checkpoints copy the write-ahead log into the file; a log that only grows is a leak.
    let (db, _dir) = database().await?;
    let store = db.store();
    let file_size = || std::fs::metadata(db.path()).map(|m| m.len()).unwrap_or(0);
    let before = file_size();
    let payload = vec![b'x'; 4096];
    for i in 0..400 {
        let events = (0..4).map(|_| NewEvent::new("Filler", payload.clone())).collect();
        store.append(&format!("filler-{i}"), ExpectedVersion::NoStream, events).await?;
    }
    // ~6.5 MB committed: well past a checkpoint's worth of log.
    herald_conformance::support::eventually_that(Duration::from_secs(10), "the database file to grow", || {
        let grown = file_size() > before + 4_000_000;
        async move { grown }
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn outbox_messages_come_back_whole_in_order_until_removed() -> Result<()> {
    let (db, _dir) = database().await?;
    let store = db.store();
    let first = Message::new("orders", "OrderPlaced.v1", br#"{"id":1}"#.to_vec()).with_key("o-1").with_header("h", "v");
    let second = Message::new("orders", "OrderPaid.v1", br#"{"id":1}"#.to_vec()).caused_by(&first);
    let mut tx = store.begin().await?;
    tx.enqueue(vec![first.clone(), second.clone()]).await?;
    assert!(store.outbox_pending(10).await?.is_empty(), "nothing is visible before commit");
    tx.commit().await?;

    let pending = store.outbox_pending(10).await?;
    assert_eq!(pending.iter().map(|r| r.message.clone()).collect::<Vec<_>>(), [first, second.clone()]);
    assert!(pending[0].sequence < pending[1].sequence);
    assert_eq!(store.outbox_pending(1).await?.len(), 1);

    store.outbox_remove(&[pending[0].sequence]).await?;
    let left = store.outbox_pending(10).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message, second);
    store.outbox_remove(&[]).await?;
    Ok(())
}

#[tokio::test]
async fn a_store_publishing_to_the_sql_broker_publishes_at_commit_and_never_on_rollback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("herald.db").display());
    let db = SqliteConfig::new(url).publish_to_sql_broker(true).open().await?;
    let store = db.store();
    let broker = db.broker();
    let mut sub = broker.subscribe(options("orders", "billing")).await?;
    let dropped = Message::new("orders", "OrderPlaced.v1", br#"{"id":0}"#.to_vec()).with_key("o-0");
    let mut tx = store.begin().await?;
    tx.enqueue(vec![dropped]).await?;
    drop(tx); // rolled back: never published
    let first = Message::new("orders", "OrderPlaced.v1", br#"{"id":1}"#.to_vec()).with_key("o-1");
    let second = Message::new("orders", "OrderPaid.v1", br#"{"id":1}"#.to_vec()).caused_by(&first);
    let mut tx = store.begin().await?;
    tx.enqueue(vec![first.clone(), second.clone()]).await?;
    nothing_within(&mut sub, Duration::from_millis(200)).await.context("nothing is delivered before commit")?;
    tx.commit().await?;

    for expected in [first, second] {
        let d = next(&mut sub).await?;
        ensure!(d.message.id == expected.id && d.message.payload == expected.payload, "got {:?}", d.message);
        d.ack().await?;
    }
    nothing_within(&mut sub, Duration::from_millis(200)).await.context("the rolled-back message")?;
    ensure!(store.outbox_pending(10).await?.is_empty(), "the outbox is not used");
    Ok(())
}

#[tokio::test]
async fn the_inbox_reports_a_message_as_new_only_once() -> Result<()> {
    let (db, _dir) = database().await?;
    let store = db.store();
    let id = MessageId::new();
    let mut tx = store.begin().await?;
    assert!(tx.record_handled("billing", id).await?);
    assert!(!tx.record_handled("billing", id).await?, "same transaction");
    assert!(tx.record_handled("shipping", id).await?, "another handler");
    tx.commit().await?;

    let mut tx = store.begin().await?;
    assert!(!tx.record_handled("billing", id).await?, "after commit");
    Ok(())
}

#[tokio::test]
async fn checkpoints_snapshots_and_sagas_round_trip_with_saga_versions_checked() -> Result<()> {
    let (db, _dir) = database().await?;
    let store = db.store();
    let saga = SagaRecord {
        name: "create-order".into(),
        id: "o-1".into(),
        version: 1,
        step: 2,
        compensating: true,
        done: false,
        data: b"{}".to_vec(),
        deadline: None,
    };
    let mut tx = store.begin().await?;
    tx.save_checkpoint("projection", 41).await?;
    tx.save_checkpoint("projection", 42).await?;
    tx.save_snapshot(Snapshot { stream: "s".into(), version: 3, payload: b"old".to_vec() }).await?;
    tx.save_snapshot(Snapshot { stream: "s".into(), version: 9, payload: b"new".to_vec() }).await?;
    tx.save_saga(&saga).await?;
    assert_eq!(tx.load_saga("create-order", "o-1").await?.as_ref(), Some(&saga));
    tx.commit().await?;

    assert_eq!(store.load_checkpoint("projection").await?, Some(42));
    assert_eq!(store.load_checkpoint("other").await?, None);
    let snap = store.load_snapshot("s").await?.context("no snapshot")?;
    assert_eq!((snap.version, snap.payload.as_slice()), (9, b"new".as_slice()));
    assert_eq!(store.load_saga("create-order", "o-1").await?, Some(saga.clone()));

    let mut tx = store.begin().await?;
    let stale = tx.save_saga(&saga).await.err().context("stale saga version accepted")?;
    assert!(stale.is_conflict());
    tx.save_saga(&SagaRecord { version: 2, done: true, ..saga }).await?;
    tx.commit().await?;
    let saved = store.load_saga("create-order", "o-1").await?.context("no saga")?;
    assert_eq!((saved.version, saved.done), (2, true));
    Ok(())
}

#[tokio::test]
async fn a_transaction_takes_the_write_lock_at_its_first_statement_not_at_begin() -> Result<()> {
    let (db, _dir) = database().await?;
    let store = db.store();
    let within = |what: &'static str| {
        move |r: Result<Result<(), herald::StoreError>, tokio::time::error::Elapsed>| {
            r.with_context(|| format!("{what} waited for an idle transaction's lock"))?.map_err(anyhow::Error::from)
        }
    };

    // Begun but unused: holds nothing, so another unit of work writes and commits meanwhile.
    let mut idle = store.begin().await?;
    let mut other = tokio::time::timeout(Duration::from_secs(2), store.begin()).await.context("begin waited")??;
    within("a write")(
        tokio::time::timeout(Duration::from_secs(2), async {
            other.append("other", ExpectedVersion::NoStream, vec![event("A")]).await.map(drop)
        })
        .await,
    )?;
    within("a commit")(tokio::time::timeout(Duration::from_secs(2), other.commit()).await)?;

    // A transaction that never runs a statement commits without the writer, even while
    // another unit of work holds it.
    let mut holder = store.begin().await?;
    holder.append("holder", ExpectedVersion::NoStream, vec![event("A")]).await?;
    let unused = store.begin().await?;
    within("an empty commit")(tokio::time::timeout(Duration::from_secs(2), unused.commit()).await)?;
    holder.commit().await?;

    // The idle one then takes the lock at its first statement, and sees what committed before.
    assert_eq!(idle.read_stream("other", 1, 10).await?.len(), 1);
    idle.append("idle", ExpectedVersion::NoStream, vec![event("B")]).await?;
    idle.commit().await?;
    let streams: Vec<String> = store.read_all(0, 10).await?.into_iter().map(|e| e.stream).collect();
    assert_eq!(streams, ["other", "holder", "idle"]);
    Ok(())
}

#[tokio::test]
async fn a_handler_waiting_on_other_io_before_its_first_statement_does_not_hold_up_another_commit() -> Result<()> {
    // Two units of work as the router runs them (a task each): the first begins, then waits on
    // something that is not the database (a slow HTTP call) before it writes.
    let (db, _dir) = database().await?;
    let store = db.store();
    let order = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let log = |order: &Arc<std::sync::Mutex<Vec<&'static str>>>, what| order.lock().unwrap().push(what);
    let (asleep_tx, asleep) = tokio::sync::oneshot::channel();
    let slow = {
        let (store, order) = (store.clone(), order.clone());
        tokio::spawn(async move {
            let mut tx = store.begin().await?;
            asleep_tx.send(()).ok();
            tokio::time::sleep(Duration::from_millis(300)).await;
            log(&order, "slow handler woke");
            tx.record_handled("slow", MessageId::new()).await?;
            tx.append("slow", ExpectedVersion::NoStream, vec![event("A")]).await?;
            tx.commit().await?;
            Ok::<_, herald::StoreError>(())
        })
    };
    asleep.await?;
    let fast = {
        let (store, order) = (store.clone(), order.clone());
        tokio::spawn(async move {
            let mut tx = store.begin().await?;
            tx.record_handled("fast", MessageId::new()).await?;
            tx.append("fast", ExpectedVersion::NoStream, vec![event("B")]).await?;
            tx.commit().await?;
            log(&order, "command committed");
            Ok::<_, herald::StoreError>(())
        })
    };
    fast.await??;
    slow.await??;
    assert_eq!(*order.lock().unwrap(), ["command committed", "slow handler woke"]);
    Ok(())
}

#[tokio::test]
async fn a_task_holding_the_write_lock_is_refused_at_once_instead_of_waiting_for_itself() -> Result<()> {
    use herald_sql::any::query;

    let (db, _dir) = database().await?;
    query("CREATE TABLE notes (id TEXT PRIMARY KEY)").execute(&db).await?;
    let store = db.store();
    let mut tx = store.begin().await?;
    tx.append("s", ExpectedVersion::NoStream, vec![event("A")]).await?; // takes the lock

    // A write on the pool from the same task would wait for the lock this task holds.
    let started = std::time::Instant::now();
    let write = tokio::time::timeout(
        Duration::from_secs(5),
        query("INSERT INTO notes (id) VALUES (?)").bind("pool").execute(&db),
    )
    .await
    .context("a pool write from the lock's holder waited instead of failing")?;
    let err = write.expect_err("a pool write from the holder of the write lock");
    assert!(started.elapsed() < Duration::from_millis(500), "refused after {:?}", started.elapsed());
    assert!(matches!(err, herald_sql::SqlError::WriteLockHeld), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("already holds SQLite's write lock") && message.contains("cx.tx()"), "{message}");

    // So does a second unit of work's first statement.
    let mut second = store.begin().await?;
    let refused =
        tokio::time::timeout(Duration::from_secs(5), second.append("t", ExpectedVersion::NoStream, vec![event("B")]))
            .await
            .context("a second transaction on the lock's holder waited instead of failing")?;
    let refused = refused.expect_err("a second transaction's write from the holder");
    assert!(refused.to_string().contains("already holds SQLite's write lock"), "{refused}");
    drop(second);

    // Reads on the pool still work (WAL readers do not wait for the writer), and the
    // statement belongs in the transaction.
    let seen: Vec<(String,)> = query("SELECT id FROM notes").fetch_all(&db).await?;
    assert!(seen.is_empty());
    let other_task = {
        let db = db.clone();
        tokio::spawn(async move { query("INSERT INTO notes (id) VALUES (?)").bind("other task").execute(&db).await })
    };
    query("INSERT INTO notes (id) VALUES (?)").bind("in the unit of work").execute(&mut tx).await?;
    tx.commit().await?;
    // Another task's pool write waits its turn on the writer, and commits.
    tokio::time::timeout(Duration::from_secs(5), other_task).await.context("the other task's write")???;
    let mut ids: Vec<(String,)> = query("SELECT id FROM notes").fetch_all(&db).await?;
    ids.sort();
    assert_eq!(ids, [("in the unit of work".to_owned(),), ("other task".to_owned(),)]);
    // Once the lock is given back, the same task writes on the pool again.
    query("INSERT INTO notes (id) VALUES (?)").bind("pool").execute(&db).await?;
    Ok(())
}

// --- the SQL broker ---

#[tokio::test]
async fn a_published_message_is_delivered_and_once_acked_not_again() -> Result<()> {
    let (db, _dir) = database().await?;
    let broker = db.broker();
    let mut sub = broker.subscribe(options("orders", "billing").ack_wait(Duration::from_millis(300))).await?;
    let sent = Message::new("orders", "OrderPlaced.v1", b"{}".to_vec()).with_key("o-1");
    broker.publish(std::slice::from_ref(&sent)).await?;

    let d = next(&mut sub).await?;
    assert_eq!(d.message, sent);
    assert_eq!(d.attempt, 1);
    let position = d.position.context("no position")?;
    d.ack().await?;
    nothing_within(&mut sub, Duration::from_millis(600)).await?;

    // Another group gets its own copy; a group starting at the message's position too.
    let mut other = broker.subscribe(options("orders", "shipping")).await?;
    assert_eq!(next(&mut other).await?.message.id, sent.id);
    let mut from = broker.subscribe(options("orders", "audit").start(StartFrom::Position(position))).await?;
    assert_eq!(next(&mut from).await?.message.id, sent.id);
    Publisher::close(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn a_group_starting_at_latest_sees_only_later_messages() -> Result<()> {
    let (db, _dir) = database().await?;
    let broker = db.broker();
    broker.publish(&[Message::new("t", "Old", b"{}".to_vec())]).await?;
    let mut sub = broker.subscribe(SubscribeOptions::new("t", "g").start(StartFrom::Latest)).await?;
    broker.publish(&[Message::new("t", "New", b"{}".to_vec())]).await?;
    assert_eq!(next(&mut sub).await?.message.name, "New");
    Publisher::close(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn publishing_the_same_message_twice_delivers_it_once() -> Result<()> {
    let (db, _dir) = database().await?;
    let broker = db.broker();
    let m = Message::new("t", "N", b"{}".to_vec());
    broker.publish(std::slice::from_ref(&m)).await?;
    broker.publish(std::slice::from_ref(&m)).await?;
    let mut sub = broker.subscribe(options("t", "g")).await?;
    next(&mut sub).await?.ack().await?;
    nothing_within(&mut sub, Duration::from_millis(300)).await?;
    Publisher::close(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn nack_redelivers_the_message_after_its_delay() -> Result<()> {
    let (db, _dir) = database().await?;
    let broker = db.broker();
    let mut sub = broker.subscribe(options("t", "g")).await?;
    broker.publish(&[Message::new("t", "N", b"{}".to_vec())]).await?;

    let d = next(&mut sub).await?;
    let started = std::time::Instant::now();
    d.nack(Duration::from_millis(200)).await?;
    let again = next(&mut sub).await?;
    assert!(started.elapsed() >= Duration::from_millis(190), "redelivered after {:?}", started.elapsed());
    assert_eq!(again.attempt, 2);
    again.ack().await?;
    Publisher::close(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn a_later_message_of_a_key_waits_for_the_earlier_one_but_other_keys_do_not() -> Result<()> {
    let (db, _dir) = database().await?;
    let broker = db.broker();
    let mut sub = broker.subscribe(options("t", "g")).await?;
    broker
        .publish(&[
            Message::new("t", "A1", b"{}".to_vec()).with_key("a"),
            Message::new("t", "A2", b"{}".to_vec()).with_key("a"),
            Message::new("t", "B1", b"{}".to_vec()).with_key("b"),
        ])
        .await?;
    let a1 = next(&mut sub).await?;
    let b1 = next(&mut sub).await?;
    assert_eq!((a1.message.name.as_str(), b1.message.name.as_str()), ("A1", "B1"));
    nothing_within(&mut sub, Duration::from_millis(200)).await?;
    a1.ack().await?;
    assert_eq!(next(&mut sub).await?.message.name, "A2");
    Publisher::close(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn a_message_nacked_on_every_delivery_goes_to_dead_letters_with_its_reason() -> Result<()> {
    let (db, _dir) = database().await?;
    let broker = db.broker();
    let opts = options("t", "g").max_deliveries(3);
    let mut dead = broker.subscribe(options(&opts.effective_dead_letter_topic(), "ops")).await?;
    let mut sub = broker.subscribe(opts).await?;
    let original = Message::new("t", "N", b"{}".to_vec()).with_key("k");
    broker.publish(std::slice::from_ref(&original)).await?;

    for attempt in 1..=3 {
        let d = next(&mut sub).await?;
        assert_eq!(d.attempt, attempt);
        d.nack_with_reason(Duration::ZERO, "payment service down").await?;
    }
    let letter = next(&mut dead).await?;
    assert_eq!(letter.message.header(DLQ_REASON), Some("payment service down"));
    assert_eq!(letter.message.header(DLQ_ATTEMPTS), Some("3"));
    assert_eq!(letter.message.header(DLQ_ORIGINAL_ID), Some(original.id.to_string().as_str()));
    assert_eq!(letter.message.payload, original.payload);
    nothing_within(&mut sub, Duration::from_millis(200)).await?;
    Publisher::close(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn a_message_never_settled_is_dead_lettered_after_its_last_lease_expires() -> Result<()> {
    let (db, _dir) = database().await?;
    let broker = db.broker();
    let opts = options("t", "g").max_deliveries(2).ack_wait(Duration::from_millis(150));
    let mut dead = broker.subscribe(options(&opts.effective_dead_letter_topic(), "ops")).await?;
    let mut sub = broker.subscribe(opts).await?;
    broker.publish(&[Message::new("t", "N", b"{}".to_vec())]).await?;

    let first = next(&mut sub).await?;
    let second = next(&mut sub).await?;
    assert_eq!((first.attempt, second.attempt), (1, 2));
    let letter = next(&mut dead).await?;
    assert_eq!(letter.message.header(DLQ_REASON), Some(herald::queue::expired_reason(2).as_str()));
    // The first lease is long gone: settling it now is refused.
    assert!(matches!(first.ack().await, Err(PubSubError::LeaseLost)));
    Publisher::close(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn an_explicit_dead_letter_leaves_the_queue_at_once() -> Result<()> {
    let (db, _dir) = database().await?;
    let broker = db.broker();
    let opts = options("t", "g");
    let mut dead = broker.subscribe(options(&opts.effective_dead_letter_topic(), "ops")).await?;
    let mut sub = broker.subscribe(opts).await?;
    broker.publish(&[Message::new("t", "Poison", b"not json".to_vec())]).await?;
    next(&mut sub).await?.dead_letter("cannot decode").await?;
    assert_eq!(next(&mut dead).await?.message.header(DLQ_REASON), Some("cannot decode"));
    nothing_within(&mut sub, Duration::from_millis(200)).await?;
    Publisher::close(&broker).await?;
    Ok(())
}

// --- durability ---

#[tokio::test]
async fn reopening_the_database_file_keeps_events_outbox_groups_and_messages() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("durable.db");
    let config = SqliteConfig::new(path.display().to_string());
    {
        let db = config.open().await?;
        let store = db.store();
        let mut tx = store.begin().await?;
        tx.append("s", ExpectedVersion::NoStream, vec![event("A")]).await?;
        tx.enqueue(vec![Message::new("t", "Out", b"{}".to_vec())]).await?;
        tx.commit().await?;
        let broker = db.broker();
        // A short lease: the subscription may already have claimed "Second" when it closes.
        let mut sub = broker.subscribe(options("t", "g").ack_wait(Duration::from_millis(200))).await?;
        broker
            .publish(&[Message::new("t", "First", b"{}".to_vec()), Message::new("t", "Second", b"{}".to_vec())])
            .await?;
        next(&mut sub).await?.ack().await?;
        Publisher::close(&broker).await?;
        db.close().await;
    }
    let db = config.open().await?;
    let store = db.store();
    assert_eq!(store.read_stream("s", 1, 10).await?.len(), 1);
    assert_eq!(store.outbox_pending(10).await?[0].message.name, "Out");
    store.append("s", ExpectedVersion::Exact(1), vec![event("B")]).await?;
    assert_eq!(store.read_all(0, 10).await?.iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2]);

    // The group resumes where it was: the acked message is not delivered again, the unsettled
    // one is.
    let broker = db.broker();
    let mut sub = broker.subscribe(options("t", "g")).await?;
    assert_eq!(next(&mut sub).await?.message.name, "Second");
    Publisher::close(&broker).await?;
    Ok(())
}

#[tokio::test]
async fn two_handles_on_one_file_see_each_others_writes() -> Result<()> {
    let (db, dir) = database().await?;
    let other = SqliteDatabase::open(&dir.path().join("herald.db").display().to_string()).await?;
    let (broker, other_broker) = (db.broker(), other.broker());
    let mut sub = other_broker.subscribe(options("t", "g")).await?;
    broker.publish(&[Message::new("t", "Across", b"{}".to_vec())]).await?;
    assert_eq!(next(&mut sub).await?.message.name, "Across", "found by polling");
    db.store().append("s", ExpectedVersion::NoStream, vec![event("A")]).await?;
    assert_eq!(other.store().read_all(0, 10).await?.len(), 1);
    Publisher::close(&broker).await?;
    Publisher::close(&other_broker).await?;
    Ok(())
}

/// The consumer lag the subscription reports as `herald_consumer_lag`: messages the group has
/// not taken yet plus those it has not settled.
#[tokio::test]
async fn the_broker_knows_each_groups_consumer_lag() -> Result<()> {
    use herald::queue::QueueBackend;
    let (db, _dir) = database().await?;
    let broker = db.broker();
    assert_eq!(broker.backend().lag("lagging", "g").await?, None, "no such group");
    let mut sub = broker.subscribe(options("lagging", "g")).await?;
    let messages: Vec<Message> = (0..3).map(|i| Message::new("lagging", format!("N{i}"), b"{}".to_vec())).collect();
    broker.publish(&messages).await?;
    assert_eq!(broker.backend().lag("lagging", "g").await?, Some(3));
    next(&mut sub).await?.ack().await?;
    let mut settled = false;
    for _ in 0..100 {
        if broker.backend().lag("lagging", "g").await? == Some(2) {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(settled, "the acked message no longer counts");
    Ok(())
}
