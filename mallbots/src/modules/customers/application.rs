//! The customers application: commands load the customer's row, let the aggregate decide,
//! write the row back and put the integration events in the outbox, in one transaction.

use herald::aggregate::Aggregate;
use herald::command::Reply;
use herald::router::{HandlerContext, HandlerError};
use herald::shredding::{FORGOTTEN, Shredder};
use herald::{Message, Transaction};
use herald_sql::AnyDatabase;
use herald_sql::SqlError;
use herald_sql::any::{FromRow, Row, query};
use serde::Serialize;
use utoipa::ToSchema;

use super::api;
use super::domain::{Customer, CustomerCommand, CustomerError, CustomerEvent};
use crate::db;
use crate::error::{AppError, AppResult};

impl From<CustomerError> for AppError {
    fn from(e: CustomerError) -> Self {
        match e {
            CustomerError::NotFound => AppError::NotFound("customer".into()),
            CustomerError::BlankName | CustomerError::BlankSmsNumber | CustomerError::InvalidSmsNumber => {
                AppError::invalid(e)
            }
            CustomerError::AlreadyExists
            | CustomerError::AlreadyEnabled
            | CustomerError::AlreadyDisabled
            | CustomerError::Disabled => AppError::conflict(e),
        }
    }
}

/// The customer's current state, from its row (a fresh one if there is none).
async fn load(tx: &mut dyn Transaction, id: &str) -> AppResult<Customer> {
    let row: Option<(String, String, bool)> =
        query("SELECT name, sms_number, enabled FROM customers_customers WHERE id = ?")
            .bind(id)
            .fetch_optional(db::conn(tx)?)
            .await?;
    Ok(row.map_or_else(Customer::default, |(name, sms_number, enabled)| Customer {
        exists: true,
        name,
        sms_number,
        enabled,
    }))
}

/// Runs `command` on customer `id`: decide, write the row, queue the integration events.
/// A refusal is `Ok(Err(..))`, so that the command handler can reply with it.
async fn execute(
    tx: &mut dyn Transaction,
    shredder: &Shredder,
    id: &str,
    command: CustomerCommand,
) -> AppResult<Result<Customer, CustomerError>> {
    let mut customer = load(tx, id).await?;
    let events = match customer.handle(command) {
        Ok(events) => events,
        Err(e) => return Ok(Err(e)),
    };
    let mut messages = Vec::new();
    for event in &events {
        customer.apply(event);
        let integration: api::CustomerIntegrationEvent = match event {
            // Personal data leaves sealed with the customer's key (crypto-shredding, ADR 0024).
            CustomerEvent::Registered(e) => api::CustomerRegistered {
                id: id.to_owned(),
                name: shredder.seal(id, &e.name).await?,
                sms_number: shredder.seal(id, &e.sms_number).await?,
            }
            .into(),
            CustomerEvent::SmsChanged(e) => {
                api::CustomerSmsChanged { id: id.to_owned(), sms_number: shredder.seal(id, &e.sms_number).await? }
                    .into()
            }
            CustomerEvent::Enabled(_) => api::CustomerEnabled { id: id.to_owned() }.into(),
            CustomerEvent::Disabled(_) => api::CustomerDisabled { id: id.to_owned() }.into(),
            // Authorizing changes nothing and is nobody else's business.
            CustomerEvent::Authorized(_) => continue,
        };
        messages.push(Message::encode(api::EVENT_TOPIC, &integration)?.with_key(id));
    }
    if !messages.is_empty() {
        query(
            "INSERT INTO customers_customers (id, name, sms_number, enabled) VALUES (?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, sms_number = excluded.sms_number,
             enabled = excluded.enabled",
        )
        .bind(id)
        .bind(&customer.name)
        .bind(&customer.sms_number)
        .bind(customer.enabled)
        .execute(db::conn(tx)?)
        .await?;
        tx.enqueue(messages).await?;
    }
    Ok(Ok(customer))
}

async fn run(tx: &mut dyn Transaction, shredder: &Shredder, id: &str, command: CustomerCommand) -> AppResult<()> {
    execute(tx, shredder, id, command).await??;
    Ok(())
}

/// A new customer's id, with its key in the vault: call before the unit of work that registers
/// it (on SQLite the vault shares the unit's single writer, so the key cannot be made inside).
pub async fn new_customer(shredder: &Shredder) -> AppResult<String> {
    let id = db::new_id();
    shredder.prepare(&id).await?;
    Ok(id)
}

