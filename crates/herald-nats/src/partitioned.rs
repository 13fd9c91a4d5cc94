//! Partitioned groups ([`NatsConfig::partitions`](crate::NatsConfig::partitions) `> 0`):
//! per-key order across processes. The design is in `docs/adr/0014-nats-partitioned-consumers.md`.
//!
//! * A message with key `K` is on subject `<subject>.<p>`, `p = fnv1a_64(K) % n` (see
//!   [`partition_of`](crate::broker::partition_of)); a group has one durable pull consumer per
//!   partition, `<group>-p<p>`, filtered on that subject.
//! * **Ownership.** The members of a group (its subscriptions, in any process) register in the
//!   `<stream_prefix>partitions` key-value bucket (`<stream>.<group>.m.<member>`) and claim
//!   partitions there (`<stream>.<group>.p.<p>`, value: the member), with revision-checked
//!   creates and updates, so a partition has at most one owner. Entries live `claim_ttl`
//!   without a refresh; members refresh theirs several times per TTL. Every member computes the
//!   same assignment (live members sorted, partition `p` to member `p % members`), claims the
//!   free partitions assigned to it and releases the others. Only the owner pulls a partition.
//! * **Within a partition** a member delivers at most one unsettled message per key: later
//!   messages of the key wait in the member (kept leased with `+WPI` progress acks), a nacked
//!   one blocks its key until JetStream redelivers it, other keys go on.
//! * **Clean handover** (rebalance, subscription dropped, broker closed): the owner stops
//!   pulling, lets its last pull request end, waits for its deliveries to be settled (at most
//!   their lease), gives back what it holds with confirmed naks timed to come back after the
//!   key's older message, then writes `released` into the claim. The next owner resumes the
//!   consumer as it is (no duplicates).
//! * **Takeover** (the previous owner died, or could not hand over cleanly): the claim expired
//!   or was deleted. If the consumer has unacknowledged messages, the new owner re-creates it
//!   at its ack floor, so everything after the floor comes again in stream order: per-key order
//!   holds, messages acked after the floor are delivered again (at least once).
//! * **Lost deliveries.** JetStream numbers a consumer's deliveries, and only the owner pulls,
//!   so the owner sees every number. A gap means a delivery was lost on its way (a connection
//!   or a server lost with messages in flight): JetStream redelivers it only after its ack wait,
//!   after later messages of its key. The owner then hands out nothing more, waits for the
//!   deliveries out to be settled, and reopens the partition from its ack floor (as a takeover
//!   does), keeping its claim.
//! * **Fencing.** A member whose claim refresh fails, or has not succeeded for a TTL, stops the
//!   partition; settlements of its deliveries are refused with `LeaseLost` and never sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::AckKind;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use herald::message::Message;
use herald::pubsub::{
    Capabilities, Delivery, PubSubError, Settle, Settlement, StartFrom, SubscribeOptions, Subscription,
};
use herald::queue::{dead_letter_for, expired_reason};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::broker::{Inner, NatsBroker, sanitise};
use crate::error::NatsError;
use crate::subscriber::{confirm_unsubscribed, decode, earlier_if_new, ensure_consumer};

/// What JetStream promises through a partitioned group: everything, per-key order included.
pub(crate) const CAPABILITIES: Capabilities = Capabilities::FULL;

/// The value of a claim its owner handed over cleanly.
const RELEASED: &[u8] = b"released";
/// The most messages one pull request asks for.
const MAX_BATCH: usize = 256;
/// A partition consumer's `max_ack_pending` is at least this: messages waiting behind an older
/// one of their key are pending too, and must not stop other keys of the partition.
const MIN_PARTITION_PENDING: usize = 512;
/// How long one pull request lasts. A clean handover waits for the last one to end, so that no
/// message is in flight to a member that stopped pulling.
const PULL_EXPIRES: Duration = Duration::from_millis(500);
/// How often a draining partition checks whether it is done.
const DRAIN_POLL: Duration = Duration::from_millis(25);
/// When a subscription ends, how long its partitions wait for deliveries still in the
/// application's hands before handing over without them (the next owner then takes over).
const STOP_IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);
/// Spacing between the naks of the messages of one key at a handover, so JetStream redelivers
/// them in order.
const NAK_SPACING: Duration = Duration::from_millis(10);
/// How long a partition is not claimed again after its consumer could not be opened.
const FAILED_COOLDOWN: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One subscription of a partitioned group: what its coordinator and partition tasks share.
struct Group {
    broker: Arc<Inner>,
    topic: String,
    group: String,
    /// The sanitised group: consumer names and bucket keys.
    durable: String,
    dead_letter_topic: String,
    max_deliveries: u32,
    ack_wait: Duration,
    /// The consumers' config, without name and filter.
    template: pull::Config,
    partitions: u32,
    tx: mpsc::Sender<Delivery>,
    /// The subscription's `max_in_flight`: one permit per delivery in the application's hands.
    permits: Arc<Semaphore>,
    /// Cancelled when the subscription is dropped or the broker closed.
    stop: CancellationToken,
    /// The partitions' current pull requests, dropped synchronously on `stop`.
    slots: Slots,
    member: String,
    claims: kv::Store,
    ttl: Duration,
}

type Slots = Arc<Mutex<HashMap<u32, pull::Batch>>>;

impl Group {
    fn consumer_name(&self, p: u32) -> String {
        format!("{}-p{p}", self.durable)
    }

