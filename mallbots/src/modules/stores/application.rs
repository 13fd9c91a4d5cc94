//! The stores application: commands run in a Herald transaction (load the aggregate, decide,
//! append, update the read models, put the integration events in the outbox, all in one unit of
//! work); queries read the read models.

use herald::aggregate::{Aggregate, Repository};
use herald::{Message, Transaction};
use herald_sql::AnyDatabase;
use herald_sql::SqlError;
use herald_sql::any::{Conn, FromRow, Row, query};
use serde::Serialize;
use utoipa::ToSchema;

use super::api;
use super::domain::{Product, ProductCommand, ProductError, ProductEvent, Store, StoreCommand, StoreError, StoreEvent};
use crate::db;
use crate::error::{AppError, AppResult};
use crate::money::Money;

/// A snapshot every this many events of a store or product.
const SNAPSHOT_EVERY: u64 = 50;

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AppError::NotFound("store".into()),
            StoreError::BlankName | StoreError::BlankLocation => AppError::invalid(e),
            StoreError::AlreadyExists | StoreError::AlreadyParticipating | StoreError::AlreadyNotParticipating => {
                AppError::conflict(e)
            }
        }
    }
}

impl From<ProductError> for AppError {
    fn from(e: ProductError) -> Self {
        match e {
            ProductError::NotFound => AppError::NotFound("product".into()),
            ProductError::BlankName | ProductError::NegativePrice => AppError::invalid(e),
            ProductError::AlreadyExists | ProductError::NotAnIncrease { .. } | ProductError::NotADecrease { .. } => {
                AppError::conflict(e)
            }
        }
    }
}

/// Loads aggregate `id`, handles `command` and appends the events; returns them with the state
/// after them.
async fn execute<A>(tx: &mut dyn Transaction, id: &str, command: A::Command) -> AppResult<(A, Vec<A::Event>)>
where
    AppError: From<A::Error>,
    A: Aggregate + Clone,
    A::Command: Clone,
{
    let done = Repository::<A>::new().snapshot_every(SNAPSHOT_EVERY).execute_in(tx, id, command, None).await?;
    Ok((done.aggregate.state, done.events))
}

// ---------------------------------------------------------------------------------------------
// Store commands

/// Creates a store; returns its id.
pub async fn create_store(tx: &mut dyn Transaction, name: String, location: String) -> AppResult<String> {
    let id = db::new_id();
    run_store(tx, &id, StoreCommand::Create { name, location }).await?;
    Ok(id)
}

/// Offers the store's products at the kiosks.
pub async fn enable_participation(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    run_store(tx, id, StoreCommand::EnableParticipation).await
}

/// Stops offering the store's products at the kiosks.
pub async fn disable_participation(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    run_store(tx, id, StoreCommand::DisableParticipation).await
}

/// Renames a store.
pub async fn rebrand_store(tx: &mut dyn Transaction, id: &str, name: String) -> AppResult<()> {
    run_store(tx, id, StoreCommand::Rebrand { name }).await
}

