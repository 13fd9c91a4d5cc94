//! Subscribing: a group is a Redis consumer group; each subscription is a consumer of its own
//! (a fresh name) and runs one task that claims expired deliveries and reads new entries, handing
//! [`Delivery`] values through a bounded channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use herald::message::{Message, MessageId, Metadata};
use herald::pubsub::{
    Capabilities, Delivery, PubSubError, Settle, Settlement, StartFrom, SubscribeOptions, Subscriber, Subscription,
};
use herald::queue::{dead_letter_for, expired_reason};
use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Inner, RedisBroker, check_topic};
use crate::error::RedisError;
use crate::publisher::{FIELD_ID, FIELD_KEY, FIELD_METADATA, FIELD_NAME, FIELD_PAYLOAD, FIELD_TOPIC};

/// The most entries one read or claim asks for.
const MAX_BATCH: usize = 256;
/// How long one `XREADGROUP` blocks; also the longest a subscription takes to notice it was
/// dropped, and (roughly) the granularity of redelivery after `ack_wait` or a nack delay.
const BLOCK: Duration = Duration::from_millis(100);
/// Idle time given to a delivery handed back (nack, unseen): far beyond any sane `ack_wait`, so
/// the next claim round of any subscription of the group picks it up.
const RELEASED_IDLE_MS: u64 = u32::MAX as u64;
/// The consumer that holds handed-back entries (nacked or unseen) until a subscription of the
/// group claims them, so an ended subscription's own consumer is left with nothing pending.
const RELEASED_CONSUMER: &str = "herald-released";
/// Bits of a position that hold the sequence part of a stream id (`ms << 20 | seq`).
const SEQ_BITS: u32 = 20;

/// What Redis Streams can and cannot promise through this adapter.
///
/// * `durable` is **true** in the adapter's sense: entries and each group's pending list live in
///   the server, not in the consumers, so consumers can restart without losing anything. Whether
///   they survive a *server* restart is the server's persistence (AOF/RDB) configuration; the
///   local test server runs without persistence. Connections are re-opened after a restart, and
///   a group the server lost is re-created at the subscription's `start` (`tests/restart.rs`).
/// * `per_key_order` is **false**: a group's consumers read interleaved entries of one key and
///   handle them concurrently, and a nacked entry is redelivered after later ones. Per-key order
///   would need a stream per key partition with one consumer each.
/// * `delayed_nack` is **true**: a nack hands the entry back (`XCLAIM … IDLE`) so it is eligible
///   for claiming at once, and records a "not before" time in a per-group hash that every claim
///   round honours; redelivery therefore happens after the delay (within ~[`BLOCK`]).
/// * `ack_wait_redelivery`: every subscription claims entries idle for `ack_wait` or more
///   (`XPENDING … IDLE` then `XCLAIM` with the same min-idle, which is atomic), so a consumer that
///   goes away loses nothing. The delivery count is Redis's own (`XPENDING`).
/// * A settlement after the lease ran out is refused with `LeaseLost` by the adapter itself:
///   `XACK` does not check the consumer, so a settlement made `ack_wait` after the delivery
///   reached this process is refused, the message having been (or being about to be) claimed.
/// * `start_from_position`: positions are stream ids packed as `ms << 20 | seq`, lossless for
///   every id Redis generates with fewer than 2^20 entries in one millisecond; an entry whose id
///   does not fit gets no position.
/// * `return_unseen` hands the entry back with its delivery count restored, so an unseen return
///   does not count towards `max_deliveries`.
const CAPABILITIES: Capabilities = Capabilities {
    durable: true,
    groups: true,
    per_key_order: false,
    delayed_nack: true,
    ack_wait_redelivery: true,
    dead_letters: true,
    start_from_beginning: true,
    start_from_position: true,
};

/// What a subscription's deliveries need to settle themselves.
struct Shared {
    broker: Arc<Inner>,
    stream: String,
    delays: String,
    group: String,
    consumer: String,
    /// Where the group starts if it has to be created (again): the subscription's `start`.
    start: String,
    dead_letter_topic: String,
    max_deliveries: u32,
    ack_wait: Duration,
}

