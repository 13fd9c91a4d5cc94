//! Subscribing: a subscription is a member of a Kafka consumer group. One task per subscription
//! reads the partitions Kafka assigns to it and hands their messages out as [`Delivery`] values
//! through a bounded channel, keeping the order of each key; offsets are committed only up to
//! the lowest unsettled message of each partition.
//!
//! Kafka itself has no per-message acknowledgement, redelivery or delivery count: a group has
//! one committed offset per partition. The adapter keeps the rest in the member that owns the
//! partition: which fetched messages are unsettled, leased or waiting out a nack delay, and how
//! often each was delivered. See [`CAPABILITIES`] for what follows.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use herald::message::{Message, MessageId, Metadata};
use herald::observability::EarlierMessages;
use herald::pubsub::{
    Capabilities, Delivery, PubSubError, Settle, Settlement, StartFrom, SubscribeOptions, Subscriber, Subscription,
};
use herald::queue::{dead_letter_for, expired_reason, last_nack_reason};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Inner, KafkaBroker, MAX_BATCH_RECORDS, partition_and_offset, position};
use crate::error::KafkaError;
use crate::publisher::{HEADER_ID, HEADER_METADATA, HEADER_NAME};

/// What Kafka can promise through this adapter.
///
/// * `durable`, `groups`: topics keep their records and a group is a Kafka consumer group; its
///   members (subscriptions, in any process) share the topic's partitions.
/// * `per_key_order`: a message's key picks its partition (murmur2, as every Kafka client), and
///   a partition has one owner in the group. The owner hands out at most one unsettled message
///   per key; later messages of the key wait (a nacked one comes back before them), other keys
///   of the partition go on concurrently. When a rebalance takes a partition away, the owner
///   first waits (bounded by the ack wait, at most 10 s) for its deliveries of the partition
///   to be settled, then commits, so the next owner starts after them.
/// * `delayed_nack`: kept by the owner in memory: a nacked message is handed out again by the
///   same member after its delay, before later messages of its key.
/// * `ack_wait_redelivery` is **false**, although the owner does redeliver a delivery not
///   settled within `ack_wait` (and refuses a late settlement with `LeaseLost`): Kafka keeps no
///   delivery count, only a committed offset per partition (commit metadata could carry one,
///   but tansu does not return it), so the count lives in the member. A message whose member
///   goes away holding it (dropped, crashed, rebalanced) starts again at attempt 1 with the
///   next owner, and a message that crashes every member it reaches is never dead-lettered.
///   The in-member part is checked by the suite's ack-wait scenarios run with this capability
///   forced (`tests/conformance.rs`, module `in_member_ack_wait`).
/// * `dead_letters`: after `max_deliveries` deliveries (counted by the member, see above), or
///   on `dead_letter`, the adapter publishes the dead letter, then settles the original.
/// * `start_from_beginning`, `start_from_position`: a new group (one without committed offsets)
///   has its start offsets committed before the subscription joins it. A position is a
///   partition and an offset (see [`Delivery::position`]): that partition starts at the offset,
///   the others at their beginning.
pub const CAPABILITIES: Capabilities = Capabilities {
    durable: true,
    groups: true,
    per_key_order: true,
    delayed_nack: true,
    ack_wait_redelivery: false,
    dead_letters: true,
    start_from_beginning: true,
    start_from_position: true,
};

/// Fetched-but-unsettled messages a partition may hold before its fetching is paused.
const PARTITION_BUFFER: usize = 1024;

/// The longest a rebalance waits for the deliveries of a revoked partition to be settled.
const REVOKE_WAIT_LIMIT: Duration = Duration::from_secs(10);

/// How long the subscription's task waits after a failed fetch before trying again.
const FETCH_RETRY: Duration = Duration::from_millis(200);

