//! Projections on the in-memory store: catch-up, live, resume, independence, late start,
//! rebuild with progress, the failure policy, lag, and old event shapes upcast before the
//! projection sees them.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use herald::codec::UPCAST_FROM;
use herald::memory::MemoryStore;
use herald::projection::{
    EventFilter, Phase, Progress, Projection, ProjectionError, ProjectionRunner, RunError, RunnerConfig, run_all,
};
use herald::router::RetryPolicy;
use herald::store::{RecordedEvent, StreamAppend};
use herald::{Event, ExpectedVersion, NewEvent, Registry, Store, Transaction};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
}
impl Event for Deposited {
    const NAME: &'static str = "bank.Deposited.v1";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Noted {
    text: String,
}
impl Event for Noted {
    const NAME: &'static str = "bank.Noted.v1";
}

/// count and sum per stream
type Model = BTreeMap<String, (u64, i64)>;

/// Count and sum of deposits per stream, kept in memory and changed only when the runner's
/// transaction commits (an `on_commit` hook per event), like a table in the same database.
struct Balances {
    name: String,
    filter: EventFilter,
    registry: Registry,
    model: Arc<Mutex<Model>>,
    handled: AtomicU64,
    /// Fail permanently on this amount.
    poison: Option<i64>,
    /// Fail transiently this many times first.
    transient_failures: AtomicU32,
    /// Sleep a little on every hundredth amount (so a watcher sees the progress of a rebuild
    /// that would otherwise finish in a few milliseconds).
    slow: bool,
}

impl Balances {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            filter: EventFilter::all(),
            registry: Registry::new(),
            model: Arc::default(),
            handled: AtomicU64::new(0),
            poison: None,
            transient_failures: AtomicU32::new(0),
            slow: false,
        }
    }

    fn snapshot(&self) -> Model {
        self.model.lock().unwrap().clone()
    }

    fn total_count(&self) -> u64 {
        self.model.lock().unwrap().values().map(|(c, _)| c).sum()
    }
}

#[async_trait]
impl Projection for Balances {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        self.filter.clone()
    }

    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if self.transient_failures.load(Ordering::SeqCst) > 0 {
            self.transient_failures.fetch_sub(1, Ordering::SeqCst);
            return Err(ProjectionError::transient("database is locked (simulated)"));
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        let amount =
            if event.name == Deposited::NAME { event.decode_with::<Deposited>(&self.registry)?.amount } else { 0 };
        if self.slow && amount % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        if self.poison == Some(amount) {
            return Err(ProjectionError::permanent(format!("cannot project amount {amount}")));
        }
        let model = self.model.clone();
        let stream = event.stream.clone();
        tx.on_commit(Box::new(move || {
            let mut m = model.lock().unwrap();
            let row = m.entry(stream).or_default();
            row.0 += 1;
            row.1 += amount;
        }));
        Ok(())
    }

    async fn reset(&self, tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        let model = self.model.clone();
        tx.on_commit(Box::new(move || model.lock().unwrap().clear()));
        Ok(())
    }
}

fn deposit(amount: i64) -> NewEvent {
    NewEvent::encode(&Deposited { amount }).unwrap()
}

