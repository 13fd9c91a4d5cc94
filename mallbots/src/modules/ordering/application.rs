//! The ordering application: order commands in Herald transactions, the handlers of
//! BasketCheckedOut and of the saga's commands, and the order query.

use herald::aggregate::{Repository, RepositoryError};
use herald::command::Reply;
use herald::router::{HandlerContext, HandlerError};
use herald::{Message, Store, Transaction};
use serde::Serialize;
use utoipa::ToSchema;

use super::api;
use super::domain::{Order, OrderCommand, OrderError, OrderEvent, OrderStatus};
use crate::error::{AppError, AppResult};
use crate::modules::baskets::api as baskets;
use crate::modules::depot::api as depot;
use crate::modules::payments::api as payments;
use crate::money::Money;

/// A snapshot every this many events of an order.
const SNAPSHOT_EVERY: u64 = 50;

impl From<OrderError> for AppError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::NotFound => AppError::NotFound("order".into()),
            OrderError::AlreadyExists | OrderError::WrongStatus { .. } => AppError::conflict(e),
            _ => AppError::invalid(e),
        }
    }
}

fn repository() -> Repository<Order> {
    Repository::new().snapshot_every(SNAPSHOT_EVERY)
}

/// Runs `command` on order `id` and queues its integration events (caused by `cause`). A
/// refusal is `Ok(Err(..))`, for handlers that reply with it.
pub async fn execute(
    tx: &mut dyn Transaction,
    id: &str,
    command: OrderCommand,
    cause: Option<&Message>,
) -> AppResult<Result<Order, OrderError>> {
    let done = match repository().execute_in(tx, id, command, cause).await {
        Ok(done) => done,
        Err(RepositoryError::Rejected(e)) => return Ok(Err(e)),
        Err(RepositoryError::Store(e)) => return Err(e.into()),
    };
    let state = &done.aggregate.state;
    let mut messages = Vec::new();
    for event in &done.events {
        let (customer_id, payment_id) = (state.customer_id.clone(), state.payment_id.clone());
        let integration: api::OrderIntegrationEvent = match event {
            OrderEvent::Created(e) => api::OrderCreated {
                id: id.to_owned(),
                customer_id,
                payment_id,
                items: e.items.clone(),
                total_cents: state.total_cents(),
            }
            .into(),
            OrderEvent::Approved(e) => {
                api::OrderApproved { id: id.to_owned(), customer_id, payment_id, shopping_id: e.shopping_id.clone() }
                    .into()
            }
            OrderEvent::Rejected(_) => api::OrderRejected { id: id.to_owned(), customer_id, payment_id }.into(),
            OrderEvent::Readied(_) => {
                api::OrderReadied { id: id.to_owned(), customer_id, payment_id, total_cents: state.total_cents() }
                    .into()
            }
            OrderEvent::Canceled(_) => api::OrderCanceled {
                id: id.to_owned(),
                customer_id,
                payment_id,
                shopping_id: state.shopping_id.clone(),
            }
            .into(),
            OrderEvent::Completed(e) => {
                api::OrderCompleted { id: id.to_owned(), customer_id, invoice_id: e.invoice_id.clone() }.into()
            }
        };
        let mut message = Message::encode(api::EVENT_TOPIC, &integration)?.with_key(id);
        if let Some(cause) = cause {
            message = message.caused_by(cause);
        }
        messages.push(message);
    }
    tx.enqueue(messages).await?;
    Ok(Ok(done.aggregate.state))
}

/// Cancels an order (pending or approved only).
pub async fn cancel(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    execute(tx, id, OrderCommand::Cancel, None).await??;
    Ok(())
}

/// Creates the order of a checked-out basket (order id = basket id). A redelivered checkout
/// finds the order there and changes nothing; a checkout that can never make an order is
/// dead-lettered.
pub async fn on_basket_checked_out(
    cx: &mut HandlerContext,
    event: baskets::BasketCheckedOut,
) -> Result<(), HandlerError> {
    let cause = cx.message().clone();
    let items = event
        .items
        .into_iter()
        .map(|i| api::OrderItem {
            store_id: i.store_id,
            product_id: i.product_id,
            store_name: i.store_name,
            product_name: i.product_name,
            price_cents: i.price_cents,
            quantity: i.quantity,
        })
        .collect();
    let command = OrderCommand::Create { customer_id: event.customer_id, payment_id: event.payment_id, items };
    match execute(cx.tx()?, &event.id, command, Some(&cause)).await {
        Ok(Ok(_)) | Ok(Err(OrderError::AlreadyExists)) => Ok(()),
        Ok(Err(refusal)) => Err(HandlerError::permanent(refusal)),
        Err(e) => Err(HandlerError::transient(e)),
    }
}