#[async_trait]
impl Subscriber for RedisBroker {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, PubSubError> {
        options.validate()?;
        check_topic(&options.topic)?;
        let dead_letter_topic = options.effective_dead_letter_topic();
        check_topic(&dead_letter_topic)?;
        if self.is_closed() {
            return Err(PubSubError::Closed);
        }
        let inner = &self.inner;
        let stream = inner.stream_key(&options.topic);
        let start = match options.start {
            StartFrom::Beginning => "0".to_owned(),
            StartFrom::Latest => "$".to_owned(),
            StartFrom::Position(p) => last_id_before(p),
        };
        let mut conn = inner.conn.clone();
        let created = ensure_group(&mut conn, &stream, &options.group, &start).await?;
        if created && options.start == StartFrom::Latest {
            // A new group at `$` skips what the stream holds: say so once (see `StartFrom`).
            // XLEN is O(1); a message added since the group was created is counted too.
            let earlier: u64 = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .map_err(|e| RedisError::command(format!("counting the entries of {stream}"), e))?;
            herald::observability::warn_new_group_skips_earlier_messages(
                &options.topic,
                &options.group,
                herald::observability::EarlierMessages::Exactly(earlier),
            );
        }
        let reader = inner.own_connection().await?;
        let shared = Arc::new(Shared {
            broker: inner.clone(),
            delays: inner.delays_key(&options.topic, &options.group),
            stream,
            group: options.group.clone(),
            consumer: format!("herald-{}", uuid::Uuid::now_v7()),
            start,
            dead_letter_topic,
            max_deliveries: options.max_deliveries,
            ack_wait: options.ack_wait,
        });
        let (tx, rx) = mpsc::channel(options.max_in_flight);
        let stop = inner.shutdown.child_token();
        let slots = Arc::new(Semaphore::new(options.max_in_flight));
        sample_lag(inner, &options.topic, &options.group, stop.child_token());
        inner.tasks.spawn(read_loop(reader, tx, shared, slots, stop.clone()));
        Ok(Subscription::new(rx, Some(stop.drop_guard())))
    }

    async fn close(&self) -> Result<(), PubSubError> {
        RedisBroker::close(self).await
    }
}

/// The consumer lag of `group` on `stream`, from `XINFO GROUPS` (one O(groups) command): its
/// `lag` (entries not delivered to the group yet) plus its `pending` (delivered, not
/// acknowledged yet: held by a subscription, or handed back after a nack and waiting to be
/// claimed again) — what the SQL broker counts too (the group's cursor and pending rows).
/// `None` when Redis cannot tell the lag (after entries were deleted or trimmed between the
/// group's last delivered entry and the end of the stream, it reports none) or the group is
/// gone (the subscription re-creates it).
async fn group_lag(conn: &mut ConnectionManager, stream: &str, group: &str) -> Result<Option<u64>, RedisError> {
    let reply: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .map_err(|e| RedisError::command(format!("XINFO GROUPS on {stream}"), e))?;
    for info in array(&reply) {
        // A map in RESP3, a flat field/value array in RESP2.
        let fields: Vec<(String, &Value)> = match info {
            Value::Map(pairs) => pairs.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
            other => array(other).chunks(2).filter_map(|kv| Some((text(kv.first()?)?, kv.get(1)?))).collect(),
        };
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if field("name").and_then(text).as_deref() != Some(group) {
            continue;
        }
        let (Some(lag), Some(pending)) = (field("lag").and_then(int), field("pending").and_then(int)) else {
            return Ok(None);
        };
        return Ok(Some(lag.saturating_add(pending)));
    }
    Ok(None)
}

/// Samples the consumer lag of `group` on `topic` (see [`group_lag`]) into
/// `herald_consumer_lag` once per [`CONSUMER_LAG_INTERVAL`](herald::observability::CONSUMER_LAG_INTERVAL),
/// on the broker's shared connection, in a task that ends when `stop` is cancelled.
fn sample_lag(broker: &Arc<Inner>, topic: &str, group: &str, stop: CancellationToken) {
    let (conn, stream, lag_group) = (broker.conn.clone(), broker.stream_key(topic), group.to_owned());
    let sample = move || {
        let (mut conn, stream, group) = (conn.clone(), stream.clone(), lag_group.clone());
        async move { group_lag(&mut conn, &stream, &group).await }
    };
    broker.tasks.spawn(herald::observability::sample_consumer_lag(topic.to_owned(), group.to_owned(), stop, sample));
}

