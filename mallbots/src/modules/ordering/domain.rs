//! The ordering domain: `Order`, event-sourced. Pure: no I/O.

use herald::Event;
use herald::aggregate::Aggregate;
use serde::{Deserialize, Serialize};

use super::api::OrderItem;

/// The order was created from a checked-out basket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub customer_id: String,
    pub payment_id: String,
    pub items: Vec<OrderItem>,
}
impl Event for OrderCreated {
    const NAME: &'static str = "ordering.OrderCreated.v1";
}

/// Approved, with its shopping list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderApproved {
    pub shopping_id: String,
}
impl Event for OrderApproved {
    const NAME: &'static str = "ordering.OrderApproved.v1";
}

/// Rejected by the saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {}
impl Event for OrderRejected {
    const NAME: &'static str = "ordering.OrderRejected.v1";
}

/// The items are at the depot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReadied {}
impl Event for OrderReadied {
    const NAME: &'static str = "ordering.OrderReadied.v1";
}

/// Canceled before it was ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCanceled {}
impl Event for OrderCanceled {
    const NAME: &'static str = "ordering.OrderCanceled.v1";
}

/// Paid and collected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCompleted {
    pub invoice_id: String,
}
impl Event for OrderCompleted {
    const NAME: &'static str = "ordering.OrderCompleted.v1";
}

herald::event_set! {
    /// What happens to an order.
    #[derive(Clone, Debug, PartialEq)]
    pub enum OrderEvent {
        Created(OrderCreated),
        Approved(OrderApproved),
        Rejected(OrderRejected),
        Readied(OrderReadied),
        Canceled(OrderCanceled),
        Completed(OrderCompleted),
    }
}

/// What can be asked of an order.
#[derive(Clone, Debug)]
pub enum OrderCommand {
    Create { customer_id: String, payment_id: String, items: Vec<OrderItem> },
    Approve { shopping_id: String },
    Reject,
    Ready,
    Cancel,
    Complete { invoice_id: String },
}

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not created (no such order).
    #[default]
    Unknown,
    Pending,
    Approved,
    Rejected,
    Ready,
    Completed,
    Canceled,
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown",
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Ready => "ready",
            Self::Completed => "completed",
            Self::Canceled => "canceled",
        })
    }
}

/// Why an order refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order already exists")]
    AlreadyExists,
    #[error("order not found")]
    NotFound,
    #[error("an order needs a customer")]
    NoCustomer,
    #[error("an order needs a payment")]
    NoPayment,
    #[error("an order needs items")]
    NoItems,
    #[error("an order item needs a quantity of at least 1 and a price not below zero")]
    BadItem,
    #[error("the order total is too large")]
    TooLarge,
    #[error("a shopping list id is required")]
    NoShoppingList,
    #[error("an invoice id is required")]
    NoInvoice,
    #[error("the order is {status}; it cannot be {action}")]
    WrongStatus { status: OrderStatus, action: &'static str },
}

/// An order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub customer_id: String,
    pub payment_id: String,
    pub items: Vec<OrderItem>,
    pub shopping_id: Option<String>,
    pub invoice_id: Option<String>,
}

/// The sum of price × quantity, if it fits.
pub fn total_cents(items: &[OrderItem]) -> Option<i64> {
    items
        .iter()
        .try_fold(0i64, |total, i| i.price_cents.checked_mul(i64::from(i.quantity)).and_then(|l| total.checked_add(l)))
}

impl Order {
    /// The order total in cents (checked at creation, so it fits).
    pub fn total_cents(&self) -> i64 {
        total_cents(&self.items).unwrap_or(i64::MAX)
    }

    fn expect(&self, allowed: &[OrderStatus], action: &'static str) -> Result<(), OrderError> {
        match self.status {
            OrderStatus::Unknown => Err(OrderError::NotFound),
            s if allowed.contains(&s) => Ok(()),
            status => Err(OrderError::WrongStatus { status, action }),
        }
    }
}