/// Makes sure an existing customer has a key before a unit of work seals for it (a forgotten
/// customer has none; on SQLite it cannot be made inside the unit). Unknown customers get none.
pub async fn prepare_keys(db: &AnyDatabase, shredder: &Shredder, id: &str) -> AppResult<()> {
    get_customer(db, id).await?;
    shredder.prepare(id).await?;
    Ok(())
}

/// Registers customer `id` (from [`new_customer`]); returns the id.
pub async fn register(
    tx: &mut dyn Transaction,
    shredder: &Shredder,
    id: String,
    name: String,
    sms_number: String,
) -> AppResult<String> {
    run(tx, shredder, &id, CustomerCommand::Register { name, sms_number }).await?;
    Ok(id)
}

/// Changes a customer's SMS number (call `Shredder::prepare` for it first: a forgotten
/// customer has no key, and on SQLite it cannot be made inside the unit of work).
pub async fn change_sms(tx: &mut dyn Transaction, shredder: &Shredder, id: &str, sms_number: String) -> AppResult<()> {
    run(tx, shredder, id, CustomerCommand::ChangeSms { sms_number }).await
}

/// Lets a customer order again.
pub async fn enable(tx: &mut dyn Transaction, shredder: &Shredder, id: &str) -> AppResult<()> {
    run(tx, shredder, id, CustomerCommand::Enable).await
}

/// Stops a customer from ordering.
pub async fn disable(tx: &mut dyn Transaction, shredder: &Shredder, id: &str) -> AppResult<()> {
    run(tx, shredder, id, CustomerCommand::Disable).await
}

/// Checks that a customer may shop (exists and is enabled), recording the authorization.
pub async fn authorize(tx: &mut dyn Transaction, shredder: &Shredder, id: &str) -> AppResult<()> {
    run(tx, shredder, id, CustomerCommand::Authorize).await
}

/// The first half of forgetting a customer (the right to erasure): deletes the key its personal
/// data was sealed with, so every copy in events, broker streams and archives reads as forgotten
/// at once. Outside the unit of work of [`forget`] (on SQLite the vault shares its single
/// writer), and before it: if that unit fails, the data is already unreadable and forgetting
/// again finishes the job.
pub async fn forget_key(db: &AnyDatabase, shredder: &Shredder, id: &str) -> AppResult<()> {
    get_customer(db, id).await?;
    shredder.forget(id).await?;
    Ok(())
}

/// The second half ([`forget_key`] first): blanks the customer's own row and tells the modules
/// that keep a copy ([`api::CustomerForgotten`]) to drop theirs. Idempotent: forgetting again
/// changes nothing and tells nobody.
pub async fn forget(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    let customer = load(tx, id).await?;
    if !customer.exists {
        return Err(AppError::NotFound("customer".into()));
    }
    if customer.name == FORGOTTEN && customer.sms_number == FORGOTTEN {
        return Ok(());
    }
    query("UPDATE customers_customers SET name = ?, sms_number = ? WHERE id = ?")
        .bind(FORGOTTEN)
        .bind(FORGOTTEN)
        .bind(id)
        .execute(db::conn(tx)?)
        .await?;
    let forgotten = api::CustomerIntegrationEvent::from(api::CustomerForgotten { id: id.to_owned() });
    tx.enqueue(vec![Message::encode(api::EVENT_TOPIC, &forgotten)?.with_key(id)]).await?;
    Ok(())
}

/// Handles [`api::AuthorizeCustomer`]: success when the customer exists and is enabled, a
/// failure reply with the reason otherwise. Database trouble is a transient error (retried).
pub async fn handle_authorize(
    cx: &mut HandlerContext,
    command: api::AuthorizeCustomer,
    shredder: &Shredder,
) -> Result<Reply, HandlerError> {
    let tx = cx.tx()?;
    match execute(tx, shredder, &command.id, CustomerCommand::Authorize).await {
        Ok(Ok(_)) => Ok(Reply::success()),
        Ok(Err(refusal)) => Ok(Reply::failure(refusal.to_string())),
        Err(e) => Err(HandlerError::transient(e)),
    }
}

/// A customer as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomerView {
    pub id: String,
    pub name: String,
    pub sms_number: String,
    pub enabled: bool,
}

impl FromRow for CustomerView {
    fn from_row(row: &Row) -> Result<Self, SqlError> {
        Ok(Self {
            id: row.get("id")?,
            name: row.get("name")?,
            sms_number: row.get("sms_number")?,
            enabled: row.get("enabled")?,
        })
    }
}

/// One customer.
pub async fn get_customer(db: &AnyDatabase, id: &str) -> AppResult<CustomerView> {
    query("SELECT id, name, sms_number, enabled FROM customers_customers WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| AppError::NotFound("customer".into()))
}