#[async_trait]
impl Subscriber for KafkaBroker {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, PubSubError> {
        options.validate()?;
        if self.is_closed() {
            return Err(PubSubError::Closed);
        }
        let inner = self.inner.clone();
        let kafka_topic = inner.ensure_topic(&options.topic).await?;
        let group_id = inner.group_id(&options.topic, &options.group);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            assigned: Notify::new(),
            wake: Notify::new(),
            dead_letter_topic: options.effective_dead_letter_topic(),
            kafka_topic: kafka_topic.clone(),
            broker: inner.clone(),
            options: options.clone(),
        });
        let config = &inner.config;
        let consumer: StreamConsumer<MemberContext> = config
            .client_config()
            .set("group.id", &group_id)
            // Offsets are stored by the adapter (the lowest unsettled offset of each partition)
            // and committed by librdkafka every interval, on revocation and on close.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", config.commit_interval_ms.to_string())
            // A new group's offsets are committed before it is joined (see `start_new_group`);
            // this only applies if they were deleted meanwhile.
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            // Members learn of a rebalance (a member joined or left) at their next heartbeat.
            .set("heartbeat.interval.ms", (config.session_timeout_ms / 4).clamp(100, 1_000).to_string())
            // The task polls all the time, except while a rebalance waits for deliveries
            // (at most `REVOKE_WAIT_LIMIT`); this is also how long a rebalance waits for a
            // member to rejoin.
            .set("max.poll.interval.ms", (config.session_timeout_ms * 2).to_string())
            .set("fetch.wait.max.ms", "100")
            .set("allow.auto.create.topics", "false")
            .create_with_context(MemberContext { shared: shared.clone() })
            .map_err(|e| KafkaError::request(format!("creating a consumer of group {group_id}"), e))?;
        let consumer = Arc::new(consumer);

        let start = options.start;
        let timeout = config.request_timeout();
        let starter = consumer.clone();
        let topic_for_start = kafka_topic.clone();
        let started = tokio::task::spawn_blocking(move || start_new_group(&starter, &topic_for_start, start, timeout))
            .await
            .map_err(|e| PubSubError::backend(std::io::Error::other(e.to_string())))?
            .map_err(|e| KafkaError::request(format!("starting group {group_id} on {kafka_topic}"), e))?;
        if let (StartFrom::Latest, Some(earlier)) = (start, started) {
            herald::observability::warn_new_group_skips_earlier_messages(
                &options.topic,
                &options.group,
                EarlierMessages::Exactly(earlier),
            );
        }
        consumer
            .subscribe(&[kafka_topic.as_str()])
            .map_err(|e| KafkaError::request(format!("joining group {group_id}"), e))?;

        let (tx, rx) = mpsc::channel(options.max_in_flight);
        let stop = inner.shutdown.child_token();
        sample_lag(&inner, &consumer, &kafka_topic, &options, stop.clone());
        inner.tasks.spawn(run(consumer, shared.clone(), tx, stop.clone()));
        // Return once the member has its share of the partitions (bounded): a member that
        // returned at once would look subscribed while the group's other members, until the
        // rebalance, still hold every partition.
        let deadline = Instant::now() + Duration::from_millis(config.session_timeout_ms) + REVOKE_WAIT_LIMIT;
        loop {
            let assigned = shared.assigned.notified();
            if shared.is_assigned() || stop.is_cancelled() {
                break;
            }
            if tokio::time::timeout_at(deadline, assigned).await.is_err() {
                tracing::warn!(topic = %options.topic, group = %options.group, "no partitions assigned yet; the subscription goes on waiting for them");
                break;
            }
        }
        Ok(Subscription::new(rx, Some(stop.drop_guard())))
    }

    async fn close(&self) -> Result<(), PubSubError> {
        KafkaBroker::close(self).await
    }
}

/// Where a group without committed offsets starts: commits the start offsets of every partition
/// of `topic` (so the group exists from now on and a member joining later starts there) and
/// returns how many earlier messages the start skips. `None` when the group has committed
/// offsets already: it resumes from them and `start` does not apply. Blocking.
fn start_new_group(
    consumer: &StreamConsumer<MemberContext>,
    topic: &str,
    start: StartFrom,
    timeout: Duration,
) -> Result<Option<u64>, rdkafka::error::KafkaError> {
    let partitions = partitions_of(consumer, topic, timeout)?;
    let mut all = TopicPartitionList::new();
    for &p in &partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(all, timeout)?;
    if committed.elements().iter().any(|e| matches!(e.offset(), Offset::Offset(_))) {
        return Ok(None);
    }
    let mut offsets = TopicPartitionList::new();
    let mut skipped = 0u64;
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let offset = match start {
            StartFrom::Beginning => low,
            StartFrom::Latest => {
                skipped += u64::try_from(high - low).unwrap_or(0);
                high
            }
            StartFrom::Position(at) => match partition_and_offset(at) {
                (partition, offset) if partition == p => offset.clamp(low, high),
                _ => low,
            },
        };
        offsets.add_partition_offset(topic, p, Offset::Offset(offset))?;
    }
    consumer.commit(&offsets, CommitMode::Sync)?;
    Ok(Some(skipped))
}

