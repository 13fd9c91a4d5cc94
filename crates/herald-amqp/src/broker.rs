//! [`AmqpBroker`]: one AMQP connection, the channels it publishes and declares on, and the
//! names it derives from topics and groups.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use herald::pubsub::PubSubError;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AmqpConfig;
use crate::error::AmqpError;

/// How long [`AmqpBroker::close`] waits for its subscriptions' tasks to end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest name (exchange, queue, routing key) AMQP allows, in bytes.
const MAX_NAME: usize = 255;
/// How long past its delay an unused retry queue lives before the server deletes it.
const RETRY_QUEUE_GRACE_MS: u64 = 60_000;

/// A [`Publisher`](herald::pubsub::Publisher) and [`Subscriber`](herald::pubsub::Subscriber) on
/// RabbitMQ. Cheap to clone; clones share the connection and close together. Build it with
/// [`AmqpConfig::connect`].
#[derive(Clone)]
pub struct AmqpBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The broker's one connection; every channel is opened on it. Replaced by a new one
    /// (see [`Inner::connection`]) when it was lost.
    connection: tokio::sync::Mutex<Arc<Connection>>,
    pub(crate) config: AmqpConfig,
    /// `<prefix>topics`, the topic exchange every message is published to.
    pub(crate) exchange: String,
    /// Publishing, in confirm mode (messages, dead letters, retries, hand-backs).
    publish: ChannelSlot,
    /// Declarations. Kept apart from publishing because a refused declaration (a passive
    /// declare of a missing queue, mismatched arguments) closes the channel it was made on.
    admin: ChannelSlot,
    /// Set by `close`: publishing and subscribing are refused from then on.
    closed: AtomicBool,
    /// Cancelled by `close`; every subscription's token is a child of it.
    pub(crate) shutdown: CancellationToken,
    /// The subscriptions' consume tasks and the hand-backs, so `close` can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Per group queue: deliveries this process's subscriptions hold unacknowledged, for the
    /// consumer lag (AMQP does not report a queue's unacknowledged messages; see
    /// [`Inner::unacked`]).
    unacked: std::sync::Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &redacted(&self.inner.config.url))
            .field("exchange", &self.inner.exchange)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A channel opened on demand and re-opened when the server or the connection closed it.
struct ChannelSlot {
    channel: tokio::sync::Mutex<Option<Channel>>,
    /// Put the channel in confirm mode.
    confirm: bool,
}

impl ChannelSlot {
    fn new(confirm: bool) -> Self {
        Self { channel: tokio::sync::Mutex::new(None), confirm }
    }
}

/// `url` without its password, for logs and errors.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

impl AmqpBroker {
    pub(crate) async fn connect(config: AmqpConfig) -> Result<Self, AmqpError> {
        let connection = open_connection(&config).await?;
        let inner = Inner {
            connection: tokio::sync::Mutex::new(Arc::new(connection)),
            exchange: config.exchange(),
            config,
            publish: ChannelSlot::new(true),
            admin: ChannelSlot::new(false),
            closed: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            unacked: std::sync::Mutex::new(HashMap::new()),
        };
        let channel = inner.admin_channel().await?;
        inner.declare_exchange(&channel).await?;
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The queue that holds `group`'s messages of `topic`.
    pub fn group_queue(&self, topic: &str, group: &str) -> String {
        self.inner.group_queue(topic, group)
    }

    /// Stops publishing and ends every subscription, waiting (bounded) for their tasks, then
    /// closes the connection (the server requeues whatever was still unacknowledged).
    /// Idempotent.
    pub async fn close(&self) -> Result<(), PubSubError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "AMQP subscription tasks did not end in time");
        }
        let connection = self.inner.connection.lock().await.clone();
        let closing = connection.close(200, ShortString::from("herald: closed"));
        match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing the AMQP connection"),
            Err(_) => tracing::debug!("closing the AMQP connection timed out"),
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }
}

impl Inner {
    /// Runs an AMQP operation, failing with [`AmqpError::Timeout`] if the server does not answer
    /// within the confirm timeout (a lost connection must not hang the caller).
    pub(crate) async fn op<T>(
        &self,
        what: impl Fn() -> String,
        fut: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, AmqpError> {
        let timeout = self.config.confirm_timeout_duration();
        match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result.map_err(|e| AmqpError::amqp(what(), e)),
            Err(_) => Err(AmqpError::Timeout { what: what(), timeout }),
        }
    }

