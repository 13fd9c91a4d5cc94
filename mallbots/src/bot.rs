//! A shopper bot: a real client of the depot's stream (`depotpb.ShopperBot/Connect`), as
//! `mallbots bot` and `mallbots simulate` run them. It says hello, takes the shopping lists it
//! is given, "walks" to each stop (a pause), reports it picked, completes the list, and sends
//! heartbeats meanwhile; after a lost connection it connects again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::grpc::pb::depotpb::shopper_bot_client::ShopperBotClient;
use crate::grpc::pb::depotpb::{
    BotMessage, Heartbeat, Hello, ListCompleted, ShoppingList, StopPicked, bot_message, depot_message,
};

/// How a bot runs.
#[derive(Clone, Debug)]
pub struct BotConfig {
    /// Its id (unique among connected bots).
    pub id: String,
    /// The depot's gRPC address, e.g. `http://127.0.0.1:9000` (a process running depot, or the
    /// gateway).
    pub url: String,
    /// The admin token.
    pub token: String,
    /// How long it takes to pick the items at one stop.
    pub pick: Duration,
}

/// What the bots did, counted as they do it.
#[derive(Debug, Default)]
pub struct BotStats {
    pub lists_completed: AtomicU64,
    pub stops_picked: AtomicU64,
    pub connections: AtomicU64,
}

/// Runs the bot until `stop`, connecting again (after a pause) whenever the stream ends.
pub async fn run(config: BotConfig, stats: Arc<BotStats>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match session(&config, &stats, &stop).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(bot = %config.id, error = format!("{e:#}"), "bot stream ended; reconnecting"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The list in hand: what is left to pick, and when the next stop is reached.
struct Work {
    list: ShoppingList,
    next_stop: usize,
    at: Instant,
}

/// One connection, until `stop` (`Ok`) or the stream ends (`Err`).
pub async fn session(config: &BotConfig, stats: &BotStats, stop: &CancellationToken) -> anyhow::Result<()> {
    // (`ShopperBotClient::connect` is the RPC here, not the constructor.)
    let channel = tonic::transport::Endpoint::from_shared(config.url.clone())
        .with_context(|| format!("not a URL: {}", config.url))?
        .connect()
        .await
        .with_context(|| format!("connecting to the depot at {}", config.url))?;
    let mut client = ShopperBotClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let send = |message: bot_message::Message| {
        let tx = tx.clone();
        async move { tx.send(BotMessage { message: Some(message) }).await.map_err(|_| anyhow::anyhow!("stream closed")) }
    };
    send(bot_message::Message::Hello(Hello { bot_id: config.id.clone(), token: config.token.clone() })).await?;
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("the depot refused")?
        .into_inner();
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut work: Option<Work> = None;
    loop {
        let next_stop = work.as_ref().map(|w| w.at);
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = heartbeat.tick() => send(bot_message::Message::Heartbeat(Heartbeat {})).await?,
            () = async { tokio::time::sleep_until(next_stop.unwrap_or_else(Instant::now)).await }, if next_stop.is_some() => {
                let Some(w) = work.as_mut() else { continue };
                let shopping_id = w.list.id.clone();
                match w.list.stops.get(w.next_stop) {
                    Some(stop_at) => {
                        let store_id = stop_at.store_id.clone();
                        send(bot_message::Message::StopPicked(StopPicked { shopping_id, store_id })).await?;
                        stats.stops_picked.fetch_add(1, Ordering::Relaxed);
                        w.next_stop += 1;
                        w.at = Instant::now() + config.pick;
                    }
                    None => {
                        send(bot_message::Message::Completed(ListCompleted { shopping_id })).await?;
                        stats.lists_completed.fetch_add(1, Ordering::Relaxed);
                        work = None;
                    }
                }
            }
            message = inbound.message() => match message?.and_then(|m| m.message) {
                Some(depot_message::Message::Welcome(welcome)) => {
                    let every = Duration::from_millis(u64::from(welcome.silence_ms) / 3).max(Duration::from_millis(100));
                    heartbeat = tokio::time::interval(every);
                }
                Some(depot_message::Message::Assignment(list)) => {
                    tracing::debug!(bot = %config.id, list = %list.id, stops = list.stops.len(), "assigned");
                    work = Some(Work { list, next_stop: 0, at: Instant::now() + config.pick });
                }
                Some(depot_message::Message::Released(released)) => {
                    if work.as_ref().is_some_and(|w| w.list.id == released.shopping_id) {
                        tracing::debug!(bot = %config.id, reason = %released.reason, "list taken back");
                        work = None;
                    }
                }
                None => anyhow::bail!("the depot ended the stream"),
            },
        }
    }
}
