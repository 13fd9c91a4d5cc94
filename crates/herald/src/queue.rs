//! The queue engine shared by brokers that keep their own log: the in-memory broker and the SQL
//! broker in `herald-sql`.
//!
//! A [`QueueBackend`] stores topics as append-only logs and, per consumer group, the messages
//! not yet settled. It answers four questions: append, create a group, *claim* what may be
//! delivered now, and *settle* a delivery. Everything else (in-flight limits, waking up, turning
//! claims into [`Delivery`] values, closing) is done once, here, by [`QueueBroker`].
//!
//! # What `claim` must do (the per-key rule)
//!
//! Among the group's unsettled messages, in position order, a message may be claimed when
//! 1. no older unsettled message of the group has the same non-empty key, and
//! 2. it is visible: never delivered, or its lease (`ack_wait`) or nack delay has passed.
//!
//! Claiming increments its attempt count and leases it for `ack_wait`. A message whose lease
//! expired after its last allowed delivery is dead-lettered instead of being claimed.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tracing::Instrument;

use crate::message::{Message, MessageId};
use crate::observability::{self, EarlierMessages};
use crate::pubsub::{
    Capabilities, DLQ_ATTEMPTS, DLQ_GROUP, DLQ_ORIGINAL_ID, DLQ_ORIGINAL_TOPIC, DLQ_REASON, Delivery, PubSubError,
    Publisher, Settle, Settlement, StartFrom, SubscribeOptions, Subscriber, Subscription,
};

/// How often a subscription records its group's consumer lag (the same on every broker).
const LAG_INTERVAL: Duration = observability::CONSUMER_LAG_INTERVAL;

/// How long a busy subscription waits at most for a quarter of its in-flight window to free up
/// before claiming anyway (claims in batches instead of once per ack).
const BATCH_WAIT: Duration = Duration::from_millis(25);

/// The first pause after a failed claim; it grows with each failure in a row, up to
/// [`MAX_CLAIM_BACKOFF`].
const CLAIM_BACKOFF: Duration = Duration::from_millis(50);
const MAX_CLAIM_BACKOFF: Duration = Duration::from_secs(5);

/// The settings of a group's subscription that claim and settle need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPolicy {
    /// Lease length.
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_deliveries: u32,
    /// Where dead letters go.
    pub dead_letter_topic: String,
}

impl From<&SubscribeOptions> for GroupPolicy {
    fn from(o: &SubscribeOptions) -> Self {
        Self {
            ack_wait: o.ack_wait,
            max_deliveries: o.max_deliveries,
            dead_letter_topic: o.effective_dead_letter_topic(),
        }
    }
}

/// One wake-up signal per topic and one per group, so a publish wakes only the subscriptions
/// of its topic and a settlement only those of its group. (One signal for everything woke every subscription of the process, dozens in an
/// application, each then asking the database whether there was work: a thundering herd that
/// cost more than the work itself.) A backend keeps one `Doorbells` for every broker over the
/// same storage, so a publish through one broker handle wakes the subscriptions of another.
#[derive(Debug, Default)]
pub struct Doorbells {
    bells: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Doorbells {
    /// The signal of `topic`, shared by every subscription of it while any holds it.
    pub fn topic_bell(&self, topic: &str) -> Arc<Notify> {
        self.bell(topic.to_owned())
    }

    /// The signal of `group` on `topic`.
    pub fn group_bell(&self, topic: &str, group: &str) -> Arc<Notify> {
        self.bell(group_key(topic, group))
    }

    /// Wakes the waiting subscriptions of `topic` (new messages).
    pub fn ring_topic(&self, topic: &str) {
        self.ring(topic);
    }

    /// Wakes the waiting subscriptions of `group` on `topic` (a settlement may have unblocked
    /// the next message of a key).
    pub fn ring_group(&self, topic: &str, group: &str) {
        self.ring(&group_key(topic, group));
    }

    fn bell(&self, key: String) -> Arc<Notify> {
        let mut bells = self.bells.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bell) = bells.get(&key).and_then(Weak::upgrade) {
            return bell;
        }
        bells.retain(|_, b| b.strong_count() > 0);
        let bell = Arc::new(Notify::new());
        bells.insert(key, Arc::downgrade(&bell));
        bell
    }

    fn ring(&self, key: &str) {
        let bell = self.bells.lock().unwrap_or_else(PoisonError::into_inner).get(key).and_then(Weak::upgrade);
        if let Some(bell) = bell {
            bell.notify_waiters();
        }
    }
}

