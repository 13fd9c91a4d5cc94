//! The baskets application: basket commands in Herald transactions, the basket query, the
//! handlers keeping the local catalog copy up to date from the stores events, and the expiry of
//! baskets at their deadline (a scheduled message baskets sends itself).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use herald::aggregate::{Repository, RepositoryError};
use herald::router::{HandlerContext, HandlerError};
use herald::{Event, Message, Store, Transaction};
use herald_sql::any::query;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{self, CancelReason};
use super::domain::{Basket, BasketCommand, BasketError, BasketEvent, BasketStatus, Item};
use crate::db;
use crate::error::{AppError, AppResult};
use crate::modules::stores::api as stores;
use crate::money::Money;

/// A snapshot every this many events of a basket.
const SNAPSHOT_EVERY: u64 = 50;

impl From<BasketError> for AppError {
    fn from(e: BasketError) -> Self {
        match e {
            BasketError::NotFound => AppError::NotFound("basket".into()),
            BasketError::NoCustomer
            | BasketError::ZeroQuantity
            | BasketError::NoPayment
            | BasketError::TooLarge
            | BasketError::NotInBasket
            | BasketError::Empty => AppError::invalid(e),
            BasketError::AlreadyStarted | BasketError::NotOpen(_) => AppError::conflict(e),
        }
    }
}

fn repository() -> Repository<Basket> {
    Repository::new().snapshot_every(SNAPSHOT_EVERY)
}

/// Topic of baskets' own commands (keyed by basket id): only baskets sends them, to itself.
pub const COMMAND_TOPIC: &str = "baskets.commands";

/// Command (module-internal, scheduled when a basket starts): the basket's deadline has come;
/// cancel it if it is still open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExpireBasket {
    pub basket_id: String,
}
impl Event for ExpireBasket {
    const NAME: &'static str = "baskets.ExpireBasket.v1";
}

/// How long a basket stays open (the `basket_ttl` setting), given to the handlers that start
/// baskets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BasketTtl(pub Duration);

/// Runs `command` on basket `id` and queues its integration events (caused by `cause`, if
/// given), in the caller's unit of work. A refusal is `Ok(Err(..))`.
async fn execute(
    tx: &mut dyn Transaction,
    id: &str,
    command: BasketCommand,
    cause: Option<&Message>,
) -> AppResult<Result<(), BasketError>> {
    let done = match repository().execute_in(tx, id, command, cause).await {
        Ok(done) => done,
        Err(RepositoryError::Rejected(e)) => return Ok(Err(e)),
        Err(RepositoryError::Store(e)) => return Err(e.into()),
    };
    let state = &done.aggregate.state;
    let mut messages = Vec::new();
    for event in &done.events {
        let integration: api::BasketIntegrationEvent = match event {
            BasketEvent::Started(e) => {
                api::BasketStarted { id: id.to_owned(), customer_id: e.customer_id.clone() }.into()
            }
            BasketEvent::Canceled(e) => api::BasketCanceled { id: id.to_owned(), reason: e.reason }.into(),
            BasketEvent::CheckedOut(e) => api::BasketCheckedOut {
                id: id.to_owned(),
                customer_id: state.customer_id.clone(),
                payment_id: e.payment_id.clone(),
                items: state
                    .lines
                    .values()
                    .map(|line| api::BasketItem {
                        store_id: line.item.store_id.clone(),
                        product_id: line.item.product_id.clone(),
                        store_name: line.item.store_name.clone(),
                        product_name: line.item.product_name.clone(),
                        price_cents: line.item.price_cents,
                        quantity: line.quantity,
                    })
                    .collect(),
            }
            .into(),
            // Item changes stay inside baskets.
            BasketEvent::ItemAdded(_) | BasketEvent::ItemRemoved(_) => continue,
        };
        let mut message = Message::encode(api::EVENT_TOPIC, &integration)?.with_key(id);
        if let Some(cause) = cause {
            message = message.caused_by(cause);
        }
        messages.push(message);
    }
    tx.enqueue(messages).await?;
    Ok(Ok(()))
}

async fn run(tx: &mut dyn Transaction, id: &str, command: BasketCommand) -> AppResult<()> {
    execute(tx, id, command, None).await??;
    Ok(())
}

/// Starts a basket for a customer; returns its id. Its expiry ([`ExpireBasket`]) is scheduled
/// `ttl` from now in the same unit of work: it exists exactly when the basket does.
pub async fn start_basket(tx: &mut dyn Transaction, customer_id: String, ttl: BasketTtl) -> AppResult<String> {
    let id = db::new_id();
    run(tx, &id, BasketCommand::Start { customer_id }).await?;
    let expire = Message::encode(COMMAND_TOPIC, &ExpireBasket { basket_id: id.clone() })?.with_key(&id);
    let ttl = TimeDelta::from_std(ttl.0).unwrap_or(TimeDelta::MAX);
    let deadline = Utc::now().checked_add_signed(ttl).unwrap_or(DateTime::<Utc>::MAX_UTC);
    tx.schedule(vec![expire], deadline).await?;
    Ok(id)
}

