//! **Event-carried state transfer.** The customers service publishes a customer's *whole* state
//! with every change; the shipping service keeps its own copy of what it needs and answers from
//! it, without calling the customers service back — it keeps working while customers is down.
//!
//! Look at: `CustomerChanged` (the integration event: full state and a version, unlike the
//! customers service's own fine-grained events), `remember` (keeps the newest copy and ignores
//! an older one arriving late), and the label printed after the customers service stopped.
//!
//! ```sh
//! cargo run --example event_carried_state_transfer
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::ensure;
use herald::aggregate::Loaded;
use herald::memory::{MemoryBroker, MemoryStore};
use herald::prelude::*;

events! {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    enum CustomerEvent {
        Registered = "customers.Registered.v1" { name: String, address: String },
        Moved = "customers.Moved.v1" { address: String },
    }
}

/// The integration event other services consume: the customer as it is now, with the version
/// it is at (so a consumer can tell a newer copy from an older one).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct CustomerChanged {
    id: String,
    version: u64,
    name: String,
    address: String,
}

impl herald::Event for CustomerChanged {
    const NAME: &'static str = "customers.CustomerChanged.v1";
}

const TOPIC: &str = "customers.public";

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Customer {
    name: String,
    address: String,
}

impl Aggregate for Customer {
    const TYPE: &'static str = "customer";
    type Command = CustomerEvent; // every command is accepted as the event it names: no rules here
    type Event = CustomerEvent;
    type Error = std::convert::Infallible;

    fn handle(&self, command: CustomerEvent) -> Result<Vec<CustomerEvent>, Self::Error> {
        Ok(vec![command])
    }
    fn apply(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::Registered(e) => (self.name, self.address) = (e.name.clone(), e.address.clone()),
            CustomerEvent::Moved(e) => self.address = e.address.clone(),
        }
    }
}

/// The customers service: records the change and, in the same unit of work (the outbox), the
/// customer's full state for everyone else.
async fn change_customer(store: &dyn Store, id: &str, change: CustomerEvent) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    let done = Repository::<Customer>::new().execute_in(tx.as_mut(), id, change, None).await?;
    let Loaded { state, version, .. } = &done.aggregate;
    let changed =
        CustomerChanged { id: id.into(), version: *version, name: state.name.clone(), address: state.address.clone() };
    tx.enqueue(vec![Message::encode(TOPIC, &changed)?.with_key(id)]).await?;
    Ok(tx.commit().await?)
}

/// The shipping service's copy of the customers, by id.
type Copies = Arc<Mutex<HashMap<String, CustomerChanged>>>;

/// Keeps the newest state of each customer; an older copy (a late redelivery) changes nothing.
async fn remember(_: &mut HandlerContext, event: CustomerChanged, copies: &Copies) -> Result<(), HandlerError> {
    let mut copies = copies.lock().unwrap_or_else(PoisonError::into_inner);
    let newer = copies.get(&event.id).is_none_or(|known| known.version < event.version);
    println!(
        "shipping: {} v{} at {:?}{}",
        event.id,
        event.version,
        event.address,
        if newer { "" } else { " (older: ignored)" }
    );
    if newer {
        copies.insert(event.id.clone(), event);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let (customers_db, broker) = (Arc::new(MemoryStore::new()), Arc::new(MemoryBroker::in_memory()));
    let shutdown = CancellationToken::new();
    let customers_relay = CancellationToken::new(); // stops "the customers service"
    let relay = tokio::spawn(OutboxRelay::new(customers_db.clone(), broker.clone()).run(customers_relay.clone()));

    let copies = Copies::default();
    let route = Route::new(SubscribeOptions::new(TOPIC, "shipping")).on_with(copies.clone(), remember);
    let shipping = Router::new(broker.clone()).route(route).start(shutdown.clone()).await?;

    change_customer(&*customers_db, "ada", Registered { name: "Ada".into(), address: "1 Old Road".into() }.into())
        .await?;
    change_customer(&*customers_db, "ada", Moved { address: "2 New Street".into() }.into()).await?;
    change_customer(&*customers_db, "bob", Registered { name: "Bob".into(), address: "3 Bay".into() }.into()).await?;
    let caught_up = shipping.wait_until(|s| s.handled == 3 && s.is_idle());
    tokio::time::timeout(Duration::from_secs(10), caught_up).await?;
    // A copy of Ada's first version arrives late (a redelivery): it must not win.
    let stale = CustomerChanged { id: "ada".into(), version: 1, name: "Ada".into(), address: "1 Old Road".into() };
    broker.publish(&[Message::encode(TOPIC, &stale)?.with_key("ada")]).await?;
    tokio::time::timeout(Duration::from_secs(10), shipping.wait_until(|s| s.handled == 4 && s.is_idle())).await?;

    // The customers service goes away; shipping still prints labels from its own copy.
    customers_relay.cancel();
    relay.await?;
    drop(customers_db);
    let ada = copies.lock().unwrap_or_else(PoisonError::into_inner).get("ada").cloned();
    let label = ada.as_ref().map(|c| format!("{} — {}", c.name, c.address));
    println!("label (customers service stopped): {}", label.as_deref().unwrap_or("unknown customer"));

    shutdown.cancel();
    shipping.wait().await;
    ensure!(label.as_deref() == Some("Ada — 2 New Street"), "shipping's copy is not Ada's latest state: {label:?}");
    ensure!(ada.is_some_and(|c| c.version == 2), "Ada's copy is not at version 2");
    ensure!(copies.lock().unwrap_or_else(PoisonError::into_inner).len() == 2, "shipping does not know both customers");
    Ok(())
}