/// A group's key among the bells: topics and groups are names, which hold no NUL.
fn group_key(topic: &str, group: &str) -> String {
    format!("{topic}\0{group}")
}

/// A message leased to a consumer.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The message.
    pub message: Message,
    /// Its position in the topic.
    pub position: u64,
    /// Which delivery this is (1-based); settling checks it to detect a lost lease.
    pub attempt: u32,
}

/// One delivery to ack, for [`QueueBackend::ack_many`].
#[derive(Clone, Copy, Debug)]
pub struct Ack<'a> {
    /// The message's topic.
    pub topic: &'a str,
    /// The consumer group that received it.
    pub group: &'a str,
    /// Its position in the topic.
    pub position: u64,
    /// The delivery being acked (1-based).
    pub attempt: u32,
    /// The group's settings.
    pub policy: &'a GroupPolicy,
}

/// What [`QueueBackend::ensure_group`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnsuredGroup {
    /// The group existed already: it resumes where it was and `start` was ignored.
    Existing,
    /// This call created the group.
    Created {
        /// For a group created at [`StartFrom::Latest`]: the messages already on the topic,
        /// which it will never receive. `Exactly(0)` for any other start (not counted).
        skipped: EarlierMessages,
    },
}

/// The most earlier messages a backend needs to count for [`EnsuredGroup::Created`]; past it
/// [`EarlierMessages::AtLeast`] says enough.
pub const EARLIER_COUNT_LIMIT: u64 = 10_000;

/// Storage for a [`QueueBroker`]. See the module docs for what `claim` must guarantee.
#[async_trait]
pub trait QueueBackend: Send + Sync + fmt::Debug + 'static {
    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Appends messages to their topics' logs, atomically and in order.
    async fn append(&self, messages: &[Message]) -> Result<(), PubSubError>;

    /// Creates the group if it does not exist, starting at `start`; an existing group is left
    /// where it is. Says which happened, and for a group created at [`StartFrom::Latest`], how
    /// many messages of the topic it skips (one cheap count, at creation only).
    async fn ensure_group(&self, topic: &str, group: &str, start: StartFrom) -> Result<EnsuredGroup, PubSubError>;

    /// Leases up to `max` messages deliverable now (see the module docs).
    async fn claim(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        policy: &GroupPolicy,
    ) -> Result<Vec<Claimed>, PubSubError>;

    /// Settles delivery `attempt` of the message at `position`; [`PubSubError::LeaseLost`] when
    /// that delivery is no longer the current one.
    async fn settle(
        &self,
        topic: &str,
        group: &str,
        position: u64,
        attempt: u32,
        settlement: Settlement,
        policy: &GroupPolicy,
    ) -> Result<(), PubSubError>;

    /// Acks several deliveries, each exactly as `settle(…, Settlement::Ack, …)` would (guarded
    /// by its attempt; [`PubSubError::LeaseLost`] where that delivery is no longer current):
    /// one outcome per ack, in order. An `Err` means none of them was acked.
    ///
    /// A [`QueueBroker`] gathers the acks that arrive while its previous batch is being written
    /// into one call, so where each write is a transaction, implement this as one. The default
    /// settles them one by one.
    async fn ack_many(&self, acks: &[Ack<'_>]) -> Result<Vec<Result<(), PubSubError>>, PubSubError> {
        let mut outcomes = Vec::with_capacity(acks.len());
        for a in acks {
            outcomes.push(self.settle(a.topic, a.group, a.position, a.attempt, Settlement::Ack, a.policy).await);
        }
        Ok(outcomes)
    }

    /// Undoes delivery `attempt` of the message at `position`, which never reached a consumer:
    /// the attempt count goes back down and the message is claimable again at once. Does
    /// nothing if that delivery is no longer the current one.
    async fn release(&self, topic: &str, group: &str, position: u64, attempt: u32) -> Result<(), PubSubError>;

    /// How many messages of `topic` the group has not settled yet (its consumer lag), where
    /// the backend can tell cheaply; `None` by default. Recorded as `herald_consumer_lag`.
    async fn lag(&self, topic: &str, group: &str) -> Result<Option<u64>, PubSubError> {
        let _ = (topic, group);
        Ok(None)
    }

    /// Notified when anything may have become claimable on any topic: another process's
    /// writes (where the backend can tell) or the backend's own dead letters. Publishes and
    /// settlements through a [`QueueBroker`] ring the topic's bell in
    /// [`doorbells`](Self::doorbells) instead.
    fn changed(&self) -> &Notify;

    /// The per-topic wake-up signals, shared by every broker over this storage.
    fn doorbells(&self) -> &Doorbells;

    /// How often an idle subscription looks for work that no notification announced: another
    /// process's writes where the backend has no cross-process signal, or a lease whose holder
    /// died. A fallback, so seconds rather than milliseconds: in this process appends and
    /// settlements notify [`changed`](Self::changed), a delayed nack wakes its group when the
    /// delay has passed, and a subscription wakes when the leases it handed out expire.
    fn poll_interval(&self) -> Duration;

    /// How long a subscription with deliveries in flight waits after a wake-up before claiming,
    /// so that several settlements are followed by one claim rather than one claim each. Worth
    /// it where a claim is a transaction (SQL); zero by default.
    fn claim_linger(&self) -> Duration {
        Duration::ZERO
    }
}