/// Adds `quantity` of a product, with the name and price of the local catalog copy.
pub async fn add_item(tx: &mut dyn Transaction, id: &str, product_id: &str, quantity: u32) -> AppResult<()> {
    // The request's own values first: a bad quantity is a 400 whatever the product.
    if quantity == 0 {
        return Err(BasketError::ZeroQuantity.into());
    }
    let item: Option<(String, String, String, String, i64)> = query(
        "SELECT p.store_id, p.id, s.name, p.name, p.price_cents
         FROM baskets_products p JOIN baskets_stores s ON s.id = p.store_id WHERE p.id = ?",
    )
    .bind(product_id)
    .fetch_optional(db::conn(tx)?)
    .await?;
    let (store_id, product_id, store_name, product_name, price_cents) =
        item.ok_or_else(|| AppError::NotFound("product".into()))?;
    let item = Item { store_id, product_id, store_name, product_name, price_cents };
    run(tx, id, BasketCommand::AddItem { item, quantity }).await
}

/// Takes `quantity` of a product out.
pub async fn remove_item(tx: &mut dyn Transaction, id: &str, product_id: String, quantity: u32) -> AppResult<()> {
    run(tx, id, BasketCommand::RemoveItem { product_id, quantity }).await
}

/// Abandons a basket (the customer's cancel).
pub async fn cancel(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    run(tx, id, BasketCommand::Cancel { reason: CancelReason::Customer }).await
}

/// A basket's deadline has come: if it is still open it is canceled as the kiosk's cancel
/// would (same command, same events, reason `expired`); one checked out or canceled already is
/// left as it is, so a late or repeated expiry changes nothing. An expiry of a basket that
/// never started (impossible: both are written in one unit of work) is dead-lettered.
pub async fn on_expire_basket(cx: &mut HandlerContext, command: ExpireBasket) -> Result<(), HandlerError> {
    let cause = cx.message().clone();
    let expire = BasketCommand::Cancel { reason: CancelReason::Expired };
    match execute(cx.tx()?, &command.basket_id, expire, Some(&cause)).await {
        Ok(Ok(())) => {
            tracing::debug!(basket = %command.basket_id, "basket expired");
            Ok(())
        }
        Ok(Err(BasketError::NotOpen(_))) => Ok(()),
        Ok(Err(refusal)) => Err(HandlerError::permanent(refusal)),
        Err(e) => Err(HandlerError::transient(e)),
    }
}

/// Checks out with a payment id.
pub async fn checkout(tx: &mut dyn Transaction, id: &str, payment_id: String) -> AppResult<()> {
    run(tx, id, BasketCommand::Checkout { payment_id }).await
}

/// A basket line as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasketItemView {
    pub store_id: String,
    pub product_id: String,
    pub store_name: String,
    pub product_name: String,
    #[schema(value_type = f64, example = 9.99)]
    pub price: Money,
    pub quantity: u32,
}

/// A basket as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasketView {
    pub id: String,
    pub customer_id: String,
    /// Set once checked out.
    pub payment_id: Option<String>,
    /// `open`, `canceled` or `checked_out`.
    #[schema(value_type = String, example = "open")]
    pub status: BasketStatus,
    pub items: Vec<BasketItemView>,
    #[schema(value_type = f64, example = 19.98)]
    pub total: Money,
}

/// One basket, rebuilt from its events (and snapshot).
pub async fn get_basket(store: &dyn Store, id: &str) -> AppResult<BasketView> {
    // A read: no unit of work, so it never waits for a writer.
    let basket = repository().load_from(store, id).await?.state;
    if basket.status == BasketStatus::Unknown {
        return Err(AppError::NotFound("basket".into()));
    }
    let money = |cents| Money::from_cents(cents).map_err(AppError::internal);
    let total = money(basket.total_cents().ok_or_else(|| AppError::internal("basket total overflows"))?)?;
    let items = basket
        .lines
        .values()
        .map(|line| {
            Ok(BasketItemView {
                store_id: line.item.store_id.clone(),
                product_id: line.item.product_id.clone(),
                store_name: line.item.store_name.clone(),
                product_name: line.item.product_name.clone(),
                price: money(line.item.price_cents)?,
                quantity: line.quantity,
            })
        })
        .collect::<AppResult<_>>()?;
    Ok(BasketView {
        id: id.to_owned(),
        customer_id: basket.customer_id,
        payment_id: Some(basket.payment_id).filter(|p| !p.is_empty()),
        status: basket.status,
        items,
        total,
    })
}