    fn consumer_config(&self, p: u32) -> pull::Config {
        pull::Config {
            durable_name: Some(self.consumer_name(p)),
            filter_subject: format!("{}.{p}", self.broker.subject(&self.topic)),
            ..self.template.clone()
        }
    }

    fn base(&self) -> String {
        format!("{}.{}", self.broker.stream_name(&self.topic), self.durable)
    }

    fn member_key(&self) -> String {
        format!("{}.m.{}", self.base(), self.member)
    }

    fn claim_key(&self, p: u32) -> String {
        format!("{}.p.{p}", self.base())
    }
}

/// Subscribes a partitioned group: makes sure the topic's stream and the group's partition
/// consumers exist (so the group's start is fixed now), registers the member and starts its
/// coordinator, then waits (bounded) until the member owns the partitions assigned to it.
pub(crate) async fn subscribe(
    broker: &NatsBroker,
    options: SubscribeOptions,
    dead_letter_topic: String,
) -> Result<Subscription, PubSubError> {
    let inner = &broker.inner;
    let durable = sanitise(&options.group);
    let template = pull::Config {
        deliver_policy: match options.start {
            StartFrom::Beginning => DeliverPolicy::All,
            StartFrom::Latest => DeliverPolicy::New,
            StartFrom::Position(p) => DeliverPolicy::ByStartSequence { start_sequence: p.max(1) },
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: i64::from(options.max_deliveries) + 1,
        max_ack_pending: i64::try_from(options.max_in_flight.max(MIN_PARTITION_PENDING)).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let claims = inner.claims().await?.clone();
    let stop = inner.shutdown.child_token();
    let (tx, rx) = mpsc::channel(options.max_in_flight);
    let group = Arc::new(Group {
        broker: inner.clone(),
        topic: options.topic.clone(),
        group: options.group.clone(),
        durable,
        dead_letter_topic,
        max_deliveries: options.max_deliveries,
        ack_wait: options.ack_wait,
        template,
        partitions: inner.config.partitions,
        tx,
        permits: Arc::new(Semaphore::new(options.max_in_flight)),
        stop: stop.clone(),
        slots: Arc::new(Mutex::new(HashMap::new())),
        member: uuid::Uuid::now_v7().simple().to_string(),
        claims,
        ttl: inner.config.claim_ttl_duration(),
    });

    let skipping = match options.start {
        StartFrom::Latest => earlier_if_new(inner, &options.topic, &group.consumer_name(0)).await?,
        _ => None,
    };
    let stream = inner.stream(&options.topic).await?;
    for p in 0..group.partitions {
        ensure_consumer(inner, &stream, &options.topic, &group.consumer_name(p), &group.consumer_config(p)).await?;
    }
    if let Some(earlier) = skipping {
        herald::observability::warn_new_group_skips_earlier_messages(&options.topic, &options.group, earlier);
    }
    group
        .claims
        .put(group.member_key(), Bytes::new())
        .await
        .map_err(|e| NatsError::jetstream("registering a group member", e))?;

    let registration = drop_pulls_on_cancel(&group.slots, &stop, inner);
    let (ready_tx, ready_rx) = oneshot::channel();
    let wait = group.ttl.min(Duration::from_secs(3));
    // The group's lag is the sum over its partition consumers; sampled until the coordinator
    // ends (with the subscription).
    let consumers = (0..group.partitions).map(|p| group.consumer_name(p)).collect();
    let sampling = stop.child_token();
    crate::subscriber::sample_lag(inner, &options.topic, &options.group, consumers, sampling.clone());
    inner.tasks.spawn(async move {
        let _sampling = sampling.drop_guard();
        coordinate(group, registration, ready_tx).await;
    });
    // Not an error when it takes longer (a dead member's claims are still live): the member
    // gets its partitions when they expire.
    let _ = tokio::time::timeout(wait, ready_rx).await;
    Ok(Subscription::new(rx, Some(stop.drop_guard())))
}

/// Drops every pull request of the subscription the moment it is cancelled, inside the
/// subscription's drop, and waits (bounded) for the server to confirm: see `UnsubscribeOnCancel`
/// in the subscriber module, which this mirrors for the partitions' pull requests.
struct DropPullsOnCancel {
    slots: Slots,
    stop: CancellationToken,
    broker: Arc<Inner>,
}

impl Wake for DropPullsOnCancel {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.stop.is_cancelled() {
            return;
        }
        let taken: Vec<pull::Batch> = lock(&self.slots).drain().map(|(_, b)| b).collect();
        if !taken.is_empty() {
            drop(taken);
            confirm_unsubscribed(&self.broker);
        }
    }
}

fn drop_pulls_on_cancel(
    slots: &Slots,
    stop: &CancellationToken,
    broker: &Arc<Inner>,
) -> Pin<Box<WaitForCancellationFutureOwned>> {
    let mut cancelled = Box::pin(stop.clone().cancelled_owned());
    let waker =
        Waker::from(Arc::new(DropPullsOnCancel { slots: slots.clone(), stop: stop.clone(), broker: broker.clone() }));
    if cancelled.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
        lock(slots).clear();
    }
    cancelled
}

/// A bucket entry as this member last saw it.
struct Seen {
    value: Bytes,
    revision: u64,
    put: bool,
    at: Instant,
}

/// A member's right to one partition: valid while its claim is refreshed.
pub(crate) struct Lease {
    lost: AtomicBool,
    until: Mutex<Instant>,
}

impl Lease {
    fn valid(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && Instant::now() < *lock(&self.until)
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }
}

