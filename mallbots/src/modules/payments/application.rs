//! The payments application.

use herald::aggregate::Aggregate;
use herald::command::Reply;
use herald::router::{HandlerContext, HandlerError};
use herald::{Message, Transaction};
use herald_sql::AnyDatabase;
use herald_sql::any::query;
use serde::Serialize;
use utoipa::ToSchema;

use super::api;
use super::domain::{self, Invoice, InvoiceCommand, InvoiceError, InvoiceEvent, InvoiceStatus, Payment};
use crate::db;
use crate::error::{AppError, AppResult};
use crate::modules::ordering::api as ordering;
use crate::money::Money;

impl From<InvoiceError> for AppError {
    fn from(e: InvoiceError) -> Self {
        match e {
            InvoiceError::NotFound => AppError::NotFound("invoice".into()),
            InvoiceError::NegativeAmount => AppError::invalid(e),
            InvoiceError::AlreadyExists | InvoiceError::NotPending(_) => AppError::conflict(e),
        }
    }
}

/// Authorizes a payment of `amount` for a customer; returns the payment id.
pub async fn authorize_payment(tx: &mut dyn Transaction, customer_id: String, amount: Money) -> AppResult<String> {
    let customer_id = customer_id.trim();
    if customer_id.is_empty() {
        return Err(AppError::invalid("a customer id is required"));
    }
    if amount == Money::ZERO {
        return Err(AppError::invalid("the amount must be greater than zero"));
    }
    let id = db::new_id();
    query("INSERT INTO payments_payments (id, customer_id, amount_cents) VALUES (?, ?, ?)")
        .bind(&id)
        .bind(customer_id)
        .bind(amount.cents())
        .execute(db::conn(tx)?)
        .await?;
    Ok(id)
}

/// Handles the saga's ConfirmPayment.
pub async fn handle_confirm(cx: &mut HandlerContext, command: api::ConfirmPayment) -> Result<Reply, HandlerError> {
    let conn = db::conn(cx.tx()?).map_err(HandlerError::transient)?;
    let payment: Option<(String, i64)> = query("SELECT customer_id, amount_cents FROM payments_payments WHERE id = ?")
        .bind(&command.id)
        .fetch_optional(conn)
        .await
        .map_err(HandlerError::transient)?;
    let payment = payment.map(|(customer_id, amount_cents)| Payment { customer_id, amount_cents });
    Ok(match domain::confirm(payment.as_ref(), command.amount_cents) {
        Ok(()) => Reply::success(),
        Err(refusal) => Reply::failure(refusal.to_string()),
    })
}

/// Runs `command` on invoice `id` (its row), queueing its integration events.
async fn execute(
    tx: &mut dyn Transaction,
    id: &str,
    command: InvoiceCommand,
    cause: Option<&Message>,
) -> AppResult<Result<Invoice, InvoiceError>> {
    let row: Option<(String, i64, String)> =
        query("SELECT order_id, amount_cents, status FROM payments_invoices WHERE id = ?")
            .bind(id)
            .fetch_optional(db::conn(tx)?)
            .await?;
    let mut invoice = row.map_or_else(Invoice::default, |(order_id, amount_cents, status)| Invoice {
        status: InvoiceStatus::parse(&status),
        order_id,
        amount_cents,
    });
    let events = match invoice.handle(command) {
        Ok(events) => events,
        Err(e) => return Ok(Err(e)),
    };
    let mut messages = Vec::new();
    for event in &events {
        invoice.apply(event);
        let integration: api::InvoiceIntegrationEvent = match event {
            InvoiceEvent::Created(_) => continue,
            InvoiceEvent::Paid(_) => api::InvoicePaid { id: id.to_owned(), order_id: invoice.order_id.clone() }.into(),
            InvoiceEvent::Canceled(_) => {
                api::InvoiceCanceled { id: id.to_owned(), order_id: invoice.order_id.clone() }.into()
            }
        };
        let mut message = Message::encode(api::EVENT_TOPIC, &integration)?.with_key(invoice.order_id.as_str());
        if let Some(cause) = cause {
            message = message.caused_by(cause);
        }
        messages.push(message);
    }
    // `issued_at` is set when the invoice is made and kept after.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    query(
        "INSERT INTO payments_invoices (id, order_id, amount_cents, status, issued_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status",
    )
    .bind(id)
    .bind(&invoice.order_id)
    .bind(invoice.amount_cents)
    .bind(invoice.status.as_str())
    .bind(now)
    .execute(db::conn(tx)?)
    .await?;
    tx.enqueue(messages).await?;
    Ok(Ok(invoice))
}