/// The partitions of `topic`, waiting (bounded) for a topic created a moment ago to show them.
fn partitions_of(
    consumer: &StreamConsumer<MemberContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !partitions.is_empty() {
            return Ok(partitions);
        }
        if std::time::Instant::now() >= deadline {
            return Err(rdkafka::error::KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How often the lag sampler asks again which partitions the topic has (partitions can be
/// added to a topic; each sample in between reuses the list).
const LAG_PARTITIONS_REFRESH: Duration = Duration::from_secs(60);

/// Samples the consumer lag of the subscription's group into `herald_consumer_lag` once per
/// [`CONSUMER_LAG_INTERVAL`](herald::observability::CONSUMER_LAG_INTERVAL), until `stop` is
/// cancelled (see [`LagProbe::sample`]), through the member's own consumer (the group's
/// committed offsets are read through a client of the group), off the runtime's threads.
fn sample_lag(
    inner: &Arc<Inner>,
    consumer: &Arc<StreamConsumer<MemberContext>>,
    kafka_topic: &str,
    options: &SubscribeOptions,
    stop: CancellationToken,
) {
    let probe = Arc::new(LagProbe {
        // Weak: the subscription's task closes the consumer (a blocking call) when it ends;
        // the sampler must not keep it open, nor drop the last reference on the runtime.
        consumer: Arc::downgrade(consumer),
        topic: kafka_topic.to_owned(),
        timeout: inner.config.request_timeout(),
        partitions: Mutex::new(None),
    });
    let sample = move || {
        let probe = probe.clone();
        async move {
            let what = || format!("sampling the consumer lag of {}", probe.topic);
            let probe_task = probe.clone();
            tokio::task::spawn_blocking(move || probe_task.sample())
                .await
                .map_err(|_| KafkaError::request(what(), rdkafka::error::KafkaError::Canceled))?
                .map_err(|e| KafkaError::request(what(), e))
        }
    };
    let (topic, group) = (options.topic.clone(), options.group.clone());
    inner.tasks.spawn(herald::observability::sample_consumer_lag(topic, group, stop, sample));
}

/// Reads a group's consumer lag on one Kafka topic.
struct LagProbe {
    consumer: std::sync::Weak<StreamConsumer<MemberContext>>,
    topic: String,
    timeout: Duration,
    /// The topic's partitions, and when they were read.
    partitions: Mutex<Option<(Vec<i32>, std::time::Instant)>>,
}

impl LagProbe {
    /// The group's consumer lag: over the topic's partitions, the high watermark (the offset
    /// the next record will get) less the group's committed offset (less the low watermark
    /// where the group has committed none), summed — the messages the group has not settled,
    /// published and not delivered yet, or delivered and not acknowledged yet. Three requests
    /// (committed offsets; end offsets, one `ListOffsets` per partition leader; start offsets
    /// only for partitions without a committed offset) and, once a minute, the topic's metadata.
    ///
    /// It counts what Kafka knows, so it is coarser than the lag of the brokers that acknowledge
    /// each message: a partition's committed offset is its owner's lowest unsettled offset,
    /// committed every `commit_interval_ms`, so messages acked after an unsettled one still
    /// count (until it is settled), and acks count once committed.
    ///
    /// On tansu (0.6), whose `ListOffsets` answers short of the end of a partition whose last
    /// record batch holds several records, the end of each partition this member owns is what
    /// it has fetched (it fetches all the time, unless the partition's buffer is full); the
    /// partitions other members own may be counted short.
    ///
    /// `None` when the member is gone or Kafka did not answer for every partition. Blocking.
    fn sample(&self) -> Result<Option<u64>, rdkafka::error::KafkaError> {
        let Some(consumer) = self.consumer.upgrade() else { return Ok(None) };
        let partitions = self.partitions(&consumer)?;
        if partitions.is_empty() {
            return Ok(None);
        }
        let list = |offset: Offset| -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition_offset(&self.topic, p, offset)?;
            }
            Ok(tpl)
        };
        let committed = offsets(&consumer.committed_offsets(list(Offset::Invalid)?, self.timeout)?);
        // `offsets_for_times` with the special timestamp "latest" (`Offset::End`): the end
        // offset of every partition, in one request per partition leader (`fetch_watermarks`
        // asks twice per partition). No less than what this member has fetched of its own
        // partitions: tansu (0.6) answers the base offset of the partition's last record batch
        // plus one, short of the end when that batch holds several records.
        let mut high = offsets(&consumer.offsets_for_times(list(Offset::End)?, self.timeout)?);
        for (p, fetched) in consumer.context().shared.fetched_ends() {
            high.entry(p).and_modify(|h| *h = (*h).max(fetched));
        }
        let uncommitted: Vec<i32> = partitions.iter().copied().filter(|p| !committed.contains_key(p)).collect();
        let low = if uncommitted.is_empty() {
            BTreeMap::new()
        } else {
            let mut tpl = TopicPartitionList::new();
            for &p in &uncommitted {
                tpl.add_partition_offset(&self.topic, p, Offset::Beginning)?;
            }
            offsets(&consumer.offsets_for_times(tpl, self.timeout)?)
        };
        let mut lag = 0u64;
        for p in &partitions {
            let (Some(high), Some(from)) = (high.get(p), committed.get(p).or_else(|| low.get(p))) else {
                return Ok(None);
            };
            lag = lag.saturating_add(u64::try_from(high - from).unwrap_or(0));
        }
        Ok(Some(lag))
    }

    /// The topic's partitions, read again once [`LAG_PARTITIONS_REFRESH`] has passed.
    fn partitions(&self, consumer: &StreamConsumer<MemberContext>) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
        let mut known = self.partitions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((partitions, at)) = &*known
            && at.elapsed() < LAG_PARTITIONS_REFRESH
        {
            return Ok(partitions.clone());
        }
        let partitions = partitions_of(consumer, &self.topic, self.timeout)?;
        *known = Some((partitions.clone(), std::time::Instant::now()));
        Ok(partitions)
    }
}

/// The offsets of a partition list Kafka answered, by partition: those without an error and
/// with an actual offset.
fn offsets(tpl: &TopicPartitionList) -> BTreeMap<i32, i64> {
    tpl.elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) if offset >= 0 => Some((e.partition(), offset)),
            _ => None,
        })
        .collect()
}