/// Appends `n` deposits with amounts `first..first+n` spread over `streams` streams, in one
/// transaction per 100 events.
async fn append_deposits(store: &MemoryStore, first: i64, n: i64, streams: i64) {
    let mut batch = Vec::new();
    for amount in first..first + n {
        batch.push(StreamAppend {
            stream: format!("acct-{}", amount % streams),
            expected: ExpectedVersion::Any,
            events: vec![deposit(amount)],
        });
        if batch.len() == 100 {
            store.append_many(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    if !batch.is_empty() {
        store.append_many(batch).await.unwrap();
    }
}

/// What the read model must hold after deposits `0..n` over `streams` streams.
fn expected_model(n: i64, streams: i64) -> Model {
    let mut m = Model::new();
    for amount in 0..n {
        let row = m.entry(format!("acct-{}", amount % streams)).or_default();
        row.0 += 1;
        row.1 += amount;
    }
    m
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config(batch: usize) -> RunnerConfig {
    RunnerConfig::default().batch_size(batch).retry(RetryPolicy {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        multiplier: 2.0,
        jitter: 0.0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_follows_live_and_resumes_from_its_checkpoint() {
    let store = MemoryStore::new();
    append_deposits(&store, 0, 1234, 7).await;
    let projection = Arc::new(Balances::new("balances"));
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), projection.clone(), config(100));

    let before = runner.status().await.unwrap();
    assert_eq!(
        (before.phase.clone(), before.position, before.head, before.events_behind),
        (Phase::Idle, 0, 1234, 1234)
    );

    let cancel = CancellationToken::new();
    let task = runner.spawn(cancel.clone());
    wait_until("caught up", || projection.total_count() == 1234).await;
    assert_eq!(projection.snapshot(), expected_model(1234, 7));

    // Live: new commits are projected without restarting.
    append_deposits(&store, 1234, 66, 7).await;
    wait_until("live events projected", || projection.total_count() == 1300).await;
    assert_eq!(projection.snapshot(), expected_model(1300, 7));
    let status = runner.status().await.unwrap();
    assert_eq!((status.position, status.head, status.events_behind), (1300, 1300, 0));
    assert_eq!(status.seconds_behind, 0.0);
    wait_until("live phase", || runner.phase() == Phase::Live).await;

    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(store.load_checkpoint("balances").await.unwrap(), Some(1300));

    // Restart with a fresh runner: it resumes at the checkpoint and handles only new events.
    append_deposits(&store, 1300, 200, 7).await;
    let handled_before = projection.handled.load(Ordering::SeqCst);
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), projection.clone(), config(100));
    let cancel = CancellationToken::new();
    let task = runner.spawn(cancel.clone());
    wait_until("resumed", || projection.total_count() == 1500).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(projection.handled.load(Ordering::SeqCst) - handled_before, 200, "no event handled twice");
    assert_eq!(projection.snapshot(), expected_model(1500, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_run_independently_and_a_failing_one_stops_alone_at_its_event() {
    let store = MemoryStore::new();
    append_deposits(&store, 0, 500, 5).await;
    store
        .append("notes-1", ExpectedVersion::Any, vec![NewEvent::encode(&Noted { text: "hi".into() }).unwrap()])
        .await
        .unwrap();

    let all = Arc::new(Balances::new("all"));
    let mut filtered = Balances::new("acct-1-deposits");
    filtered.filter = EventFilter::all().names([Deposited::NAME]).stream_prefix("acct-1");
    let filtered = Arc::new(filtered);
    let mut failing = Balances::new("failing");
    failing.poison = Some(321);
    let failing = Arc::new(failing);

    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let runners = [all.clone() as Arc<dyn Projection>, filtered.clone(), failing.clone()]
        .map(|p| ProjectionRunner::with_config(shared.clone(), p, config(64)));
    let failing_runner = runners[2].clone();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_all(runners.clone(), cancel.clone()));

    wait_until("all projected", || all.total_count() == 501).await;
    wait_until("filtered projected", || filtered.total_count() == 100).await;
    // The failing runner stopped at the event of amount 321; the events before it committed.
    let poison = store
        .read_all(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.decode::<Deposited>().is_ok_and(|d| d.amount == 321))
        .unwrap()
        .position;
    wait_until("failing stopped", || matches!(failing_runner.phase(), Phase::Failed { .. })).await;
    assert_eq!(failing.total_count(), poison - 1);
    assert_eq!(store.load_checkpoint("failing").await.unwrap(), Some(poison - 1));
    let status = failing_runner.status().await.unwrap();
    assert!(matches!(status.phase, Phase::Failed { .. }), "{status:?}");
    assert_eq!((status.position, status.events_behind), (poison - 1, 501 - (poison - 1)));

    // The others keep following the log.
    append_deposits(&store, 1000, 10, 5).await;
    wait_until("all follows live", || all.total_count() == 511 && filtered.total_count() == 102).await;
    cancel.cancel();
    let results = task.await.unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0].1.is_ok() && results[1].1.is_ok());
    match &results[2] {
        (name, Err(RunError::Event { position, stream, event, .. })) => {
            assert_eq!(
                (name.as_str(), *position, stream.as_str(), event.as_str()),
                ("failing", poison, "acct-1", Deposited::NAME)
            );
        }
        other => panic!("expected the failing projection to stop on its event, got {other:?}"),
    }
    // The filter saw only acct-1 deposits (acct-1, acct-10.. do not exist with 5 streams).
    assert_eq!(filtered.snapshot().keys().collect::<Vec<_>>(), ["acct-1"]);
    assert_eq!(filtered.handled.load(Ordering::SeqCst), 102, "only matching events reach the projection");
    assert_eq!(
        store.load_checkpoint("acct-1-deposits").await.unwrap(),
        Some(511),
        "filtered events move the checkpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_added_later_catches_up_from_the_beginning() {
    let store = MemoryStore::new();
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let first = Arc::new(Balances::new("first"));
    let cancel = CancellationToken::new();
    let first_task = ProjectionRunner::with_config(shared.clone(), first.clone(), config(50)).spawn(cancel.clone());
    append_deposits(&store, 0, 700, 9).await;
    wait_until("first projected", || first.total_count() == 700).await;

    let later = Arc::new(Balances::new("later"));
    assert_eq!(store.load_checkpoint("later").await.unwrap(), None);
    let later_task = ProjectionRunner::with_config(shared.clone(), later.clone(), config(50)).spawn(cancel.clone());
    append_deposits(&store, 700, 100, 9).await;
    wait_until("later caught up and live", || later.total_count() == 800 && first.total_count() == 800).await;
    assert_eq!(later.snapshot(), first.snapshot());
    assert_eq!(later.snapshot(), expected_model(800, 9));
    cancel.cancel();
    first_task.await.unwrap().unwrap();
    later_task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_caught_up_returns_once_everything_in_the_log_is_projected() {
    let store = MemoryStore::new();
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let balances = Arc::new(Balances::new("waited"));
    let runner = ProjectionRunner::with_config(shared.clone(), balances.clone(), config(50));
    append_deposits(&store, 0, 300, 7).await;
    let cancel = CancellationToken::new();
    let task = runner.spawn(cancel.clone());
    let position = tokio::time::timeout(Duration::from_secs(10), runner.wait_caught_up()).await.unwrap().unwrap();
    // No waiting loop: the read model is complete when the call returns.
    assert_eq!(balances.snapshot(), expected_model(300, 7));
    assert_eq!(position, store.read_all(0, 1000).await.unwrap().last().unwrap().position);
    cancel.cancel();
    task.await.unwrap().unwrap();

    // A runner that resumes at the head (and so reports no progress) is caught up at once.
    let again = ProjectionRunner::with_config(shared, balances.clone(), config(50));
    let cancel = CancellationToken::new();
    let task = again.spawn(cancel.clone());
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), again.wait_caught_up()).await.unwrap().unwrap(), position);
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn catch_up_projects_what_is_in_the_log_and_returns() {
    let store = MemoryStore::new();
    let balances = Arc::new(Balances::new("batch"));
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), balances.clone(), config(40));
    append_deposits(&store, 0, 100, 3).await;
    let position = runner.catch_up(CancellationToken::new()).await.unwrap();
    assert_eq!(balances.snapshot(), expected_model(100, 3));
    assert_eq!(store.load_checkpoint("batch").await.unwrap(), Some(position));
    append_deposits(&store, 100, 10, 3).await;
    runner.catch_up(CancellationToken::new()).await.unwrap();
    assert_eq!(balances.snapshot(), expected_model(110, 3), "resumed from its checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_resets_replays_reports_progress_and_ends_equal() {
    let store = MemoryStore::new();
    append_deposits(&store, 0, 2000, 13).await;
    let projection = Arc::new(Balances { slow: true, ..Balances::new("balances") });
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), projection.clone(), config(100).log_every(500));
    let cancel = CancellationToken::new();
    let task = runner.spawn(cancel.clone());
    wait_until("projected", || projection.total_count() == 2000).await;
    // A rebuild while running is refused.
    assert!(matches!(runner.rebuild(CancellationToken::new()).await, Err(RunError::AlreadyRunning { .. })));
    cancel.cancel();
    task.await.unwrap().unwrap();
    let before = projection.snapshot();

    // Corrupt the read model, as a bug would have; the rebuild fixes it.
    projection.model.lock().unwrap().insert("bogus".into(), (1, 1));

    let mut progress = runner.progress();
    let seen = tokio::spawn(async move {
        let mut seen: Vec<Progress> = Vec::new();
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            let done = p.rebuilding && p.position >= p.target && p.target > 0;
            seen.push(p);
            if done {
                break;
            }
        }
        seen
    });
    let report = runner.rebuild(CancellationToken::new()).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), seen).await.unwrap().unwrap();

    assert!(report.completed);
    assert_eq!((report.position, report.target, report.events), (2000, 2000, 2000));
    assert_eq!(projection.snapshot(), before, "the rebuilt model equals the original");
    assert_eq!(projection.total_count(), 2000);
    let rebuilding: Vec<_> = seen.iter().filter(|p| p.rebuilding && p.events > 0).collect();
    assert!(rebuilding.len() >= 2, "progress observed during the rebuild: {seen:?}");
    assert!(rebuilding.windows(2).all(|w| w[0].position < w[1].position && w[0].events < w[1].events));
    let last = rebuilding.last().unwrap();
    assert_eq!((last.position, last.target), (2000, 2000));
    assert!(last.rate > 0.0);
    assert_eq!(store.load_checkpoint("balances").await.unwrap(), Some(2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_rolls_the_batch_back_and_retries_it() {
    let store = MemoryStore::new();
    append_deposits(&store, 0, 300, 4).await;
    let projection = Arc::new(Balances::new("flaky"));
    projection.transient_failures.store(3, Ordering::SeqCst);
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), projection.clone(), config(1000));
    let cancel = CancellationToken::new();
    let task = runner.spawn(cancel.clone());
    wait_until("projected after retries", || projection.total_count() == 300).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(projection.snapshot(), expected_model(300, 4), "nothing applied twice");

    // With a limit, a failure that persists stops the runner with the error.
    let stubborn = Arc::new(Balances::new("stubborn"));
    stubborn.transient_failures.store(u32::MAX, Ordering::SeqCst);
    let runner =
        ProjectionRunner::with_config(Arc::new(store.clone()), stubborn.clone(), config(100).max_attempts(Some(3)));
    match runner.run(CancellationToken::new()).await {
        Err(RunError::Store { attempts: 3, position: 0, .. }) => {}
        other => panic!("expected to give up after 3 attempts, got {other:?}"),
    }
    assert_eq!(stubborn.total_count(), 0);
}