/// Completes the order whose invoice was paid. A redelivery finds it completed and changes
/// nothing; an invoice paid for an order that is not ready is dead-lettered (a bug upstream).
pub async fn on_invoice_paid(cx: &mut HandlerContext, event: payments::InvoicePaid) -> Result<(), HandlerError> {
    let cause = cx.message().clone();
    let command = OrderCommand::Complete { invoice_id: event.id };
    match execute(cx.tx()?, &event.order_id, command, Some(&cause)).await {
        Ok(Ok(_) | Err(OrderError::WrongStatus { status: OrderStatus::Completed, .. })) => Ok(()),
        Ok(Err(refusal)) => Err(HandlerError::permanent(refusal)),
        Err(e) => Err(HandlerError::transient(e)),
    }
}

/// Readies the order whose shopping list was completed. An order canceled meanwhile stays
/// canceled (logged); a redelivery changes nothing. The saga makes the list available before it
/// approves the order, so a quick depot can complete a list while its order is still pending:
/// that is retried (the router backs off) until the saga has decided, never dropped.
pub async fn on_shopping_list_completed(
    cx: &mut HandlerContext,
    event: depot::ShoppingListCompleted,
) -> Result<(), HandlerError> {
    let cause = cx.message().clone();
    match execute(cx.tx()?, &event.order_id, OrderCommand::Ready, Some(&cause)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(OrderError::WrongStatus { status: OrderStatus::Pending, .. })) => {
            Err(HandlerError::transient("the order is not approved yet; retrying until the saga decides"))
        }
        Ok(Err(refusal)) => {
            tracing::warn!(order = %event.order_id, reason = %refusal, "shopping list completed for an order that cannot be readied");
            Ok(())
        }
        Err(e) => Err(HandlerError::transient(e)),
    }
}

/// Handles the saga's ApproveOrder and RejectOrder: success, or a failure with the reason.
pub async fn handle_command(cx: &mut HandlerContext, command: api::OrderingCommand) -> Result<Reply, HandlerError> {
    let cause = cx.message().clone();
    let (id, command) = match command {
        api::OrderingCommand::Approve(c) => (c.id, OrderCommand::Approve { shopping_id: c.shopping_id }),
        api::OrderingCommand::Reject(c) => (c.id, OrderCommand::Reject),
    };
    match execute(cx.tx()?, &id, command, Some(&cause)).await {
        Ok(Ok(_)) => Ok(Reply::success()),
        Ok(Err(refusal)) => Ok(Reply::failure(refusal.to_string())),
        Err(e) => Err(HandlerError::transient(e)),
    }
}

/// An order line as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItemView {
    pub store_id: String,
    pub product_id: String,
    pub store_name: String,
    pub product_name: String,
    #[schema(value_type = f64, example = 9.99)]
    pub price: Money,
    pub quantity: u32,
}

/// An order as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub shopping_id: Option<String>,
    pub invoice_id: Option<String>,
    /// pending, approved, rejected, ready, completed or canceled.
    #[schema(value_type = String, example = "pending")]
    pub status: OrderStatus,
    pub items: Vec<OrderItemView>,
    #[schema(value_type = f64, example = 19.98)]
    pub total: Money,
}

/// One order, rebuilt from its events (and snapshot).
pub async fn get_order(store: &dyn Store, id: &str) -> AppResult<OrderView> {
    // A read: no unit of work, so it never waits for a writer.
    let order = repository().load_from(store, id).await?.state;
    if order.status == OrderStatus::Unknown {
        return Err(AppError::NotFound("order".into()));
    }
    let money = |cents| Money::from_cents(cents).map_err(AppError::internal);
    let items = order
        .items
        .iter()
        .map(|i| {
            Ok(OrderItemView {
                store_id: i.store_id.clone(),
                product_id: i.product_id.clone(),
                store_name: i.store_name.clone(),
                product_name: i.product_name.clone(),
                price: money(i.price_cents)?,
                quantity: i.quantity,
            })
        })
        .collect::<AppResult<_>>()?;
    Ok(OrderView {
        id: id.to_owned(),
        total: money(order.total_cents())?,
        customer_id: order.customer_id,
        payment_id: order.payment_id,
        shopping_id: order.shopping_id,
        invoice_id: order.invoice_id,
        status: order.status,
        items,
    })
}