/// Creates consumer group `group` on `stream` (and the stream if needed) starting after
/// `start`; a group that exists is left where it is. True when this call created it.
async fn ensure_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    start: &str,
) -> Result<bool, RedisError> {
    let created: Result<(), redis::RedisError> =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(group).arg(start).arg("MKSTREAM").query_async(conn).await;
    match created {
        Ok(()) => Ok(true),
        // The group exists: it resumes where it was.
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(RedisError::command(format!("creating group {group} on {stream}"), e)),
    }
}

/// Whether `e` says the consumer group (or its stream) does not exist.
fn is_no_group(e: &RedisError) -> bool {
    matches!(e, RedisError::Command { source, .. } if source.code() == Some("NOGROUP"))
}

/// The stream id of position `p`, if `p` is a valid packed id.
fn id_of(p: u64) -> (u64, u64) {
    (p >> SEQ_BITS, p & ((1 << SEQ_BITS) - 1))
}

/// The position of stream id `ms-seq`, when it fits.
fn position_of(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    (ms < (1 << (64 - SEQ_BITS)) && seq < (1 << SEQ_BITS)).then_some((ms << SEQ_BITS) | seq)
}

/// The id a group must have last delivered so that its next entry is the one at `p` or after.
fn last_id_before(p: u64) -> String {
    match id_of(p) {
        (0, 0) => "0-0".to_owned(),
        (ms, 0) => format!("{}-{}", ms - 1, u64::MAX),
        (ms, seq) => format!("{ms}-{}", seq - 1),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A stream entry: its id and fields.
struct Entry {
    id: String,
    fields: HashMap<String, Vec<u8>>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// `[id, [field, value, …]]` as an entry (`None` for a deleted entry, which XCLAIM may report).
fn entry(v: &Value) -> Option<Entry> {
    let [id, fields] = array(v) else { return None };
    let id = text(id)?;
    let fields = match fields {
        Value::Map(pairs) => pairs.iter().filter_map(|(k, v)| Some((text(k)?, bytes(v)?))).collect(),
        other => array(other).chunks(2).filter_map(|kv| Some((text(kv.first()?)?, bytes(kv.get(1)?)?))).collect(),
    };
    Some(Entry { id, fields })
}

/// The entries of an `XREADGROUP` reply for one stream.
fn read_entries(reply: &Value) -> Vec<Entry> {
    let streams: Vec<&Value> = match reply {
        Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
        other => array(other).iter().filter_map(|s| array(s).get(1)).collect(),
    };
    streams.into_iter().flat_map(|s| array(s).iter().filter_map(entry)).collect()
}

/// A Herald message from an entry's fields.
fn decode(entry: &Entry) -> Result<Message, String> {
    let field = |name: &str| entry.fields.get(name).ok_or_else(|| format!("no {name} field"));
    let utf8 = |name: &str| -> Result<String, String> {
        String::from_utf8(field(name)?.clone()).map_err(|e| format!("{name}: {e}"))
    };
    let id = utf8(FIELD_ID)?;
    let id = MessageId::parse(&id).map_err(|e| format!("id {id:?} is not a UUID: {e}"))?;
    let metadata: Metadata = serde_json::from_slice(field(FIELD_METADATA)?).map_err(|e| format!("metadata: {e}"))?;
    Ok(Message {
        id,
        name: utf8(FIELD_NAME)?,
        topic: utf8(FIELD_TOPIC)?,
        key: utf8(FIELD_KEY)?,
        payload: field(FIELD_PAYLOAD)?.clone(),
        metadata,
    })
}

/// Claims, reads and forwards until `stop` (the subscription was dropped or the broker closed).
/// A read in flight is always allowed to finish: were it abandoned, the server would still
/// assign its entries to this consumer, where they would sit until their ack wait ran out.
async fn read_loop(
    mut conn: ConnectionManager,
    tx: mpsc::Sender<Delivery>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::ZERO;
    while !stop.is_cancelled() {
        if !backoff.is_zero() {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
        }
        // At least one free in-flight slot, then as many more as are free.
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let round = match claim(&mut conn, &shared, permits.len()).await {
            Ok(claimed) => read(&mut conn, &shared, permits.len().saturating_sub(claimed.len()))
                .await
                .map(|read| claimed.into_iter().chain(read).collect::<Vec<_>>()),
            Err(e) => Err(e),
        };
        let batch = match round {
            Ok(batch) => {
                backoff = Duration::ZERO;
                batch
            }
            Err(e) => {
                tracing::warn!(error = %e, group = %shared.group, stream = %shared.stream, "reading from Redis");
                backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
                if is_no_group(&e) {
                    // The group is gone: a server restarted without persistence (or an operator
                    // deleted it). Re-create it where the subscription started, as `subscribe`
                    // did, rather than fail every read until the process restarts.
                    tracing::warn!(group = %shared.group, stream = %shared.stream, start = %shared.start, "the consumer group is gone; re-creating it");
                    if let Err(e) = ensure_group(&mut conn, &shared.stream, &shared.group, &shared.start).await {
                        tracing::warn!(error = %e, group = %shared.group, "re-creating the consumer group failed; retrying");
                    }
                }
                continue;
            }
        };
        for (entry, attempt) in batch {
            if stop.is_cancelled() {
                // Read after the subscription went away: hand it back, uncounted.
                if let Err(e) = release(&shared, &entry.id, attempt.saturating_sub(1), None).await {
                    tracing::debug!(error = %e, "returning an unseen entry; it comes back after its ack wait");
                }
                continue;
            }
            let permit = permits.pop();
            let Some(delivery) = to_delivery(entry, attempt, &shared, permit).await else { continue };
            if stop.is_cancelled() {
                delivery.return_unseen();
                continue;
            }
            match tx.try_send(delivery) {
                Ok(()) => {}
                // The channel has as much room as there are slots; full only if the receiver is
                // slow to free them, so wait (giving it back if the subscription goes away).
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    let permit = tokio::select! {
                        biased;
                        () = stop.cancelled() => None,
                        permit = tx.reserve() => permit.ok(),
                    };
                    match permit {
                        Some(permit) => permit.send(delivery),
                        None => delivery.return_unseen(),
                    }
                }
                Err(mpsc::error::TrySendError::Closed(delivery)) => delivery.return_unseen(),
            }
        }
    }
    forget_consumer(&mut conn, &shared).await;
}

/// Deletes this subscription's consumer from the group if nothing is pending for it, so ended
/// subscriptions do not pile up as consumers. Atomic (a script), because deleting a consumer
/// drops its pending entries: one still pending keeps it, and a later hand-back of a delivery
/// simply re-creates it (`XCLAIM` does).
async fn forget_consumer(conn: &mut ConnectionManager, shared: &Shared) {
    const SCRIPT: &str = r"
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
        if #pending == 0 then
            return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
        end
        return -1
    ";
    let result = redis::Script::new(SCRIPT)
        .key(&shared.stream)
        .arg(&shared.group)
        .arg(&shared.consumer)
        .invoke_async::<i64>(conn)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, consumer = %shared.consumer, "removing an ended subscription's consumer");
    }
}

