//! The lease and fenced-checkpoint scenarios (part of [`store_suite!`](crate::store_suite)):
//! a named lease has one holder at a time, keeps its fencing token while renewed and hands over
//! with a larger one; a conditional checkpoint save is refused when the checkpoint moved or a
//! newer lease holder saved it; two leased runners of one projection apply every event exactly
//! once, also when the first dies mid-run (ADR 0015).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use herald::projection::{Projection, ProjectionError, ProjectionRunner, RunnerConfig};
use herald::store::{ExpectedVersion, LeaseGrant, NewEvent, RecordedEvent, Store, StoreError, Transaction};
use tokio_util::sync::CancellationToken;

use crate::StoreFixture;
use crate::support::{WAIT, eventually_that, unique};

const LONG: Duration = Duration::from_secs(60);

async fn acquire(store: &dyn Store, name: &str, holder: &str, ttl: Duration) -> Option<LeaseGrant> {
    store.acquire_lease(name, holder, ttl).await.expect("acquire_lease")
}

/// A held lease is refused to every other holder (also through another handle), and renewing
/// it keeps its holder and fencing token; leases of other names are independent.
pub async fn a_held_lease_is_refused_to_others_and_renewal_keeps_its_token<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let (store, other) = (&*fx.store, &*fx.other);
    let name = unique("lease");
    let first = acquire(store, &name, "a", LONG).await.expect("a free lease is granted");
    assert_eq!((first.name.as_str(), first.holder.as_str()), (name.as_str(), "a"));
    assert!(first.token >= 1, "tokens start at 1: {first:?}");
    assert_eq!(acquire(other, &name, "b", LONG).await, None, "a held lease is refused to another holder");
    assert_eq!(acquire(store, &name, "c", LONG).await, None, "to every other holder");
    for _ in 0..3 {
        let renewed = acquire(store, &name, "a", LONG).await.expect("the holder renews it");
        assert_eq!(renewed.token, first.token, "a renewal in time keeps the token");
    }
    assert_eq!(acquire(other, &name, "b", LONG).await, None, "still refused after renewals");
    let elsewhere = acquire(other, &unique("other-lease"), "b", LONG).await;
    assert!(elsewhere.is_some(), "another name is another lease");
}

/// A release by a non-holder changes nothing; the holder's release hands the lease over at once,
/// with a larger token — also to the same holder taking it again.
pub async fn a_released_lease_hands_over_at_once_with_a_larger_token<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let (store, other) = (&*fx.store, &*fx.other);
    let name = unique("lease");
    let a = acquire(store, &name, "a", LONG).await.expect("granted");
    other.release_lease(&name, "b").await.expect("release by a non-holder");
    assert_eq!(acquire(other, &name, "b", LONG).await, None, "a non-holder's release changes nothing");
    assert_eq!(acquire(store, &name, "a", LONG).await.map(|g| g.token), Some(a.token), "still a's, same token");

    store.release_lease(&name, "a").await.expect("release");
    let b = acquire(other, &name, "b", LONG).await.expect("a released lease is free at once");
    assert!(b.token > a.token, "the new holder's token is larger: {a:?} then {b:?}");
    other.release_lease(&name, "b").await.expect("release");
    store.release_lease(&name, "b").await.expect("releasing twice is harmless");
    let again = acquire(other, &name, "b", LONG).await.expect("free again");
    assert!(again.token > b.token, "a new tenure of the same holder has a larger token too: {b:?} then {again:?}");
}

/// A holder that stops renewing loses the lease when its time to live runs out; the next holder
/// gets a larger token, and the old holder is refused from then on.
pub async fn an_expired_lease_hands_over_with_a_larger_token<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let (store, other) = (fx.store.clone(), fx.other.clone());
    let name = unique("lease");
    let short = Duration::from_millis(300);
    let a = acquire(&*store, &name, "a", short).await.expect("granted");
    assert_eq!(acquire(&*other, &name, "b", LONG).await, None, "still a's before it runs out");
    let taken = Arc::new(Mutex::new(None));
    eventually_that(WAIT, "the lease to run out and go to b", || {
        let (other, name, taken) = (other.clone(), name.clone(), taken.clone());
        async move {
            let grant = acquire(&*other, &name, "b", LONG).await;
            let got = grant.is_some();
            *taken.lock().unwrap_or_else(PoisonError::into_inner) = grant;
            got
        }
    })
    .await;
    let b = taken.lock().unwrap_or_else(PoisonError::into_inner).clone().expect("b's grant");
    assert!(b.token > a.token, "a lease that ran out goes over with a larger token: {a:?} then {b:?}");
    assert_eq!(acquire(&*store, &name, "a", LONG).await, None, "the old holder is refused now");
}

