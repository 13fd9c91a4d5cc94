//! The live feed of the admin web app: every integration event, as it happens, over a WebSocket.
//!
//! It is fed from the broker, so it works in every process shape: the feed routes (one consumer
//! group, [`FEED_GROUP`], shared by the admin processes) record each integration event in
//! `admin_feed`, and every admin process tails that table and pushes new rows to its WebSocket
//! clients. Rows are numbered (`seq`), so a client that reconnects says the last number it saw
//! and misses nothing (within the last [`KEEP`] events); a new client first gets the last
//! [`BACKLOG`] events, so the board and the feed never start blank.
//!
//! Protocol (`GET /api/admin/live`, WebSocket, JSON text frames): the client's first frame is
//! `{"token": "<admin token>", "after": <seq or null>}` (a browser cannot set headers on a
//! WebSocket); the server answers `{"type":"welcome","head":<seq>}` or `{"type":"error",
//! "message":…}` and closes, then sends `{"type":"event","seq","topic","name","key","at","data"}`
//! in `seq` order, and pings every [`PING`]. Dead letters are events too: [`DEAD_LETTER`] when
//! one is archived, [`DEAD_LETTER_REPLAYED`] and [`DEAD_LETTER_DISCARDED`] when it is resolved
//! (on its dead-letter topic; data: its id, status, group, reason, attempts, replay id and the
//! failed message's id, name and topic), recorded in the unit of work that made the change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use herald::dead_letters::{DeadLetter, DeadLetterHook, DeadLetterStatus};
use herald::pubsub::{StartFrom, SubscribeOptions};
use herald::router::{Handler, HandlerContext, HandlerError, Needs, Route};
use herald::store::{StoreError, Transaction};
use herald_sql::AnyDatabase;
use herald_sql::any::{Migration, query};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::error::AppError;
use crate::http::token_matches;
use crate::modules::{baskets, customers, depot, notifications, ordering, payments, stores};

/// The consumer group of the feed routes.
pub const FEED_GROUP: &str = "admin-feed";
/// The topics the feed shows: every module's integration events.
pub const TOPICS: &[&str] = &[
    stores::api::STORE_TOPIC,
    stores::api::PRODUCT_TOPIC,
    customers::api::EVENT_TOPIC,
    baskets::api::EVENT_TOPIC,
    ordering::api::EVENT_TOPIC,
    payments::api::EVENT_TOPIC,
    depot::api::EVENT_TOPIC,
    notifications::api::EVENT_TOPIC,
];
/// Events kept in `admin_feed` (older ones are deleted): how far back a client can resume.
pub const KEEP: i64 = 10_000;
/// Events a new client gets first.
pub const BACKLOG: i64 = 100;
/// How often a process with clients looks for new rows.
const POLL: Duration = Duration::from_millis(200);
/// How long a hole in the numbers may stay open before the tailer moves past it: on PostgreSQL
/// a row with a lower number can commit after a higher one (and a rolled-back insert leaves a
/// hole for good).
const HOLE_GRACE: Duration = Duration::from_secs(2);
/// How often clients are pinged (nginx closes a proxied connection silent for 60 s).
pub const PING: Duration = Duration::from_secs(20);
/// How long a new client may take to say who it is.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// The feed's table.
pub const MIGRATIONS: &[Migration] = &[Migration::per_dialect(
    1,
    "admin_feed (the live feed's recent integration events)",
    "CREATE TABLE IF NOT EXISTS admin_feed (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
        name TEXT NOT NULL, key TEXT NOT NULL, occurred_at TEXT NOT NULL, payload TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS admin_feed (seq BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL,
        name TEXT NOT NULL, key TEXT NOT NULL, occurred_at TEXT NOT NULL, payload TEXT NOT NULL)",
)];

/// The feed routes: one per topic, recording every message whatever its name. A new group
/// starts with the next event (history is not news; the board's first state comes from search).
pub fn routes() -> Vec<Route> {
    TOPICS
        .iter()
        .map(|topic| Route::new(SubscribeOptions::new(*topic, FEED_GROUP).start(StartFrom::Latest)).fallback(Recorder))
        .collect()
}