/// A partition this member owns.
struct Owned {
    revision: u64,
    lease: Arc<Lease>,
    /// Cancelled to hand the partition over cleanly.
    release: CancellationToken,
    /// Cancelled when the claim is lost: stop at once, hand nothing back.
    kill: CancellationToken,
    releasing: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// The previous owner released the partition cleanly: resume its consumer as it is.
    Handover,
    /// No clean release (first owner, or the previous one died): re-deliver from the ack floor
    /// if anything is unacknowledged.
    Takeover,
}

/// How a partition task ended.
#[derive(Debug)]
enum End {
    /// Handed back; `clean` when nothing it pulled is unaccounted for.
    Released { clean: bool },
    /// The claim was lost; nothing to write.
    Lost,
    /// The consumer could not be opened.
    Failed,
    /// A delivery went missing (a connection or a server lost with messages on their way):
    /// reopen the partition from its ack floor, keeping the claim.
    Resync,
}

/// Keeps the member registered, its claims refreshed and its partitions matching the
/// assignment, until the subscription ends; then hands every partition over and leaves.
async fn coordinate(
    g: Arc<Group>,
    _registration: Pin<Box<WaitForCancellationFutureOwned>>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut view: HashMap<String, Seen> = HashMap::new();
    let mut owned: HashMap<u32, Owned> = HashMap::new();
    let mut cooldown: HashMap<u32, Instant> = HashMap::new();
    let mut runs: JoinSet<(u32, End)> = JoinSet::new();
    let mut watch = None;
    let mut tick = tokio::time::interval((g.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if watch.is_none() {
            match g.claims.watch_with_history(format!("{}.>", g.base())).await {
                Ok(w) => watch = Some(w),
                Err(e) => tracing::warn!(error = %e, group = %g.group, "watching the partition claims"),
            }
        }
        tokio::select! {
            biased;
            () = g.stop.cancelled() => break,
            Some(joined) = runs.join_next() => {
                if let Ok((p, end)) = joined {
                    finish(&g, &mut owned, &mut cooldown, &mut runs, p, end).await;
                }
            }
            entry = async { watch.as_mut().expect("checked").next().await }, if watch.is_some() => match entry {
                Some(Ok(entry)) => {
                    let put = matches!(entry.operation, kv::Operation::Put);
                    let seen = Seen { value: entry.value, revision: entry.revision, put, at: Instant::now() };
                    view.insert(entry.key, seen);
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, group = %g.group, "partition claims watch failed; re-opening it");
                    watch = None;
                }
                None => watch = None,
            },
            _ = tick.tick() => refresh(&g, &mut owned).await,
        }
        rebalance(&g, &view, &mut owned, &mut cooldown, &mut runs).await;
        if ready.is_some() && assigned(&g, &view).iter().all(|p| owned.get(p).is_some_and(|o| !o.releasing)) {
            let _ = ready.take().map(|r| r.send(()));
        }
    }
    // Leaving: hand every partition over (refreshing the claims meanwhile), then deregister.
    for o in owned.values_mut() {
        o.releasing = true;
        o.release.cancel();
    }
    while !runs.is_empty() {
        tokio::select! {
            Some(joined) = runs.join_next() => {
                if let Ok((p, end)) = joined {
                    finish(&g, &mut owned, &mut cooldown, &mut runs, p, end).await;
                }
            }
            _ = tick.tick() => refresh(&g, &mut owned).await,
        }
    }
    if let Err(e) = g.claims.delete(g.member_key()).await {
        tracing::debug!(error = %e, group = %g.group, "deregistering a group member; it expires");
    }
}

/// The live members (registered, refreshed within the TTL), this one included, sorted.
fn members(g: &Group, view: &HashMap<String, Seen>) -> Vec<String> {
    let prefix = format!("{}.m.", g.base());
    let now = Instant::now();
    let mut members: Vec<String> = view
        .iter()
        .filter(|(_, s)| s.put && now.duration_since(s.at) < g.ttl)
        .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    if !members.contains(&g.member) {
        members.push(g.member.clone());
    }
    members.sort();
    members
}

/// The partitions assigned to this member: partition `p` goes to the `p % n`-th live member.
fn assigned(g: &Group, view: &HashMap<String, Seen>) -> Vec<u32> {
    let members = members(g, view);
    (0..g.partitions).filter(|p| members[*p as usize % members.len()] == g.member).collect()
}

/// Releases the partitions no longer assigned here and claims the free ones that are.
async fn rebalance(
    g: &Arc<Group>,
    view: &HashMap<String, Seen>,
    owned: &mut HashMap<u32, Owned>,
    cooldown: &mut HashMap<u32, Instant>,
    runs: &mut JoinSet<(u32, End)>,
) {
    let mine = assigned(g, view);
    for (p, o) in owned.iter_mut() {
        if !mine.contains(p) && !o.releasing {
            tracing::debug!(partition = p, group = %g.group, member = %g.member, "releasing a partition");
            o.releasing = true;
            o.release.cancel();
        }
    }
    let now = Instant::now();
    for p in mine {
        if owned.contains_key(&p) || cooldown.get(&p).is_some_and(|until| now < *until) {
            continue;
        }
        let key = g.claim_key(p);
        let me = Bytes::from(g.member.clone().into_bytes());
        let sent = Instant::now();
        let claimed = match view.get(&key) {
            Some(s) if s.put && now.duration_since(s.at) < g.ttl => {
                if s.value.as_ref() != RELEASED {
                    continue; // another member's live claim
                }
                g.claims.update(&key, me, s.revision).await.map(|rev| (rev, Mode::Handover)).map_err(|e| e.to_string())
            }
            _ => g.claims.create(&key, me).await.map(|rev| (rev, Mode::Takeover)).map_err(|e| e.to_string()),
        };
        match claimed {
            Ok((revision, mode)) => {
                tracing::debug!(partition = p, group = %g.group, member = %g.member, ?mode, "claimed a partition");
                let lease = Arc::new(Lease { lost: AtomicBool::new(false), until: Mutex::new(sent + g.ttl * 9 / 10) });
                let (release, kill) = (CancellationToken::new(), CancellationToken::new());
                let run = run_partition(g.clone(), p, mode, lease.clone(), release.clone(), kill.clone());
                runs.spawn(async move { (p, run.await) });
                owned.insert(p, Owned { revision, lease, release, kill, releasing: false });
            }
            Err(e) => tracing::trace!(partition = p, error = %e, "partition not claimed (yet)"),
        }
    }
}

