//! The universal conformance suites against the PostgreSQL store (and, in a later stage, the
//! SQL broker on PostgreSQL), on the real server.
//!
//! The server comes from `HERALD_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Without a server the suites skip loudly, and fail
//! when `CI` is set. Each test gets its own fresh schema, `herald_test_<unix seconds>_<random>`;
//! schemas are not dropped when a test ends (a `Drop` cannot await), but every setup drops the
//! test schemas left behind by runs that started more than an hour ago, so the database does not
//! fill up and concurrent runs never drop each other's schemas.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::Message;
use herald::pubsub::{Publisher, StartFrom, SubscribeOptions, Subscriber};
use herald::store::{ExpectedVersion, LogReader, NewEvent, Store};
use herald_conformance::{DeadLetterFixture, ParkingFixture, PubSubFixture, StoreFixture};
use herald_sql::{PostgresConfig, PostgresDatabase};

const SERVER: (&str, &str) = ("PostgreSQL", "127.0.0.1:5432");
const PREFIX: &str = "herald_test_";
/// Test schemas older than this are dropped by the next setup.
const KEEP_SECS: u64 = 3600;

fn url() -> String {
    std::env::var("HERALD_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh, unique schema name.
fn fresh_schema() -> String {
    format!("{PREFIX}{}_{}", unix_secs(), uuid::Uuid::now_v7().simple())
}

/// Drops test schemas left by runs that started long ago (best effort: errors are ignored, a
/// concurrent setup may be dropping the same one).
async fn sweep_old_schemas(db: &PostgresDatabase) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::TEXT FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(PREFIX)
            .fetch_all(db.pool())
            .await
            .unwrap_or_default();
    let now = unix_secs();
    for name in names {
        let created = name[PREFIX.len()..].split('_').next().and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|t| t + KEEP_SECS < now) {
            let drop = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(db.pool()).await;
        }
    }
}

/// Opens `schema` (creating and migrating it).
async fn open(schema: &str) -> PostgresDatabase {
    PostgresConfig::new(url()).with_schema(schema).open().await.expect("open the PostgreSQL schema")
}

/// A database in a fresh schema.
async fn fresh() -> PostgresDatabase {
    let db = open(&fresh_schema()).await;
    sweep_old_schemas(&db).await;
    db
}

async fn postgres_store() -> StoreFixture {
    let db = fresh().await;
    let other = open(db.schema()).await;
    StoreFixture::new(Arc::new(db.store()), Box::new((db, other.clone()))).with_other(Arc::new(other.store()))
}

herald_conformance::store_suite!(postgres_store, requires: SERVER);

async fn postgres_dead_letters() -> DeadLetterFixture {
    let db = fresh().await;
    DeadLetterFixture::on(Arc::new(db.store()), Box::new(db))
}

herald_conformance::dead_letter_suite!(postgres_dead_letters, requires: SERVER);

async fn postgres_parking() -> ParkingFixture {
    let db = fresh().await;
    ParkingFixture::on(Arc::new(db.store()), Box::new(db))
}

herald_conformance::parking_suite!(postgres_parking, requires: SERVER);

