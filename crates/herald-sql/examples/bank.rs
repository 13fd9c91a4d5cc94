//! A bank on Herald and one SQLite file: an event-sourced account, the outbox, a consumer group with
//! inbox and retries, a poison message dead-lettered, a checkpointed projection rebuilt, graceful
//! shutdown. `cargo run -p herald-sql --example bank`; docs/tutorial.md walks through it.

use std::sync::Arc;
use std::time::Duration;

use herald::dead_letters::{DeadLetterFilter, Page};
use herald::prelude::*;
use herald_sql::any::{AnyDatabase, Migration, migrate, query};

events! {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    enum AccountEvent {
        Opened = "bank.Opened.v1" { owner: String },
        Deposited = "bank.Deposited.v1" { cents: i64 },
        Withdrawn = "bank.Withdrawn.v1" { cents: i64 },
    }
}

#[derive(Debug, Clone)]
enum Command {
    Open(String),
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the account is not open")]
    NotOpen,
    #[error("overdraft refused: {asked} cents asked, {balance} in the account")]
    Overdraft { asked: i64, balance: i64 },
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Account {
    open: bool,
    balance: i64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = Command;
    type Event = AccountEvent;
    type Error = Refused;

    fn handle(&self, command: Command) -> Result<Vec<AccountEvent>, Refused> {
        match command {
            Command::Open(_) if self.open => Ok(vec![]), // opened already: nothing happens
            Command::Open(owner) => Ok(vec![Opened { owner }.into()]),
            _ if !self.open => Err(Refused::NotOpen),
            Command::Deposit(cents) => Ok(vec![Deposited { cents }.into()]),
            Command::Withdraw(cents) if cents > self.balance => {
                Err(Refused::Overdraft { asked: cents, balance: self.balance })
            }
            Command::Withdraw(cents) => Ok(vec![Withdrawn { cents }.into()]),
        }
    }
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened(_) => self.open = true,
            AccountEvent::Deposited(e) => self.balance += e.cents,
            AccountEvent::Withdrawn(e) => self.balance -= e.cents,
        }
    }
}

const TOPIC: &str = "bank.accounts";

/// The `statements` consumer group: a line per event, in the same unit of work as its inbox record.
async fn write_statement(cx: &mut HandlerContext, event: AccountEvent) -> Result<(), HandlerError> {
    let insert = query("INSERT INTO statements (account, line) VALUES (?, ?)");
    let insert = insert.bind(cx.message().key.clone()).bind(format!("{event:?}"));
    Ok(insert.execute(cx.tx()?).await.map(drop)?)
}

/// The balances read model, built from the event store's global log.
struct Balances;

#[async_trait]
impl Projection for Balances {
    fn name(&self) -> &str {
        "balances"
    }
    async fn handle(&self, tx: &mut dyn Transaction, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let cents = match event.decode::<AccountEvent>()? {
            AccountEvent::Opened(_) => 0,
            AccountEvent::Deposited(e) => e.cents,
            AccountEvent::Withdrawn(e) => -e.cents,
        };
        let account = event.aggregate_id::<Account>().unwrap_or_default();
        let upsert = "INSERT INTO balances (account, cents) VALUES (?, ?)
                      ON CONFLICT (account) DO UPDATE SET cents = balances.cents + excluded.cents";
        Ok(query(upsert).bind(account).bind(cents).execute(tx).await.map(drop)?)
    }
    async fn reset(&self, tx: &mut dyn Transaction) -> Result<(), ProjectionError> {
        Ok(query("DELETE FROM balances").execute(tx).await.map(drop)?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn,herald=info").init();
    let dir = tempfile::tempdir()?;
    let db = AnyDatabase::open(&format!("sqlite://{}", dir.path().join("bank.db").display())).await?;
    let tables = "CREATE TABLE statements (account TEXT NOT NULL, line TEXT NOT NULL);
                  CREATE TABLE balances (account TEXT PRIMARY KEY, cents BIGINT NOT NULL)";
    migrate(&db, "bank", &[Migration::portable(1, "statements and balances", tables)]).await?;
    let (store, broker) = (db.store(), db.broker());
    let shutdown = CancellationToken::new();
    let ctrl_c = shutdown.clone();
    tokio::spawn(async move { tokio::signal::ctrl_c().await.map(|()| ctrl_c.cancel()) });
    // Each command records the account's events and puts them in the outbox, in one transaction.
    let accounts = Repository::<Account>::new().publish_to(TOPIC);
    let ada = [Command::Open("Ada".into()), Command::Deposit(10_000), Command::Withdraw(3_000)];
    let bob = [Command::Open("Bob".into()), Command::Deposit(500), Command::Withdraw(5_000)];
    for (id, command) in ada.map(|c| ("ada", c)).into_iter().chain(bob.map(|c| ("bob", c))) {
        if let Err(refused) = accounts.execute(&*store, id, command).await {
            println!("{id}: {refused}");
        }
    }
    // A producer with a bug publishes straight to the broker: the message can never be handled.
    broker.publish(&[Message::new(TOPIC, Deposited::NAME, "{oops").with_key("bob")]).await?;
    let relay = tokio::spawn(OutboxRelay::new(store.clone(), broker.clone()).run(shutdown.clone()));
    let statements = SubscribeOptions::new(TOPIC, "statements");
    let archive = db.dead_letters().archive_routes_for(&[&statements], "dead-letter-archive");
    let retry = Retry::exponential(Duration::from_millis(50)).attempts(3);
    let router = Router::new(broker.clone()).store(store.clone()).middleware(Inbox);
    let router = router.route(Route::new(statements).retry(retry).on(write_statement)).routes(archive);
    let router = router.start(shutdown.clone()).await?;
    // Five events and the poison message handled, the poison message archived.
    router.wait_until(|s| s.handled == 6 && s.dead_lettered == 1 && s.is_idle()).await;
    println!("{} statement lines", query("SELECT COUNT(*) FROM statements").fetch_one::<(i64,)>(&db).await?.0);
    for letter in db.dead_letters().list(&DeadLetterFilter::all(), &Page::first(10)).await? {
        println!("dead letter {} ({}): {}", letter.message.name, letter.group, letter.reason);
    }
    // The projection checkpoints its position with every batch; a rebuild replays the log.
    let projection = ProjectionRunner::new(store.clone(), Arc::new(Balances));
    projection.catch_up(shutdown.clone()).await?;
    let report = projection.rebuild(shutdown.clone()).await?;
    let balances: Vec<(String, i64)> =
        query("SELECT account, cents FROM balances ORDER BY account").fetch_all(&db).await?;
    println!("balances rebuilt from {} events: {balances:?}", report.events);
    shutdown.cancel(); // or Ctrl-C: stop taking messages, finish those in flight, flush the outbox
    router.wait().await;
    relay.await?;
    db.close().await;
    Ok(())
}