/// Refreshes the registration and every claim (revision-checked); a claim that cannot be
/// refreshed is lost: its partition stops at once.
async fn refresh(g: &Group, owned: &mut HashMap<u32, Owned>) {
    if let Err(e) = g.claims.put(g.member_key(), Bytes::new()).await {
        tracing::debug!(error = %e, group = %g.group, "refreshing a group member");
    }
    for (p, o) in owned.iter_mut() {
        if o.lease.lost.load(Ordering::SeqCst) {
            continue;
        }
        let sent = Instant::now();
        let me = Bytes::from(g.member.clone().into_bytes());
        match g.claims.update(g.claim_key(*p), me, o.revision).await {
            Ok(revision) => {
                o.revision = revision;
                *lock(&o.lease.until) = sent + g.ttl * 9 / 10;
            }
            Err(e) => {
                let taken = matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision);
                if taken || !o.lease.valid() {
                    tracing::warn!(partition = p, group = %g.group, error = %e, "lost a partition claim; stopping the partition");
                    o.lease.lose();
                    o.kill.cancel();
                }
            }
        }
    }
}

/// Writes the outcome of a partition task into its claim: `released` after a clean handover,
/// deleted otherwise (the next owner then takes over from the ack floor).
async fn finish(
    g: &Arc<Group>,
    owned: &mut HashMap<u32, Owned>,
    cooldown: &mut HashMap<u32, Instant>,
    runs: &mut JoinSet<(u32, End)>,
    p: u32,
    end: End,
) {
    let Some(o) = owned.remove(&p) else { return };
    tracing::debug!(partition = p, group = %g.group, member = %g.member, ?end, "partition task ended");
    if o.lease.lost.load(Ordering::SeqCst) {
        return;
    }
    if matches!(end, End::Resync) && !o.releasing && o.lease.valid() && !g.stop.is_cancelled() {
        // Still this member's: reopen it from the ack floor under the same claim.
        let run = run_partition(g.clone(), p, Mode::Takeover, o.lease.clone(), o.release.clone(), o.kill.clone());
        runs.spawn(async move { (p, run.await) });
        owned.insert(p, o);
        return;
    }
    let key = g.claim_key(p);
    let written = match end {
        End::Lost => return,
        End::Released { clean: true } => {
            g.claims.update(&key, Bytes::from_static(RELEASED), o.revision).await.map(drop).map_err(|e| e.to_string())
        }
        End::Failed | End::Released { clean: false } | End::Resync => {
            if matches!(end, End::Failed) {
                cooldown.insert(p, Instant::now() + FAILED_COOLDOWN);
            }
            g.claims.delete_expect_revision(&key, Some(o.revision)).await.map_err(|e| e.to_string())
        }
    };
    if let Err(e) = written {
        tracing::debug!(partition = p, error = %e, "releasing a partition claim; it expires");
    }
}

/// Opens partition `p`'s consumer. On a takeover with unacknowledged messages, the consumer is
/// re-created at its ack floor: whoever held them may be gone, and JetStream would otherwise
/// deliver later messages of their keys before redelivering them.
///
/// Returns the consumer and the consumer sequence of its last delivery: the next delivery this
/// member receives must be the one after it (see [`End::Resync`]).
async fn open_partition(g: &Group, p: u32, mode: Mode) -> Result<(Consumer<pull::Config>, u64), NatsError> {
    let stream = g.broker.stream(&g.topic).await?;
    let name = g.consumer_name(p);
    let config = g.consumer_config(p);
    let mut consumer = ensure_consumer(&g.broker, &stream, &g.topic, &name, &config).await?;
    let info = consumer.info().await.map_err(|e| NatsError::jetstream(format!("looking up consumer {name}"), e))?;
    if mode == Mode::Handover || info.num_ack_pending == 0 {
        let delivered = info.delivered.consumer_sequence;
        return Ok((consumer, delivered));
    }
    let floor = info.ack_floor.stream_sequence;
    tracing::info!(
        partition = p,
        group = %g.group,
        unacknowledged = info.num_ack_pending,
        ack_floor = floor,
        "taking over a partition without a clean handover: redelivering from its ack floor"
    );
    stream.delete_consumer(&name).await.map_err(|e| NatsError::jetstream(format!("deleting consumer {name}"), e))?;
    let restart =
        pull::Config { deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: floor + 1 }, ..config };
    let consumer = stream
        .create_consumer(restart)
        .await
        .map_err(|e| NatsError::jetstream(format!("re-creating consumer {name}"), e))?;
    Ok((consumer, 0))
}