#[tokio::test]
async fn status_reports_events_and_seconds_behind() {
    let store = MemoryStore::new();
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    for i in 0..10i64 {
        let mut e = deposit(i);
        e.metadata.occurred_at = t0 + chrono::Duration::seconds(10 * i);
        store.append("acct-0", ExpectedVersion::Any, vec![e]).await.unwrap();
    }
    let projection = Arc::new(Balances::new("lag"));
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), projection.clone(), config(4));
    let status = runner.status().await.unwrap();
    assert_eq!((status.position, status.head, status.events_behind), (0, 10, 10));
    assert_eq!(status.seconds_behind, 90.0, "newest minus oldest when nothing is projected");

    // Project the first 4 events only (checkpoint at 4, the event at t0+30s).
    let mut tx = store.begin().await.unwrap();
    tx.save_checkpoint("lag", 4).await.unwrap();
    tx.commit().await.unwrap();
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), projection.clone(), config(4));
    let status = runner.status().await.unwrap();
    assert_eq!((status.position, status.head, status.events_behind), (4, 10, 6));
    assert_eq!(status.seconds_behind, 60.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_stops_when_someone_else_moves_its_checkpoint() {
    let store = MemoryStore::new();
    append_deposits(&store, 0, 100, 3).await;
    let projection = Arc::new(Balances::new("contended"));
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), projection.clone(), config(1000));
    let cancel = CancellationToken::new();
    let task = runner.spawn(cancel.clone());
    wait_until("projected", || projection.total_count() == 100).await;

    // Another runner of the same projection (elsewhere) commits a checkpoint.
    let mut tx = store.begin().await.unwrap();
    tx.save_checkpoint("contended", 150).await.unwrap();
    tx.commit().await.unwrap();
    append_deposits(&store, 100, 10, 3).await;

    match tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap() {
        Err(RunError::CheckpointMoved { expected: 100, found: Some(150), .. }) => {}
        other => panic!("expected the runner to stop on a moved checkpoint, got {other:?}"),
    }
    assert_eq!(projection.total_count(), 100, "nothing applied on top of the other runner's work");
    assert!(matches!(runner.phase(), Phase::Failed { .. }));
}