/// The dead letter for `original`: a new message on `policy.dead_letter_topic` carrying the
/// original payload, key and metadata plus the reason headers.
pub fn dead_letter_for(original: &Message, group: &str, attempts: u32, reason: &str, topic: &str) -> Message {
    let mut dead = original.clone();
    dead.id = MessageId::new();
    dead.topic = topic.to_owned();
    let headers = &mut dead.metadata.headers;
    headers.insert(DLQ_REASON.into(), reason.to_owned());
    headers.insert(DLQ_ATTEMPTS.into(), attempts.to_string());
    headers.insert(DLQ_GROUP.into(), group.to_owned());
    headers.insert(DLQ_ORIGINAL_TOPIC.into(), original.topic.clone());
    headers.insert(DLQ_ORIGINAL_ID.into(), original.id.to_string());
    dead
}

/// The dead-letter reason for a nack on the last allowed delivery: the handler's reason if it
/// gave one.
pub fn last_nack_reason(reason: Option<String>, max_deliveries: u32) -> String {
    reason.unwrap_or_else(|| format!("nacked on the last of {max_deliveries} deliveries"))
}

/// The reason recorded when a message runs out of deliveries without a settlement.
pub fn expired_reason(attempts: u32) -> String {
    format!("not settled within ack wait after {attempts} deliveries")
}

/// A [`Publisher`] and [`Subscriber`] over a [`QueueBackend`]. Cheap to clone; clones share
/// the backend and close together.
pub struct QueueBroker<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for QueueBroker<B> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<B> {
    backend: Arc<B>,
    acks: Arc<AckQueue>,
    closed: AtomicBool,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl<B: fmt::Debug> fmt::Debug for QueueBroker<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBroker").field("backend", &self.inner.backend).finish_non_exhaustive()
    }
}