/// Records a message in `admin_feed`, in the handler's unit of work (the inbox makes it once).
struct Recorder;

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let message = cx.message();
        let payload = payload_json(&message.payload);
        let row = NewRow {
            topic: message.topic.clone(),
            name: message.name.clone(),
            key: message.key.clone(),
            at: message.metadata.occurred_at.to_rfc3339(),
            payload,
        };
        Ok(row.insert(cx.tx()?).await?)
    }

    fn needs(&self) -> Needs {
        Needs::STORE
    }
}

/// The name of the feed's entry for a new dead letter (its topic is the dead-letter topic).
pub const DEAD_LETTER: &str = "admin.DeadLetterArchived";
/// The names of the feed's entries for a replayed and a discarded dead letter.
pub const DEAD_LETTER_REPLAYED: &str = "admin.DeadLetterReplayed";
pub const DEAD_LETTER_DISCARDED: &str = "admin.DeadLetterDiscarded";

/// Puts dead letters on the feed as they come (the admin module's archive routes) and go
/// (its replays and discards), each in its unit of work, so the web app shows and counts them
/// as it happens.
#[derive(Debug)]
pub struct DeadLetterFeed;

impl DeadLetterFeed {
    async fn record(tx: &mut dyn Transaction, name: &str, letter: &DeadLetter) -> Result<(), StoreError> {
        let payload = serde_json::json!({
            "id": letter.id.to_string(),
            "status": letter.status.as_str(),
            "group": letter.group,
            "reason": letter.reason,
            "attempts": letter.attempts,
            "replayId": letter.replay_id.map(|id| id.to_string()),
            "message": { "id": letter.message.id.to_string(), "name": letter.message.name, "topic": letter.message.topic },
        });
        let at = letter.resolved_at.unwrap_or(letter.dead_lettered_at);
        let row = NewRow {
            topic: letter.dead_letter_topic.clone(),
            name: name.to_owned(),
            key: letter.message.key.clone(),
            at: at.to_rfc3339(),
            payload,
        };
        row.insert(tx).await
    }
}