    /// A channel of `slot`, opened (again) if there is none or it was closed.
    async fn channel(&self, slot: &ChannelSlot) -> Result<Channel, AmqpError> {
        let mut guard = slot.channel.lock().await;
        if let Some(channel) = guard.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *guard = None;
        let channel = self.open_channel().await?;
        if slot.confirm {
            self.op(
                || "enabling publisher confirms".to_owned(),
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
        }
        *guard = Some(channel.clone());
        Ok(channel)
    }

    /// A new channel on the broker's connection.
    pub(crate) async fn open_channel(&self) -> Result<Channel, AmqpError> {
        let connection = self.connection().await?;
        self.op(|| "opening a channel".to_owned(), connection.create_channel()).await
    }

    /// The broker's connection, re-opened (and the exchange re-declared) if it was lost: the
    /// next operation after a server restart reconnects, and fails if the server is still down.
    /// A closed broker does not reconnect.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, AmqpError> {
        let mut current = self.connection.lock().await;
        if current.status().connected() || self.closed.load(Ordering::SeqCst) {
            return Ok(current.clone());
        }
        tracing::info!(url = %redacted(&self.config.url), "the AMQP connection was lost; reconnecting");
        let connection = open_connection(&self.config).await?;
        let channel = self.op(|| "opening a channel".to_owned(), connection.create_channel()).await?;
        self.declare_exchange(&channel).await?;
        if let Err(e) = channel.close(200, ShortString::from("declared")).await {
            tracing::debug!(error = %e, "closing a declaration channel");
        }
        *current = Arc::new(connection);
        Ok(current.clone())
    }

    /// The confirm-mode channel for publishing.
    pub(crate) async fn publish_channel(&self) -> Result<Channel, AmqpError> {
        self.channel(&self.publish).await
    }

    /// The channel for declarations.
    pub(crate) async fn admin_channel(&self) -> Result<Channel, AmqpError> {
        self.channel(&self.admin).await
    }

    async fn declare_exchange(&self, channel: &Channel) -> Result<(), AmqpError> {
        let options = ExchangeDeclareOptions {
            durable: true,
            auto_delete: self.config.auto_delete_exchange,
            ..ExchangeDeclareOptions::default()
        };
        let name = short(&self.exchange)?;
        self.op(
            || format!("declaring exchange {}", self.exchange),
            channel.exchange_declare(name, ExchangeKind::Topic, options, FieldTable::default()),
        )
        .await
    }

    /// `<prefix><topic>.<group>`, with a hash of topic and group appended when the group holds a
    /// `.` (so `a.b` + `c` and `a` + `b.c` stay apart) or the name is too long for AMQP.
    pub(crate) fn group_queue(&self, topic: &str, group: &str) -> String {
        let name = format!("{}{topic}.{group}", self.config.prefix);
        if group.contains('.') || name.len() > MAX_NAME { with_hash(&name, &[topic, group]) } else { name }
    }

    /// The queue a delayed nack parks a message in: `<group queue>.retry.<delay ms>`.
    pub(crate) fn retry_queue(group_queue: &str, delay_ms: u64) -> String {
        let name = format!("{group_queue}.retry.{delay_ms}");
        if name.len() > MAX_NAME { with_hash(&name, &[group_queue, &delay_ms.to_string()]) } else { name }
    }