/// Claims up to `n` entries of the group idle for `ack_wait` (and past any nack delay); returns
/// them with their attempt numbers, dead-lettering those over the delivery limit.
async fn claim(conn: &mut ConnectionManager, shared: &Arc<Shared>, n: usize) -> Result<Vec<(Entry, u32)>, RedisError> {
    let min_idle = u64::try_from(shared.ack_wait.as_millis()).unwrap_or(u64::MAX);
    let pending: Value = redis::cmd("XPENDING")
        .arg(&shared.stream)
        .arg(&shared.group)
        .arg("IDLE")
        .arg(min_idle)
        .arg("-")
        .arg("+")
        .arg(n)
        .query_async(conn)
        .await
        .map_err(|e| RedisError::command(format!("XPENDING on {}", shared.stream), e))?;
    let mut candidates: Vec<(String, u64)> = array(&pending)
        .iter()
        .filter_map(|p| {
            let row = array(p);
            Some((text(row.first()?)?, int(row.get(3)?)?))
        })
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // Honour nack delays.
    let mut hmget = redis::cmd("HMGET");
    hmget.arg(&shared.delays);
    for (id, _) in &candidates {
        hmget.arg(id);
    }
    let not_before: Vec<Option<u64>> =
        hmget.query_async(conn).await.map_err(|e| RedisError::command("reading nack delays", e))?;
    let now = now_ms();
    let mut delayed = not_before.into_iter();
    candidates.retain(|_| delayed.next().flatten().is_none_or(|t| t <= now));
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut xclaim = redis::cmd("XCLAIM");
    xclaim.arg(&shared.stream).arg(&shared.group).arg(&shared.consumer).arg(min_idle);
    for (id, _) in &candidates {
        xclaim.arg(id);
    }
    let claimed: Value =
        xclaim.query_async(conn).await.map_err(|e| RedisError::command(format!("XCLAIM on {}", shared.stream), e))?;
    let counts: HashMap<String, u64> = candidates.into_iter().collect();
    let entries: Vec<Entry> = array(&claimed).iter().filter_map(entry).collect();
    if !entries.is_empty() {
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(&shared.delays);
        for e in &entries {
            hdel.arg(&e.id);
        }
        hdel.query_async::<()>(conn).await.map_err(|e| RedisError::command("clearing nack delays", e))?;
    }
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let previous = counts.get(&entry.id).copied().unwrap_or(0);
        let previous = u32::try_from(previous).unwrap_or(u32::MAX);
        if previous >= shared.max_deliveries {
            // The last allowed lease expired: this claim exists only to dead-letter it.
            expire(&entry, previous, shared).await;
            continue;
        }
        out.push((entry, previous.saturating_add(1)));
    }
    Ok(out)
}