/// A projection whose batch write fails on batches over a size its single-event path accepts
/// (a `handle_batch` that disagrees with `handle`).
struct Picky {
    registry: Registry,
    poison: Option<i64>,
}

#[async_trait]
impl Projection for Picky {
    fn name(&self) -> &str {
        "picky"
    }

    async fn handle(&self, _tx: &mut dyn Transaction, _event: &RecordedEvent) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn handle_batch(&self, _tx: &mut dyn Transaction, events: &[&RecordedEvent]) -> Result<(), ProjectionError> {
        for e in events {
            if Some(e.decode_with::<Deposited>(&self.registry)?.amount) == self.poison {
                return Err(ProjectionError::permanent("poison in the batch"));
            }
        }
        if self.poison.is_none() && events.len() > 10 {
            return Err(ProjectionError::permanent("batch too big"));
        }
        Ok(())
    }

    async fn reset(&self, _tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_batch_is_replayed_event_by_event_to_find_the_culprit() {
    let store = MemoryStore::new();
    for amount in 0..40 {
        store.append("acct-0", ExpectedVersion::Any, vec![deposit(amount)]).await.unwrap();
    }
    // The batch write fails because of the event at amount 25 (position 26): found, and the 25
    // events before it committed.
    let located = Arc::new(Picky { registry: Registry::new(), poison: Some(25) });
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), located, config(16));
    match runner.run(CancellationToken::new()).await {
        Err(RunError::Event { position: 26, .. }) => {}
        other => panic!("expected the event at position 26, got {other:?}"),
    }
    assert_eq!(store.load_checkpoint("picky").await.unwrap(), Some(25));

