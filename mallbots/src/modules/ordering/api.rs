//! The public contract of ordering: its integration events and the commands it handles.

use herald::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Topic of the order events (keyed by order id).
pub const EVENT_TOPIC: &str = "ordering.events.Order";
/// Topic of the commands ordering handles.
pub const COMMAND_TOPIC: &str = "ordering.commands";

/// One line of an order. Prices in cents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderItem {
    pub store_id: String,
    pub product_id: String,
    pub store_name: String,
    pub product_name: String,
    pub price_cents: i64,
    pub quantity: u32,
}

/// An order was placed (order id = basket id); the create-order saga starts from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    pub id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
}
impl Event for OrderCreated {
    const NAME: &'static str = "ordersapi.OrderCreated.v1";
}

/// The saga approved the order; its shopping list is `shopping_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderApproved {
    pub id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub shopping_id: String,
}
impl Event for OrderApproved {
    const NAME: &'static str = "ordersapi.OrderApproved.v1";
}

/// The saga rejected the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRejected {
    pub id: String,
    pub customer_id: String,
    pub payment_id: String,
}
impl Event for OrderRejected {
    const NAME: &'static str = "ordersapi.OrderRejected.v1";
}

/// The items were collected; the customer can pay `total_cents` at the depot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderReadied {
    pub id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub total_cents: i64,
}
impl Event for OrderReadied {
    const NAME: &'static str = "ordersapi.OrderReadied.v1";
}

/// The order was canceled before it was ready; `shopping_id` (if any) is to be canceled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCanceled {
    pub id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub shopping_id: Option<String>,
}
impl Event for OrderCanceled {
    const NAME: &'static str = "ordersapi.OrderCanceled.v1";
}

/// The invoice was paid; the order is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCompleted {
    pub id: String,
    pub customer_id: String,
    pub invoice_id: String,
}
impl Event for OrderCompleted {
    const NAME: &'static str = "ordersapi.OrderCompleted.v1";
}

herald::event_set! {
    /// Everything on [`EVENT_TOPIC`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum OrderIntegrationEvent {
        Created(OrderCreated),
        Approved(OrderApproved),
        Rejected(OrderRejected),
        Readied(OrderReadied),
        Canceled(OrderCanceled),
        Completed(OrderCompleted),
    }
}
herald::event_schemas!(OrderIntegrationEvent:
    OrderCreated, OrderApproved, OrderRejected, OrderReadied, OrderCanceled, OrderCompleted
);

/// Command (saga step 5): approve the order with its shopping list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApproveOrder {
    pub id: String,
    pub shopping_id: String,
}
impl Event for ApproveOrder {
    const NAME: &'static str = "ordersapi.ApproveOrder.v1";
}

/// Command (saga compensation of step 0): reject the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RejectOrder {
    pub id: String,
}
impl Event for RejectOrder {
    const NAME: &'static str = "ordersapi.RejectOrder.v1";
}

herald::event_set! {
    /// Everything on [`COMMAND_TOPIC`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum OrderingCommand {
        Approve(ApproveOrder),
        Reject(RejectOrder),
    }
}
herald::event_schemas!(OrderingCommand: ApproveOrder, RejectOrder);