/// What a subscription's task, its deliveries' settlements and its rebalance callbacks share.
struct Shared {
    state: Mutex<State>,
    /// Rung when the member has been assigned its partitions (`subscribe` waits for it).
    assigned: Notify,
    /// Rung when a settlement may have made a message deliverable (or an offset committable).
    wake: Notify,
    options: SubscribeOptions,
    dead_letter_topic: String,
    kafka_topic: String,
    broker: Arc<Inner>,
}

/// The member's view of its partitions.
#[derive(Default)]
struct State {
    /// The assigned partitions that have delivered something, by partition number.
    partitions: BTreeMap<i32, PartitionState>,
    /// Deliveries handed out (or being dead-lettered) and not settled: at most `max_in_flight`.
    in_flight: usize,
    /// The last lease number given; each delivery gets a new one, so a stale settlement is
    /// recognised.
    last_lease: u64,
    /// Set when the subscription ends: nothing is handed out any more.
    closing: bool,
    /// Whether the member has had an assignment (possibly empty: more members than partitions).
    assigned: bool,
    /// The committed offset of each assigned partition: fetching starts up to
    /// [`MAX_BATCH_RECORDS`] before it (see there), and records before it are skipped.
    resume_from: BTreeMap<i32, i64>,
}

/// One partition's fetched, unsettled messages.
struct PartitionState {
    /// By offset: the lowest is the offset to commit.
    entries: BTreeMap<i64, Entry>,
    /// One past the last offset fetched: what to commit when nothing is unsettled.
    next_offset: i64,
    /// The offset last stored for commit.
    stored: i64,
    /// Whether fetching is paused because `entries` is full.
    paused: bool,
}

impl PartitionState {
    /// The offset the group may commit: the lowest unsettled one, never past it.
    fn commit_offset(&self) -> i64 {
        self.entries.keys().next().copied().unwrap_or(self.next_offset)
    }
}

struct Entry {
    message: Message,
    /// Deliveries so far.
    attempts: u32,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// To be handed out (again) once `ready_at` has passed (`None`: at once).
    Waiting { ready_at: Option<Instant> },
    /// Handed out under `lease` until `deadline` (the ack wait).
    Leased { lease: u64, deadline: Instant },
    /// Its settlement is being carried out (a dead letter is being published).
    Settling { lease: u64 },
}

impl Phase {
    fn holds(self, lease: u64) -> bool {
        matches!(self, Self::Leased { lease: l, .. } | Self::Settling { lease: l } if l == lease)
    }