fn required(value: String, error: OrderError) -> Result<String, OrderError> {
    let value = value.trim();
    if value.is_empty() { Err(error) } else { Ok(value.to_owned()) }
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus::{Approved, Pending, Ready};
        match command {
            OrderCommand::Create { customer_id, payment_id, items } => {
                if self.status != OrderStatus::Unknown {
                    return Err(OrderError::AlreadyExists);
                }
                let customer_id = required(customer_id, OrderError::NoCustomer)?;
                let payment_id = required(payment_id, OrderError::NoPayment)?;
                if items.is_empty() {
                    return Err(OrderError::NoItems);
                }
                if items.iter().any(|i| i.quantity == 0 || i.price_cents < 0) {
                    return Err(OrderError::BadItem);
                }
                total_cents(&items).ok_or(OrderError::TooLarge)?;
                Ok(vec![OrderCreated { customer_id, payment_id, items }.into()])
            }
            OrderCommand::Approve { shopping_id } => {
                self.expect(&[Pending], "approved")?;
                Ok(vec![OrderApproved { shopping_id: required(shopping_id, OrderError::NoShoppingList)? }.into()])
            }
            OrderCommand::Reject => {
                self.expect(&[Pending], "rejected")?;
                Ok(vec![OrderRejected {}.into()])
            }
            OrderCommand::Ready => {
                self.expect(&[Approved], "readied")?;
                Ok(vec![OrderReadied {}.into()])
            }
            OrderCommand::Cancel => {
                self.expect(&[Pending, Approved], "canceled")?;
                Ok(vec![OrderCanceled {}.into()])
            }
            OrderCommand::Complete { invoice_id } => {
                self.expect(&[Ready], "completed")?;
                Ok(vec![OrderCompleted { invoice_id: required(invoice_id, OrderError::NoInvoice)? }.into()])
            }
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Created(e) => {
                self.status = OrderStatus::Pending;
                self.customer_id.clone_from(&e.customer_id);
                self.payment_id.clone_from(&e.payment_id);
                self.items.clone_from(&e.items);
            }
            OrderEvent::Approved(e) => {
                self.status = OrderStatus::Approved;
                self.shopping_id = Some(e.shopping_id.clone());
            }
            OrderEvent::Rejected(_) => self.status = OrderStatus::Rejected,
            OrderEvent::Readied(_) => self.status = OrderStatus::Ready,
            OrderEvent::Canceled(_) => self.status = OrderStatus::Canceled,
            OrderEvent::Completed(e) => {
                self.status = OrderStatus::Completed;
                self.invoice_id = Some(e.invoice_id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use herald::aggregate::testing::AggregateTest;

    use super::*;

    fn item() -> OrderItem {
        OrderItem {
            store_id: "s-1".into(),
            product_id: "p-1".into(),
            store_name: "Books".into(),
            product_name: "Treasury".into(),
            price_cents: 999,
            quantity: 2,
        }
    }

    fn create() -> OrderCommand {
        OrderCommand::Create { customer_id: "c-1".into(), payment_id: "pay-1".into(), items: vec![item()] }
    }

    fn created() -> OrderEvent {
        OrderCreated { customer_id: "c-1".into(), payment_id: "pay-1".into(), items: vec![item()] }.into()
    }

    fn approved() -> OrderEvent {
        OrderApproved { shopping_id: "sl-1".into() }.into()
    }

    #[test]
    fn an_order_is_created_once_with_items_a_customer_and_a_payment() {
        AggregateTest::<Order>::given_nothing().when(create()).then_events([created()]);
        AggregateTest::<Order>::given([created()]).when(create()).then_error_contains("already exists");
        AggregateTest::<Order>::given_nothing()
            .when(OrderCommand::Create { customer_id: "c-1".into(), payment_id: "pay-1".into(), items: vec![] })
            .then_error_contains("needs items");
        AggregateTest::<Order>::given_nothing()
            .when(OrderCommand::Create { customer_id: "".into(), payment_id: "pay-1".into(), items: vec![item()] })
            .then_error_contains("needs a customer");
        AggregateTest::<Order>::given_nothing()
            .when(OrderCommand::Create { customer_id: "c-1".into(), payment_id: " ".into(), items: vec![item()] })
            .then_error_contains("needs a payment");
        let mut order = Order::default();
        order.apply(&created());
        assert_eq!(order.total_cents(), 1998);
    }

    #[test]
    fn a_pending_order_is_approved_or_rejected_once() {
        AggregateTest::<Order>::given([created()])
            .when(OrderCommand::Approve { shopping_id: "sl-1".into() })
            .then_events([approved()]);
        AggregateTest::<Order>::given([created()]).when(OrderCommand::Reject).then_events([OrderRejected {}.into()]);
        AggregateTest::<Order>::given([created(), approved()])
            .when(OrderCommand::Reject)
            .then_error_contains("is approved; it cannot be rejected");
        AggregateTest::<Order>::given([created(), OrderRejected {}.into()])
            .when(OrderCommand::Approve { shopping_id: "sl-1".into() })
            .then_error_contains("is rejected");
    }

    #[test]
    fn an_approved_order_becomes_ready_then_completed() {
        AggregateTest::<Order>::given([created()]).when(OrderCommand::Ready).then_error_contains("is pending");
        AggregateTest::<Order>::given([created(), approved()])
            .when(OrderCommand::Ready)
            .then_events([OrderReadied {}.into()]);
        AggregateTest::<Order>::given([created(), approved()])
            .when(OrderCommand::Complete { invoice_id: "i-1".into() })
            .then_error_contains("is approved");
        AggregateTest::<Order>::given([created(), approved(), OrderReadied {}.into()])
            .when(OrderCommand::Complete { invoice_id: "i-1".into() })
            .then_events([OrderCompleted { invoice_id: "i-1".into() }.into()]);
    }

    #[test]
    fn an_order_is_canceled_only_before_it_is_ready() {
        AggregateTest::<Order>::given([created()]).when(OrderCommand::Cancel).then_events([OrderCanceled {}.into()]);
        AggregateTest::<Order>::given([created(), approved()])
            .when(OrderCommand::Cancel)
            .then_events([OrderCanceled {}.into()]);
        AggregateTest::<Order>::given([created(), approved(), OrderReadied {}.into()])
            .when(OrderCommand::Cancel)
            .then_error_contains("is ready; it cannot be canceled");
        AggregateTest::<Order>::given_nothing().when(OrderCommand::Cancel).then_error_contains("not found");
    }
}