// ---------------------------------------------------------------------------------------------
// The local catalog copy, fed by the stores events (in the handler's transaction, with the
// inbox record, so a redelivered event changes nothing twice).

fn transient(e: impl Into<AppError>) -> HandlerError {
    HandlerError::transient(e.into())
}

/// Keeps `baskets_stores` up to date.
pub async fn on_store_event(cx: &mut HandlerContext, event: stores::StoreIntegrationEvent) -> Result<(), HandlerError> {
    let conn = db::conn(cx.tx()?).map_err(transient)?;
    match event {
        stores::StoreIntegrationEvent::Created(e) => {
            query("INSERT INTO baskets_stores (id, name) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name")
                .bind(&e.id)
                .bind(&e.name)
                .execute(conn)
                .await
                .map_err(transient)?;
        }
        stores::StoreIntegrationEvent::Rebranded(e) => {
            query("UPDATE baskets_stores SET name = ? WHERE id = ?")
                .bind(&e.name)
                .bind(&e.id)
                .execute(conn)
                .await
                .map_err(transient)?;
        }
        stores::StoreIntegrationEvent::ParticipatingToggled(_) => {}
    }
    Ok(())
}

/// Keeps `baskets_products` up to date.
pub async fn on_product_event(
    cx: &mut HandlerContext,
    event: stores::ProductIntegrationEvent,
) -> Result<(), HandlerError> {
    let conn = db::conn(cx.tx()?).map_err(transient)?;
    let result = match &event {
        stores::ProductIntegrationEvent::Added(e) => {
            query(
                "INSERT INTO baskets_products (id, store_id, name, price_cents) VALUES (?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET store_id = excluded.store_id, name = excluded.name,
                 price_cents = excluded.price_cents",
            )
            .bind(&e.id)
            .bind(&e.store_id)
            .bind(&e.name)
            .bind(e.price_cents)
            .execute(conn)
            .await
        }
        stores::ProductIntegrationEvent::Rebranded(e) => {
            query("UPDATE baskets_products SET name = ? WHERE id = ?").bind(&e.name).bind(&e.id).execute(conn).await
        }
        // The events carry the new price: set it (adding the delta twice is impossible).
        stores::ProductIntegrationEvent::PriceIncreased(stores::ProductPriceIncreased { id, price_cents, .. })
        | stores::ProductIntegrationEvent::PriceDecreased(stores::ProductPriceDecreased { id, price_cents, .. }) => {
            query("UPDATE baskets_products SET price_cents = ? WHERE id = ?")
                .bind(price_cents)
                .bind(id)
                .execute(conn)
                .await
        }
        stores::ProductIntegrationEvent::Removed(e) => {
            query("DELETE FROM baskets_products WHERE id = ?").bind(&e.id).execute(conn).await
        }
    };
    result.map_err(transient)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_sql::AnyDatabase;

    use super::*;

    /// A SQLite database with baskets' tables, one store with one product in its catalog.
    async fn database(dir: &tempfile::TempDir) -> AnyDatabase {
        let path = dir.path().join("baskets.db");
        let db: AnyDatabase =
            herald_sql::SqliteConfig::new(path.to_string_lossy()).open().await.expect("opens SQLite").into();
        db::migrate(&db, &super::super::MODULE).await.expect("migrates");
        let store = db.store();
        let mut tx = store.begin().await.expect("begins");
        let conn = db::conn(tx.as_mut()).expect("a connection");
        query("INSERT INTO baskets_stores (id, name) VALUES ('s-1', 'Books')").execute(conn).await.expect("store");
        let conn = db::conn(tx.as_mut()).expect("a connection");
        query("INSERT INTO baskets_products (id, store_id, name, price_cents) VALUES ('p-1', 's-1', 'Treasury', 999)")
            .execute(conn)
            .await
            .expect("product");
        tx.commit().await.expect("commits");
        db
    }

    async fn write<T>(
        store: &Arc<dyn Store>,
        work: impl for<'a> FnOnce(&'a mut dyn Transaction) -> futures::future::BoxFuture<'a, AppResult<T>>,
    ) -> T {
        let mut tx = store.begin().await.expect("begins");
        let value = work(tx.as_mut()).await.expect("the command succeeds");
        tx.commit().await.expect("commits");
        value
    }

    /// Delivers basket `id`'s expiry to the handler, as the router would (one unit of work,
    /// committed if it succeeds); returns the message delivered.
    async fn expire(store: &Arc<dyn Store>, id: &str) -> (Message, Result<(), HandlerError>) {
        let message =
            Message::encode(COMMAND_TOPIC, &ExpireBasket { basket_id: id.to_owned() }).expect("encodes").with_key(id);
        let tx = store.begin().await.expect("begins");
        let mut cx = HandlerContext::new(message.clone(), 1, "baskets-commands", Some(tx));
        let handled = on_expire_basket(&mut cx, ExpireBasket { basket_id: id.to_owned() }).await;
        if handled.is_ok() {
            cx.take_tx().expect("the transaction").commit().await.expect("commits");
        }
        (message, handled)
    }

    /// The integration events of basket `id` waiting in the outbox.
    async fn published(store: &Arc<dyn Store>, id: &str) -> Vec<Message> {
        let pending = store.outbox_pending(1000).await.expect("reads the outbox");
        pending.into_iter().map(|r| r.message).filter(|m| m.key == id && m.topic == api::EVENT_TOPIC).collect()
    }

    #[tokio::test]
    async fn a_basket_s_expiry_is_scheduled_with_it_and_cancels_it_only_while_open() {
        let dir = tempfile::tempdir().expect("dir");
        let store = database(&dir).await.store();
        let ttl = BasketTtl(Duration::from_secs(60));
        let abandoned = write(&store, |tx| Box::pin(start_basket(tx, "c-1".into(), ttl))).await;

        // Scheduled in the basket's unit of work, due `ttl` from now (by the database's clock,
        // to the millisecond, rounded up): not in the outbox yet.
        let due = store.next_scheduled().await.expect("reads").expect("the expiry is scheduled");
        assert!(due > Duration::from_secs(50) && due <= Duration::from_secs(61), "due in {due:?}");
        let waiting = store.outbox_pending(1000).await.expect("reads");
        assert!(waiting.iter().all(|r| r.message.name != ExpireBasket::NAME), "published before its time");

        // At its deadline an open basket is canceled, saying why, caused by the expiry.
        let (cause, handled) = expire(&store, &abandoned).await;
        handled.expect("expires");
        assert_eq!(get_basket(store.as_ref(), &abandoned).await.expect("found").status, BasketStatus::Canceled);
        let canceled: Vec<_> = published(&store, &abandoned)
            .await
            .into_iter()
            .filter(|m| m.name == <api::BasketCanceled as Event>::NAME)
            .collect();
        assert_eq!(canceled.len(), 1);
        let event: api::BasketCanceled = serde_json::from_slice(&canceled[0].payload).expect("decodes");
        assert_eq!(event, api::BasketCanceled { id: abandoned.clone(), reason: CancelReason::Expired });
        assert_eq!(canceled[0].metadata.causation_id, Some(cause.id));

        // Delivered again (the relay republished it): nothing more happens.
        let version = repository().load_from(store.as_ref(), &abandoned).await.expect("loads").version;
        expire(&store, &abandoned).await.1.expect("a repeat is done at once");
        assert_eq!(repository().load_from(store.as_ref(), &abandoned).await.expect("loads").version, version);
        assert_eq!(published(&store, &abandoned).await.len(), 2, "BasketStarted and one BasketCanceled");

        // A basket checked out before its deadline stays checked out.
        let kept = write(&store, |tx| Box::pin(start_basket(tx, "c-1".into(), ttl))).await;
        let id = kept.clone();
        write(&store, move |tx| Box::pin(async move { add_item(tx, &id, "p-1", 2).await })).await;
        let id = kept.clone();
        write(&store, move |tx| Box::pin(async move { checkout(tx, &id, "pay-1".into()).await })).await;
        expire(&store, &kept).await.1.expect("nothing to do");
        let view = get_basket(store.as_ref(), &kept).await.expect("found");
        assert_eq!((view.status, view.payment_id.as_deref()), (BasketStatus::CheckedOut, Some("pay-1")));

        // A basket canceled at the kiosk stays canceled by the customer.
        let left = write(&store, |tx| Box::pin(start_basket(tx, "c-1".into(), ttl))).await;
        let id = left.clone();
        write(&store, move |tx| Box::pin(async move { cancel(tx, &id).await })).await;
        expire(&store, &left).await.1.expect("nothing to do");
        let canceled = published(&store, &left).await;
        assert_eq!(canceled.len(), 2, "BasketStarted and the kiosk's BasketCanceled only");
        let event: api::BasketCanceled = serde_json::from_slice(&canceled[1].payload).expect("decodes");
        assert_eq!(event.reason, CancelReason::Customer);

        // The expiry of a basket that never started is a bug: dead-lettered.
        let unknown = expire(&store, "no-such-basket").await.1.expect_err("refused");
        assert!(unknown.is_permanent(), "{unknown}");
    }
}