/// A message received and not handed to the application (yet).
struct Held {
    message: async_nats::jetstream::Message,
    decoded: Message,
    attempt: u32,
    seq: u64,
}

/// One key of a partition.
#[derive(Default)]
struct KeyQueue {
    /// Received, not handed out, by stream sequence.
    queue: BTreeMap<u64, Held>,
    /// The delivery in the application's hands: (token, sequence).
    in_flight: Option<(u64, u64)>,
    /// A message handed back (nacked, returned, lease expired) and not redelivered yet:
    /// (sequence, when JetStream redelivers it). Later messages wait for it.
    waiting: Option<(u64, Instant)>,
    /// Listed in `ready`.
    listed: bool,
}

/// A delivery in the application's hands.
struct Flight {
    key: String,
    seq: u64,
    at: Instant,
}

/// What became of a delivery, told by its settle to the partition task.
enum Outcome {
    /// Acked or dead-lettered: gone from the group.
    Done,
    /// Comes back from JetStream at about this time.
    Returns(Instant),
}

struct Notice {
    token: u64,
    outcome: Outcome,
}

enum Ready {
    Key(String),
    Keyless(Box<Held>),
}

/// The state of one owned partition.
#[derive(Default)]
struct Partition {
    keys: HashMap<String, KeyQueue>,
    ready: VecDeque<Ready>,
    flights: HashMap<u64, Flight>,
    next_token: u64,
}

impl Partition {
    /// Messages this member holds or has handed out: JetStream counts them as pending.
    fn pending(&self) -> usize {
        let keyless = self.ready.iter().filter(|r| matches!(r, Ready::Keyless(_))).count();
        keyless
            + self.flights.len()
            + self.keys.values().map(|k| k.queue.len() + usize::from(k.waiting.is_some())).sum::<usize>()
    }

    fn list(&mut self, key: &str) {
        if let Some(k) = self.keys.get_mut(key) {
            if k.in_flight.is_none() && k.waiting.is_none() && !k.queue.is_empty() && !k.listed {
                k.listed = true;
                self.ready.push_back(Ready::Key(key.to_owned()));
            } else if k.queue.is_empty() && k.in_flight.is_none() && k.waiting.is_none() {
                self.keys.remove(key);
            }
        }
    }

    /// A message arrived from JetStream (first delivery or redelivery).
    fn arrive(&mut self, held: Held) {
        if held.decoded.key.is_empty() {
            self.flights.retain(|_, f| !(f.key.is_empty() && f.seq == held.seq));
            self.ready.push_back(Ready::Keyless(Box::new(held)));
            return;
        }
        let key = held.decoded.key.clone();
        let k = self.keys.entry(key.clone()).or_default();
        if let Some((token, seq)) = k.in_flight
            && seq == held.seq
        {
            // Redelivered while handed out: that delivery's lease is gone.
            k.in_flight = None;
            self.flights.remove(&token);
        }
        if k.waiting.is_some_and(|(seq, _)| seq == held.seq) {
            k.waiting = None;
        }
        k.queue.insert(held.seq, held);
        self.list(&key);
    }

    /// A message left the group without being handed out (dead-lettered on arrival).
    fn gone(&mut self, key: &str, seq: u64) {
        if let Some(k) = self.keys.get_mut(key) {
            if k.waiting.is_some_and(|(s, _)| s == seq) {
                k.waiting = None;
            }
            if let Some((token, s)) = k.in_flight
                && s == seq
            {
                k.in_flight = None;
                self.flights.remove(&token);
            }
            k.queue.remove(&seq);
        }
        self.list(key);
    }

    fn settled(&mut self, notice: Notice) {
        let Some(flight) = self.flights.remove(&notice.token) else { return };
        if flight.key.is_empty() {
            return;
        }
        if let Some(k) = self.keys.get_mut(&flight.key)
            && k.in_flight.is_some_and(|(token, _)| token == notice.token)
        {
            k.in_flight = None;
            if let Outcome::Returns(at) = notice.outcome {
                k.waiting = Some((flight.seq, at));
            }
        }
        self.list(&flight.key);
    }

    /// The next message to hand out, registered as in flight under a new token.
    fn take_ready(&mut self) -> Option<(Held, u64)> {
        while let Some(ready) = self.ready.pop_front() {
            let token = self.next_token;
            let held = match ready {
                Ready::Keyless(held) => *held,
                Ready::Key(key) => {
                    let Some(k) = self.keys.get_mut(&key) else { continue };
                    k.listed = false;
                    if k.in_flight.is_some() || k.waiting.is_some() {
                        continue;
                    }
                    let Some((_, held)) = k.queue.pop_first() else { continue };
                    k.in_flight = Some((token, held.seq));
                    held
                }
            };
            self.next_token += 1;
            self.flights.insert(token, Flight { key: held.decoded.key.clone(), seq: held.seq, at: Instant::now() });
            return Some((held, token));
        }
        None
    }

    fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Keeps the held messages leased: JetStream must not redeliver what waits here.
    async fn progress(&self) {
        let held = self.keys.values().flat_map(|k| k.queue.values()).chain(self.ready.iter().filter_map(|r| match r {
            Ready::Keyless(h) => Some(&**h),
            Ready::Key(_) => None,
        }));
        for h in held {
            if let Err(e) = h.message.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "progress ack of a held message");
            }
        }
    }

    /// Whether every delivery in the application's hands is settled or past `deadline` (its
    /// lease end, or the give-up time when the subscription ends).
    fn flights_done(&self, ack_wait: Duration, give_up: Option<Instant>) -> bool {
        let now = Instant::now();
        self.flights.values().all(|f| now >= f.at + ack_wait || give_up.is_some_and(|t| now >= t))
    }

    /// Gives back everything held, with confirmed naks timed so JetStream redelivers each key's
    /// messages in order and after the key's message that is already on its way back. Returns
    /// how many messages stay pending at JetStream because of this member, or `None` when a
    /// nak failed.
    async fn hand_back(&mut self, ack_wait: Duration) -> (usize, bool) {
        let now = Instant::now();
        let mut ok = true;
        let mut expected = 0usize;
        // Deliveries still out (leases expired or given up on) come back after their ack wait.
        for (token, f) in std::mem::take(&mut self.flights) {
            expected += 1;
            let back = f.at + ack_wait;
            if back > now {
                ok = false; // the application may still be handling it
            }
            if let Some(k) = self.keys.get_mut(&f.key)
                && k.in_flight.is_some_and(|(t, _)| t == token)
            {
                k.in_flight = None;
                k.waiting = Some((f.seq, back));
            }
        }
        for ready in std::mem::take(&mut self.ready) {
            if let Ready::Keyless(h) = ready {
                expected += 1;
                ok &= nak(&h.message, None).await;
            }
        }
        for k in std::mem::take(&mut self.keys).into_values() {
            let mut after = match k.waiting {
                Some((_, at)) => {
                    expected += 1;
                    Some(at.saturating_duration_since(now))
                }
                None => None,
            };
            for h in k.queue.values() {
                expected += 1;
                let delay = after.map(|d| d + NAK_SPACING);
                ok &= nak(&h.message, delay).await;
                after = delay.or(Some(Duration::ZERO));
            }
        }
        (expected, ok)
    }
}

/// A confirmed nak (the server has handled it when this returns `true`).
async fn nak(message: &async_nats::jetstream::Message, delay: Option<Duration>) -> bool {
    match message.double_ack_with(AckKind::Nak(delay.filter(|d| !d.is_zero()))).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "handing a held message back");
            false
        }
    }
}

/// Pulls one owned partition and hands its messages out in per-key order until it is released,
/// lost or the subscription ends.
async fn run_partition(
    g: Arc<Group>,
    p: u32,
    mode: Mode,
    lease: Arc<Lease>,
    release: CancellationToken,
    kill: CancellationToken,
) -> End {
    let (consumer, mut last_delivery) = match open_partition(&g, p, mode).await {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(error = %e, partition = p, group = %g.group, "opening a partition consumer failed");
            return End::Failed;
        }
    };
    let capacity = usize::try_from(g.template.max_ack_pending).unwrap_or(MIN_PARTITION_PENDING);
    let (notices, mut settled) = mpsc::unbounded_channel::<Notice>();
    let mut state = Partition::default();
    let mut pulling = false;
    let mut interrupted = false;
    let mut draining: Option<Option<Instant>> = None; // Some(give-up time when stopping)
    let mut resync = false;
    let mut failures = 0u32;
    // The connection's count of (re)connects when deliveries were last known complete: a
    // reconnect can lose deliveries that no later delivery reveals (see `lost_deliveries`).
    let connects = g.broker.js.client().statistics();
    let mut connects_checked = connects.connects.load(std::sync::atomic::Ordering::Relaxed);
    let mut progress = tokio::time::interval((g.ack_wait / 3).max(Duration::from_millis(20)));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if draining.is_none() && !pulling && state.pending() < capacity && !g.stop.is_cancelled() {
            let batch = (capacity - state.pending()).min(MAX_BATCH);
            match consumer.batch().max_messages(batch).expires(PULL_EXPIRES).messages().await {
                Ok(b) => {
                    failures = 0;
                    lock(&g.slots).insert(p, b);
                    pulling = true;
                    if g.stop.is_cancelled() {
                        lock(&g.slots).remove(&p);
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, partition = p, group = %g.group, "pulling from a partition failed");
                    let pause = Duration::from_millis(100).saturating_mul(1 << failures.min(5));
                    tokio::select! {
                        () = kill.cancelled() => return End::Lost,
                        () = tokio::time::sleep(pause) => {}
                    }
                    if !lease.valid() {
                        return End::Lost;
                    }
                    continue;
                }
            }
        }
        let dispatching = draining.is_none() && state.has_ready();
        tokio::select! {
            biased;
            () = kill.cancelled() => return End::Lost,
            Some(notice) = settled.recv() => state.settled(notice),
            next = poll_fn(|cx| match lock(&g.slots).get_mut(&p) {
                Some(batch) => batch.poll_next_unpin(cx).map(Some),
                None => Poll::Ready(None),
            }), if pulling => match next {
                None => {
                    pulling = false;
                    interrupted = true; // dropped by the subscription's end
                }
                Some(None) => {
                    pulling = false;
                    lock(&g.slots).remove(&p);
                    let now = connects.connects.load(std::sync::atomic::Ordering::Relaxed);
                    if now != connects_checked && draining.is_none() {
                        let lost = lost_deliveries(&consumer, last_delivery).await;
                        if lost.is_some() {
                            connects_checked = now;
                        }
                        if lost == Some(true) {
                            tracing::warn!(
                                partition = p, group = %g.group,
                                "deliveries of the partition were lost with the connection; reopening it from its ack floor"
                            );
                            resync = true;
                            draining = Some(None);
                        }
                    }
                }
                Some(Some(Ok(message))) => {
                    // JetStream numbers a consumer's deliveries; this member is the only one
                    // pulling, so it must see every number. A gap is a delivery lost on its
                    // way (a connection or server lost): it comes back only after its ack
                    // wait, after later messages of its key. Hand out nothing more; once the
                    // deliveries out are settled, reopen from the ack floor, in stream order.
                    let delivered = message.info().map_or(last_delivery + 1, |i| i.consumer_sequence);
                    if delivered != last_delivery + 1 && draining.is_none() {
                        tracing::warn!(
                            partition = p, group = %g.group, expected = last_delivery + 1, delivered,
                            "a delivery of the partition went missing; reopening it from its ack floor"
                        );
                        resync = true;
                        draining = Some(None);
                        pulling = false;
                        lock(&g.slots).remove(&p);
                        continue;
                    }
                    last_delivery = delivered;
                    match receive(&g, message).await {
                        Received::Held(held) => state.arrive(*held),
                        Received::Gone { key, seq } => state.gone(&key, seq),
                        Received::Foreign => {}
                    }
                }
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, partition = p, group = %g.group, "pulling from a partition");
                    pulling = false;
                    lock(&g.slots).remove(&p);
                }
            },
            permit = g.permits.clone().acquire_owned(), if dispatching => {
                let Ok(permit) = permit else { continue };
                if let Some((held, token)) = state.take_ready() {
                    dispatch(&g, held, token, permit, &lease, &notices).await;
                }
            }
            _ = progress.tick() => state.progress().await,
            () = release.cancelled(), if draining.is_none() => draining = Some(None),
            () = g.stop.cancelled(), if draining.is_none() => draining = Some(Some(Instant::now() + STOP_IN_FLIGHT_WAIT)),
            () = tokio::time::sleep(DRAIN_POLL), if draining.is_some() => {}
        }
        if draining == Some(None) && g.stop.is_cancelled() {
            // Released, and now the subscription ends too: do not wait a whole ack wait.
            draining = Some(Some(Instant::now() + STOP_IN_FLIGHT_WAIT));
        }
        if let Some(give_up) = draining
            && !pulling
            && state.flights_done(g.ack_wait, give_up)
        {
            break;
        }
    }
    // Settlements that arrived meanwhile.
    while let Ok(notice) = settled.try_recv() {
        state.settled(notice);
    }
    if resync && !g.stop.is_cancelled() && !release.is_cancelled() {
        // What is held stays pending: the reopened consumer delivers it again.
        return End::Resync;
    }
    let (expected, mut clean) = state.hand_back(g.ack_wait).await;
    clean &= !interrupted || pending_matches(&consumer, expected).await;
    End::Released { clean }
}

