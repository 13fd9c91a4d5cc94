//! Orchestrated sagas: a long-running process across modules, driven by commands and replies,
//! that either completes every step or undoes the steps it did.
//!
//! A [`Saga`] is a declarative definition: ordered [`Step`]s, each with an optional action
//! (a command to send), reply handlers (to keep what a reply tells, e.g. a created id) and an
//! optional compensation (the command that undoes the step). An [`Orchestrator`] runs instances
//! of one saga over a [`Store`]:
//!
//! * **Start** ([`Orchestrator::start`]) saves the instance and sends the first action, in the
//!   caller's transaction (the outbox), so the saga starts if and only if the caller's change
//!   commits. Every error is returned, never swallowed; starting an id twice is reported as
//!   [`Started::AlreadyExists`], not as a second saga.
//! * **On a success reply** the step's reply handler for that reply name runs on the saga data,
//!   and the saga moves forward to the next step with an action; with none left, it is done
//!   (*completed*).
//! * **On a failure reply** (or a step timing out) the saga switches to compensating and walks
//!   backwards **from the step before the failed one** — the failed step did nothing to undo —
//!   sending each compensation it finds; with none left, it is done (*compensated*). The
//!   failure's reason is kept with the instance ([`SagaInstance::failure`]).
//! * **State is saved after every transition in the same transaction** as the commands the
//!   transition sends, so a crash never loses a step or sends a command for a state that was not
//!   saved. Saves are versioned: two replies racing for one instance cannot both move it.
//! * **Duplicate and late replies are harmless**: every command carries the saga name, id, step
//!   and direction in `herald-saga-*` headers, which [command handlers](crate::command) copy to
//!   their reply; a reply for any other step or direction than the current one, or for a done
//!   saga, is ignored ([`Handled::Ignored`]).
//! * **Timeouts**: a step with a timeout (its own, or the saga's default) has a deadline; when it
//!   passes with no reply, [`Orchestrator::expire_due`] (run periodically by
//!   [`Orchestrator::run_timeouts`]) treats a forward step as failed and compensates, and sends
//!   a compensation again (compensations must eventually succeed; make them idempotent).
//! * **A failure reply to a compensation** cannot be compensated: the reply is refused with a
//!   permanent error (the router dead-letters it, so it is visible) and the saga stays on that
//!   step; if the step has a timeout, the compensation is sent again when it expires.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::codec::{CodecError, Event};
use crate::command::{self, Outcome, REPLY_REASON};
use crate::message::Message;
use crate::router::{Handler, HandlerContext, HandlerError};
use crate::store::{SagaRecord, Store, StoreError, Transaction};

/// Header on a saga's commands (and their replies): the saga name.
pub const SAGA_NAME: &str = "herald-saga-name";
/// Header on a saga's commands (and their replies): the instance id.
pub const SAGA_ID: &str = "herald-saga-id";
/// Header on a saga's commands (and their replies): the step index.
pub const SAGA_STEP: &str = "herald-saga-step";
/// Header on a saga's commands (and their replies): `forward` or `compensating`.
pub const SAGA_DIRECTION: &str = "herald-saga-direction";

/// What saga data must be: stored as JSON with the instance.
pub trait SagaData: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SagaData for T {}

/// Why a saga operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The store failed (a conflict means another transition won: retry the reply).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A command or reply could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The saga's stored data does not decode into the definition's data type.
    #[error("saga {name}/{id}: stored data does not decode: {reason}")]
    Data {
        /// The saga name.
        name: String,
        /// The instance id.
        id: String,
        /// The decoder's error.
        reason: String,
    },
    /// An action, compensation or reply handler refused.
    #[error("saga step `{step}`: {reason}")]
    Step {
        /// The step's name.
        step: String,
        /// Why.
        reason: String,
    },
    /// A compensation was refused: the saga cannot undo the step and waits on it.
    #[error("saga {name}/{id}: compensation of step `{step}` failed: {reason}")]
    CompensationFailed {
        /// The saga name.
        name: String,
        /// The instance id.
        id: String,
        /// The step whose compensation failed.
        step: String,
        /// The participant's reason.
        reason: String,
    },
}

