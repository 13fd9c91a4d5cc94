//! The shopper bots of a depot process: who is connected (`depotpb.ShopperBot/Connect`), what
//! each is doing, and the dispatcher that hands available lists to idle bots, oldest first.
//!
//! A bot's state lives in this process (its stream ends here); the list's state lives in the
//! table, changed only through the domain's commands, so two depot processes can never give one
//! list to two bots (the second assignment is refused and the dispatcher tries the next list).
//! A bot that disconnects, or sends nothing for [`SILENCE`], loses its list: it is released
//! (`ShoppingListReleased`) and available again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::application as app;
use super::grpc::shopping_list;
use crate::error::AppError;
use crate::grpc::pb::depotpb::{BotMessage, DepotMessage, Released, Welcome, bot_message, depot_message};
use crate::http::{AppState, token_matches, write};

/// How long a bot may send nothing before its list goes to another.
pub const SILENCE: Duration = Duration::from_secs(5);
/// How often the dispatcher looks for idle bots and silent ones without being woken.
const TICK: Duration = Duration::from_millis(250);

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
    bots: Mutex<HashMap<String, Bot>>,
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
}

impl Bots {
    pub fn new(state: AppState) -> Self {
        Self {
            inner: Arc::new(Inner {
                state,
                bots: Mutex::new(HashMap::new()),
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
            bots.insert(bot_id.clone(), Bot { connection, tx, list: None, last_seen: Instant::now() });
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
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "the shopper bot dispatcher");
            }
        }
        // The streams end with the process; their lists are released when the bots come back
        // (or by another depot process, once they are silent there).
        lock(&self.inner.bots).clear();
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
        self.assign_idle().await
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
            .filter(|(_, b)| b.list.is_none())
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