/// Contract 4, harder than the suite's scenario: sixteen writers append 200 events each (in
/// transactions of one to four events, some spanning two streams) while a reader that started
/// before them follows the log. The reader must see every committed event, once, in strictly
/// increasing positions. (Positions may skip a value when a transaction that took one rolls
/// back: sequences are not transactional. The contract is that no *committed* event is ever
/// skipped.)
#[test]
fn sixteen_concurrent_writers_never_make_a_live_reader_skip() {
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 200;
    const TOTAL: usize = WRITERS * PER_WRITER;
    if !herald_conformance::support::server_available(SERVER) {
        return;
    }
    herald_conformance::run(async {
        let db = fresh().await;
        let store: Arc<dyn Store> = Arc::new(db.store());

        let reader = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut reader = LogReader::new(store, 0);
                let mut seen = Vec::with_capacity(TOTAL);
                while seen.len() < TOTAL {
                    let e = tokio::time::timeout(Duration::from_secs(60), reader.next())
                        .await
                        .unwrap_or_else(|_| panic!("the reader saw only {} of {TOTAL} events", seen.len()))
                        .expect("read the log");
                    seen.push(e);
                }
                seen
            })
        };

        let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let (store, start) = (store.clone(), start.clone());
            writers.spawn(async move {
                let streams = [format!("w{w}-a"), format!("w{w}-b")];
                let mut versions = [0u64; 2];
                let mut written = Vec::with_capacity(PER_WRITER);
                start.wait().await;
                while written.len() < PER_WRITER {
                    let size = fastrand::usize(1..=4).min(PER_WRITER - written.len());
                    let events: Vec<NewEvent> =
                        (0..size).map(|i| NewEvent::new("Tested.v1", format!("{w}-{}", written.len() + i))).collect();
                    let mut tx = store.begin().await.expect("begin");
                    if size >= 2 && fastrand::bool() {
                        let (a, b) = events.split_at(size / 2);
                        for (s, part) in [(0, a), (1, b)] {
                            let r = tx
                                .append(&streams[s], ExpectedVersion::Exact(versions[s]), part.to_vec())
                                .await
                                .expect("append");
                            versions[s] = r.next_expected_version;
                        }
                    } else {
                        let s = fastrand::usize(0..2);
                        let r = tx.append(&streams[s], ExpectedVersion::Exact(versions[s]), events.clone()).await;
                        versions[s] = r.expect("append").next_expected_version;
                    }
                    tx.commit().await.expect("commit");
                    written.extend(events.iter().map(|e| e.id));
                }
                written
            });
        }
        let mut committed = HashSet::new();
        while let Some(w) = writers.join_next().await {
            committed.extend(w.expect("writer"));
        }
        let seen = reader.await.expect("reader");

        let mut last = 0;
        for e in &seen {
            assert!(e.position > last, "positions must strictly increase: {} after {last}", e.position);
            last = e.position;
        }
        let seen_ids: HashSet<_> = seen.iter().map(|e| e.id).collect();
        assert_eq!(seen_ids.len(), TOTAL, "every event is seen exactly once");
        assert_eq!(seen_ids, committed, "the reader saw exactly the committed events");
        // Each stream's versions arrive 1, 2, 3… in log order.
        let mut versions: HashMap<&str, u64> = HashMap::new();
        for e in &seen {
            let v = versions.entry(e.stream.as_str()).or_default();
            assert_eq!(e.version, *v + 1, "stream {} out of order in the log", e.stream);
            *v = e.version;
        }
        // And a fresh catch-up read agrees with what the live reader saw.
        let all = store.read_all(0, usize::MAX).await.expect("read all");
        assert_eq!(
            all.iter().map(|e| e.position).collect::<Vec<_>>(),
            seen.iter().map(|e| e.position).collect::<Vec<_>>()
        );
    });
}

/// The SQL broker on PostgreSQL. The "other" subscriber opens a second database handle (its own
/// pool) on the same schema, as a second process would.
async fn pg_broker() -> PubSubFixture {
    let db = fresh().await;
    let other = open(db.schema()).await;
    let store: Arc<dyn Store> = Arc::new(db.store());
    PubSubFixture::new(Arc::new(db.broker()), Arc::new(db.broker()), Arc::new(other.broker()), Box::new((db, other)))
        .with_store(store)
}

herald_conformance::pubsub_suite!(pg_broker, requires: SERVER);
herald_conformance::saga_suite!(pg_broker, requires: SERVER);

/// Another process's commit (a second database handle: its own pool and signals) wakes this
/// process's readers through LISTEN/NOTIFY, without waiting for a poll: nothing in this process
/// notifies `changes()` otherwise.
#[test]
fn another_processs_commit_wakes_this_processs_readers() {
    if !herald_conformance::support::server_available(SERVER) {
        return;
    }
    herald_conformance::run(async {
        let here = fresh().await;
        let there = open(here.schema()).await;
        let (reader, writer) = (here.store(), there.store());
        for round in 0..3 {
            let woken = reader.changes().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            writer
                .append(&format!("s{round}"), ExpectedVersion::NoStream, vec![NewEvent::new("N.v1", b"{}".to_vec())])
                .await
                .expect("append");
            tokio::time::timeout(Duration::from_secs(5), woken)
                .await
                .unwrap_or_else(|_| panic!("round {round}: no wake-up from the other process's commit"));
        }
        here.close().await;
        there.close().await;
    });
}