/// Many acquirers of a free lease at once (on both handles): exactly one gets it.
pub async fn of_concurrent_acquirers_of_a_free_lease_exactly_one_wins<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    for round in 0..3 {
        let name = unique("lease");
        let mut takers = tokio::task::JoinSet::new();
        for i in 0..8 {
            let s = if i % 2 == 0 { fx.store.clone() } else { fx.other.clone() };
            let name = name.clone();
            takers.spawn(async move { acquire(&*s, &name, &format!("taker-{i}"), LONG).await });
        }
        let winners: Vec<LeaseGrant> = takers.join_all().await.into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one of 8 concurrent acquirers wins: {winners:?}");
    }
}

async fn save_if(
    store: &dyn Store,
    name: &str,
    expected: u64,
    position: u64,
    token: Option<u64>,
) -> Result<(), StoreError> {
    let mut tx = store.begin().await.expect("begin");
    tx.save_checkpoint_if(name, expected, position, token).await?;
    tx.commit().await
}

/// A conditional checkpoint save succeeds only from the expected position (no checkpoint is 0)
/// and with no newer fencing token stored; a refusal is [`StoreError::Fenced`] saying which, and
/// leaves the checkpoint as it was.
pub async fn a_conditional_checkpoint_save_is_refused_when_moved_or_fenced<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let store = &*fx.store;
    let name = unique("projection");
    save_if(store, &name, 0, 5, None).await.expect("no checkpoint counts as 0");
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(5));

    let moved = save_if(store, &name, 3, 9, None).await.expect_err("a save from a position it is not at");
    assert!(matches!(moved, StoreError::Fenced { expected: 3, found: Some(5), .. }), "{moved:?}");
    assert!(!moved.is_stale_lease() && moved.to_string().contains("moved"), "{moved}");
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(5), "unchanged");

    save_if(store, &name, 5, 8, Some(2)).await.expect("a save under token 2");
    save_if(store, &name, 8, 9, Some(2)).await.expect("the same token again");
    save_if(store, &name, 9, 10, Some(3)).await.expect("a newer token");
    let stale = save_if(store, &name, 10, 11, Some(2)).await.expect_err("an older token");
    assert!(stale.is_stale_lease(), "{stale:?}");
    assert!(matches!(stale, StoreError::Fenced { token: Some(2), found_token: 3, .. }), "{stale:?}");
    assert!(stale.to_string().contains("newer lease holder"), "a clear error: {stale}");
    save_if(store, &name, 10, 12, None).await.expect("without a token, only the position counts");
    save_if(store, &name, 12, 13, Some(3)).await.expect("and the stored token stayed 3");
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(13));

    // Inside one transaction, a second conditional save follows the first.
    let mut tx = store.begin().await.expect("begin");
    tx.save_checkpoint_if(&name, 13, 14, Some(3)).await.expect("first");
    tx.save_checkpoint_if(&name, 14, 15, Some(3)).await.expect("second, from the first's position");
    drop(tx);
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(13), "rolled back with its transaction");
}

/// Two transactions (on both handles) save one checkpoint from the same position at once:
/// exactly one commits, many times over, and the checkpoint ends where the winners took it.
pub async fn of_two_concurrent_conditional_saves_from_one_position_one_commits<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let name = unique("projection");
    let mut position = 0;
    for round in 0..10u64 {
        let mut savers = tokio::task::JoinSet::new();
        for (i, store) in [fx.store.clone(), fx.other.clone()].into_iter().enumerate() {
            let name = name.clone();
            let target = position + 1 + i as u64;
            savers.spawn(async move {
                let mut tx = store.begin().await.expect("begin");
                tx.save_checkpoint_if(&name, position, target, None).await?;
                tokio::task::yield_now().await;
                tx.commit().await.map(|()| target)
            });
        }
        let results = savers.join_all().await;
        let won: Vec<u64> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one of two concurrent saves commits: {results:?}");
        for lost in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(lost.is_fenced() || lost.is_conflict(), "the loser is refused, not broken: {lost:?}");
        }
        position = won[0];
        assert_eq!(fx.store.load_checkpoint(&name).await.expect("load"), Some(position));
    }
}