    fn is_out(self) -> bool {
        !matches!(self, Self::Waiting { .. })
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Records a fetched message.
    fn receive(&self, m: &BorrowedMessage<'_>) {
        let (partition, offset) = (m.partition(), m.offset());
        let decoded = decode(m, &self.options.topic);
        let mut state = lock(&self.state);
        if state.resume_from.get(&partition).is_some_and(|&from| offset < from) {
            return; // before the committed offset: fetched only to reach it
        }
        let ps = state.partitions.entry(partition).or_insert_with(|| PartitionState {
            entries: BTreeMap::new(),
            next_offset: offset,
            stored: offset,
            paused: false,
        });
        if offset < ps.next_offset {
            return; // fetched again after a pause: already here
        }
        ps.next_offset = offset + 1;
        match decoded {
            Ok(message) => {
                ps.entries.insert(offset, Entry { message, attempts: 0, phase: Phase::Waiting { ready_at: None } });
            }
            Err(why) => {
                tracing::error!(topic = %self.kafka_topic, partition, offset, %why, "not a Herald message; skipped");
            }
        }
    }

    /// Takes back expired leases, hands out what may go, and returns the deliveries to send,
    /// the expired messages to dead-letter, and when to look again.
    fn dispatch(self: &Arc<Self>) -> Dispatched {
        let now = Instant::now();
        let (max_in_flight, ack_wait, max_deliveries) =
            (self.options.max_in_flight, self.options.ack_wait, self.options.max_deliveries);
        let mut state = lock(&self.state);
        let state = &mut *state;
        let mut next_due: Option<Instant> = None;
        let mut due = |at: Instant| next_due = Some(next_due.map_or(at, |d: Instant| d.min(at)));
        // Leases whose ack wait passed come back to the queue, in place.
        for ps in state.partitions.values_mut() {
            for entry in ps.entries.values_mut() {
                match entry.phase {
                    Phase::Leased { deadline, .. } if deadline <= now => {
                        entry.phase = Phase::Waiting { ready_at: None };
                        state.in_flight -= 1;
                    }
                    Phase::Leased { deadline, .. } => due(deadline),
                    Phase::Waiting { ready_at: Some(at) } if at > now => due(at),
                    _ => {}
                }
            }
        }
        let mut deliveries = Vec::new();
        let mut expired = Vec::new();
        if state.closing {
            return Dispatched { deliveries, expired, next_due };
        }
        for (&partition, ps) in &mut state.partitions {
            if state.in_flight >= max_in_flight {
                break;
            }
            // Offsets to hand out: the first unsettled message of each key (and any message
            // without a key), once its nack delay has passed.
            let mut chosen = Vec::new();
            let mut blocked: HashSet<&str> = HashSet::new();
            for (&offset, entry) in &ps.entries {
                if state.in_flight + chosen.len() >= max_in_flight {
                    break;
                }
                let key = entry.message.key.as_str();
                let free = key.is_empty() || !blocked.contains(key);
                let ready = match entry.phase {
                    Phase::Waiting { ready_at } => ready_at.is_none_or(|at| at <= now),
                    _ => false,
                };
                if free && ready {
                    chosen.push(offset);
                }
                if !key.is_empty() {
                    blocked.insert(key);
                }
            }
            for offset in chosen {
                let Some(entry) = ps.entries.get_mut(&offset) else { continue };
                state.last_lease += 1;
                let lease = state.last_lease;
                state.in_flight += 1;
                if entry.attempts >= max_deliveries {
                    // Its last allowed lease expired: this turn exists only to dead-letter it.
                    entry.phase = Phase::Settling { lease };
                    let (message, attempts) = (entry.message.clone(), entry.attempts);
                    expired.push(Expired { partition, offset, lease, message, attempts });
                    continue;
                }
                entry.attempts += 1;
                let deadline = now + ack_wait;
                due(deadline);
                entry.phase = Phase::Leased { lease, deadline };
                let settle = KafkaSettle { shared: self.clone(), partition, offset, lease, attempt: entry.attempts };
                deliveries.push(Delivery::new(
                    entry.message.clone(),
                    entry.attempts,
                    Some(position(partition, offset)),
                    Box::new(settle),
                ));
            }
        }
        Dispatched { deliveries, expired, next_due }
    }

    /// Ends a settlement: the message leaves its partition (acked or dead-lettered), or on
    /// `retry_after` goes back to the queue. False when the lease was lost meanwhile.
    fn finish(&self, partition: i32, offset: i64, lease: u64, outcome: Outcome) -> bool {
        let mut state = lock(&self.state);
        let state = &mut *state;
        let Some(ps) = state.partitions.get_mut(&partition) else { return false };
        let Some(entry) = ps.entries.get_mut(&offset) else { return false };
        if !entry.phase.holds(lease) {
            return false;
        }
        match outcome {
            Outcome::Done => {
                ps.entries.remove(&offset);
            }
            Outcome::Again { ready_at } => entry.phase = Phase::Waiting { ready_at },
            Outcome::Unseen => {
                entry.attempts = entry.attempts.saturating_sub(1);
                entry.phase = Phase::Waiting { ready_at: None };
            }
        }
        state.in_flight -= 1;
        self.wake.notify_one();
        true
    }

    /// Stores the commit offset of every partition that moved, and pauses or resumes fetching
    /// by how full each partition is.
    fn store_offsets(&self, consumer: &impl Consumer<MemberContext>) {
        let mut state = lock(&self.state);
        for (&partition, ps) in &mut state.partitions {
            let offset = ps.commit_offset();
            if offset > ps.stored {
                // `offsets_store` takes the offset to resume from as it is (`store_offset` would
                // add one: it takes the last message handled).
                let mut tpl = TopicPartitionList::new();
                let stored = tpl
                    .add_partition_offset(&self.kafka_topic, partition, Offset::Offset(offset))
                    .and_then(|()| consumer.store_offsets(&tpl));
                match stored {
                    Ok(()) => ps.stored = offset,
                    Err(e) => tracing::debug!(error = %e, partition, offset, "storing an offset (partition revoked?)"),
                }
            }
            let full = ps.entries.len() >= PARTITION_BUFFER;
            if full != ps.paused && (full || ps.entries.len() <= PARTITION_BUFFER / 2) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.kafka_topic, partition);
                let switched = if full {
                    consumer.pause(&tpl)
                } else {
                    // Fetching goes on from where it stopped: from a batch boundary, see
                    // `MAX_BATCH_RECORDS` (what is fetched twice is skipped in `receive`).
                    let from = Offset::Offset((ps.next_offset - MAX_BATCH_RECORDS).max(0));
                    consumer
                        .resume(&tpl)
                        .and_then(|()| consumer.seek(&self.kafka_topic, partition, from, Duration::from_secs(1)))
                };
                match switched {
                    Ok(()) => ps.paused = full,
                    Err(e) => tracing::debug!(error = %e, partition, "pausing or resuming a partition"),
                }
            }
        }
    }

    /// Gives up `partitions` (revoked, or the subscription ends): stores their commit offsets
    /// and forgets them; their deliveries' settlements are refused from now on.
    fn release(&self, consumer: &impl Consumer<MemberContext>, partitions: &[i32]) {
        self.store_offsets(consumer);
        let mut state = lock(&self.state);
        for p in partitions {
            state.resume_from.remove(p);
            if let Some(ps) = state.partitions.remove(p) {
                let out = ps.entries.values().filter(|e| e.phase.is_out()).count();
                state.in_flight -= out;
            }
        }
    }

    /// One past the last offset fetched, for each partition this member owns and has fetched
    /// from.
    fn fetched_ends(&self) -> Vec<(i32, i64)> {
        lock(&self.state).partitions.iter().map(|(&p, ps)| (p, ps.next_offset)).collect()
    }

    fn mark_assigned(&self) {
        lock(&self.state).assigned = true;
        self.assigned.notify_waiters();
    }

    fn is_assigned(&self) -> bool {
        lock(&self.state).assigned
    }

    /// Whether any delivery of `partitions` is still out.
    fn holds_any(&self, partitions: &[i32]) -> bool {
        let state = lock(&self.state);
        partitions
            .iter()
            .filter_map(|p| state.partitions.get(p))
            .any(|ps| ps.entries.values().any(|e| e.phase.is_out()))
    }
}