impl<B: QueueBackend> QueueBroker<B> {
    /// A broker over `backend`.
    pub fn new(backend: B) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend: Arc::new(backend),
                acks: Arc::default(),
                closed: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Closes publishing and every subscription (the same as `Publisher::close`).
    pub async fn close(&self) -> Result<(), PubSubError> {
        Publisher::close(self).await
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    fn check_open(&self) -> Result<(), PubSubError> {
        if self.inner.closed.load(Ordering::Acquire) { Err(PubSubError::Closed) } else { Ok(()) }
    }
}

#[async_trait]
impl<B: QueueBackend> Publisher for QueueBroker<B> {
    async fn publish(&self, messages: &[Message]) -> Result<(), PubSubError> {
        self.check_open()?;
        if messages.is_empty() {
            return Ok(());
        }
        let span = observability::publish_span(messages);
        self.inner.backend.append(messages).instrument(span).await?;
        observability::record_published(messages);
        let doorbells = self.inner.backend.doorbells();
        for (i, m) in messages.iter().enumerate() {
            if messages[..i].iter().all(|earlier| earlier.topic != m.topic) {
                doorbells.ring_topic(&m.topic);
            }
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), PubSubError> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        Ok(())
    }
}

#[async_trait]
impl<B: QueueBackend> Subscriber for QueueBroker<B> {
    fn capabilities(&self) -> Capabilities {
        self.inner.backend.capabilities()
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, PubSubError> {
        self.check_open()?;
        options.validate()?;
        let ensured = self.inner.backend.ensure_group(&options.topic, &options.group, options.start).await?;
        if let (StartFrom::Latest, EnsuredGroup::Created { skipped }) = (options.start, ensured) {
            observability::warn_new_group_skips_earlier_messages(&options.topic, &options.group, skipped);
        }
        let (tx, rx) = mpsc::channel(options.max_in_flight);
        let stop = self.inner.shutdown.child_token();
        let pump = Pump {
            backend: self.inner.backend.clone(),
            acks: self.inner.acks.clone(),
            policy: GroupPolicy::from(&options),
            in_flight: Arc::new(Semaphore::new(options.max_in_flight)),
            options,
            tx,
            stop: stop.clone(),
            tasks: self.inner.tasks.clone(),
        };
        self.inner.tasks.spawn(pump.run());
        Ok(Subscription::new(rx, Some(stop.drop_guard())))
    }

    async fn close(&self) -> Result<(), PubSubError> {
        Publisher::close(self).await
    }
}

/// The task behind one subscription: claims while there is room in flight, hands deliveries
/// over, sleeps until notified or the poll interval passes.
struct Pump<B> {
    backend: Arc<B>,
    acks: Arc<AckQueue>,
    options: SubscribeOptions,
    policy: GroupPolicy,
    in_flight: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl<B: QueueBackend> Pump<B> {
    fn stopped(&self) -> bool {
        self.stop.is_cancelled() || self.tx.is_closed()
    }

    async fn run(self) {
        let mut failures = 0u32;
        let mut lag_recorded: Option<std::time::Instant> = None;
        // When to look again for leases that expired unsettled: just after the ack wait of the
        // earliest claim not yet checked.
        let mut lease_check: Option<tokio::time::Instant> = None;
        let doorbells = self.backend.doorbells();
        let (topic_bell, group_bell) =
            (doorbells.topic_bell(&self.options.topic), doorbells.group_bell(&self.options.topic, &self.options.group));
        loop {
            // Wait for room: at least one delivery may be outstanding. `biased`: once the
            // subscription is gone, never claim again (a claim nobody receives would stay leased
            // until its ack wait expires).
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                () = self.tx.closed() => return,
                permit = self.in_flight.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            if self.stopped() {
                return;
            }
            // While other deliveries are in flight, give them a moment (at most `BATCH_WAIT`)
            // to free a quarter of the window, so a busy subscription claims in batches
            // instead of once per ack. The permits are only counted here, not kept.
            let batch = (self.options.max_in_flight / 4).clamp(1, 1 << 16);
            if self.in_flight.available_permits() + 1 < batch {
                let room = self.in_flight.acquire_many(u32::try_from(batch - 1).unwrap_or(u32::MAX));
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    () = self.tx.closed() => return,
                    _ = tokio::time::timeout(BATCH_WAIT, room) => {}
                }
            }
            let room = 1 + self.in_flight.available_permits();
            let changed = self.backend.changed().notified();
            let (published, settled) = (topic_bell.notified(), group_bell.notified());
            tokio::pin!(changed, published, settled);
            changed.as_mut().enable();
            published.as_mut().enable();
            settled.as_mut().enable();

            self.record_lag(&mut lag_recorded).await;
            let claimed = match self.backend.claim(&self.options.topic, &self.options.group, room, &self.policy).await {
                Ok(c) => {
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures += 1;
                    let backoff = CLAIM_BACKOFF.saturating_mul(failures).min(MAX_CLAIM_BACKOFF);
                    tracing::warn!(topic = %self.options.topic, group = %self.options.group, error = %e, "claim failed; retrying");
                    drop(first);
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => continue,
                    }
                }
            };

            if claimed.is_empty() {
                drop(first);
                // Sleep until notified, until the earliest lease handed out may have expired
                // (its holder may be gone), or for the fallback poll, whichever comes first.
                let now = tokio::time::Instant::now();
                let wake_at = match lease_check.take() {
                    Some(at) if at > now => {
                        lease_check = Some(at);
                        at.min(now + self.backend.poll_interval())
                    }
                    _ => now + self.backend.poll_interval(),
                };
                let woken = tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    () = self.tx.closed() => return,
                    () = &mut changed => true,
                    () = &mut published => true,
                    () = &mut settled => true,
                    () = tokio::time::sleep_until(wake_at) => false,
                };
                let linger = self.backend.claim_linger();
                let busy = self.in_flight.available_permits() < self.options.max_in_flight;
                if woken && busy && !linger.is_zero() {
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(linger) => {}
                    }
                }
                continue;
            }