/// Whether the server counts more deliveries than this member received. A delivery lost with
/// the connection shows as a gap only when a later one arrives; if the key's next message was
/// lost too (sent to the old connection's pull request), nothing arrives until the ack wait
/// ends. So after a reconnect, an empty pull asks the server.
/// `None` when the server could not be asked (the next empty pull asks again).
async fn lost_deliveries(consumer: &Consumer<pull::Config>, last_delivery: u64) -> Option<bool> {
    match consumer.get_info().await {
        Ok(info) => Some(info.delivered.consumer_sequence > last_delivery),
        Err(e) => {
            tracing::debug!(error = %e, "checking a partition's deliveries after a reconnect");
            None
        }
    }
}

/// Whether the consumer counts no more unacknowledged messages than this member knows of (so
/// none was in flight to a pull request it dropped).
async fn pending_matches(consumer: &Consumer<pull::Config>, expected: usize) -> bool {
    match consumer.get_info().await {
        Ok(info) => info.num_ack_pending <= expected,
        Err(_) => false,
    }
}

/// What became of a pulled message.
enum Received {
    /// To be handed out in its key's order.
    Held(Box<Held>),
    /// Over its delivery limit: dead-lettered here.
    Gone { key: String, seq: u64 },
    /// Not a Herald message: terminated.
    Foreign,
}

/// Turns a pulled message into a held one, or settles it here: a message over its delivery
/// limit is dead-lettered, one that is not a Herald message is terminated.
async fn receive(g: &Group, message: async_nats::jetstream::Message) -> Received {
    let (attempt, seq) = match message.info() {
        Ok(info) => (u32::try_from(info.delivered).unwrap_or(u32::MAX), info.stream_sequence),
        Err(e) => {
            tracing::error!(error = %e, subject = %message.subject, "a JetStream message without delivery info");
            return Received::Foreign;
        }
    };
    let mut decoded = match decode(&message, &g.broker.config.subject_prefix) {
        Ok(decoded) => decoded,
        Err(why) => {
            tracing::error!(subject = %message.subject, seq, %why, "not a Herald message; terminated");
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "terminating a foreign message");
            }
            return Received::Foreign;
        }
    };
    decoded.topic = g.broker.topic_of(&message.subject).to_owned();
    if attempt > g.max_deliveries {
        // The last allowed lease expired: this extra delivery exists only to dead-letter it.
        let reason = expired_reason(g.max_deliveries);
        if let Err(e) = dead_letter(g, &message, &decoded, g.max_deliveries, &reason).await {
            tracing::error!(error = %e, id = %decoded.id, group = %g.group, "dead-lettering an expired message");
            // Not acknowledged: it stays pending and comes back after its ack wait.
            return Received::Held(Box::new(Held { message, decoded, attempt, seq }));
        }
        return Received::Gone { key: decoded.key, seq };
    }
    Received::Held(Box::new(Held { message, decoded, attempt, seq }))
}