/// What [`Shared::dispatch`] decided.
struct Dispatched {
    /// To send to the subscription.
    deliveries: Vec<Delivery>,
    /// Messages whose last lease expired, to dead-letter.
    expired: Vec<Expired>,
    /// When a lease expires or a nack delay ends next.
    next_due: Option<Instant>,
}

/// A message out of deliveries, claimed (`Settling`) under `lease` for its dead letter.
struct Expired {
    partition: i32,
    offset: i64,
    lease: u64,
    message: Message,
    attempts: u32,
}

/// How a settlement ends for the partition.
enum Outcome {
    /// Acked or dead-lettered: the message leaves.
    Done,
    /// Nacked: handed out again after `ready_at`.
    Again { ready_at: Option<Instant> },
    /// Never seen by a handler: handed out again at once, the attempt not counted.
    Unseen,
}

/// The subscription's task: fetches, hands out, expires leases and stores offsets until `stop`;
/// then commits and leaves the group.
async fn run(
    consumer: Arc<StreamConsumer<MemberContext>>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Delivery>,
    stop: CancellationToken,
) {
    let mut next_due: Option<Instant> = None;
    loop {
        let timer = async {
            match next_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = shared.wake.notified() => {}
            () = timer => {}
            received = consumer.recv() => match received {
                Ok(message) => shared.receive(&message),
                Err(e) => {
                    tracing::warn!(error = %e, topic = %shared.kafka_topic, group = %shared.options.group, "fetching from Kafka");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(FETCH_RETRY) => {}
                    }
                }
            },
        }
        let Dispatched { deliveries, expired, next_due: due } = shared.dispatch();
        next_due = due;
        for delivery in deliveries {
            if let Err(e) = tx.try_send(delivery) {
                // The subscription is gone (or, which the in-flight limit rules out, full).
                let delivery = match e {
                    mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
                };
                delivery.return_unseen();
            }
        }
        for Expired { partition, offset, lease, message, attempts } in expired {
            let shared = shared.clone();
            shared.broker.tasks.clone().spawn(async move {
                let reason = expired_reason(attempts);
                let outcome = match shared.publish_dead_letter(&message, attempts, &reason).await {
                    Ok(()) => Outcome::Done,
                    Err(e) => {
                        tracing::error!(error = %e, id = %message.id, group = %shared.options.group, "dead-lettering an expired message; it is handed out again");
                        Outcome::Again { ready_at: Some(Instant::now() + FETCH_RETRY) }
                    }
                };
                shared.finish(partition, offset, lease, outcome);
            });
        }
        shared.store_offsets(consumer.as_ref());
    }
    lock(&shared.state).closing = true;
    drop(tx);
    // Commit what was settled and leave the group now, so the partitions go to the group's
    // other members at once. Blocking calls: off the runtime's threads.
    let closed = tokio::task::spawn_blocking(move || {
        let partitions: Vec<i32> = lock(&shared.state).partitions.keys().copied().collect();
        shared.release(consumer.as_ref(), &partitions);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "committing offsets as a subscription ends (nothing to commit?)");
        }
        consumer.unsubscribe();
        drop(consumer);
    })
    .await;
    if let Err(e) = closed {
        tracing::warn!(error = %e, "closing a Kafka consumer");
    }
}