/// Issues the invoice of a readied order (invoice id = order id), and cancels the open invoice
/// of a canceled order. Redeliveries change nothing.
pub async fn on_order_event(
    cx: &mut HandlerContext,
    event: ordering::OrderIntegrationEvent,
) -> Result<(), HandlerError> {
    let cause = cx.message().clone();
    let (id, command) = match event {
        ordering::OrderIntegrationEvent::Readied(e) => {
            (e.id.clone(), InvoiceCommand::Create { order_id: e.id, amount_cents: e.total_cents })
        }
        ordering::OrderIntegrationEvent::Canceled(e) => (e.id, InvoiceCommand::Cancel),
        _ => return Ok(()),
    };
    match execute(cx.tx()?, &id, command, Some(&cause)).await {
        Ok(Ok(_) | Err(InvoiceError::AlreadyExists | InvoiceError::NotFound | InvoiceError::NotPending(_))) => Ok(()),
        Ok(Err(refusal)) => Err(HandlerError::permanent(refusal)),
        Err(e) => Err(HandlerError::transient(e)),
    }
}

/// Marks an invoice paid (publishes InvoicePaid).
pub async fn pay_invoice(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    execute(tx, id, InvoiceCommand::Pay, None).await??;
    Ok(())
}

/// An invoice as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceView {
    pub id: String,
    pub order_id: String,
    #[schema(value_type = f64, example = 19.98)]
    pub amount: Money,
    /// pending, paid or canceled.
    pub status: String,
}

/// The invoice of an order.
pub async fn find_invoice(db: &AnyDatabase, order_id: &str) -> AppResult<InvoiceView> {
    let row: Option<(String, String, i64, String)> =
        query("SELECT id, order_id, amount_cents, status FROM payments_invoices WHERE order_id = ?")
            .bind(order_id)
            .fetch_optional(db)
            .await?;
    let (id, order_id, amount_cents, status) = row.ok_or_else(|| AppError::NotFound("invoice".into()))?;
    Ok(InvoiceView { id, order_id, amount: Money::from_cents(amount_cents).map_err(AppError::internal)?, status })
}

/// The most open invoices [`open_invoices`] answers (and its default).
pub const OPEN_INVOICES_LIMIT: u32 = 100;

/// The invoices still to pay (pending), oldest first: at most `limit` (1 to 100; 100 if
/// `None`).
pub async fn open_invoices(db: &AnyDatabase, limit: Option<u32>) -> AppResult<Vec<InvoiceView>> {
    let limit = limit.unwrap_or(OPEN_INVOICES_LIMIT);
    if !(1..=OPEN_INVOICES_LIMIT).contains(&limit) {
        return Err(AppError::invalid(format!("limit must be between 1 and {OPEN_INVOICES_LIMIT}")));
    }
    let rows: Vec<(String, String, i64, String)> = query(
        "SELECT id, order_id, amount_cents, status FROM payments_invoices WHERE status = ?
         ORDER BY issued_at, id LIMIT ?",
    )
    .bind(InvoiceStatus::Pending.as_str())
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(id, order_id, amount_cents, status)| {
            Ok(InvoiceView {
                id,
                order_id,
                amount: Money::from_cents(amount_cents).map_err(AppError::internal)?,
                status,
            })
        })
        .collect()
}
