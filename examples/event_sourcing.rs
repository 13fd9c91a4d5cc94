//! **Event sourcing with snapshots and optimistic concurrency.** A stock item's state is the fold
//! of its events; the `Repository` loads it (latest snapshot + the events after it), decides with
//! `handle`, and appends the new events *expecting the version it loaded*.
//!
//! Look at: `snapshot_every(5)` (a snapshot each time a save crosses a multiple of 5 events),
//! the reload that reads the snapshot and only the 2 events after it, and the two clerks who
//! load the same version: the second save is refused as a conflict, and deciding again on the
//! fresh state refuses the reservation instead of overselling.
//!
//! ```sh
//! cargo run --example event_sourcing
//! ```

use std::sync::Arc;

use anyhow::{Context, ensure};
use herald::aggregate::stream_name;
use herald::memory::MemoryStore;
use herald::prelude::*;

events! {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    enum StockEvent {
        Received = "stock.Received.v1" { units: u32 },
        Reserved = "stock.Reserved.v1" { units: u32 },
    }
}

#[derive(Debug, Clone)]
enum Command {
    Receive(u32),
    Reserve(u32),
}

#[derive(Debug, thiserror::Error)]
#[error("only {available} in stock, {asked} asked")]
struct OutOfStock {
    available: u32,
    asked: u32,
}

#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct StockItem {
    available: u32,
}

impl Aggregate for StockItem {
    const TYPE: &'static str = "stock";
    type Command = Command;
    type Event = StockEvent;
    type Error = OutOfStock;

    fn handle(&self, command: Command) -> Result<Vec<StockEvent>, OutOfStock> {
        match command {
            Command::Receive(units) => Ok(vec![Received { units }.into()]),
            Command::Reserve(asked) if asked > self.available => Err(OutOfStock { available: self.available, asked }),
            Command::Reserve(units) => Ok(vec![Reserved { units }.into()]),
        }
    }
    fn apply(&mut self, event: &StockEvent) {
        match event {
            StockEvent::Received(e) => self.available += e.units,
            StockEvent::Reserved(e) => self.available -= e.units,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let store = Arc::new(MemoryStore::new());
    let items = Repository::<StockItem>::new().snapshot_every(5);

    // 12 events: receive 10 units, then 11 reservations of one unit and one delivery of 4.
    let mut commands = vec![Command::Receive(10)];
    commands.extend((0..11).map(|i| if i == 5 { Command::Receive(4) } else { Command::Reserve(1) }));
    for command in commands {
        items.execute(&*store, "lamp", command).await?;
    }
    let stream = stream_name::<StockItem>("lamp");
    let snapshot = store.load_snapshot(&stream).await?.context("no snapshot was saved")?;
    let after_snapshot = store.read_stream(&stream, snapshot.version + 1, 100).await?;
    let lamp = items.load_from(&*store, "lamp").await?;
    println!(
        "{stream}: version {}, {} available (snapshot at version {} + {} later events)",
        lamp.version,
        lamp.state.available,
        snapshot.version,
        after_snapshot.len()
    );
    // The same state as folding every event from the first: the snapshot is only a shortcut.
    let mut folded = StockItem::default();
    for event in store.read_stream(&stream, 1, 100).await? {
        folded.apply(&event.decode::<StockEvent>()?);
    }
    ensure!((lamp.version, snapshot.version, after_snapshot.len()) == (12, 10, 2), "unexpected versions");
    ensure!(lamp.state == folded && folded.available == 4, "the reloaded state is not the fold of the events");

    // Two clerks load version 12 (4 available) and each reserve 3: both decisions are valid alone.
    let (mut first_tx, mut second_tx) = (store.begin().await?, store.begin().await?);
    let mut first = items.load(first_tx.as_mut(), "lamp").await?;
    let mut second = items.load(second_tx.as_mut(), "lamp").await?;
    let first_events = first.state.handle(Command::Reserve(3))?;
    items.save(first_tx.as_mut(), &mut first, &first_events, None).await?;
    first_tx.commit().await?;
    println!("clerk 1 reserved 3 (expected version 12: ok, now version {})", first.version);
    let second_events = second.state.handle(Command::Reserve(3))?;
    let second_save = async {
        items.save(second_tx.as_mut(), &mut second, &second_events, None).await?;
        second_tx.commit().await
    };
    let conflict = second_save.await.err().filter(|e| e.is_conflict()).context("the second save was not refused")?;
    println!("clerk 2 refused: {conflict}");
    // `execute` does what a caller should: load the fresh state and decide again.
    let retried = items.execute(&*store, "lamp", Command::Reserve(3)).await;
    println!("clerk 2 tries again: {}", retried.as_ref().map_or_else(ToString::to_string, |_| "reserved".into()));
    ensure!(
        matches!(retried, Err(RepositoryError::Rejected(OutOfStock { available: 1, asked: 3 }))),
        "the retry did not see the first clerk's reservation"
    );
    ensure!(items.load_from(&*store, "lamp").await?.state.available == 1, "stock was oversold");
    Ok(())
}