/// Another process's outbox enqueue wakes this process's relay signal (`outbox_changes`) through
/// LISTEN/NOTIFY (the notification travels with the enqueueing statement).
#[test]
fn another_processs_enqueue_wakes_this_processs_relay() {
    if !herald_conformance::support::server_available(SERVER) {
        return;
    }
    herald_conformance::run(async {
        let here = fresh().await;
        let there = open(here.schema()).await;
        let (relay_side, writer) = (here.store(), there.store());
        for round in 0..3 {
            let woken = relay_side.outbox_changes().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let mut tx = writer.begin().await.expect("begin");
            tx.enqueue(vec![Message::new("t", format!("M{round}"), b"{}".to_vec())]).await.expect("enqueue");
            tx.commit().await.expect("commit");
            tokio::time::timeout(Duration::from_secs(5), woken)
                .await
                .unwrap_or_else(|_| panic!("round {round}: no wake-up from the other process's enqueue"));
        }
        assert_eq!(relay_side.outbox_pending(10).await.expect("pending").len(), 3, "three rows, in one statement each");
        here.close().await;
        there.close().await;
    });
}

/// Another process's schedule wakes this process's relay on `scheduled_changes` (its own
/// signal, so immediate enqueues do not make the relay ask for the next due time), and a relay
/// already running here publishes the message at its time, not at its next poll.
#[test]
fn another_processs_schedule_wakes_this_processs_relay_for_its_time() {
    if !herald_conformance::support::server_available(SERVER) {
        return;
    }
    herald_conformance::run(async {
        use herald::outbox::OutboxRelay;
        let here = fresh().await;
        let there = open(here.schema()).await;
        let (relay_side, writer) = (here.store(), there.store());

        let message = Message::new("t", "Scheduled", b"{}".to_vec());
        {
            let woken = relay_side.scheduled_changes().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            writer.schedule(vec![message.clone()], chrono::Utc::now()).await.expect("schedule");
            tokio::time::timeout(Duration::from_secs(5), woken)
                .await
                .expect("no wake-up from the other process's schedule");
        }
        assert!(
            !std::ptr::eq(relay_side.scheduled_changes(), relay_side.outbox_changes()),
            "immediate enqueues must not wake the scheduling signal"
        );

        let broker = herald::memory::MemoryBroker::in_memory();
        let mut sub = broker
            .subscribe(SubscribeOptions::new("t", "reader").start(StartFrom::Beginning))
            .await
            .expect("subscribe");
        let stop = tokio_util::sync::CancellationToken::new();
        let relay = tokio::spawn(OutboxRelay::new(Arc::new(relay_side), Arc::new(broker.clone())).run(stop.clone()));
        let first =
            tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("in time").expect("a delivery");
        assert_eq!(first.message.id, message.id, "a past time means now");
        first.ack().await.expect("ack");

        // The relay is idle now, sleeping for its poll interval (1 s); the other process's
        // schedule must make it sleep only until the message's time.
        let at = chrono::Utc::now() + chrono::Duration::milliseconds(300);
        let later = Message::new("t", "Later", b"{}".to_vec());
        writer.schedule(vec![later.clone()], at).await.expect("schedule");
        let second =
            tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("in time").expect("a delivery");
        let received = chrono::Utc::now();
        assert_eq!(second.message.id, later.id);
        assert!(received >= at, "published at {received}, before its time {at}");
        assert!(
            received - at < chrono::Duration::milliseconds(700),
            "published {} ms after its time: the relay waited for its poll instead of the due time",
            (received - at).num_milliseconds()
        );
        second.ack().await.expect("ack");
        stop.cancel();
        relay.await.expect("the relay stopped cleanly");
        here.close().await;
        there.close().await;
    });
}

/// The consumer lag the subscription reports as `herald_consumer_lag`.
#[test]
fn the_broker_knows_each_groups_consumer_lag() {
    if !herald_conformance::support::server_available(SERVER) {
        return;
    }
    herald_conformance::run(async {
        use herald::queue::QueueBackend;
        let db = fresh().await;
        let broker = db.broker();
        assert_eq!(broker.backend().lag("lagging", "g").await.expect("lag"), None, "no such group");
        let options = SubscribeOptions::new("lagging", "g").start(StartFrom::Beginning);
        let mut sub = broker.subscribe(options).await.expect("subscribe");
        let messages: Vec<Message> = (0..3).map(|i| Message::new("lagging", format!("N{i}"), b"{}".to_vec())).collect();
        broker.publish(&messages).await.expect("publish");
        assert_eq!(broker.backend().lag("lagging", "g").await.expect("lag"), Some(3));
        let first =
            tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("in time").expect("a delivery");
        first.ack().await.expect("ack");
        assert_eq!(broker.backend().lag("lagging", "g").await.expect("lag"), Some(2));
        drop(sub);
        db.close().await;
    });
}
