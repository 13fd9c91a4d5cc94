//! **Retries with backoff, and dead letters you can work with.** A transient failure (the
//! payment gateway times out) is retried after a growing delay until it succeeds. A message
//! that can never succeed (a currency the handler does not know: a bug) is dead-lettered at
//! once with its reason, archived, listed, and — after the fix — replayed to the group that
//! failed it, where it is handled.
//!
//! Look at: `Retry::exponential(..).attempts(4)` on the route, `HandlerError::transient` vs
//! `permanent`, the archive route (`archive_routes_for`), and `DeadLetters::list` / `replay`.
//!
//! ```sh
//! cargo run --example retries_dead_letters
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, ensure};
use herald::dead_letters::{DeadLetterFilter, DeadLetterStatus, DeadLetters, Page};
use herald::memory::{MemoryBroker, MemoryDeadLetterArchive, MemoryStore};
use herald::prelude::*;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ChargeRequested {
    id: String,
    cents: i64,
    currency: String,
}

impl herald::Event for ChargeRequested {
    const NAME: &'static str = "payments.ChargeRequested.v1";
}

const TOPIC: &str = "payments.requests";

/// The payment service's state: whether the currency bug is fixed, and what it charged (id,
/// attempt).
#[derive(Debug, Default)]
struct Payments {
    currency_fix_deployed: AtomicBool,
    charged: Mutex<Vec<(String, u32)>>,
}

async fn charge(
    cx: &mut HandlerContext,
    request: ChargeRequested,
    payments: &Arc<Payments>,
) -> Result<(), HandlerError> {
    let attempt = cx.attempt();
    if request.currency != "EUR" && !payments.currency_fix_deployed.load(Ordering::SeqCst) {
        println!("payments: {} attempt {attempt}: unsupported currency (permanent)", request.id);
        return Err(HandlerError::permanent(format!("unsupported currency {}", request.currency)));
    }
    if request.id == "pay-1" && attempt < 3 {
        println!("payments: {} attempt {attempt}: gateway timed out (transient: retried later)", request.id);
        return Err(HandlerError::transient("the payment gateway timed out"));
    }
    println!("payments: {} attempt {attempt}: charged {} {}", request.id, request.cents, request.currency);
    payments.charged.lock().unwrap_or_else(PoisonError::into_inner).push((request.id, attempt));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("error").with_writer(std::io::stderr).init();
    let (store, broker) = (Arc::new(MemoryStore::new()), Arc::new(MemoryBroker::in_memory()));
    let dead_letters = DeadLetters::new(store.clone(), Arc::new(MemoryDeadLetterArchive::new()));
    let payments = Arc::new(Payments::default());
    let shutdown = CancellationToken::new();

    // Up to 4 attempts, 50 ms then doubling (jittered) between them; then the dead-letter topic.
    let options = SubscribeOptions::new(TOPIC, "payments");
    let retry = Retry::exponential(Duration::from_millis(50)).max_delay(Duration::from_millis(400)).attempts(4);
    let archive = dead_letters.archive_routes_for(&[&options], "dead-letter-archive");
    let route = Route::new(options).retry(retry).on_with(payments.clone(), charge);
    let router = Router::new(broker.clone()).store(store.clone()).route(route).routes(archive);
    let router = router.start(shutdown.clone()).await?;
    // The relay publishes replays (they go through the store's outbox).
    let relay = tokio::spawn(OutboxRelay::new(store.clone(), broker.clone()).run(shutdown.clone()));

    let request = |id: &str, currency: &str| ChargeRequested { id: id.into(), cents: 1500, currency: currency.into() };
    let requests = [request("pay-1", "EUR"), request("pay-2", "CHF")];
    let messages: Vec<_> =
        requests.iter().map(|r| Message::encode(TOPIC, r).map(|m| m.with_key(&r.id))).collect::<Result<_, _>>()?;
    broker.publish(&messages).await?;
    // pay-1 handled, pay-2 dead-lettered and archived (the archive's handling counts too).
    let settled = router.wait_until(|s| s.handled == 2 && s.dead_lettered == 1 && s.is_idle());
    tokio::time::timeout(Duration::from_secs(10), settled).await?;

    let pending = dead_letters.list(&DeadLetterFilter::pending(), &Page::first(10)).await?;
    for letter in &pending {
        println!(
            "dead letter {} for group {}: {} (after {} attempt)",
            letter.message.key, letter.group, letter.reason, letter.attempts
        );
    }
    let letter = pending.first().context("nothing was dead-lettered")?.clone();
    ensure!(pending.len() == 1 && letter.reason.contains("unsupported currency CHF"), "unexpected dead letters");

    // The fix is deployed; the dead letter goes back to the group that failed it.
    payments.currency_fix_deployed.store(true, Ordering::SeqCst);
    dead_letters.replay(letter.id).await?;
    let replayed = router.wait_until(|s| s.handled == 3 && s.is_idle());
    tokio::time::timeout(Duration::from_secs(10), replayed).await?;
    let status = dead_letters.get(letter.id).await?.status;
    println!("dead letter {}: {status}", letter.message.key);

    shutdown.cancel();
    router.wait().await;
    relay.await?;
    let charged = payments.charged.lock().unwrap_or_else(PoisonError::into_inner).clone();
    ensure!(charged == [("pay-1".into(), 3), ("pay-2".into(), 1)], "unexpected charges: {charged:?}");
    ensure!(status == DeadLetterStatus::Replayed, "the dead letter is {status}, not replayed");
    Ok(())
}