            let expiry = tokio::time::Instant::now() + self.policy.ack_wait + Duration::from_millis(1);
            lease_check = Some(lease_check.map_or(expiry, |at| at.min(expiry)));
            let mut permits =
                std::iter::once(first).chain(std::iter::from_fn(|| self.in_flight.clone().try_acquire_owned().ok()));
            let mut claimed = claimed.into_iter();
            while let Some(claim) = claimed.next() {
                // `room` permits were available when claiming and only this task takes them.
                let Some(permit) = permits.next() else {
                    tracing::error!("in-flight accounting broken; releasing the claim");
                    self.release(claim).await;
                    continue;
                };
                if let Err(unsent) = self.tx.send(self.delivery(claim, permit)).await {
                    // The subscription is gone: hand back this claim and the rest of the batch,
                    // uncounted, rather than leave them leased until their ack wait expires.
                    unsent.0.return_unseen();
                    for rest in claimed {
                        self.release(rest).await;
                    }
                    return;
                }
            }
        }
    }

    /// Records the group's lag, at most once a second.
    async fn record_lag(&self, last: &mut Option<std::time::Instant>) {
        if last.is_some_and(|t| t.elapsed() < LAG_INTERVAL) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let (topic, group) = (&self.options.topic, &self.options.group);
        match self.backend.lag(topic, group).await {
            Ok(Some(lag)) => observability::record_consumer_lag(topic, group, lag),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading the consumer lag failed"),
        }
    }

    async fn release(&self, claim: Claimed) {
        let (topic, group) = (&self.options.topic, &self.options.group);
        if let Err(e) = self.backend.release(topic, group, claim.position, claim.attempt).await {
            tracing::debug!(error = %e, "releasing a claim failed; it is redelivered after its ack wait");
        }
    }

    fn delivery(&self, claim: Claimed, permit: OwnedSemaphorePermit) -> Delivery {
        let settle = QueueSettle {
            backend: self.backend.clone(),
            acks: self.acks.clone(),
            topic: self.options.topic.clone(),
            group: self.options.group.clone(),
            position: claim.position,
            attempt: claim.attempt,
            policy: self.policy.clone(),
            tasks: self.tasks.clone(),
            stop: self.stop.clone(),
            settled: false,
            unseen: false,
            _permit: permit,
        };
        Delivery::new(claim.message, claim.attempt, Some(claim.position), Box::new(settle))
    }
}

/// Acks waiting to be written, and whether a task is writing a batch now. Acks that arrive
/// while a batch is being written wait and go together in the next one, so under load a batch
/// of acks costs one backend write ([`QueueBackend::ack_many`]) instead of one each, while an
/// ack alone is written at once. One queue per broker: a batch spans its groups and topics.
#[derive(Debug, Default)]
struct AckQueue {
    state: Mutex<AckQueueState>,
}

#[derive(Debug, Default)]
struct AckQueueState {
    queued: Vec<QueuedAck>,
    /// A [`write_acks`] task is running; it takes everything queued before it ends.
    writing: bool,
}

#[derive(Debug)]
struct QueuedAck {
    topic: String,
    group: String,
    position: u64,
    attempt: u32,
    policy: GroupPolicy,
    done: oneshot::Sender<Result<(), PubSubError>>,
}

impl AckQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, AckQueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an ack; true when no task is writing, so the caller must start one.
    fn push(&self, ack: QueuedAck) -> bool {
        let mut state = self.state();
        state.queued.push(ack);
        !std::mem::replace(&mut state.writing, true)
    }

    /// Everything queued, or `None` (the writing task ends) when nothing is.
    fn next_batch(&self) -> Option<Vec<QueuedAck>> {
        let mut state = self.state();
        if state.queued.is_empty() {
            state.writing = false;
            None
        } else {
            Some(std::mem::take(&mut state.queued))
        }
    }
}