/// Publishes the dead letter of `original`, then terminates it (confirmed).
async fn dead_letter(
    g: &Group,
    message: &async_nats::jetstream::Message,
    original: &Message,
    attempts: u32,
    reason: &str,
) -> Result<(), PubSubError> {
    let dead = dead_letter_for(original, &g.group, attempts, reason, &g.dead_letter_topic);
    g.broker.publish_all(std::slice::from_ref(&dead)).await?;
    message
        .double_ack_with(AckKind::Term)
        .await
        .map_err(|e| NatsError::jetstream("terminating a dead letter", e).into())
}

/// Hands `held` to the application.
async fn dispatch(
    g: &Arc<Group>,
    held: Held,
    token: u64,
    permit: OwnedSemaphorePermit,
    lease: &Arc<Lease>,
    notices: &mpsc::UnboundedSender<Notice>,
) {
    let Held { message, decoded, attempt, seq } = held;
    // Restart JetStream's ack wait: the lease the application gets starts now.
    if let Err(e) = message.ack_with(AckKind::Progress).await {
        tracing::trace!(error = %e, "progress ack at dispatch");
    }
    let settle = PartitionSettle {
        message,
        g: g.clone(),
        lease: lease.clone(),
        notices: notices.clone(),
        token,
        attempt,
        at: Instant::now(),
        _permit: permit,
        settled: false,
    };
    let delivery = Delivery::new(decoded, attempt, Some(seq), Box::new(settle));
    if let Err(mpsc::error::TrySendError::Closed(d) | mpsc::error::TrySendError::Full(d)) = g.tx.try_send(delivery) {
        d.return_unseen();
    }
}

/// Settles one delivery of a partitioned group, and tells the partition task.
struct PartitionSettle {
    message: async_nats::jetstream::Message,
    g: Arc<Group>,
    lease: Arc<Lease>,
    notices: mpsc::UnboundedSender<Notice>,
    token: u64,
    attempt: u32,
    /// When it was handed out: its lease ends `ack_wait` later.
    at: Instant,
    _permit: OwnedSemaphorePermit,
    settled: bool,
}

impl PartitionSettle {
    fn notify(&self, outcome: Outcome) {
        let _ = self.notices.send(Notice { token: self.token, outcome });
    }

    fn lease_end(&self) -> Instant {
        self.at + self.g.ack_wait
    }

    fn leased(&self) -> bool {
        self.lease.valid() && Instant::now() < self.lease_end()
    }

    async fn ack_with(&self, kind: AckKind) -> Result<(), PubSubError> {
        self.message
            .double_ack_with(kind)
            .await
            .map_err(|e| NatsError::jetstream(format!("{kind:?} of a delivery"), e).into())
    }

    async fn dead_letter_now(&self, reason: &str) -> Result<(), PubSubError> {
        let mut original = decode(&self.message, &self.g.broker.config.subject_prefix)
            .map_err(|why| NatsError::jetstream("decoding a delivery", why))?;
        original.topic = self.g.broker.topic_of(&self.message.subject).to_owned();
        dead_letter(&self.g, &self.message, &original, self.attempt, reason).await
    }
}

#[async_trait]
impl Settle for PartitionSettle {
    async fn settle(mut self: Box<Self>, settlement: Settlement) -> Result<(), PubSubError> {
        self.settled = true;
        if !self.leased() {
            // Fenced: the lease ran out, or the partition is no longer this member's.
            self.notify(Outcome::Returns(self.lease_end()));
            return Err(PubSubError::LeaseLost);
        }
        let (result, outcome) = match settlement {
            Settlement::Ack => (self.ack_with(AckKind::Ack).await, Outcome::Done),
            Settlement::Nack { reason, .. } if self.attempt >= self.g.max_deliveries => {
                let reason = herald::queue::last_nack_reason(reason, self.g.max_deliveries);
                (self.dead_letter_now(&reason).await, Outcome::Done)
            }
            Settlement::Nack { delay, .. } => {
                let result = self.ack_with(AckKind::Nak((!delay.is_zero()).then_some(delay))).await;
                (result, Outcome::Returns(Instant::now() + delay))
            }
            Settlement::DeadLetter { reason } => (self.dead_letter_now(&reason).await, Outcome::Done),
        };
        // A settlement that failed leaves the message pending: it comes back after its ack wait.
        self.notify(if result.is_ok() { outcome } else { Outcome::Returns(self.lease_end()) });
        result
    }

    fn return_unseen(mut self: Box<Self>) {
        self.settled = true;
        if !self.leased() || tokio::runtime::Handle::try_current().is_err() {
            self.notify(Outcome::Returns(self.lease_end()));
            return;
        }
        let tasks = self.g.broker.tasks.clone();
        tasks.spawn(async move {
            let outcome = match self.ack_with(AckKind::Nak(None)).await {
                Ok(()) => Outcome::Returns(Instant::now()),
                Err(e) => {
                    tracing::debug!(error = %e, "returning an unseen delivery; it comes back after its ack wait");
                    Outcome::Returns(self.lease_end())
                }
            };
            self.notify(outcome);
        });
    }
}

impl Drop for PartitionSettle {
    fn drop(&mut self) {
        if !self.settled {
            // Dropped unsettled: JetStream redelivers it when its ack wait runs out.
            self.notify(Outcome::Returns(self.lease_end()));
        }
    }
}