impl Shared {
    async fn publish_dead_letter(&self, original: &Message, attempts: u32, reason: &str) -> Result<(), PubSubError> {
        let dead = dead_letter_for(original, &self.options.group, attempts, reason, &self.dead_letter_topic);
        self.broker.publish_all(std::slice::from_ref(&dead)).await
    }
}

/// The rebalance hooks of a subscription's consumer.
struct MemberContext {
    shared: Arc<Shared>,
}

impl ClientContext for MemberContext {
    /// librdkafka's log lines go to `tracing` (target `herald_kafka::librdkafka`).
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        match level {
            Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
                tracing::error!(target: "herald_kafka::librdkafka", facility, "{message}");
            }
            Level::Warning => tracing::warn!(target: "herald_kafka::librdkafka", facility, "{message}"),
            Level::Notice | Level::Info => tracing::info!(target: "herald_kafka::librdkafka", facility, "{message}"),
            Level::Debug => tracing::debug!(target: "herald_kafka::librdkafka", facility, "{message}"),
        }
    }
}

impl ConsumerContext for MemberContext {
    /// Before partitions are taken away: wait (bounded) for their deliveries to be settled, so
    /// the next owner does not hand out a key while this member still handles it, then store
    /// and commit their offsets and forget them.
    /// After partitions are assigned: start each a little before its committed offset (see
    /// [`MAX_BATCH_RECORDS`]), remembering the offset so `receive` skips what comes before it.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else { return };
        if assigned.count() == 0 {
            self.shared.mark_assigned();
            return;
        }
        let timeout = self.shared.broker.config.request_timeout();
        let committed = match consumer.committed_offsets((*assigned).clone(), timeout) {
            Ok(committed) => committed,
            Err(e) => {
                tracing::warn!(error = %e, topic = %self.shared.kafka_topic, "reading committed offsets after an assignment");
                return;
            }
        };
        let mut rewound = TopicPartitionList::new();
        let mut resume_from = BTreeMap::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(offset) => {
                    resume_from.insert(e.partition(), offset);
                    Offset::Offset((offset - MAX_BATCH_RECORDS).max(0))
                }
                other => other,
            };
            if let Err(err) = rewound.add_partition_offset(e.topic(), e.partition(), offset) {
                tracing::warn!(error = %err, "building an assignment");
                return;
            }
        }
        lock(&self.shared.state).resume_from.extend(resume_from);
        if let Err(e) = consumer.assign(&rewound) {
            tracing::warn!(error = %e, topic = %self.shared.kafka_topic, "assigning partitions at their offsets");
        }
        self.shared.mark_assigned();
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        if !lock(&self.shared.state).closing {
            let limit = self.shared.options.ack_wait.min(REVOKE_WAIT_LIMIT);
            let wait = || {
                let deadline = std::time::Instant::now() + limit;
                while self.shared.holds_any(&partitions) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            let on_worker = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if on_worker { tokio::task::block_in_place(wait) } else { wait() }
        }
        self.shared.release(consumer, &partitions);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "committing offsets of revoked partitions (nothing to commit?)");
        }
    }
}