/// Writes the queued acks, batch after batch, until none are left.
async fn write_acks<B: QueueBackend>(backend: Arc<B>, queue: Arc<AckQueue>) {
    // If this task dies (a panicking backend, a runtime shutting down), the next ack must still
    // start a writer, and those queued must not wait forever.
    struct Stopped(Arc<AckQueue>, bool);
    impl Drop for Stopped {
        fn drop(&mut self) {
            if self.1 {
                return;
            }
            let orphans = {
                let mut state = self.0.state();
                state.writing = false;
                std::mem::take(&mut state.queued)
            };
            for ack in orphans {
                let _ = ack.done.send(Err(PubSubError::Backend("the ack writer stopped".into())));
            }
        }
    }
    let mut stopped = Stopped(queue.clone(), false);
    while let Some(batch) = queue.next_batch() {
        let acks: Vec<Ack<'_>> = batch
            .iter()
            .map(|a| Ack {
                topic: &a.topic,
                group: &a.group,
                position: a.position,
                attempt: a.attempt,
                policy: &a.policy,
            })
            .collect();
        let outcome = backend.ack_many(&acks).await;
        drop(acks);
        match outcome {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                for (ack, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = ack.done.send(outcome);
                }
            }
            Ok(outcomes) => {
                let e = format!("ack_many answered {} acks with {} outcomes", batch.len(), outcomes.len());
                tracing::error!("{e}");
                for ack in batch {
                    let _ = ack.done.send(Err(PubSubError::Backend(e.clone().into())));
                }
            }
            Err(e) => {
                for ack in batch {
                    let _ = ack.done.send(Err(e.for_each_of_many()));
                }
            }
        }
    }
    stopped.1 = true;
}

/// Settles one claimed delivery; holds its in-flight permit until settled or dropped. Dropped
/// unsettled (a consumer that went away, a subscription dropped with deliveries buffered), it
/// hands the message back at once instead of leaving it leased until the ack wait expires.
struct QueueSettle<B: QueueBackend> {
    backend: Arc<B>,
    acks: Arc<AckQueue>,
    topic: String,
    group: String,
    position: u64,
    attempt: u32,
    policy: GroupPolicy,
    /// The broker's tracker, so the release on drop is a tracked task, not a detached one.
    tasks: TaskTracker,
    /// The subscription's stop signal: ends the wake-up timer of a delayed nack.
    stop: CancellationToken,
    settled: bool,
    /// Set by `return_unseen`: undo the attempt instead of counting it.
    unseen: bool,
    _permit: OwnedSemaphorePermit,
}

impl<B: QueueBackend> Drop for QueueSettle<B> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Without a runtime (process exiting), the ack wait takes care of it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (backend, topic, group, policy) =
            (self.backend.clone(), self.topic.clone(), self.group.clone(), self.policy.clone());
        let (position, attempt, unseen) = (self.position, self.attempt, self.unseen);
        self.tasks.spawn_on(
            async move {
                let result = if unseen {
                    backend.release(&topic, &group, position, attempt).await
                } else {
                    let reason = Some("the consumer went away without settling".to_owned());
                    let settlement = Settlement::Nack { delay: Duration::ZERO, reason };
                    backend.settle(&topic, &group, position, attempt, settlement, &policy).await
                };
                if result.is_ok() {
                    backend.doorbells().ring_group(&topic, &group);
                }
            },
            &runtime,
        );
    }
}

impl<B: QueueBackend> QueueSettle<B> {
    /// Acks through the broker's [`AckQueue`].
    async fn ack(&self) -> Result<(), PubSubError> {
        let (done, outcome) = oneshot::channel();
        let ack = QueuedAck {
            topic: self.topic.clone(),
            group: self.group.clone(),
            position: self.position,
            attempt: self.attempt,
            policy: self.policy.clone(),
            done,
        };
        if self.acks.push(ack) {
            self.tasks.spawn(write_acks(self.backend.clone(), self.acks.clone()));
        }
        outcome.await.unwrap_or_else(|_| Err(PubSubError::Backend("the ack writer stopped".into())))
    }
}

#[async_trait]
impl<B: QueueBackend> Settle for QueueSettle<B> {
    async fn settle(mut self: Box<Self>, settlement: Settlement) -> Result<(), PubSubError> {
        self.settled = true;
        let delay = match &settlement {
            Settlement::Nack { delay, .. } => *delay,
            _ => Duration::ZERO,
        };
        if matches!(settlement, Settlement::Ack) {
            self.ack().await?;
        } else {
            self.backend
                .settle(&self.topic, &self.group, self.position, self.attempt, settlement, &self.policy)
                .await?;
        }
        if delay.is_zero() {
            // Settling may unblock the next message of this key, for any consumer of the group.
            self.backend.doorbells().ring_group(&self.topic, &self.group);
        } else {
            // Redelivered when the delay has passed: wake the group's subscriptions then,
            // rather than at their next (slow) fallback poll.
            let (backend, stop) = (self.backend.clone(), self.stop.clone());
            let (topic, group) = (self.topic.clone(), self.group.clone());
            self.tasks.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(delay) => backend.doorbells().ring_group(&topic, &group),
                }
            });
        }
        Ok(())
    }

    fn return_unseen(mut self: Box<Self>) {
        self.unseen = true; // `Drop` releases it
    }
}