    /// Declares the durable quorum queue of `group` on `topic` and binds it to the topic.
    /// Idempotent: an existing queue keeps its messages (the group resumes where it was).
    pub(crate) async fn declare_group_queue(&self, topic: &str, group: &str) -> Result<String, AmqpError> {
        let queue = self.group_queue(topic, group);
        let channel = self.admin_channel().await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        if self.config.queue_expires_secs > 0 {
            let ms = self.config.queue_expires_secs.saturating_mul(1000);
            args.insert("x-expires".into(), AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)));
        }
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        self.op(|| format!("declaring queue {queue}"), channel.queue_declare(short(&queue)?, options, args)).await?;
        self.op(
            || format!("binding queue {queue} to {topic:?}"),
            channel.queue_bind(
                short(&queue)?,
                short(&self.exchange)?,
                short(topic)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(queue)
    }

    /// Whether the queue exists (a passive declare; a missing queue closes the admin channel,
    /// which is re-opened on next use).
    pub(crate) async fn queue_exists(&self, queue: &str) -> Result<bool, AmqpError> {
        let channel = self.admin_channel().await?;
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = self
            .op(
                || format!("looking up queue {queue}"),
                channel.queue_declare(short(queue)?, options, FieldTable::default()),
            )
            .await;
        match declared {
            Ok(_) => Ok(true),
            Err(AmqpError::Amqp { source, .. }) if is_not_found(&source) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The count of deliveries of `queue` that this process's subscriptions hold
    /// unacknowledged, shared by the group's subscriptions in this process (each delivery adds
    /// one while its lease is pending; see the subscriber's `Lease`).
    pub(crate) fn unacked(&self, queue: &str) -> Arc<AtomicU64> {
        let mut unacked = self.unacked.lock().unwrap_or_else(PoisonError::into_inner);
        unacked.entry(queue.to_owned()).or_default().clone()
    }

    /// The consumer lag of the group whose queue is `queue`: its ready messages (a passive
    /// declare reports them; they have not been delivered to the group yet) plus the deliveries
    /// this process holds unacknowledged ([`unacked`](Self::unacked)). AMQP 0-9-1 does not
    /// report a queue's unacknowledged messages (only the management API does), so deliveries
    /// held by *other* processes are not counted, nor messages waiting out a nack delay in a
    /// retry queue: with one process per group the gauge means what it means on the other
    /// brokers (not delivered plus not acknowledged); with several, each reports the ready
    /// messages plus its own share. `None` when the queue is gone (it is declared again by the
    /// subscription).
    pub(crate) async fn group_lag(&self, queue: &str) -> Result<Option<u64>, AmqpError> {
        let channel = self.admin_channel().await?;
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = self
            .op(
                || format!("counting the messages of queue {queue}"),
                channel.queue_declare(short(queue)?, options, FieldTable::default()),
            )
            .await;
        let ready = match declared {
            Ok(q) => u64::from(q.message_count()),
            Err(AmqpError::Amqp { source, .. }) if is_not_found(&source) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(ready.saturating_add(self.unacked(queue).load(Ordering::Acquire))))
    }

    /// Declares (or re-declares, which keeps an unused one alive) the retry queue for
    /// `delay_ms` of `group_queue`: its messages expire after the delay and the server
    /// dead-letters them back to the group queue.
    pub(crate) async fn declare_retry_queue(&self, group_queue: &str, delay_ms: u64) -> Result<String, AmqpError> {
        let queue = Self::retry_queue(group_queue, delay_ms);
        let channel = self.admin_channel().await?;
        let ms = |v: u64| AMQPValue::LongLongInt(i64::try_from(v).unwrap_or(i64::MAX));
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), ms(delay_ms));
        args.insert("x-expires".into(), ms(delay_ms.saturating_add(RETRY_QUEUE_GRACE_MS)));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(group_queue.into()));
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        self.op(|| format!("declaring retry queue {queue}"), channel.queue_declare(short(&queue)?, options, args))
            .await?;
        Ok(queue)
    }
}

/// Opens a connection, bounded by the confirm timeout.
async fn open_connection(config: &AmqpConfig) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default().with_connection_name(LongString::from("herald"));
    let timeout = config.confirm_timeout_duration();
    tokio::time::timeout(timeout, Connection::connect(&config.url, properties))
        .await
        .map_err(|_| AmqpError::Timeout { what: "connecting".to_owned(), timeout })?
        .map_err(|e| AmqpError::Connect { url: redacted(&config.url), source: e })
}

/// Whether the server answered 404 NOT_FOUND.
fn is_not_found(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_id() == 404,
        _ => false,
    }
}

/// `name` as an AMQP short string (at most 255 bytes).
pub(crate) fn short(name: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(name).map_err(|e| AmqpError::InvalidConfig(format!("{name:?} is not a valid AMQP name: {e}")))
}

/// `name` cut to fit AMQP's limit, with `~` and a hash of `parts` appended.
fn with_hash(name: &str, parts: &[&str]) -> String {
    // FNV-1a: stable across processes and versions, unlike `DefaultHasher`.
    let hash = parts
        .iter()
        .flat_map(|p| p.bytes().chain(std::iter::once(0)))
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let suffix = format!("~{hash:016x}");
    let mut cut = MAX_NAME - suffix.len();
    while cut < name.len() && !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &name[..cut.min(name.len())])
}

/// Checks that `topic` can be a routing key and an exact binding: not empty, at most 255 bytes,
/// no `*` or `#` (they would be wildcards in the group queue's binding), no control characters.
pub(crate) fn check_topic(topic: &str) -> Result<(), PubSubError> {
    let valid = !topic.trim().is_empty()
        && topic.len() <= MAX_NAME
        && !topic.chars().any(|c| c == '*' || c == '#' || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(PubSubError::InvalidOptions(format!(
            "topic {topic:?} is not a valid AMQP routing key (1 to 255 bytes, no '*', '#' or control characters)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_apart_and_fit() {
        let long = "t".repeat(300);
        let name = with_hash(&format!("herald.{long}.g"), &[&long, "g"]);
        assert!(name.len() <= MAX_NAME, "{}", name.len());
        assert_ne!(with_hash("x", &["a.b", "c"]), with_hash("x", &["a", "b.c"]));
    }

    #[test]
    fn topics_must_be_plain_routing_keys() {
        assert!(check_topic("ordering.orders").is_ok());
        for bad in ["", " ", "a.*", "a.#", "a\nb"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic(&"a".repeat(256)).is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redacted("amqp://guest:secret@host:5672/%2f"), "amqp://***@host:5672/%2f");
        assert_eq!(redacted("amqp://host"), "amqp://host");
    }
}