impl SagaError {
    /// A refusal from an action, compensation or reply handler.
    pub fn step(step: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::Step { step: step.into(), reason: reason.to_string() }
    }
}

impl From<SagaError> for HandlerError {
    fn from(e: SagaError) -> Self {
        match e {
            SagaError::Store(e) => e.into(),
            other => HandlerError::permanent(other),
        }
    }
}

type Command<D> = Arc<dyn Fn(&D) -> Result<Message, SagaError> + Send + Sync>;
type OnReply<D> = Arc<dyn Fn(&mut D, &Message) -> Result<(), SagaError> + Send + Sync>;

/// One step of a [`Saga`].
pub struct Step<D> {
    name: String,
    action: Option<Command<D>>,
    compensation: Option<Command<D>>,
    on_reply: HashMap<String, OnReply<D>>,
    timeout: Option<Duration>,
}

impl<D> fmt::Debug for Step<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("action", &self.action.is_some())
            .field("compensation", &self.compensation.is_some())
            .field("on_reply", &self.on_reply.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<D: SagaData> Step<D> {
    /// A step that does nothing until given an action and/or a compensation.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), action: None, compensation: None, on_reply: HashMap::new(), timeout: None }
    }

    /// The command this step sends going forward (its topic, name and payload; the saga adds
    /// the reply topic and its headers). Build it with [`Message::encode`].
    #[must_use]
    pub fn action(mut self, f: impl Fn(&D) -> Result<Message, SagaError> + Send + Sync + 'static) -> Self {
        self.action = Some(Arc::new(f));
        self
    }

    /// The command that undoes this step, sent when a later step fails.
    #[must_use]
    pub fn compensation(mut self, f: impl Fn(&D) -> Result<Message, SagaError> + Send + Sync + 'static) -> Self {
        self.compensation = Some(Arc::new(f));
        self
    }

    /// Runs on a *success* reply named `R::NAME` to this step's action or compensation, to keep
    /// what it says in the saga data (e.g. the id of a created shopping list).
    #[must_use]
    pub fn on_reply<R: Event>(
        mut self,
        f: impl Fn(&mut D, R) -> Result<(), SagaError> + Send + Sync + 'static,
    ) -> Self {
        let handler: OnReply<D> = Arc::new(move |data: &mut D, reply: &Message| {
            let decoded: R = crate::codec::decode_json(R::NAME, &reply.payload)?;
            f(data, decoded)
        });
        self.on_reply.insert(R::NAME.to_owned(), handler);
        self
    }

    /// How long to wait for this step's reply (overrides the saga's default).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A saga definition: a name, the topic its replies come back on, and ordered steps.
pub struct Saga<D> {
    name: String,
    reply_topic: String,
    steps: Vec<Step<D>>,
    timeout: Option<Duration>,
}

impl<D> fmt::Debug for Saga<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("reply_topic", &self.reply_topic)
            .field("steps", &self.steps)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<D: SagaData> Saga<D> {
    /// An empty saga named `name` (stable: it keys the stored instances) whose participants
    /// reply on `reply_topic`.
    pub fn new(name: impl Into<String>, reply_topic: impl Into<String>) -> Self {
        Self { name: name.into(), reply_topic: reply_topic.into(), steps: Vec::new(), timeout: None }
    }

    /// Adds the next step.
    #[must_use]
    pub fn step(mut self, step: Step<D>) -> Self {
        self.steps.push(step);
        self
    }

    /// The default time to wait for any step's reply.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic replies come back on.
    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }
}

/// How a saga instance ended, or that it has not yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SagaStatus {
    /// Waiting for the reply of a step going forward.
    Running,
    /// Waiting for the reply of a compensation.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every earlier step was compensated.
    Compensated,
}

/// What is stored as the instance's data: the user's data and the failure that started the
/// compensation, if any.
#[derive(Serialize, Deserialize)]
struct Stored<D> {
    data: D,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
}