/// A read model shared by every runner of the scenario (as one table would be): how many times
/// each event's effect was committed.
#[derive(Debug, Default)]
struct Applied {
    counts: Mutex<BTreeMap<u64, u32>>,
    batches: AtomicU64,
}

impl Applied {
    fn counts(&self) -> BTreeMap<u64, u32> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Records each event in the store's inbox (under the projection's name) in the batch's
/// transaction — a durable read model every store has: a second application of an event finds
/// it recorded and fails the batch — and counts it in memory once the batch commits (an
/// `on_commit` hook, so a rolled-back batch counts nothing; a runner killed between its commit
/// and its hooks counts nothing either, so the count may only miss, never add). A little slow,
/// so that a runner is caught mid-run.
struct Counting {
    name: String,
    applied: Arc<Applied>,
}

#[async_trait]
impl Projection for Counting {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError> {
        self.handle_batch(tx, &[event]).await
    }

    async fn handle_batch(&self, tx: &mut dyn Transaction, events: &[&RecordedEvent]) -> Result<(), ProjectionError> {
        let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
        for e in events {
            if !tx.record_handled(&self.name, e.id).await? {
                return Err(ProjectionError::permanent(format!(
                    "the event at position {} was applied twice",
                    e.position
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        let applied = self.applied.clone();
        tx.on_commit(Box::new(move || {
            applied.batches.fetch_add(1, Ordering::SeqCst);
            let mut counts = applied.counts.lock().unwrap_or_else(PoisonError::into_inner);
            for p in positions {
                *counts.entry(p).or_default() += 1;
            }
        }));
        Ok(())
    }

    async fn reset(&self, _tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        Ok(())
    }
}

async fn append_events(store: &dyn Store, prefix: &str, n: usize) -> Vec<RecordedEvent> {
    let stream = unique(prefix);
    store
        .append(&stream, ExpectedVersion::Any, (0..n).map(|i| NewEvent::new("Counted.v1", i.to_string())).collect())
        .await
        .expect("append");
    store.read_stream(&stream, 1, n + 1).await.expect("read")
}

/// Whether the read model (the inbox) holds `event`; changes nothing.
async fn recorded(store: &dyn Store, projection: &str, event: &RecordedEvent) -> bool {
    let mut tx = store.begin().await.expect("begin");
    !tx.record_handled(projection, event.id).await.expect("record_handled") // dropped: rolled back
}

/// Two processes run one projection with [`ProjectionRunner::run_leased`] over the same log;
/// the first holder dies mid-run (its task aborted, its lease left to run out) and the second
/// takes over: every event's effect is committed exactly once (the read model has every event,
/// none applied twice), and the second's checkpoint reaches the head.
pub async fn two_leased_runners_of_one_projection_apply_every_event_exactly_once<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let name = unique("counting");
    let applied = Arc::new(Applied::default());
    let runner = |store: &Arc<dyn Store>| {
        let projection = Arc::new(Counting { name: name.clone(), applied: applied.clone() });
        ProjectionRunner::with_config(store.clone(), projection, RunnerConfig::default().batch_size(5))
    };
    let ttl = Duration::from_millis(500);
    let mut events = append_events(&*fx.store, "counted", 200).await;

    let (a, b) = (runner(&fx.store), runner(&fx.other));
    let stop = CancellationToken::new();
    let a_task = tokio::spawn({
        let (a, stop) = (a.clone(), stop.clone());
        async move { a.run_leased("runner-a", ttl, stop).await }
    });
    eventually_that(WAIT, "runner a to commit some batches", || async { applied.batches.load(Ordering::SeqCst) >= 3 })
        .await;
    let b_task = tokio::spawn({
        let (b, stop) = (b.clone(), stop.clone());
        async move { b.run_leased("runner-b", ttl, stop).await }
    });
    // a dies mid-run, without a word: its batch in hand rolls back, its lease runs out.
    a_task.abort();
    let _ = a_task.await;
    let after_a = fx.store.load_checkpoint(&name).await.expect("load").unwrap_or(0);
    let last = events.iter().map(|e| e.position).max().expect("events");
    assert!(after_a < last, "a died before the end (checkpoint {after_a} of {last})");
    events.extend(append_events(&*fx.other, "counted-later", 50).await);

    let head = events.iter().map(|e| e.position).max().expect("events");
    eventually_that(WAIT, "runner b to take over and reach the head", || async {
        fx.other.load_checkpoint(&name).await.expect("load").is_some_and(|p| p >= head)
    })
    .await;
    stop.cancel();
    tokio::time::timeout(WAIT, b_task).await.expect("b stops").expect("b's task").expect("b ran without error");

    let twice: Vec<_> = applied.counts().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "events applied more than once: {twice:?}");
    for e in &events {
        assert!(recorded(&*fx.store, &name, e).await, "the event at position {} was applied", e.position);
    }
}

/// A holder whose lease ran out and went to another (which claimed the checkpoint) tries to
/// commit a batch under its old token: the save is refused with a clear error, and the batch's
/// read-model writes roll back with it.
pub async fn a_stale_lease_holders_batch_is_refused_and_rolled_back<F: Future<Output = StoreFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let (store, other) = (fx.store.clone(), fx.other.clone());
    let name = unique("counting");
    let lease = herald::lease::projection_lease(&name);
    let applied = Arc::new(Applied::default());
    let projection = Counting { name: name.clone(), applied: applied.clone() };
    let events = append_events(&*store, "counted", 10).await;
    let batch: Vec<&RecordedEvent> = events.iter().collect();
    let last = batch.last().expect("events").position;

    // a holds the lease and claims the checkpoint with its token ...
    let a = acquire(&*store, &lease, "a", Duration::from_millis(300)).await.expect("granted");
    save_if(&*store, &name, 0, 0, Some(a.token)).await.expect("a claims the checkpoint");
    // ... then stalls past its time to live; b takes the lease and claims the checkpoint.
    let taken = Arc::new(Mutex::new(None));
    eventually_that(WAIT, "a's lease to run out and go to b", || {
        let (other, lease, taken) = (other.clone(), lease.clone(), taken.clone());
        async move {
            let grant = acquire(&*other, &lease, "b", LONG).await;
            let got = grant.is_some();
            *taken.lock().unwrap_or_else(PoisonError::into_inner) = grant;
            got
        }
    })
    .await;
    let b = taken.lock().unwrap_or_else(PoisonError::into_inner).clone().expect("b's grant");
    assert!(b.token > a.token);
    save_if(&*other, &name, 0, 0, Some(b.token)).await.expect("b claims the checkpoint");

    // a wakes up and commits the batch it had in hand, still believing it holds the lease.
    let mut tx = store.begin().await.expect("begin");
    projection.handle_batch(tx.as_mut(), &batch).await.expect("handle");
    let refused = tx.save_checkpoint_if(&name, 0, last, Some(a.token)).await.expect_err("a stale holder's save");
    assert!(refused.is_stale_lease(), "{refused:?}");
    let message = refused.to_string();
    assert!(message.contains(&name) && message.contains("newer lease holder"), "a clear error: {message}");
    drop(tx);
    assert!(applied.counts().is_empty(), "the stale batch's read-model writes rolled back");
    for e in &events {
        assert!(!recorded(&*store, &name, e).await, "rolled back: the event at position {} is not applied", e.position);
    }
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(0));

    // b projects the same batch under its token: applied once.
    let mut tx = other.begin().await.expect("begin");
    projection.handle_batch(tx.as_mut(), &batch).await.expect("handle");
    tx.save_checkpoint_if(&name, 0, last, Some(b.token)).await.expect("the holder's save");
    tx.commit().await.expect("commit");
    assert_eq!(applied.counts().values().copied().collect::<Vec<_>>(), vec![1; batch.len()]);
    for e in &events {
        assert!(recorded(&*store, &name, e).await, "the event at position {} is applied", e.position);
    }
    assert_eq!(store.load_checkpoint(&name).await.expect("load"), Some(last));
}

/// A read model in epochs: each [`reset`](Projection::reset) starts a new epoch (in the reset's
/// transaction), and each event is recorded in the store's inbox under `<name>@<epoch>` — a
/// second application within an epoch fails the batch — and counted per epoch once its batch
/// commits.
struct Epochs {
    name: String,
    epoch: Arc<AtomicU64>,
    counts: Arc<Mutex<BTreeMap<(u64, u64), u32>>>,
}

#[async_trait]
impl Projection for Epochs {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError> {
        self.handle_batch(tx, &[event]).await
    }