/// Dead-letters an entry that ran out of deliveries without a settlement.
async fn expire(entry: &Entry, attempts: u32, shared: &Arc<Shared>) {
    let result = match decode(entry) {
        Ok(original) => dead_letter(shared, &entry.id, &original, attempts, &expired_reason(attempts)).await,
        Err(why) => {
            tracing::error!(stream = %shared.stream, id = %entry.id, %why, "not a Herald message; acknowledged");
            ack(shared, &entry.id).await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, id = %entry.id, group = %shared.group, "dead-lettering an expired message");
    }
}

/// Reads up to `n` new entries for this consumer, blocking at most [`BLOCK`].
async fn read(conn: &mut ConnectionManager, shared: &Arc<Shared>, n: usize) -> Result<Vec<(Entry, u32)>, RedisError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&shared.group)
        .arg(&shared.consumer)
        .arg("COUNT")
        .arg(n)
        .arg("BLOCK")
        .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(100))
        .arg("STREAMS")
        .arg(&shared.stream)
        .arg(">")
        .query_async(conn)
        .await
        .map_err(|e| RedisError::command(format!("XREADGROUP on {}", shared.stream), e))?;
    Ok(read_entries(&reply).into_iter().map(|e| (e, 1)).collect())
}

/// Turns an entry into a delivery, or settles it here when it is not a Herald message.
async fn to_delivery(
    entry: Entry,
    attempt: u32,
    shared: &Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
) -> Option<Delivery> {
    let message = match decode(&entry) {
        Ok(m) => m,
        Err(why) => {
            tracing::error!(stream = %shared.stream, id = %entry.id, %why, "not a Herald message; acknowledged");
            if let Err(e) = ack(shared, &entry.id).await {
                tracing::warn!(error = %e, "acknowledging a foreign entry");
            }
            return None;
        }
    };
    let position = position_of(&entry.id);
    let settle = RedisSettle {
        shared: shared.clone(),
        entry_id: entry.id,
        attempt,
        received_at: Instant::now(),
        _permit: permit,
    };
    Some(Delivery::new(message, attempt, position, Box::new(settle)))
}

async fn ack(shared: &Shared, id: &str) -> Result<(), PubSubError> {
    let mut conn = shared.broker.conn.clone();
    redis::cmd("XACK")
        .arg(&shared.stream)
        .arg(&shared.group)
        .arg(id)
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| RedisError::command(format!("XACK on {}", shared.stream), e).into())
}

/// Publishes the dead letter of `original` and acknowledges the entry, in one transaction.
async fn dead_letter(
    shared: &Shared,
    id: &str,
    original: &Message,
    attempts: u32,
    reason: &str,
) -> Result<(), PubSubError> {
    let dead = dead_letter_for(original, &shared.group, attempts, reason, &shared.dead_letter_topic);
    let mut pipe = redis::pipe();
    pipe.atomic();
    shared.broker.add_xadd(&mut pipe, &dead)?;
    pipe.cmd("XACK").arg(&shared.stream).arg(&shared.group).arg(id).ignore();
    let mut conn = shared.broker.conn.clone();
    pipe.query_async::<()>(&mut conn)
        .await
        .map_err(|e| RedisError::command(format!("dead-lettering {id} of {}", shared.stream), e).into())
}