    // A batch that fails as a whole but on no single event: reported as the batch, nothing committed.
    let mut tx = store.begin().await.unwrap();
    tx.save_checkpoint("picky", 0).await.unwrap();
    tx.commit().await.unwrap();
    let whole = Arc::new(Picky { registry: Registry::new(), poison: None });
    let runner = ProjectionRunner::with_config(Arc::new(store.clone()), whole, config(16));
    match runner.run(CancellationToken::new()).await {
        Err(RunError::Batch { first: 1, last: 16, .. }) => {}
        other => panic!("expected the batch 1..=16, got {other:?}"),
    }
    assert_eq!(store.load_checkpoint("picky").await.unwrap(), Some(0));
}

/// Two replicas run one projection with `run_leased`, sharing one read model: one projects, the
/// other stands by ([`Phase::Standby`]); stopped cleanly, the first hands over at once and the
/// second carries on from its checkpoint. Every deposit is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_replicas_take_turns_and_hand_over_on_a_clean_stop() {
    let store = MemoryStore::new();
    append_deposits(&store, 0, 500, 7).await;
    let model: Arc<Mutex<Model>> = Arc::default();
    let replica = || {
        let mut balances = Balances::new("leased-balances");
        balances.model = model.clone();
        balances.slow = true;
        ProjectionRunner::with_config(Arc::new(store.clone()), Arc::new(balances), config(20))
    };
    let (a, b) = (replica(), replica());
    assert_eq!(a.lease_name(), "herald:projection:leased-balances");
    let ttl = Duration::from_secs(2);
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let a_task = tokio::spawn({
        let (a, stop) = (a.clone(), stop_a.clone());
        async move { a.run_leased("replica-a", ttl, stop).await }
    });
    wait_until("a projects", || matches!(a.phase(), Phase::CatchingUp | Phase::Live)).await;
    let b_task = tokio::spawn({
        let (b, stop) = (b.clone(), stop_b.clone());
        async move { b.run_leased("replica-b", ttl, stop).await }
    });
    wait_until("b stands by", || b.phase() == Phase::Standby).await;
    wait_until("a is live", || a.phase() == Phase::Live).await;
    assert_eq!(model.lock().unwrap().clone(), expected_model(500, 7));

    let stopped = Instant::now();
    stop_a.cancel();
    a_task.await.unwrap().unwrap();
    append_deposits(&store, 500, 300, 7).await;
    wait_until("b takes over and catches up", || *model.lock().unwrap() == expected_model(800, 7)).await;
    assert!(stopped.elapsed() < ttl, "a clean stop hands over at the standby's next poll, not after the ttl");
    assert_ne!(b.phase(), Phase::Standby);
    stop_b.cancel();
    b_task.await.unwrap().unwrap();
    assert_eq!(b.phase(), Phase::Stopped);
    assert_eq!(store.load_checkpoint("leased-balances").await.unwrap(), Some(800));
}

/// Version 2 of [`Deposited`]: cents instead of whole units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DepositedV2 {
    cents: i64,
}
impl Event for DepositedV2 {
    const NAME: &'static str = "bank.Deposited.v2";
}

