//! The saga scenarios: an orchestrated saga of three steps, each with an action and a
//! compensation, run end to end over a store and a broker — the orchestrator in one route, the
//! participants (command handlers that always reply) in another, the outbox relay between them.
//! Each function is one test of [`saga_suite!`](crate::saga_suite).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use herald::codec::Event;
use herald::command::Reply;
use herald::message::Message;
use herald::outbox::OutboxRelay;
use herald::pubsub::{StartFrom, SubscribeOptions};
use herald::router::{HandlerContext, HandlerError, Inbox, Route, Router};
use herald::saga::{Orchestrator, Saga, SagaError, SagaInstance, SagaStatus, Started, Step};
use herald::store::Store;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::PubSubFixture;
use crate::support::{WAIT, unique};

/// Step `step` going forward.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Do {
    step: u32,
    fail: bool,
    /// Reply twice (a duplicate reply must change nothing).
    reply_twice: bool,
}

impl Event for Do {
    const NAME: &'static str = "conformance.saga.Do.v1";
}

/// Undo step `step`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    step: u32,
    /// What the saga data held when the compensation was built (step 2 keeps a receipt).
    receipt: Option<String>,
}

impl Event for Undo {
    const NAME: &'static str = "conformance.saga.Undo.v1";
}

/// The typed reply of step 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    id: String,
}

impl Event for Receipt {
    const NAME: &'static str = "conformance.saga.Receipt.v1";
}

/// The saga data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Trip {
    /// The step whose participant refuses (0: none).
    fail_at: u32,
    /// The step whose command goes nowhere (no reply: it times out).
    silent_at: u32,
    reply_twice: bool,
    /// Kept from step 2's typed reply.
    receipt: Option<String>,
}

impl Trip {
    fn new() -> Self {
        Self { fail_at: 0, silent_at: 0, reply_twice: false, receipt: None }
    }
}