#[async_trait]
impl DeadLetterHook for DeadLetterFeed {
    async fn archived(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<(), StoreError> {
        Self::record(tx, DEAD_LETTER, letter).await
    }

    async fn resolved(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<(), StoreError> {
        let name = match letter.status {
            DeadLetterStatus::Replayed => DEAD_LETTER_REPLAYED,
            _ => DEAD_LETTER_DISCARDED,
        };
        Self::record(tx, name, letter).await
    }
}

/// A row for `admin_feed`.
struct NewRow {
    topic: String,
    name: String,
    key: String,
    at: String,
    payload: serde_json::Value,
}

impl NewRow {
    async fn insert(self, tx: &mut dyn Transaction) -> Result<(), StoreError> {
        let conn = db::conn(tx).map_err(|e| StoreError::Backend(e.into()))?;
        query("INSERT INTO admin_feed (topic, name, key, occurred_at, payload) VALUES (?, ?, ?, ?, ?)")
            .bind(self.topic)
            .bind(self.name)
            .bind(self.key)
            .bind(self.at)
            .bind(self.payload.to_string())
            .execute(conn)
            .await
            .map_err(|e| StoreError::Backend(e.into()))?;
        Ok(())
    }
}

/// A message's payload as JSON when it is JSON, else as text (lossy UTF-8).
pub(super) fn payload_json(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// One event as clients get it.
#[derive(Clone, Debug, Serialize)]
pub struct FeedEvent {
    pub seq: u64,
    pub topic: String,
    pub name: String,
    pub key: String,
    /// When it occurred (RFC 3339).
    pub at: String,
    pub data: serde_json::Value,
}

type Row = (i64, String, String, String, String, String);

fn event((seq, topic, name, key, at, payload): Row) -> FeedEvent {
    let data = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
    FeedEvent { seq: u64::try_from(seq).unwrap_or(0), topic, name, key, at, data }
}

const COLUMNS: &str = "SELECT seq, topic, name, key, occurred_at, payload FROM admin_feed";

/// This process's side of the feed: the tailer and its clients. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Feed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: AnyDatabase,
    admin_token: Arc<str>,
    events: broadcast::Sender<Arc<FeedEvent>>,
    /// The newest `seq` sent to subscribers: clients read older rows from the table.
    head: AtomicU64,
    client_arrived: Notify,
    /// Clients say goodbye when the process shuts down.
    shutdown: CancellationToken,
}

impl Feed {
    pub fn new(db: AnyDatabase, admin_token: Arc<str>, shutdown: CancellationToken) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                db,
                admin_token,
                events,
                head: AtomicU64::new(0),
                client_arrived: Notify::new(),
                shutdown,
            }),
        }
    }

    /// Tails `admin_feed` while this process has clients, and trims it, until `stop`.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let inner = &self.inner;
        inner.head.store(self.newest().await?, Ordering::SeqCst);
        let mut hole_since: Option<Instant> = None;
        let mut trimmed = Instant::now();
        loop {
            if inner.events.receiver_count() == 0 {
                // Nobody listens: only catch up the head when someone comes.
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = inner.client_arrived.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
                if inner.events.receiver_count() == 0 {
                    inner.head.store(self.newest().await?, Ordering::SeqCst);
                }
            }
            match self.tail(&mut hole_since).await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "the live feed could not read its table; retrying"),
            }
            if trimmed.elapsed() > Duration::from_secs(60) {
                trimmed = Instant::now();
                if let Err(e) = self.trim().await {
                    tracing::warn!(error = %e, "the live feed could not trim its table");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Sends subscribers the rows after the head, in order, waiting a little at a hole.
    async fn tail(&self, hole_since: &mut Option<Instant>) -> Result<(), AppError> {
        let head = self.inner.head.load(Ordering::SeqCst);
        let rows: Vec<Row> = query(format!("{COLUMNS} WHERE seq > ? ORDER BY seq LIMIT 500"))
            .bind(i64::try_from(head).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.db)
            .await?;
        let mut head = head;
        for row in rows {
            let event = event(row);
            if event.seq != head + 1 {
                let since = *hole_since.get_or_insert_with(Instant::now);
                if since.elapsed() < HOLE_GRACE {
                    break;
                }
            }
            *hole_since = None;
            head = event.seq;
            self.inner.head.store(head, Ordering::SeqCst);
            // No receiver left is fine: the next client reads the table.
            let _ = self.inner.events.send(Arc::new(event));
        }
        Ok(())
    }

    async fn newest(&self) -> Result<u64, AppError> {
        let (newest,): (Option<i64>,) = query("SELECT MAX(seq) FROM admin_feed").fetch_one(&self.inner.db).await?;
        Ok(newest.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    async fn trim(&self) -> Result<(), AppError> {
        query("DELETE FROM admin_feed WHERE seq <= (SELECT MAX(seq) FROM admin_feed) - ?")
            .bind(KEEP)
            .execute(&self.inner.db)
            .await?;
        Ok(())
    }

    /// Rows after `after` up to the head (at most `limit`), or the last [`BACKLOG`] up to it.
    async fn stored(&self, after: Option<u64>, limit: i64) -> Result<Vec<FeedEvent>, AppError> {
        let head = i64::try_from(self.inner.head.load(Ordering::SeqCst)).unwrap_or(i64::MAX);
        let rows: Vec<Row> = match after {
            Some(after) => {
                query(format!("{COLUMNS} WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"))
                    .bind(i64::try_from(after).unwrap_or(i64::MAX))
                    .bind(head)
                    .bind(limit)
                    .fetch_all(&self.inner.db)
                    .await?
            }
            None => {
                let mut rows: Vec<Row> = query(format!("{COLUMNS} WHERE seq <= ? ORDER BY seq DESC LIMIT ?"))
                    .bind(head)
                    .bind(BACKLOG)
                    .fetch_all(&self.inner.db)
                    .await?;
                rows.reverse();
                rows
            }
        };
        Ok(rows.into_iter().map(event).collect())
    }
}

/// What a client says first.
#[derive(Debug, Deserialize)]
struct Hello {
    token: String,
    #[serde(default)]
    after: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Outgoing<'a> {
    Welcome { head: u64 },
    Error { message: &'a str },
    Event(&'a FeedEvent),
}

/// `GET /api/admin/live`: the WebSocket of the live feed (see the module's documentation).
pub async fn live(State(feed): State<Feed>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| async move {
        if let Err(e) = feed.serve(socket).await {
            tracing::debug!(error = %e, "a live-feed client went away");
        }
    })
}

type Closed = axum::Error;

impl Feed {
    async fn serve(&self, mut socket: WebSocket) -> Result<(), Closed> {
        let Some(hello) = self.hello(&mut socket).await? else { return Ok(()) };
        // Subscribed before reading the table: nothing falls between the two.
        let mut events = self.inner.events.subscribe();
        self.inner.client_arrived.notify_one();
        let head = self.inner.head.load(Ordering::SeqCst);
        send(&mut socket, &Outgoing::Welcome { head }).await?;
        let mut last = hello.after;
        if !self.catch_up(&mut socket, &mut last).await? {
            return Ok(());
        }
        let mut ping = tokio::time::interval_at(Instant::now() + PING, PING);
        loop {
            tokio::select! {
                received = events.recv() => match received {
                    Ok(event) => {
                        if last.is_none_or(|last| event.seq > last) {
                            send(&mut socket, &Outgoing::Event(&event)).await?;
                            last = Some(event.seq);
                        }
                    }
                    // Too slow for the broadcast: read what it missed from the table.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !self.catch_up(&mut socket, &mut last).await? {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                frame = socket.recv() => match frame {
                    None | Some(Ok(Frame::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(_)) => {}
                },
                _ = ping.tick() => socket.send(Frame::Ping(Vec::new().into())).await?,
                () = self.inner.shutdown.cancelled() => {
                    let frame = CloseFrame { code: 1001, reason: "the server is shutting down".into() };
                    return socket.send(Frame::Close(Some(frame))).await;
                }
            }
        }
    }

    /// The client's hello, checked; `None` once it was refused (and told why).
    async fn hello(&self, socket: &mut WebSocket) -> Result<Option<Hello>, Closed> {
        let first = tokio::time::timeout(HELLO_WITHIN, socket.recv()).await;
        let refusal = match first {
            Err(_) => "say hello first: {\"token\": …, \"after\": …}",
            Ok(None | Some(Ok(Frame::Close(_)))) => return Ok(None),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(Frame::Text(text)))) => match serde_json::from_str::<Hello>(&text) {
                Ok(hello) if token_matches(&hello.token, &self.inner.admin_token) => return Ok(Some(hello)),
                Ok(_) => "a valid admin token is required",
                Err(_) => "the first frame must be {\"token\": \"<admin token>\", \"after\": <seq or null>}",
            },
            Ok(Some(Ok(_))) => "the first frame must be JSON text",
        };
        send(socket, &Outgoing::Error { message: refusal }).await?;
        let frame = CloseFrame { code: 1008, reason: refusal.into() };
        socket.send(Frame::Close(Some(frame))).await?;
        Ok(None)
    }

    /// Sends the stored events after `last` (or the backlog) up to the head; `false` if the
    /// table could not be read (the client was told and the socket closed).
    async fn catch_up(&self, socket: &mut WebSocket, last: &mut Option<u64>) -> Result<bool, Closed> {
        loop {
            let page = match self.stored(*last, 500).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "the live feed could not read its table for a client");
                    send(socket, &Outgoing::Error { message: "the feed is unavailable; reconnect later" }).await?;
                    socket.send(Frame::Close(None)).await?;
                    return Ok(false);
                }
            };
            let full = page.len() == 500;
            for event in &page {
                send(socket, &Outgoing::Event(event)).await?;
                *last = Some(event.seq);
            }
            if !full || last.is_none() {
                // A new client with an empty table starts at the head.
                last.get_or_insert(self.inner.head.load(Ordering::SeqCst));
                return Ok(true);
            }
        }
    }
}

async fn send(socket: &mut WebSocket, message: &Outgoing<'_>) -> Result<(), Closed> {
    let text = serde_json::to_string(message).unwrap_or_default();
    socket.send(Frame::Text(text.into())).await
}