/// `bank.Deposited.v1` → `bank.Deposited.v2`; refuses a negative amount.
fn deposit_upcasters() -> Registry {
    Registry::new().upcast(Deposited::NAME, DepositedV2::NAME, |v| {
        let amount = v["amount"].as_i64().ok_or("amount missing")?;
        if amount < 0 {
            return Err(format!("a deposit of {amount} cannot be upcast"));
        }
        Ok(serde_json::json!({ "cents": amount * 100 }))
    })
}

/// A projection written for v2 only: it accepts only `bank.Deposited.v2` by name and decodes it
/// without any registry of its own. Sums the cents and counts the events that were upcast.
struct CentsV2 {
    /// Its name (its checkpoint's).
    name: &'static str,
    /// (total cents, events that arrived upcast from v1)
    model: Arc<Mutex<(i64, u64)>>,
}

impl CentsV2 {
    fn new(name: &'static str) -> Self {
        Self { name, model: Arc::default() }
    }
}

#[async_trait]
impl Projection for CentsV2 {
    fn name(&self) -> &str {
        self.name
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().names([DepositedV2::NAME])
    }

    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let cents = event.decode::<DepositedV2>()?.cents;
        let upcast = u64::from(event.metadata.headers.get(UPCAST_FROM).is_some_and(|from| from == Deposited::NAME));
        let model = self.model.clone();
        tx.on_commit(Box::new(move || {
            let mut m = model.lock().unwrap();
            m.0 += cents;
            m.1 += upcast;
        }));
        Ok(())
    }

    async fn reset(&self, tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        let model = self.model.clone();
        tx.on_commit(Box::new(move || *model.lock().unwrap() = (0, 0)));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_events_in_the_log_reach_a_v2_projection_upcast_live_and_in_a_rebuild() {
    let store = MemoryStore::new();
    // History: v1 deposits of 1..=10 (5500 cents), then a v2 deposit of 7 cents.
    append_deposits(&store, 1, 10, 2).await;
    store
        .append("acct-0", ExpectedVersion::Any, vec![NewEvent::encode(&DepositedV2 { cents: 7 }).unwrap()])
        .await
        .unwrap();
    let projection = Arc::new(CentsV2::new("cents-v2"));
    let runner = ProjectionRunner::with_config(
        Arc::new(store.clone()),
        projection.clone(),
        config(4).registry(deposit_upcasters()),
    );
    let cancel = CancellationToken::new();
    let task = runner.spawn(cancel.clone());
    wait_until("history projected", || *projection.model.lock().unwrap() == (5507, 10)).await;

    // Live: a v1 event written by a producer that was not redeployed yet.
    store.append("acct-1", ExpectedVersion::Any, vec![deposit(3)]).await.unwrap();
    wait_until("the live v1 event projected", || *projection.model.lock().unwrap() == (5807, 11)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();

    // Replay: the rebuild upcasts the same way and ends equal.
    projection.model.lock().unwrap().0 = -1;
    let report = runner.rebuild(CancellationToken::new()).await.unwrap();
    assert!(report.completed);
    assert_eq!(report.events, 12);
    assert_eq!(*projection.model.lock().unwrap(), (5807, 11), "rebuilt through the upcaster");

    // Without the upcasters the same projection sees only the v2 event: the filter drops v1.
    let bare = Arc::new(CentsV2::new("cents-v2-without-upcasters"));
    ProjectionRunner::with_config(Arc::new(store.clone()), bare.clone(), config(4))
        .catch_up(CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(*bare.model.lock().unwrap(), (7, 0));
}

#[tokio::test]
async fn a_v1_event_whose_upcaster_fails_stops_the_projection_at_that_event() {
    let store = MemoryStore::new();
    for amount in [1, 2, -3, 4] {
        store.append("acct-0", ExpectedVersion::Any, vec![deposit(amount)]).await.unwrap();
    }
    let projection = Arc::new(CentsV2::new("cents-v2"));
    let runner = ProjectionRunner::with_config(
        Arc::new(store.clone()),
        projection.clone(),
        config(10).registry(deposit_upcasters()),
    );
    match runner.run(CancellationToken::new()).await {
        Err(RunError::Event { position: 3, event, source, .. }) => {
            assert_eq!(event, Deposited::NAME, "reported under its stored name");
            assert!(source.to_string().contains("cannot be upcast"), "{source}");
        }
        other => panic!("expected a failure on the event at position 3, got {other:?}"),
    }
    assert_eq!(*projection.model.lock().unwrap(), (300, 2), "the events before it are committed");
    assert_eq!(store.load_checkpoint("cents-v2").await.unwrap(), Some(2));
}
