//! The shopper bots of a depot process: who is connected (`depotpb.ShopperBot/Connect`), what
//! each is doing, and the dispatcher that hands available lists to idle bots, oldest first.
//!
//! A bot's state lives in this process (its stream ends here); the list's state lives in the
//! table, changed only through the domain's commands, so two depot processes can never give one
//! list to two bots (the second assignment is refused and the dispatcher tries the next list).
//! A bot that disconnects, or sends nothing for [`SILENCE`], loses its list: it is released
//! (`ShoppingListReleased`) and available again.
//!
//! The table `depot_bots` shows the bots to admins: each one's status (idle, busy, offline), its
//! list and the depot process holding its stream. The dispatcher writes a bot's row when its
//! status changes (hello, assignment, completion, disconnection), and vouches for all of its
//! bots at once every [`UPKEEP`]; a depot process that dies (kill -9) stops vouching, and after
//! [`STALE`] any depot process marks its bots offline and releases their lists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::application as app;
use super::domain::BotStatus;
use super::grpc::shopping_list;
use crate::error::AppError;
use crate::grpc::pb::depotpb::{BotMessage, DepotMessage, Released, Welcome, bot_message, depot_message};
use crate::http::{AppState, token_matches, write};

/// How long a bot may send nothing before its list goes to another.
pub const SILENCE: Duration = Duration::from_secs(5);
/// How often the dispatcher looks for idle bots and silent ones without being woken.
const TICK: Duration = Duration::from_millis(250);
/// How often a depot process vouches for its bots (`last_seen`) and looks for stale ones.
const UPKEEP: Duration = Duration::from_secs(1);
/// How long a bot's row may go unvouched for before it is taken for the row of a dead depot
/// process's bot: offline, its lists released.
pub const STALE: Duration = Duration::from_secs(3 * SILENCE.as_secs());