    async fn handle_batch(&self, tx: &mut dyn Transaction, events: &[&RecordedEvent]) -> Result<(), ProjectionError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        for e in events {
            if !tx.record_handled(&format!("{}@{epoch}", self.name), e.id).await? {
                let position = e.position;
                return Err(ProjectionError::permanent(format!("position {position} applied twice in epoch {epoch}")));
            }
        }
        let (counts, positions) = (self.counts.clone(), events.iter().map(|e| e.position).collect::<Vec<_>>());
        tx.on_commit(Box::new(move || {
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            for p in positions {
                *counts.entry((epoch, p)).or_default() += 1;
            }
        }));
        Ok(())
    }

    async fn reset(&self, _tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        // In the reset's transaction, after the checkpoint row: a batch that sees the new
        // epoch commits after the reset, or is refused.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Two processes run one projection with [`ProjectionRunner::run_leased`]; a rebuild is
/// requested with [`ProjectionRunner::rebuild_leased`] from each in turn (one holds the lease,
/// the other stands by), while events keep coming: the lease holder replays the log, nobody
/// stops, and in the last epoch every event is applied exactly once.
pub async fn a_rebuild_requested_from_any_replica_is_replayed_once_by_the_lease_holder<
    F: Future<Output = StoreFixture>,
>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let name = unique("epochs");
    let (epoch, counts) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(BTreeMap::new())));
    let runner = |store: &Arc<dyn Store>| {
        let projection = Arc::new(Epochs { name: name.clone(), epoch: epoch.clone(), counts: counts.clone() });
        ProjectionRunner::with_config(store.clone(), projection, RunnerConfig::default().batch_size(10))
    };
    let (a, b) = (runner(&fx.store), runner(&fx.other));
    let stop = CancellationToken::new();
    let tasks: Vec<_> = [(a.clone(), "replica-a"), (b.clone(), "replica-b")]
        .into_iter()
        .map(|(r, holder)| {
            let stop = stop.clone();
            tokio::spawn(async move { r.run_leased(holder, Duration::from_secs(2), stop).await })
        })
        .collect();
    let mut events = append_events(&*fx.store, "epoch", 60).await;
    let head = |events: &[RecordedEvent]| events.iter().map(|e| e.position).max().expect("events");
    let caught_up = |target: u64| {
        let store = fx.store.clone();
        let name = name.clone();
        move || {
            let (store, name) = (store.clone(), name.clone());
            async move { store.load_checkpoint(&name).await.expect("load").is_some_and(|p| p >= target) }
        }
    };
    eventually_that(WAIT, "the holder to project the first events", caught_up(head(&events))).await;

    for requester in [&b, &a] {
        let more = {
            let other = fx.other.clone();
            tokio::spawn(async move { append_events(&*other, "epoch-more", 30).await })
        };
        let report = tokio::time::timeout(WAIT, requester.rebuild_leased(CancellationToken::new()))
            .await
            .expect("the rebuild ends")
            .expect("the rebuild succeeds");
        assert!(report.completed && report.position >= report.target, "{report:?}");
        events.extend(more.await.expect("appending"));
        eventually_that(WAIT, "the holder to project every event", caught_up(head(&events))).await;
    }
    let last = epoch.load(Ordering::SeqCst);
    assert!(last >= 2, "two rebuilds, two resets: epoch {last}");
    let counts = counts.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for e in &events {
        assert_eq!(counts.get(&(last, e.position)), Some(&1), "position {} in the last epoch", e.position);
    }
    assert!(tasks.iter().all(|t| !t.is_finished()), "no runner stopped");
    stop.cancel();
    for task in tasks {
        tokio::time::timeout(WAIT, task).await.expect("stops").expect("task").expect("ran without error");
    }
}
