//! Nothing is lost and nothing is handled twice when a consumer is killed with SIGKILL mid-stream.
//!
//! The parent test publishes messages to the SQLite SQL broker, starts a child process (this test
//! binary, re-run on the ignored `crash_child_consumer` test) that consumes them through the
//! router with the inbox, kills it with SIGKILL part-way, starts another child, and checks that
//! in the end every message was handled exactly once. The child records each handled message in
//! its own table in the same transaction as the inbox entry (the unit of work).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::router::{Handler, HandlerContext, HandlerError, Inbox, RetryPolicy, Route, Router};
use herald::{Message, Publisher, StartFrom, SubscribeOptions};
use herald_sql::any::query;
use herald_sql::{SqliteDatabase, SqliteTransaction};
use tokio_util::sync::CancellationToken;

const CHILD_ENV: &str = "HERALD_CRASH_CHILD_DB";
const TOPIC: &str = "crash.test";
const MESSAGES: usize = 3000;
const KEYS: usize = 40;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Writes one row per handled message into the consumer's own table, in the router's transaction.
struct RecordHandled;

#[async_trait::async_trait]
impl Handler for RecordHandled {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let id = cx.message().id.to_string();
        let key = cx.message().key.clone();
        let seq: i64 = String::from_utf8_lossy(&cx.message().payload).parse().map_err(HandlerError::permanent)?;
        let tx = cx.tx()?;
        let sqlite = tx
            .as_any_mut()
            .downcast_mut::<SqliteTransaction>()
            .ok_or_else(|| HandlerError::permanent("not a SQLite transaction"))?;
        query("INSERT INTO handled (message_id, msg_key, seq, pid) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(key)
            .bind(seq)
            .bind(i64::from(std::process::id()))
            .execute(sqlite)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }
}

/// The child: consumes until killed.
#[test]
#[ignore = "run by a_consumer_killed_with_sigkill_mid_stream_loses_nothing_and_handles_nothing_twice"]
fn crash_child_consumer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return; // run by hand with --ignored: nothing to do
    };
    runtime().block_on(async move {
        let db = SqliteDatabase::open(&path).await.expect("open database");
        let options = SubscribeOptions::new(TOPIC, "crash-consumer")
            .start(StartFrom::Beginning)
            .max_in_flight(32)
            .ack_wait(Duration::from_secs(1))
            .max_deliveries(1000);
        let router = Router::new(Arc::new(db.broker()))
            .store(Arc::new(db.store()))
            .retry(RetryPolicy { initial_delay: Duration::from_millis(10), ..RetryPolicy::default() })
            .middleware(Inbox)
            .route(Route::new(options).on_name("crash.Numbered.v1", RecordHandled));
        router.run(CancellationToken::new()).await.expect("router runs");
    });
}

fn spawn_child(db: &Path) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    Command::new(exe)
        .args(["--exact", "crash_child_consumer", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, db)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child consumer")
}

async fn handled_counts(db: &SqliteDatabase) -> (i64, i64) {
    query("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM handled").fetch_one(db).await.expect("count handled")
}

async fn wait_for_handled(db: &SqliteDatabase, at_least: i64, timeout: Duration) -> (i64, i64) {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = handled_counts(db).await;
        if counts.1 >= at_least {
            return counts;
        }
        assert!(Instant::now() < deadline, "only {} of {at_least} handled within {timeout:?}", counts.1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigkill(mut child: Child) {
    child.kill().expect("SIGKILL the child"); // Child::kill sends SIGKILL on Unix
    child.wait().expect("reap the child");
}

#[test]
fn a_consumer_killed_with_sigkill_mid_stream_loses_nothing_and_handles_nothing_twice() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("crash.db");
        let db = SqliteDatabase::open(path.to_str().expect("utf-8 path")).await.expect("open database");
        query(
            "CREATE TABLE handled (message_id TEXT NOT NULL, msg_key TEXT NOT NULL, seq INTEGER NOT NULL, \
             pid INTEGER NOT NULL, row INTEGER PRIMARY KEY AUTOINCREMENT)",
        )
        .execute(&db)
        .await
        .expect("create table");

        let broker = db.broker();
        let messages: Vec<Message> = (0..MESSAGES)
            .map(|i| Message::new(TOPIC, "crash.Numbered.v1", i.to_string().into_bytes()).with_key(format!("k{}", i % KEYS)))
            .collect();
        for chunk in messages.chunks(500) {
            broker.publish(chunk).await.expect("publish");
        }

        // Kill the consumer twice part-way, then let a third one finish.
        let mut killed_at = Vec::new();
        for fraction in [3, 2] {
            let child = spawn_child(&path);
            let before = handled_counts(&db).await.1;
            let target = before + (MESSAGES as i64 - before) / fraction;
            wait_for_handled(&db, target, Duration::from_secs(120)).await;
            sigkill(child);
            killed_at.push(handled_counts(&db).await.1);
        }
        let last = spawn_child(&path);
        let (rows, distinct) = wait_for_handled(&db, MESSAGES as i64, Duration::from_secs(120)).await;
        // Leave time for a duplicate to show up if the inbox were broken.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (rows_after, _) = handled_counts(&db).await;
        sigkill(last);

        println!(
            "sent {MESSAGES}, handled {distinct} distinct in {rows_after} rows; consumers SIGKILLed after {killed_at:?}"
        );
        assert_eq!(distinct, MESSAGES as i64, "every message handled");
        assert_eq!((rows, rows_after), (MESSAGES as i64, MESSAGES as i64), "no message handled twice");

        // Per-key order held across the crashes: each key's sequence numbers were handled ascending.
        let (out_of_order,): (i64,) = query(
            "SELECT COUNT(*) FROM handled a JOIN handled b ON a.msg_key = b.msg_key AND a.row < b.row AND a.seq > b.seq",
        )
        .fetch_one(&db)
        .await
        .expect("order check");
        assert_eq!(out_of_order, 0, "per-key order was broken");
    });
}
