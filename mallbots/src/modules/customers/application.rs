//! The customers application: commands load the customer's row, let the aggregate decide,
//! write the row back and put the integration events in the outbox, in one transaction.

use herald::aggregate::Aggregate;
use herald::command::Reply;
use herald::router::{HandlerContext, HandlerError};
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
            CustomerEvent::Registered(e) => {
                api::CustomerRegistered { id: id.to_owned(), name: e.name.clone(), sms_number: e.sms_number.clone() }
                    .into()
            }
            CustomerEvent::SmsChanged(e) => {
                api::CustomerSmsChanged { id: id.to_owned(), sms_number: e.sms_number.clone() }.into()
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

async fn run(tx: &mut dyn Transaction, id: &str, command: CustomerCommand) -> AppResult<()> {
    execute(tx, id, command).await??;
    Ok(())
}

/// Registers a customer; returns the id.
pub async fn register(tx: &mut dyn Transaction, name: String, sms_number: String) -> AppResult<String> {
    let id = db::new_id();
    run(tx, &id, CustomerCommand::Register { name, sms_number }).await?;
    Ok(id)
}

/// Changes a customer's SMS number.
pub async fn change_sms(tx: &mut dyn Transaction, id: &str, sms_number: String) -> AppResult<()> {
    run(tx, id, CustomerCommand::ChangeSms { sms_number }).await
}

/// Lets a customer order again.
pub async fn enable(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    run(tx, id, CustomerCommand::Enable).await
}

/// Stops a customer from ordering.
pub async fn disable(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    run(tx, id, CustomerCommand::Disable).await
}

/// Checks that a customer may shop (exists and is enabled), recording the authorization.
pub async fn authorize(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    run(tx, id, CustomerCommand::Authorize).await
}

/// Handles [`api::AuthorizeCustomer`]: success when the customer exists and is enabled, a
/// failure reply with the reason otherwise. Database trouble is a transient error (retried).
pub async fn handle_authorize(cx: &mut HandlerContext, command: api::AuthorizeCustomer) -> Result<Reply, HandlerError> {
    let tx = cx.tx()?;
    match execute(tx, &command.id, CustomerCommand::Authorize).await {
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