/// Hands an entry back to the group (to [`RELEASED_CONSUMER`]): idle enough to be claimed at once, its delivery count set
/// to `count`, and (when `not_before` is given) held back until then.
async fn release(shared: &Shared, id: &str, count: u32, not_before: Option<u64>) -> Result<(), PubSubError> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    if let Some(t) = not_before {
        pipe.cmd("HSET").arg(&shared.delays).arg(id).arg(t).ignore();
    }
    pipe.cmd("XCLAIM")
        .arg(&shared.stream)
        .arg(&shared.group)
        .arg(RELEASED_CONSUMER)
        .arg(0)
        .arg(id)
        .arg("IDLE")
        .arg(RELEASED_IDLE_MS)
        .arg("RETRYCOUNT")
        .arg(count)
        .arg("JUSTID")
        .ignore();
    let mut conn = shared.broker.conn.clone();
    pipe.query_async::<()>(&mut conn)
        .await
        .map_err(|e| RedisError::command(format!("handing back {id} of {}", shared.stream), e).into())
}

/// Settles one delivery with the server.
struct RedisSettle {
    shared: Arc<Shared>,
    entry_id: String,
    attempt: u32,
    /// When the delivery reached this process: its lease ends `ack_wait` later.
    received_at: Instant,
    /// The subscription's in-flight slot, freed with the delivery.
    _permit: Option<OwnedSemaphorePermit>,
}

impl RedisSettle {
    async fn dead_letter_now(&self, reason: &str) -> Result<(), PubSubError> {
        let what = || format!("reading {} of {} to dead-letter it", self.entry_id, self.shared.stream);
        let mut conn = self.shared.broker.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.shared.stream)
            .arg(&self.entry_id)
            .arg(&self.entry_id)
            .query_async(&mut conn)
            .await
            .map_err(|e| RedisError::command(what(), e))?;
        let Some(entry) = array(&reply).first().and_then(entry) else {
            // Trimmed or deleted: nothing left to dead-letter.
            return ack(&self.shared, &self.entry_id).await;
        };
        let original = decode(&entry).map_err(|detail| RedisError::Reply { what: what(), detail })?;
        dead_letter(&self.shared, &self.entry_id, &original, self.attempt, reason).await
    }
}

#[async_trait]
impl Settle for RedisSettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), PubSubError> {
        if self.received_at.elapsed() >= self.shared.ack_wait {
            return Err(PubSubError::LeaseLost);
        }
        match settlement {
            Settlement::Ack => ack(&self.shared, &self.entry_id).await,
            Settlement::Nack { reason, .. } if self.attempt >= self.shared.max_deliveries => {
                let reason = herald::queue::last_nack_reason(reason, self.shared.max_deliveries);
                self.dead_letter_now(&reason).await
            }
            Settlement::Nack { delay, .. } => {
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                let not_before = (delay_ms > 0).then(|| now_ms().saturating_add(delay_ms));
                release(&self.shared, &self.entry_id, self.attempt, not_before).await
            }
            Settlement::DeadLetter { reason } => self.dead_letter_now(&reason).await,
        }
    }

    fn return_unseen(self: Box<Self>) {
        let tasks = self.shared.broker.tasks.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            tasks.spawn(async move {
                let count = self.attempt.saturating_sub(1);
                if let Err(e) = release(&self.shared, &self.entry_id, count, None).await {
                    tracing::debug!(error = %e, "returning an unseen delivery; it comes back after its ack wait");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_stream_ids() {
        let p = position_of("1700000000123-7").expect("fits");
        assert_eq!(id_of(p), (1_700_000_000_123, 7));
        assert_eq!(last_id_before(p), "1700000000123-6");
        let p0 = position_of("1700000000123-0").expect("fits");
        assert_eq!(last_id_before(p0), format!("1700000000122-{}", u64::MAX));
        assert!(position_of("1-1048576").is_none());
        assert!(position_of("nonsense").is_none());
        assert!(position_of("1-2").is_some_and(|a| position_of("1-3").is_some_and(|b| a < b)));
    }
}