/// A loaded saga instance.
#[derive(Clone, Debug)]
pub struct SagaInstance<D> {
    /// The instance id.
    pub id: String,
    /// The saga data.
    pub data: D,
    /// The current step's index (`-1` before the first, the step count after the last).
    pub step: i64,
    /// Where it stands.
    pub status: SagaStatus,
    /// Why it compensates, if it does.
    pub failure: Option<String>,
    /// The stored version (one per transition).
    pub version: u64,
}

/// The result of [`Orchestrator::start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// A new instance was saved and its first command queued.
    New,
    /// An instance with this id exists; nothing was changed.
    AlreadyExists,
}

/// What [`Orchestrator::handle_reply`] did with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The saga moved (to another step, or to its end).
    Advanced(SagaStatus),
    /// Not for this saga, not a reply, a duplicate, or late: ignored, with why.
    Ignored(&'static str),
}

/// Runs instances of one [`Saga`] over a store. Cheap to clone.
pub struct Orchestrator<D> {
    saga: Arc<Saga<D>>,
    store: Arc<dyn Store>,
}

impl<D> Clone for Orchestrator<D> {
    fn clone(&self) -> Self {
        Self { saga: self.saga.clone(), store: self.store.clone() }
    }
}

impl<D> fmt::Debug for Orchestrator<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orchestrator").field("saga", &self.saga.name).finish_non_exhaustive()
    }
}

/// The instance being moved, with its stored record.
struct Moving<D> {
    record: SagaRecord,
    stored: Stored<D>,
}

impl<D: SagaData> Orchestrator<D> {
    /// An orchestrator of `saga` over `store`.
    pub fn new(saga: Saga<D>, store: Arc<dyn Store>) -> Self {
        Self { saga: Arc::new(saga), store }
    }

    /// The definition.
    pub fn saga(&self) -> &Saga<D> {
        &self.saga
    }

    /// Starts instance `id` with `data` inside `tx` (typically the transaction of the handler
    /// reacting to the triggering event, whose message is `cause`): saves it and queues its
    /// first command. Nothing happens unless `tx` commits. Errors (a command that cannot be
    /// built, a store failure) are returned, never swallowed.
    pub async fn start(
        &self,
        tx: &mut dyn Transaction,
        id: &str,
        data: D,
        cause: Option<&Message>,
    ) -> Result<Started, SagaError> {
        if tx.load_saga(&self.saga.name, id).await?.is_some() {
            return Ok(Started::AlreadyExists);
        }
        let record = SagaRecord {
            name: self.saga.name.clone(),
            id: id.to_owned(),
            version: 0,
            step: -1,
            compensating: false,
            done: false,
            data: Vec::new(),
            deadline: None,
        };
        let mut moving = Moving { record, stored: Stored { data, failure: None } };
        // A step that fails to build at start is an error for the caller, not a compensation:
        // nothing has happened yet.
        let command = self.next_forward(&mut moving)?;
        self.save(tx, moving, command, cause).await?;
        let name = self.saga.name.clone();
        tx.on_commit(Box::new(move || crate::observability::record_saga_started(&name)));
        tracing::info!(saga = %self.saga.name, id, "saga started");
        Ok(Started::New)
    }