/// A Herald message from a Kafka record: key, payload and Herald's headers. `topic` is the
/// Herald topic of the subscription (the Kafka topic has the prefix in front).
fn decode(m: &BorrowedMessage<'_>, topic: &str) -> Result<Message, String> {
    let headers = m.headers().ok_or("no headers")?;
    let (mut id, mut name, mut metadata) = (None, None, None);
    for i in 0..headers.count() {
        let header = headers.get(i);
        let value =
            || std::str::from_utf8(header.value.unwrap_or_default()).map_err(|e| format!("{}: {e}", header.key));
        match header.key {
            HEADER_ID => id = Some(value()?),
            HEADER_NAME => name = Some(value()?),
            HEADER_METADATA => metadata = Some(value()?),
            _ => {}
        }
    }
    let id = id.ok_or(format!("no {HEADER_ID}"))?;
    let id = MessageId::parse(id).map_err(|e| format!("{HEADER_ID} {id:?} is not a UUID: {e}"))?;
    let metadata: Metadata = serde_json::from_str(metadata.ok_or(format!("no {HEADER_METADATA}"))?)
        .map_err(|e| format!("{HEADER_METADATA}: {e}"))?;
    let key = match m.key() {
        None => String::new(),
        Some(key) => std::str::from_utf8(key).map_err(|e| format!("key: {e}"))?.to_owned(),
    };
    Ok(Message {
        id,
        name: name.unwrap_or_default().to_owned(),
        topic: topic.to_owned(),
        key,
        payload: m.payload().unwrap_or_default().to_vec(),
        metadata,
    })
}

/// Settles one delivery with the member that owns its partition.
struct KafkaSettle {
    shared: Arc<Shared>,
    partition: i32,
    offset: i64,
    lease: u64,
    attempt: u32,
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), PubSubError> {
        let s = &self.shared;
        let max = s.options.max_deliveries;
        let (outcome, dead_letter) = match settlement {
            Settlement::Ack => (Outcome::Done, None),
            Settlement::Nack { reason, .. } if self.attempt >= max => {
                (Outcome::Done, Some(last_nack_reason(reason, max)))
            }
            Settlement::Nack { delay, .. } => {
                (Outcome::Again { ready_at: (!delay.is_zero()).then(|| Instant::now() + delay) }, None)
            }
            Settlement::DeadLetter { reason } => (Outcome::Done, Some(reason)),
        };
        let Some(reason) = dead_letter else {
            return if s.finish(self.partition, self.offset, self.lease, outcome) {
                Ok(())
            } else {
                Err(PubSubError::LeaseLost)
            };
        };
        // Claim the delivery (its lease can no longer expire), publish the dead letter, then
        // let the message go; if publishing fails it is handed out again.
        let original = {
            let mut state = lock(&s.state);
            let entry = state.partitions.get_mut(&self.partition).and_then(|ps| ps.entries.get_mut(&self.offset));
            match entry {
                Some(entry) if matches!(entry.phase, Phase::Leased { lease, .. } if lease == self.lease) => {
                    entry.phase = Phase::Settling { lease: self.lease };
                    entry.message.clone()
                }
                _ => return Err(PubSubError::LeaseLost),
            }
        };
        match s.publish_dead_letter(&original, self.attempt, &reason).await {
            Ok(()) => {
                s.finish(self.partition, self.offset, self.lease, Outcome::Done);
                Ok(())
            }
            Err(e) => {
                s.finish(self.partition, self.offset, self.lease, Outcome::Again { ready_at: None });
                Err(e)
            }
        }
    }

    fn return_unseen(self: Box<Self>) {
        self.shared.finish(self.partition, self.offset, self.lease, Outcome::Unseen);
    }
}
