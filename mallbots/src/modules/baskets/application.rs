//! The baskets application: basket commands in Herald transactions, the basket query, and the
//! handlers keeping the local catalog copy up to date from the stores events.

use herald::aggregate::Repository;
use herald::router::{HandlerContext, HandlerError};
use herald::{Message, Store, Transaction};
use herald_sql::any::query;
use serde::Serialize;
use utoipa::ToSchema;

use super::api;
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

async fn run(tx: &mut dyn Transaction, id: &str, command: BasketCommand) -> AppResult<()> {
    let done = repository().execute_in(tx, id, command, None).await?;
    let state = &done.aggregate.state;
    let mut messages = Vec::new();
    for event in &done.events {
        let integration: api::BasketIntegrationEvent = match event {
            BasketEvent::Started(e) => {
                api::BasketStarted { id: id.to_owned(), customer_id: e.customer_id.clone() }.into()
            }
            BasketEvent::Canceled(_) => api::BasketCanceled { id: id.to_owned() }.into(),
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
        messages.push(Message::encode(api::EVENT_TOPIC, &integration)?.with_key(id));
    }
    tx.enqueue(messages).await?;
    Ok(())
}

/// Starts a basket for a customer; returns its id.
pub async fn start_basket(tx: &mut dyn Transaction, customer_id: String) -> AppResult<String> {
    let id = db::new_id();
    run(tx, &id, BasketCommand::Start { customer_id }).await?;
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

/// Abandons a basket.
pub async fn cancel(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    run(tx, id, BasketCommand::Cancel).await
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