async fn run_store(tx: &mut dyn Transaction, id: &str, command: StoreCommand) -> AppResult<()> {
    let (_, events) = execute::<Store>(tx, id, command).await?;
    let mut messages = Vec::with_capacity(events.len());
    for event in &events {
        let mut conn = db::conn(tx)?;
        let integration: api::StoreIntegrationEvent = match event {
            StoreEvent::Created(e) => {
                query("INSERT INTO stores_mall (id, name, location, participating) VALUES (?, ?, ?, FALSE)")
                    .bind(id)
                    .bind(&e.name)
                    .bind(&e.location)
                    .execute(&mut conn)
                    .await?;
                api::StoreCreated { id: id.to_owned(), name: e.name.clone(), location: e.location.clone() }.into()
            }
            StoreEvent::ParticipationEnabled(_) | StoreEvent::ParticipationDisabled(_) => {
                let participating = matches!(event, StoreEvent::ParticipationEnabled(_));
                query("UPDATE stores_mall SET participating = ? WHERE id = ?")
                    .bind(participating)
                    .bind(id)
                    .execute(&mut conn)
                    .await?;
                api::StoreParticipatingToggled { id: id.to_owned(), participating }.into()
            }
            StoreEvent::Rebranded(e) => {
                query("UPDATE stores_mall SET name = ? WHERE id = ?").bind(&e.name).bind(id).execute(&mut conn).await?;
                api::StoreRebranded { id: id.to_owned(), name: e.name.clone() }.into()
            }
        };
        messages.push(Message::encode(api::STORE_TOPIC, &integration)?.with_key(id));
    }
    tx.enqueue(messages).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Product commands

/// What a new product is.
#[derive(Clone, Debug)]
pub struct NewProduct {
    pub name: String,
    pub description: String,
    pub sku: String,
    pub price: Money,
}

/// Adds a product to an existing store; returns its id.
pub async fn add_product(tx: &mut dyn Transaction, store_id: &str, product: NewProduct) -> AppResult<String> {
    let exists: Option<(String,)> =
        query("SELECT id FROM stores_mall WHERE id = ?").bind(store_id).fetch_optional(db::conn(tx)?).await?;
    if exists.is_none() {
        return Err(AppError::NotFound("store".into()));
    }
    let id = db::new_id();
    let command = ProductCommand::Add {
        store_id: store_id.to_owned(),
        name: product.name,
        description: product.description,
        sku: product.sku,
        price_cents: product.price.cents(),
    };
    run_product(tx, &id, command).await?;
    Ok(id)
}

/// Renames and redescribes a product.
pub async fn rebrand_product(tx: &mut dyn Transaction, id: &str, name: String, description: String) -> AppResult<()> {
    run_product(tx, id, ProductCommand::Rebrand { name, description }).await
}

/// Raises a product's price to `price`.
pub async fn increase_price(tx: &mut dyn Transaction, id: &str, price: Money) -> AppResult<()> {
    run_product(tx, id, ProductCommand::IncreasePrice { price_cents: price.cents() }).await
}

/// Lowers a product's price to `price`.
pub async fn decrease_price(tx: &mut dyn Transaction, id: &str, price: Money) -> AppResult<()> {
    run_product(tx, id, ProductCommand::DecreasePrice { price_cents: price.cents() }).await
}

/// Stops selling a product.
pub async fn remove_product(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    run_product(tx, id, ProductCommand::Remove).await
}

async fn run_product(tx: &mut dyn Transaction, id: &str, command: ProductCommand) -> AppResult<()> {
    let (state, events) = execute::<Product>(tx, id, command).await?;
    let mut messages = Vec::with_capacity(events.len());
    for event in &events {
        let mut conn = db::conn(tx)?;
        let integration: api::ProductIntegrationEvent = match event {
            ProductEvent::Added(e) => {
                query(
                    "INSERT INTO stores_catalog (id, store_id, name, description, sku, price_cents)
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(id)
                .bind(&e.store_id)
                .bind(&e.name)
                .bind(&e.description)
                .bind(&e.sku)
                .bind(e.price_cents)
                .execute(&mut conn)
                .await?;
                api::ProductAdded {
                    id: id.to_owned(),
                    store_id: e.store_id.clone(),
                    name: e.name.clone(),
                    description: e.description.clone(),
                    sku: e.sku.clone(),
                    price_cents: e.price_cents,
                }
                .into()
            }
            ProductEvent::Rebranded(e) => {
                query("UPDATE stores_catalog SET name = ?, description = ? WHERE id = ?")
                    .bind(&e.name)
                    .bind(&e.description)
                    .bind(id)
                    .execute(&mut conn)
                    .await?;
                api::ProductRebranded { id: id.to_owned(), name: e.name.clone(), description: e.description.clone() }
                    .into()
            }
            // One command yields one price event, so the state after it holds its price.
            ProductEvent::PriceIncreased(e) => {
                set_price((&mut conn).into(), id, state.price_cents).await?;
                api::ProductPriceIncreased {
                    id: id.to_owned(),
                    delta_cents: e.delta_cents,
                    price_cents: state.price_cents,
                }
                .into()
            }
            ProductEvent::PriceDecreased(e) => {
                set_price((&mut conn).into(), id, state.price_cents).await?;
                api::ProductPriceDecreased {
                    id: id.to_owned(),
                    delta_cents: e.delta_cents,
                    price_cents: state.price_cents,
                }
                .into()
            }
            ProductEvent::Removed(_) => {
                query("DELETE FROM stores_catalog WHERE id = ?").bind(id).execute(&mut conn).await?;
                api::ProductRemoved { id: id.to_owned() }.into()
            }
        };
        messages.push(Message::encode(api::PRODUCT_TOPIC, &integration)?.with_key(id));
    }
    tx.enqueue(messages).await?;
    Ok(())
}

async fn set_price(conn: Conn<'_>, id: &str, price_cents: i64) -> AppResult<()> {
    query("UPDATE stores_catalog SET price_cents = ? WHERE id = ?").bind(price_cents).bind(id).execute(conn).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Queries

/// A store, as the mall read model has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreView {
    pub id: String,
    pub name: String,
    pub location: String,
    pub participating: bool,
}

impl FromRow for StoreView {
    fn from_row(row: &Row) -> Result<Self, SqlError> {
        Ok(Self {
            id: row.get("id")?,
            name: row.get("name")?,
            location: row.get("location")?,
            participating: row.get("participating")?,
        })
    }
}

/// A product, as the catalog read model has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    pub id: String,
    pub store_id: String,
    pub name: String,
    pub description: String,
    pub sku: String,
    /// Decimal amount, e.g. 9.99.
    #[schema(value_type = f64, example = 9.99)]
    pub price: Money,
}

struct ProductRow {
    id: String,
    store_id: String,
    name: String,
    description: String,
    sku: String,
    price_cents: i64,
}

impl FromRow for ProductRow {
    fn from_row(row: &Row) -> Result<Self, SqlError> {
        Ok(Self {
            id: row.get("id")?,
            store_id: row.get("store_id")?,
            name: row.get("name")?,
            description: row.get("description")?,
            sku: row.get("sku")?,
            price_cents: row.get("price_cents")?,
        })
    }
}

impl ProductRow {
    fn view(self) -> AppResult<ProductView> {
        Ok(ProductView {
            id: self.id,
            store_id: self.store_id,
            name: self.name,
            description: self.description,
            sku: self.sku,
            price: Money::from_cents(self.price_cents).map_err(AppError::internal)?,
        })
    }
}

/// One store.
pub async fn get_store(db: &AnyDatabase, id: &str) -> AppResult<StoreView> {
    query("SELECT id, name, location, participating FROM stores_mall WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| AppError::NotFound("store".into()))
}

/// Every store (or only the participating ones), by name.
pub async fn get_stores(db: &AnyDatabase, only_participating: bool) -> AppResult<Vec<StoreView>> {
    let sql = if only_participating {
        "SELECT id, name, location, participating FROM stores_mall WHERE participating = TRUE ORDER BY name, id"
    } else {
        "SELECT id, name, location, participating FROM stores_mall ORDER BY name, id"
    };
    Ok(query(sql).fetch_all(db).await?)
}

/// The products of a store, by name.
pub async fn get_catalog(db: &AnyDatabase, store_id: &str) -> AppResult<Vec<ProductView>> {
    get_store(db, store_id).await?;
    let rows: Vec<ProductRow> = query(
        "SELECT id, store_id, name, description, sku, price_cents FROM stores_catalog
         WHERE store_id = ? ORDER BY name, id",
    )
    .bind(store_id)
    .fetch_all(db)
    .await?;
    rows.into_iter().map(ProductRow::view).collect()
}

/// One product.
pub async fn get_product(db: &AnyDatabase, id: &str) -> AppResult<ProductView> {
    let row: Option<ProductRow> =
        query("SELECT id, store_id, name, description, sku, price_cents FROM stores_catalog WHERE id = ?")
            .bind(id)
            .fetch_optional(db)
            .await?;
    row.ok_or_else(|| AppError::NotFound("product".into()))?.view()
}