    /// Handles one message from the reply topic inside `tx`: moves the instance it belongs to,
    /// saving the new state and queuing the next command in `tx`. See the module docs for what
    /// is ignored and why.
    pub async fn handle_reply(&self, tx: &mut dyn Transaction, reply: &Message) -> Result<Handled, SagaError> {
        if reply.header(SAGA_NAME) != Some(self.saga.name.as_str()) {
            return Ok(Handled::Ignored("not a reply of this saga"));
        }
        let Some(outcome) = Outcome::of(reply) else {
            return Ok(Handled::Ignored("no reply outcome"));
        };
        let (Some(id), Some(step), Some(direction)) =
            (reply.header(SAGA_ID), reply.header(SAGA_STEP), reply.header(SAGA_DIRECTION))
        else {
            return Ok(Handled::Ignored("saga headers missing"));
        };
        let Some(record) = tx.load_saga(&self.saga.name, id).await? else {
            tracing::warn!(saga = %self.saga.name, id, "reply for an unknown saga instance ignored");
            return Ok(Handled::Ignored("unknown instance"));
        };
        let compensating = direction == "compensating";
        if record.done {
            return Ok(Handled::Ignored("the saga is done (late or duplicate reply)"));
        }
        if step != record.step.to_string() || compensating != record.compensating {
            return Ok(Handled::Ignored("not the current step (late or duplicate reply)"));
        }
        let mut moving = self.moving(record)?;
        let index = usize::try_from(moving.record.step).unwrap_or(usize::MAX);
        let step_name = self.saga.steps.get(index).map_or("?", |s| s.name.as_str()).to_owned();
        let reason = || reply.header(REPLY_REASON).unwrap_or("no reason given").to_owned();

        let command = match (outcome, compensating) {
            (Outcome::Success, _) => {
                if let Some(on_reply) = self.saga.steps.get(index).and_then(|s| s.on_reply.get(&reply.name)) {
                    on_reply(&mut moving.stored.data, reply)?;
                }
                if compensating { self.next_compensation(&mut moving)? } else { self.next_forward(&mut moving)? }
            }
            (Outcome::Failure, false) => {
                tracing::info!(saga = %self.saga.name, id, step = %step_name, reason = %reason(), "saga step failed; compensating");
                self.begin_compensation(&mut moving, format!("step `{step_name}` failed: {}", reason()))?
            }
            (Outcome::Failure, true) => {
                return Err(SagaError::CompensationFailed {
                    name: self.saga.name.clone(),
                    id: id.to_owned(),
                    step: step_name,
                    reason: reason(),
                });
            }
        };
        let status = self.save(tx, moving, command, Some(reply)).await?;
        Ok(Handled::Advanced(status))
    }