/// What the depot sends a bot.
pub type Outbound = mpsc::Receiver<Result<DepotMessage, Status>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connected bots. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Bots {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: AppState,
    /// This process (`ModuleContext::instance`): the `instance` of its bots' rows.
    instance: Arc<str>,
    bots: Mutex<HashMap<String, Bot>>,
    /// Bots gone since the last sync, whose rows are still to be marked offline.
    gone: Mutex<Vec<String>>,
    /// When the last upkeep (vouching, stale sweep) ran.
    upkept: Mutex<Option<Instant>>,
    wake: Notify,
    silence: Duration,
    next_connection: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Bot {
    /// Which connection of the bot (a reconnection replaces the entry).
    connection: u64,
    tx: mpsc::Sender<Result<DepotMessage, Status>>,
    /// The list it works on.
    list: Option<String>,
    last_seen: Instant,
    /// What its row says (as this process last wrote it), `None` until written.
    written: Option<(BotStatus, Option<String>)>,
}

impl Bot {
    /// What its row should say.
    fn wanted(&self) -> (BotStatus, Option<String>) {
        let status = if self.list.is_some() { BotStatus::Busy } else { BotStatus::Idle };
        (status, self.list.clone())
    }
}

impl Bots {
    pub fn new(state: AppState, instance: Arc<str>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state,
                instance,
                bots: Mutex::new(HashMap::new()),
                gone: Mutex::new(Vec::new()),
                upkept: Mutex::new(None),
                wake: Notify::new(),
                silence: SILENCE,
                next_connection: std::sync::atomic::AtomicU64::new(1),
            }),
        }
    }

    /// A bot connects: its first message must be a hello with its id and the admin token.
    /// Returns what the depot sends it; its messages are handled by a task of their own.
    pub async fn connect(&self, mut inbound: Streaming<BotMessage>) -> Result<Outbound, Status> {
        let hello = match inbound.message().await? {
            Some(BotMessage { message: Some(bot_message::Message::Hello(hello)) }) => hello,
            _ => return Err(Status::invalid_argument("the first message must be a hello")),
        };
        if !token_matches(&hello.token, &self.inner.state.admin_token) {
            return Err(AppError::Unauthorized.into());
        }
        let bot_id = hello.bot_id.trim().to_owned();
        if bot_id.is_empty() {
            return Err(Status::invalid_argument("bot_id is required"));
        }
        if lock(&self.inner.bots).contains_key(&bot_id) {
            return Err(Status::already_exists(format!("bot {bot_id} is connected already")));
        }
        // Lists it still holds from an earlier connection (to a depot process that died) go
        // back to the pool: the bot starts afresh.
        for list in app::lists_of_bot(&self.inner.state.db, &bot_id).await? {
            let (bot, reason) = (bot_id.clone(), "the bot reconnected".to_owned());
            let released =
                write(&self.inner.state, |tx| Box::pin(async move { app::release(tx, &list, bot, reason).await }))
                    .await;
            if let Err(e @ (AppError::Internal(_) | AppError::Invalid(_) | AppError::Unauthorized)) = released {
                return Err(e.into());
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let connection = self.inner.next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let silence_ms = u32::try_from(self.inner.silence.as_millis()).unwrap_or(u32::MAX);
        let welcome = DepotMessage { message: Some(depot_message::Message::Welcome(Welcome { silence_ms })) };
        tx.send(Ok(welcome)).await.map_err(|_| Status::cancelled("the bot went away"))?;
        {
            let mut bots = lock(&self.inner.bots);
            if bots.contains_key(&bot_id) {
                return Err(Status::already_exists(format!("bot {bot_id} is connected already")));
            }
            let bot = Bot { connection, tx, list: None, last_seen: Instant::now(), written: None };
            bots.insert(bot_id.clone(), bot);
        }
        tracing::info!(bot = %bot_id, "shopper bot connected");
        let this = self.clone();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(message)) => this.received(&bot_id, connection, message).await,
                    Ok(None) => break "disconnected",
                    Err(_) => break "connection lost",
                }
            };
            this.disconnect(&bot_id, connection, reason).await;
        });
        self.inner.wake.notify_one();
        Ok(rx)
    }

    async fn received(&self, bot_id: &str, connection: u64, message: BotMessage) {
        {
            let mut bots = lock(&self.inner.bots);
            match bots.get_mut(bot_id) {
                Some(bot) if bot.connection == connection => bot.last_seen = Instant::now(),
                _ => return, // replaced or dropped meanwhile
            }
        }
        let state = &self.inner.state;
        let bot = bot_id.to_owned();
        let result = match message.message {
            Some(bot_message::Message::StopPicked(picked)) => {
                write(state, |tx| {
                    Box::pin(async move { app::pick_stop(tx, &picked.shopping_id, bot, picked.store_id).await })
                })
                .await
            }
            Some(bot_message::Message::Completed(done)) => {
                let id = done.shopping_id;
                let completed = write(state, |tx| Box::pin(async move { app::complete(tx, &id).await })).await;
                if completed.is_ok() {
                    if let Some(bot) = lock(&self.inner.bots).get_mut(bot_id) {
                        bot.list = None;
                    }
                    self.inner.wake.notify_one();
                }
                completed
            }
            Some(bot_message::Message::Heartbeat(_)) | None => Ok(()),
            Some(bot_message::Message::Hello(_)) => Err(AppError::invalid("hello twice")),
        };
        if let Err(e) = result {
            tracing::warn!(bot = %bot_id, error = %e, "a shopper bot's report was refused");
        }
    }

    /// The bot is gone: its list (if any) is released for another.
    async fn disconnect(&self, bot_id: &str, connection: u64, reason: &str) {
        let removed = {
            let mut bots = lock(&self.inner.bots);
            match bots.get(bot_id) {
                Some(bot) if bot.connection == connection => bots.remove(bot_id),
                _ => None,
            }
        };
        let Some(bot) = removed else { return };
        tracing::info!(bot = %bot_id, reason, "shopper bot gone");
        lock(&self.inner.gone).push(bot_id.to_owned());
        if let Some(list) = bot.list {
            let (bot_id, reason) = (bot_id.to_owned(), reason.to_owned());
            let released =
                write(&self.inner.state, |tx| Box::pin(async move { app::release(tx, &list, bot_id, reason).await }))
                    .await;
            match released {
                // Completed or canceled meanwhile: nothing to give back.
                Ok(()) | Err(AppError::Conflict(_)) => {}
                Err(e) => tracing::warn!(error = %e, "releasing a gone bot's shopping list"),
            }
        }
        self.inner.wake.notify_one();
    }

    /// The dispatcher, until `stop`: drops silent bots, tells bots whose list was canceled, and
    /// gives available lists to idle bots.
    /// When the process begins to shut down (`shutdown`), every bot is told and its stream
    /// ends: an open stream would hold the gRPC server's graceful shutdown forever.
    pub async fn run(self, stop: CancellationToken, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = shutdown.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "the shopper bot dispatcher");
            }
        }
        // The streams end with the process; their lists are released when the bots come back
        // (or by another depot process, once they are silent there, or once their rows are
        // stale: they are left as they are).
        for (_, bot) in lock(&self.inner.bots).drain() {
            let _ = bot.tx.try_send(Err(Status::unavailable("the depot process is shutting down; connect again")));
        }
        Ok(())
    }

    async fn tick(&self) -> Result<(), AppError> {
        let silent: Vec<(String, u64)> = lock(&self.inner.bots)
            .iter()
            .filter(|(_, b)| b.last_seen.elapsed() > self.inner.silence)
            .map(|(id, b)| (id.clone(), b.connection))
            .collect();
        for (bot_id, connection) in silent {
            self.disconnect(&bot_id, connection, "fell silent").await;
        }
        self.release_finished().await?;
        // A bot is given a list once its row is this process's (so no other process takes it
        // for a dead one's), and its row says so right after.
        self.sync().await?;
        self.assign_idle().await?;
        self.sync().await?;
        let due = {
            let mut upkept = lock(&self.inner.upkept);
            let due = upkept.is_none_or(|at| at.elapsed() >= UPKEEP);
            if due {
                *upkept = Some(Instant::now());
            }
            due
        };
        if due { self.upkeep().await } else { Ok(()) }
    }

    /// Brings the rows of this process's bots up to date: gone ones offline, the others as
    /// they are now (only those that changed). All in this task, one after the other, so the
    /// rows end up as the bots are whatever the order of their messages.
    async fn sync(&self) -> Result<(), AppError> {
        let (db, instance) = (&self.inner.state.db, &*self.inner.instance);
        let gone = std::mem::take(&mut *lock(&self.inner.gone));
        for (n, bot_id) in gone.iter().enumerate() {
            // Back already: its new row is written below.
            if lock(&self.inner.bots).contains_key(bot_id) {
                continue;
            }
            if let Err(e) = app::bot_offline(db, bot_id, instance).await {
                lock(&self.inner.gone).extend(gone[n..].iter().cloned());
                return Err(e);
            }
        }
        let changed: Vec<(String, u64, (BotStatus, Option<String>))> = lock(&self.inner.bots)
            .iter()
            .filter_map(|(id, b)| {
                let wanted = b.wanted();
                (b.written.as_ref() != Some(&wanted)).then(|| (id.clone(), b.connection, wanted))
            })
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let now = app::timestamp(chrono::Utc::now());
        for (bot_id, connection, (status, list)) in changed {
            app::save_bot(db, &bot_id, status, list.as_deref(), instance, &now).await?;
            if let Some(bot) = lock(&self.inner.bots).get_mut(&bot_id).filter(|b| b.connection == connection) {
                bot.written = Some((status, list));
            }
        }
        Ok(())
    }

    /// Vouches for this process's bots (one statement), and retires the bots of depot
    /// processes that stopped vouching for theirs [`STALE`] ago.
    async fn upkeep(&self) -> Result<(), AppError> {
        let (db, instance) = (&self.inner.state.db, &*self.inner.instance);
        let now = chrono::Utc::now();
        let written = lock(&self.inner.bots).values().filter(|b| b.written.is_some()).count();
        if written > 0 {
            let vouched = app::refresh_bots(db, instance, &app::timestamp(now)).await?;
            if vouched != written as u64 {
                // A row changed behind this process's back (another process took it for a dead
                // one's, or it is gone): rewrite them all at the next sync.
                lock(&self.inner.bots).values_mut().for_each(|b| b.written = None);
                self.inner.wake.notify_one();
            }
        }
        let stale = chrono::Duration::from_std(STALE).map_err(AppError::internal)?;
        let before = app::timestamp(now - stale);
        for bot_id in app::stale_bots(db, &before).await? {
            if lock(&self.inner.bots).contains_key(&bot_id) {
                continue; // connected here (its row is rewritten at the next sync)
            }
            let (id, before) = (bot_id.clone(), before.clone());
            let retired =
                write(&self.inner.state, |tx| Box::pin(async move { app::retire_bot(tx, &id, &before).await })).await?;
            if retired {
                tracing::info!(bot = %bot_id, "shopper bot of a gone depot process: offline, its lists released");
            }
        }
        Ok(())
    }

    /// Busy bots whose list was canceled (or completed by an admin) are told and become idle.
    async fn release_finished(&self) -> Result<(), AppError> {
        let busy: Vec<(String, String)> =
            lock(&self.inner.bots).iter().filter_map(|(id, b)| Some((id.clone(), b.list.clone()?))).collect();
        for (bot_id, list) in busy {
            let view = app::get(&self.inner.state.db, &list).await?;
            let mine = view.bot_id.as_deref() == Some(bot_id.as_str());
            if mine && matches!(view.status.as_str(), "assigned" | "active") {
                continue;
            }
            let tx = {
                let mut bots = lock(&self.inner.bots);
                let Some(bot) = bots.get_mut(&bot_id) else { continue };
                bot.list = None;
                bot.tx.clone()
            };
            let reason = format!("the list is {}", view.status);
            let released = Released { shopping_id: list, reason };
            let _ = tx.send(Ok(DepotMessage { message: Some(depot_message::Message::Released(released)) })).await;
        }
        Ok(())
    }

    /// Gives the oldest available lists to the idle bots (those idle longest first).
    async fn assign_idle(&self) -> Result<(), AppError> {
        let mut idle: Vec<(Instant, String)> = lock(&self.inner.bots)
            .iter()
            .filter(|(_, b)| b.list.is_none() && b.written.is_some())
            .map(|(id, b)| (b.last_seen, id.clone()))
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        idle.sort();
        let available = app::list(&self.inner.state.db, Some("available")).await?;
        let mut lists = available.into_iter();
        for (_, bot_id) in idle {
            loop {
                let Some(list) = lists.next() else { return Ok(()) };
                let (id, bot) = (list.id.clone(), bot_id.clone());
                match write(&self.inner.state, |tx| Box::pin(async move { app::assign(tx, &id, bot).await })).await {
                    Ok(()) => {}
                    // Taken by another depot process, or canceled, meanwhile: the next one.
                    Err(AppError::Conflict(_) | AppError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                }
                let view = app::get(&self.inner.state.db, &list.id).await?;
                let tx = {
                    let mut bots = lock(&self.inner.bots);
                    bots.get_mut(&bot_id).map(|bot| {
                        bot.list = Some(list.id.clone());
                        bot.tx.clone()
                    })
                };
                let assignment =
                    DepotMessage { message: Some(depot_message::Message::Assignment(shopping_list(view))) };
                let sent = match tx {
                    Some(tx) => tx.send(Ok(assignment)).await.is_ok(),
                    None => false,
                };
                if !sent {
                    // Gone between the assignment and now: give the list back.
                    let (id, bot) = (list.id.clone(), bot_id.clone());
                    let reason = "gone before its assignment".to_owned();
                    write(&self.inner.state, |tx| Box::pin(async move { app::release(tx, &id, bot, reason).await }))
                        .await?;
                }
                break;
            }
        }
        Ok(())
    }
}