/// One running saga setup: topics, the orchestrator, the participants' log, the tasks.
struct Rig {
    orchestrator: Orchestrator<Trip>,
    store: Arc<dyn Store>,
    log: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Rig {
    async fn start(fx: &PubSubFixture, step_timeout: Option<Duration>) -> Self {
        let store = fx.store.clone().expect("the saga suite needs a fixture with a store (PubSubFixture::with_store)");
        let commands = unique("saga-commands");
        let replies = unique("saga-replies");
        let action = |step: u32| {
            let commands = commands.clone();
            move |trip: &Trip| {
                let topic = if trip.silent_at == step { format!("{commands}-void") } else { commands.clone() };
                let command = Do { step, fail: trip.fail_at == step, reply_twice: trip.reply_twice };
                Ok(Message::encode(topic, &command)?)
            }
        };
        let compensation = |step: u32| {
            let commands = commands.clone();
            move |trip: &Trip| Ok(Message::encode(commands.clone(), &Undo { step, receipt: trip.receipt.clone() })?)
        };
        let mut saga = Saga::new(unique("trip"), &replies)
            .step(Step::new("book-flight").action(action(1)).compensation(compensation(1)))
            .step(Step::new("book-hotel").action(action(2)).compensation(compensation(2)).on_reply::<Receipt>(
                |trip: &mut Trip, receipt| {
                    trip.receipt = Some(receipt.id);
                    Ok(())
                },
            ))
            .step(Step::new("book-car").action(action(3)).compensation(compensation(3)));
        if let Some(timeout) = step_timeout {
            saga = saga.timeout(timeout);
        }
        let orchestrator = Orchestrator::new(saga, store.clone());
        let log = Arc::new(Mutex::new(Vec::new()));

        type Log = Arc<Mutex<Vec<String>>>;
        let participants = Route::new(SubscribeOptions::new(&commands, "participants").start(StartFrom::Beginning))
            .on_command_with(log.clone(), async |cx: &mut HandlerContext, command: Do, log: &Log| {
                log.lock().unwrap_or_else(PoisonError::into_inner).push(format!("do {}", command.step));
                let reply = if command.fail {
                    Reply::failure(format!("step {} refused", command.step))
                } else if command.step == 2 {
                    Reply::with(&Receipt { id: format!("receipt-{}", cx.message().id) })?
                } else {
                    Reply::success()
                };
                if command.reply_twice
                    && let Some(duplicate) = reply.to_message(cx.message())
                {
                    cx.tx()?.enqueue(vec![duplicate]).await?;
                }
                Ok::<_, HandlerError>(reply)
            })
            .on_command_with(log.clone(), async |_cx: &mut HandlerContext, command: Undo, log: &Log| {
                let entry = match command.receipt {
                    Some(receipt) if command.step == 2 => format!("undo 2 with {}", &receipt[..7]),
                    _ => format!("undo {}", command.step),
                };
                log.lock().unwrap_or_else(PoisonError::into_inner).push(entry);
                Ok::<_, HandlerError>(Reply::success())
            });
        let replies_route = Route::new(SubscribeOptions::new(&replies, "orchestrator").start(StartFrom::Beginning))
            .fallback(orchestrator.reply_handler());

        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let router = Router::new(fx.subscriber.clone())
            .store(store.clone())
            .middleware(Inbox)
            .route(participants)
            .route(replies_route);
        let token = shutdown.clone();
        tasks.spawn(async move { router.run(token).await.expect("router runs") });
        let relay = OutboxRelay::new(store.clone(), fx.publisher.clone());
        tasks.spawn(relay.run(shutdown.clone()));
        if step_timeout.is_some() {
            tasks.spawn(orchestrator.clone().run_timeouts(Duration::from_millis(50), shutdown.clone()));
        }
        Self { orchestrator, store, log, shutdown, tasks }
    }

    async fn begin(&self, id: &str, trip: Trip) -> Result<Started, SagaError> {
        let mut tx = self.store.begin().await?;
        let started = self.orchestrator.start(&mut *tx, id, trip, None).await?;
        tx.commit().await?;
        Ok(started)
    }

    /// Waits until instance `id` has ended.
    async fn ended(&self, id: &str) -> SagaInstance<Trip> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let instance = self.orchestrator.load(id).await.expect("load").expect("the instance exists");
            if matches!(instance.status, SagaStatus::Completed | SagaStatus::Compensated) {
                return instance;
            }
            assert!(tokio::time::Instant::now() < deadline, "saga {id} did not end in {WAIT:?}: {instance:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn stop(mut self) {
        // Late duplicates would show up here.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Every step succeeds: the saga runs each action once, in order, keeps what step 2's typed
/// reply said, compensates nothing and ends completed.
pub async fn a_saga_whose_steps_all_succeed_completes<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let rig = Rig::start(&fx, None).await;
    assert_eq!(rig.begin("trip-1", Trip::new()).await.expect("start"), Started::New);
    let instance = rig.ended("trip-1").await;
    assert_eq!(instance.status, SagaStatus::Completed);
    assert_eq!(instance.failure, None);
    assert!(instance.data.receipt.as_deref().is_some_and(|r| r.starts_with("receipt-")), "{instance:?}");
    assert_eq!(rig.log(), ["do 1", "do 2", "do 3"]);
    rig.stop().await;
}

/// A failure at step 1, 2 or 3 compensates exactly the steps before it, newest first, and
/// ends compensated with the participant's reason; the failed step itself is not compensated.
pub async fn a_failure_at_each_step_compensates_exactly_the_earlier_steps<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let rig = Rig::start(&fx, None).await;
    for fail_at in 1..=3 {
        rig.log.lock().unwrap_or_else(PoisonError::into_inner).clear();
        let id = format!("fail-at-{fail_at}");
        rig.begin(&id, Trip { fail_at, ..Trip::new() }).await.expect("start");
        let instance = rig.ended(&id).await;
        assert_eq!(instance.status, SagaStatus::Compensated, "failure at step {fail_at}");
        let failure = instance.failure.clone().unwrap_or_default();
        assert!(failure.contains(&format!("step {fail_at} refused")), "the reason is kept: {failure:?}");
        let expected: Vec<String> = match fail_at {
            1 => vec!["do 1".into()],
            2 => vec!["do 1".into(), "do 2".into(), "undo 1".into()],
            _ => vec!["do 1".into(), "do 2".into(), "do 3".into(), "undo 2 with receipt".into(), "undo 1".into()],
        };
        assert_eq!(rig.log(), expected, "failure at step {fail_at}");
    }
    rig.stop().await;
}

/// Every participant replies twice: the duplicates are ignored (each action runs once and the
/// saga completes, without compensating).
pub async fn duplicate_replies_are_harmless<F: Future<Output = PubSubFixture>>(setup: impl FnOnce() -> F) {
    let fx = setup().await;
    let rig = Rig::start(&fx, None).await;
    rig.begin("twice", Trip { reply_twice: true, ..Trip::new() }).await.expect("start");
    let instance = rig.ended("twice").await;
    assert_eq!(instance.status, SagaStatus::Completed, "{instance:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.log(), ["do 1", "do 2", "do 3"], "no step ran twice and nothing was compensated");
    let after = rig.orchestrator.load("twice").await.expect("load").expect("exists");
    assert_eq!(after.version, instance.version, "late duplicates did not move the ended saga");
    rig.stop().await;
}

/// Step 3's command reaches no participant: when its timeout passes, the saga treats the step
/// as failed and compensates steps 2 and 1.
pub async fn a_step_without_a_reply_times_out_and_compensates<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let rig = Rig::start(&fx, Some(Duration::from_millis(700))).await;
    rig.begin("silent", Trip { silent_at: 3, ..Trip::new() }).await.expect("start");
    let instance = rig.ended("silent").await;
    assert_eq!(instance.status, SagaStatus::Compensated, "{instance:?}");
    assert!(instance.failure.as_deref().unwrap_or_default().contains("timed out"), "{instance:?}");
    assert_eq!(rig.log(), ["do 1", "do 2", "undo 2 with receipt", "undo 1"]);
    rig.stop().await;
}

/// Starting an id that exists changes nothing and says so; a first command that cannot be
/// built is an error returned to the caller, and nothing is saved.
pub async fn starting_reports_duplicates_and_never_swallows_errors<F: Future<Output = PubSubFixture>>(
    setup: impl FnOnce() -> F,
) {
    let fx = setup().await;
    let rig = Rig::start(&fx, None).await;
    rig.begin("once", Trip::new()).await.expect("start");
    assert_eq!(rig.begin("once", Trip::new()).await.expect("start again"), Started::AlreadyExists);
    assert_eq!(rig.ended("once").await.status, SagaStatus::Completed);
    assert_eq!(rig.log(), ["do 1", "do 2", "do 3"], "the second start sent nothing");

    let broken = Orchestrator::new(
        Saga::new(unique("broken"), "nowhere")
            .step(Step::new("refuses").action(|_: &Trip| Err(SagaError::step("refuses", "no flights today")))),
        rig.store.clone(),
    );
    let mut tx = rig.store.begin().await.expect("begin");
    let err = broken.start(&mut *tx, "b-1", Trip::new(), None).await.expect_err("the first command cannot be built");
    assert!(err.to_string().contains("no flights today"), "{err}");
    drop(tx);
    assert!(broken.load("b-1").await.expect("load").is_none(), "nothing was saved");
    rig.stop().await;
}