    /// Moves every instance whose step deadline has passed (at most `limit`), each in its own
    /// transaction: a forward step fails (the saga compensates), a compensation is sent again.
    /// Returns how many instances moved.
    pub async fn expire_due(&self, limit: usize) -> Result<usize, SagaError> {
        let now = unix_millis();
        let mut moved = 0;
        for due in self.store.due_sagas(&self.saga.name, now, limit).await? {
            let mut tx = self.store.begin().await?;
            // Re-read in the transaction: a reply may have moved it since the query.
            let Some(record) = tx.load_saga(&due.name, &due.id).await? else { continue };
            if record.done || record.version != due.version {
                continue;
            }
            let mut moving = self.moving(record)?;
            let index = usize::try_from(moving.record.step).unwrap_or(usize::MAX);
            let step_name = self.saga.steps.get(index).map_or("?", |s| s.name.as_str()).to_owned();
            let command = if moving.record.compensating {
                tracing::warn!(saga = %self.saga.name, id = %due.id, step = %step_name, "compensation timed out; sending it again");
                let step = self.saga.steps.get(index).and_then(|s| s.compensation.clone());
                match step {
                    Some(compensation) => Some((index, compensation(&moving.stored.data)?)),
                    None => None,
                }
            } else {
                tracing::info!(saga = %self.saga.name, id = %due.id, step = %step_name, "saga step timed out; compensating");
                self.begin_compensation(&mut moving, format!("step `{step_name}` timed out"))?
            };
            match self.save(&mut *tx, moving, command, None).await {
                Ok(_) => {}
                Err(SagaError::Store(e)) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
            match tx.commit().await {
                Ok(()) => moved += 1,
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(moved)
    }

    /// Calls [`expire_due`](Self::expire_due) every `every` until `shutdown`, logging errors.
    pub async fn run_timeouts(self, every: Duration, shutdown: CancellationToken) {
        loop {
            match self.expire_due(100).await {
                Ok(n) if n > 0 => tracing::debug!(saga = %self.saga.name, moved = n, "saga timeouts handled"),
                Ok(_) => {}
                Err(e) => tracing::warn!(saga = %self.saga.name, error = %e, "handling saga timeouts failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// [`run_timeouts`](Self::run_timeouts) in one process at a time: scans only while holding
    /// the saga's timeout lease ([`lease::saga_timeouts_lease`](crate::lease::saga_timeouts_lease))
    /// as `holder` (unique among the running processes), renewing it every third of `ttl`, and
    /// stands by while another process holds it, taking over when that one stops or dies (see
    /// [`Singleton`](crate::lease::Singleton)). Every replica of a service can run it. The scan is
    /// safe without the lease too (saves are versioned, so two scanners never move an instance
    /// twice); the lease saves the duplicate work and the conflicts.
    pub async fn run_timeouts_leased(
        self,
        holder: impl Into<String>,
        ttl: Duration,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let name = crate::lease::saga_timeouts_lease(&self.saga.name);
        let singleton = crate::lease::Singleton::new(self.store.clone(), name, holder, ttl);
        let result = singleton
            .run(shutdown, |_grant, cancel| {
                let orchestrator = self.clone();
                async move {
                    orchestrator.run_timeouts(every, cancel).await;
                    Ok::<(), std::convert::Infallible>(())
                }
            })
            .await;
        if let Err(never) = result {
            match never {}
        }
    }

    /// Loads an instance.
    pub async fn load(&self, id: &str) -> Result<Option<SagaInstance<D>>, SagaError> {
        let Some(record) = self.store.load_saga(&self.saga.name, id).await? else { return Ok(None) };
        let moving = self.moving(record)?;
        let status = status_of(&moving.record);
        Ok(Some(SagaInstance {
            id: moving.record.id,
            data: moving.stored.data,
            step: moving.record.step,
            status,
            failure: moving.stored.failure,
            version: moving.record.version,
        }))
    }

    /// A [`Handler`] for the reply topic's route (use it as the route's
    /// [`fallback`](crate::router::Route::fallback): replies have many names). Needs a router
    /// with a store.
    pub fn reply_handler(&self) -> impl Handler + 'static {
        ReplyHandler(self.clone())
    }

    fn moving(&self, record: SagaRecord) -> Result<Moving<D>, SagaError> {
        let stored: Stored<D> = serde_json::from_slice(&record.data).map_err(|e| SagaError::Data {
            name: record.name.clone(),
            id: record.id.clone(),
            reason: e.to_string(),
        })?;
        Ok(Moving { record, stored })
    }

    /// Moves forward to the next step with an action and builds its command; `None` when no
    /// step is left (completed). A command that cannot be built fails its step: compensation.
    fn next_forward(&self, moving: &mut Moving<D>) -> Result<Option<(usize, Message)>, SagaError> {
        let from = usize::try_from(moving.record.step + 1).unwrap_or(0);
        for (index, step) in self.saga.steps.iter().enumerate().skip(from) {
            let Some(action) = &step.action else { continue };
            moving.record.step = index as i64;
            return match action(&moving.stored.data) {
                Ok(command) => Ok(Some((index, command))),
                Err(e) if moving.record.version == 0 => Err(e),
                Err(e) => self.begin_compensation(moving, format!("step `{}` could not start: {e}", step.name)),
            };
        }
        moving.record.step = self.saga.steps.len() as i64;
        Ok(None)
    }

    /// Switches to compensating because of `failure`, from the step before the current one.
    fn begin_compensation(
        &self,
        moving: &mut Moving<D>,
        failure: String,
    ) -> Result<Option<(usize, Message)>, SagaError> {
        moving.record.compensating = true;
        moving.stored.failure = Some(failure);
        self.next_compensation(moving)
    }

    /// Moves backwards to the previous step with a compensation and builds it; `None` when no
    /// step is left (compensated).
    fn next_compensation(&self, moving: &mut Moving<D>) -> Result<Option<(usize, Message)>, SagaError> {
        let mut index = moving.record.step;
        while index > 0 {
            index -= 1;
            let i = index as usize;
            if let Some(compensation) = &self.saga.steps[i].compensation {
                moving.record.step = index;
                return Ok(Some((i, compensation(&moving.stored.data)?)));
            }
        }
        moving.record.step = -1;
        Ok(None)
    }

    /// Saves the moved instance and queues its command (with the saga headers and the reply
    /// topic), in `tx`. Returns the new status.
    async fn save(
        &self,
        tx: &mut dyn Transaction,
        moving: Moving<D>,
        command: Option<(usize, Message)>,
        cause: Option<&Message>,
    ) -> Result<SagaStatus, SagaError> {
        let Moving { mut record, stored } = moving;
        record.version += 1;
        record.done = command.is_none();
        record.deadline = None;
        if let Some((index, mut message)) = command {
            let timeout = self.saga.steps[index].timeout.or(self.saga.timeout);
            record.deadline = timeout.map(|t| unix_millis().saturating_add(millis(t)));
            if let Some(cause) = cause {
                message = message.caused_by(cause);
            }
            let direction = if record.compensating { "compensating" } else { "forward" };
            let message = command::expect_reply(message, &self.saga.reply_topic)
                .with_header(SAGA_NAME, self.saga.name.clone())
                .with_header(SAGA_ID, record.id.clone())
                .with_header(SAGA_STEP, index.to_string())
                .with_header(SAGA_DIRECTION, direction);
            tx.enqueue(vec![message]).await?;
        }
        record.data = serde_json::to_vec(&stored).map_err(|e| SagaError::Data {
            name: record.name.clone(),
            id: record.id.clone(),
            reason: e.to_string(),
        })?;
        let status = status_of(&record);
        // Counted when (and only if) the transition commits.
        let name = record.name.clone();
        match status {
            SagaStatus::Completed => {
                tracing::info!(saga = %record.name, id = %record.id, "saga completed");
                tx.on_commit(Box::new(move || crate::observability::record_saga_completed(&name)));
            }
            SagaStatus::Compensated => {
                tracing::info!(saga = %record.name, id = %record.id, failure = ?stored.failure, "saga compensated");
                tx.on_commit(Box::new(move || crate::observability::record_saga_compensated(&name)));
            }
            _ => {}
        }
        tx.save_saga(&record).await?;
        Ok(status)
    }
}

fn status_of(record: &SagaRecord) -> SagaStatus {
    match (record.done, record.compensating) {
        (false, false) => SagaStatus::Running,
        (false, true) => SagaStatus::Compensating,
        (true, false) => SagaStatus::Completed,
        (true, true) => SagaStatus::Compensated,
    }
}

fn unix_millis() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    millis(since)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct ReplyHandler<D>(Orchestrator<D>);

#[async_trait]
impl<D: SagaData> Handler for ReplyHandler<D> {
    fn needs(&self) -> crate::router::Needs {
        crate::router::Needs::STORE
    }

    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let reply = cx.message().clone();
        match self.0.handle_reply(cx.tx()?, &reply).await? {
            Handled::Advanced(_) => {}
            Handled::Ignored(why) => {
                tracing::debug!(saga = %self.0.saga.name, reply = %reply.name, why, "saga reply ignored")
            }
        }
        Ok(())
    }
}

/// Given/when/then tests for a saga definition, without a broker: start an instance, look at
/// the command it sent, answer it, look again.
///
/// ```
/// # use herald::saga::{Saga, Step, SagaStatus, testing::SagaTest};
/// # use herald::{command::Reply, Message};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let saga = Saga::<u32>::new("demo", "demo.replies")
///     .step(Step::new("reserve")
///         .action(|_| Ok(Message::new("stock.commands", "Reserve.v1", b"{}".to_vec())))
///         .compensation(|_| Ok(Message::new("stock.commands", "Release.v1", b"{}".to_vec()))))
///     .step(Step::new("charge").action(|_| Ok(Message::new("payments.commands", "Charge.v1", b"{}".to_vec()))));
/// let mut t = SagaTest::start(saga, "order-1", 0).await?;         // given
/// assert_eq!(t.sent_name(), Some("Reserve.v1"));
/// t.reply(Reply::success()).await?;                               // when
/// assert_eq!(t.sent_name(), Some("Charge.v1"));                   // then
/// t.reply(Reply::failure("card declined")).await?;
/// assert_eq!(t.sent_name(), Some("Release.v1"));                  // the failed step is not undone
/// t.reply(Reply::success()).await?;
/// assert_eq!(t.status().await?, SagaStatus::Compensated);
/// # Ok(()) }
/// ```
pub mod testing {
    use std::sync::Arc;

    use super::{Handled, Orchestrator, Saga, SagaData, SagaError, SagaInstance, SagaStatus};
    use crate::command::Reply;
    use crate::memory::MemoryStore;
    use crate::message::Message;
    use crate::store::Store;

    /// One saga instance on an in-memory store, driven by hand.
    #[derive(Debug)]
    pub struct SagaTest<D> {
        orchestrator: Orchestrator<D>,
        store: Arc<MemoryStore>,
        id: String,
        sent: Vec<Message>,
    }

    impl<D: SagaData> SagaTest<D> {
        /// Starts instance `id` of `saga` with `data`.
        pub async fn start(saga: Saga<D>, id: &str, data: D) -> Result<Self, SagaError> {
            let store = Arc::new(MemoryStore::new());
            let orchestrator = Orchestrator::new(saga, store.clone());
            let mut tx = store.begin().await?;
            orchestrator.start(&mut *tx, id, data, None).await?;
            tx.commit().await?;
            let mut test = Self { orchestrator, store, id: id.to_owned(), sent: Vec::new() };
            test.collect_sent().await?;
            Ok(test)
        }

        /// The commands sent by the last transition (none once the saga is done).
        pub fn sent(&self) -> &[Message] {
            &self.sent
        }

        /// The name of the (single) command the last transition sent.
        pub fn sent_name(&self) -> Option<&str> {
            self.sent.last().map(|m| m.name.as_str())
        }

        /// Answers the last command sent with `reply`, as its participant would.
        pub async fn reply(&mut self, reply: Reply) -> Result<Handled, SagaError> {
            let command = self.sent.last().cloned().ok_or_else(|| SagaError::step("test", "no command to reply to"))?;
            let message = reply
                .to_message(&command)
                .ok_or_else(|| SagaError::step("test", "the command names no reply topic"))?;
            self.deliver(&message).await
        }

        /// Delivers any message to the orchestrator as if it came from the reply topic (e.g. a
        /// duplicate or a late reply).
        pub async fn deliver(&mut self, message: &Message) -> Result<Handled, SagaError> {
            let mut tx = self.store.begin().await?;
            let handled = self.orchestrator.handle_reply(&mut *tx, message).await?;
            tx.commit().await?;
            if matches!(handled, Handled::Advanced(_)) {
                self.collect_sent().await?;
            }
            Ok(handled)
        }

        /// Lets the current step's deadline pass, as if no reply came.
        pub async fn time_out(&mut self) -> Result<usize, SagaError> {
            let mut tx = self.store.begin().await?;
            if let Some(mut record) = tx.load_saga(self.orchestrator.saga().name(), &self.id).await? {
                record.deadline = Some(0);
                record.version += 1;
                tx.save_saga(&record).await?;
            }
            tx.commit().await?;
            let moved = self.orchestrator.expire_due(1).await?;
            self.collect_sent().await?;
            Ok(moved)
        }

        /// The instance as stored.
        pub async fn instance(&self) -> Result<SagaInstance<D>, SagaError> {
            self.orchestrator.load(&self.id).await?.ok_or_else(|| SagaError::step("test", "the instance is gone"))
        }

        /// Where the instance stands.
        pub async fn status(&self) -> Result<SagaStatus, SagaError> {
            Ok(self.instance().await?.status)
        }

        async fn collect_sent(&mut self) -> Result<(), SagaError> {
            let pending = self.store.outbox_pending(usize::MAX).await?;
            let sequences: Vec<u64> = pending.iter().map(|r| r.sequence).collect();
            self.store.outbox_remove(&sequences).await?;
            self.sent = pending.into_iter().map(|r| r.message).collect();
            Ok(())
        }
    }
}
