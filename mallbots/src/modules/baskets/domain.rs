//! The baskets domain: `Basket`, event-sourced. Pure: no I/O.

use std::collections::BTreeMap;

use herald::Event;
use herald::aggregate::Aggregate;
use serde::{Deserialize, Serialize};

use super::api::CancelReason;

/// A product as the basket records it: the names and price at the time it was added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub store_id: String,
    pub product_id: String,
    pub store_name: String,
    pub product_name: String,
    pub price_cents: i64,
}

/// The basket was started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasketStarted {
    pub customer_id: String,
}
impl Event for BasketStarted {
    const NAME: &'static str = "baskets.BasketStarted.v1";
}

/// `quantity` of a product went into the basket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasketItemAdded {
    pub item: Item,
    pub quantity: u32,
}
impl Event for BasketItemAdded {
    const NAME: &'static str = "baskets.BasketItemAdded.v1";
}

/// `quantity` of a product came out of the basket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasketItemRemoved {
    pub product_id: String,
    pub quantity: u32,
}
impl Event for BasketItemRemoved {
    const NAME: &'static str = "baskets.BasketItemRemoved.v1";
}

/// The basket was abandoned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasketCanceled {
    /// Why (missing in events stored before reasons were given: the customer).
    #[serde(default)]
    pub reason: CancelReason,
}
impl Event for BasketCanceled {
    const NAME: &'static str = "baskets.BasketCanceled.v1";
}

/// The basket was checked out with a payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasketCheckedOut {
    pub payment_id: String,
}
impl Event for BasketCheckedOut {
    const NAME: &'static str = "baskets.BasketCheckedOut.v1";
}

herald::event_set! {
    /// What happens to a basket.
    #[derive(Clone, Debug, PartialEq)]
    pub enum BasketEvent {
        Started(BasketStarted),
        ItemAdded(BasketItemAdded),
        ItemRemoved(BasketItemRemoved),
        Canceled(BasketCanceled),
        CheckedOut(BasketCheckedOut),
    }
}

/// What can be asked of a basket.
#[derive(Clone, Debug)]
pub enum BasketCommand {
    Start {
        customer_id: String,
    },
    /// `item` comes from the local catalog.
    AddItem {
        item: Item,
        quantity: u32,
    },
    RemoveItem {
        product_id: String,
        quantity: u32,
    },
    /// Abandons an open basket: the customer's cancel, or its deadline passing.
    Cancel {
        reason: CancelReason,
    },
    Checkout {
        payment_id: String,
    },
}

/// Why a basket refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BasketError {
    #[error("a customer id is required")]
    NoCustomer,
    #[error("the basket already exists")]
    AlreadyStarted,
    #[error("basket not found")]
    NotFound,
    #[error("the basket is {0}; only an open basket can change")]
    NotOpen(BasketStatus),
    #[error("the quantity must be at least 1")]
    ZeroQuantity,
    #[error("the product is not in the basket")]
    NotInBasket,
    #[error("the basket is empty")]
    Empty,
    #[error("a payment id is required")]
    NoPayment,
    #[error("the basket total is too large")]
    TooLarge,
}

/// Where a basket is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BasketStatus {
    /// Not started (no such basket).
    #[default]
    Unknown,
    Open,
    Canceled,
    CheckedOut,
}

impl std::fmt::Display for BasketStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown",
            Self::Open => "open",
            Self::Canceled => "canceled",
            Self::CheckedOut => "checked out",
        })
    }
}

/// One line: the item and how many.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub item: Item,
    pub quantity: u32,
}

/// A kiosk basket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Basket {
    pub status: BasketStatus,
    pub customer_id: String,
    pub payment_id: String,
    /// Lines by product id.
    pub lines: BTreeMap<String, Line>,
}

/// The most of one product a basket holds (keeps totals far from overflow).
pub const MAX_QUANTITY: u32 = 10_000;

impl Basket {
    /// The sum of price × quantity, if it fits.
    pub fn total_cents(&self) -> Option<i64> {
        self.lines.values().try_fold(0i64, |total, line| {
            line.item.price_cents.checked_mul(i64::from(line.quantity)).and_then(|l| total.checked_add(l))
        })
    }
}

impl Aggregate for Basket {
    const TYPE: &'static str = "basket";
    type Command = BasketCommand;
    type Event = BasketEvent;
    type Error = BasketError;

    fn handle(&self, command: BasketCommand) -> Result<Vec<BasketEvent>, BasketError> {
        if let BasketCommand::Start { customer_id } = command {
            if self.status != BasketStatus::Unknown {
                return Err(BasketError::AlreadyStarted);
            }
            let customer_id = customer_id.trim();
            if customer_id.is_empty() {
                return Err(BasketError::NoCustomer);
            }
            return Ok(vec![BasketStarted { customer_id: customer_id.to_owned() }.into()]);
        }
        match self.status {
            BasketStatus::Unknown => return Err(BasketError::NotFound),
            BasketStatus::Open => {}
            status => return Err(BasketError::NotOpen(status)),
        }
        match command {
            BasketCommand::Start { .. } => Err(BasketError::AlreadyStarted),
            BasketCommand::AddItem { quantity: 0, .. } | BasketCommand::RemoveItem { quantity: 0, .. } => {
                Err(BasketError::ZeroQuantity)
            }
            BasketCommand::AddItem { item, quantity } => {
                let held = self.lines.get(&item.product_id).map_or(0, |l| l.quantity);
                if held.saturating_add(quantity) > MAX_QUANTITY {
                    return Err(BasketError::TooLarge);
                }
                let mut after = self.clone();
                let event: BasketEvent = BasketItemAdded { item, quantity }.into();
                after.apply(&event);
                after.total_cents().ok_or(BasketError::TooLarge)?;
                Ok(vec![event])
            }
            BasketCommand::RemoveItem { product_id, quantity } => {
                if !self.lines.contains_key(&product_id) {
                    return Err(BasketError::NotInBasket);
                }
                Ok(vec![BasketItemRemoved { product_id, quantity }.into()])
            }
            BasketCommand::Cancel { reason } => Ok(vec![BasketCanceled { reason }.into()]),
            BasketCommand::Checkout { payment_id } => {
                if self.lines.is_empty() {
                    return Err(BasketError::Empty);
                }
                let payment_id = payment_id.trim();
                if payment_id.is_empty() {
                    return Err(BasketError::NoPayment);
                }
                Ok(vec![BasketCheckedOut { payment_id: payment_id.to_owned() }.into()])
            }
        }
    }

    fn apply(&mut self, event: &BasketEvent) {
        match event {
            BasketEvent::Started(e) => {
                self.status = BasketStatus::Open;
                self.customer_id.clone_from(&e.customer_id);
            }
            BasketEvent::ItemAdded(e) => {
                // Adding a product again adds to its quantity, at the price first seen.
                self.lines
                    .entry(e.item.product_id.clone())
                    .and_modify(|line| line.quantity = line.quantity.saturating_add(e.quantity))
                    .or_insert_with(|| Line { item: e.item.clone(), quantity: e.quantity });
            }
            BasketEvent::ItemRemoved(e) => {
                // Removing as many as there are (or more) removes the line (**fix**: the Go
                // version removed it when one or fewer would remain).
                if let Some(line) = self.lines.get_mut(&e.product_id) {
                    if line.quantity <= e.quantity {
                        self.lines.remove(&e.product_id);
                    } else {
                        line.quantity -= e.quantity;
                    }
                }
            }
            BasketEvent::Canceled(_) => self.status = BasketStatus::Canceled,
            BasketEvent::CheckedOut(e) => {
                self.status = BasketStatus::CheckedOut;
                self.payment_id.clone_from(&e.payment_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use herald::aggregate::testing::AggregateTest;

    use super::*;

    fn started() -> BasketEvent {
        BasketStarted { customer_id: "c-1".into() }.into()
    }

    fn book() -> Item {
        Item {
            store_id: "s-1".into(),
            product_id: "p-1".into(),
            store_name: "Books".into(),
            product_name: "Treasury".into(),
            price_cents: 999,
        }
    }

    fn added(quantity: u32) -> BasketEvent {
        BasketItemAdded { item: book(), quantity }.into()
    }

    #[test]
    fn a_basket_starts_for_a_customer_once() {
        AggregateTest::<Basket>::given_nothing()
            .when(BasketCommand::Start { customer_id: "c-1".into() })
            .then_events([started()]);
        AggregateTest::<Basket>::given_nothing()
            .when(BasketCommand::Start { customer_id: " ".into() })
            .then_error_contains("customer id is required");
        AggregateTest::<Basket>::given([started()])
            .when(BasketCommand::Start { customer_id: "c-1".into() })
            .then_error_contains("already exists");
    }

    #[test]
    fn items_are_added_with_a_positive_quantity_and_summed() {
        AggregateTest::<Basket>::given([started()])
            .when(BasketCommand::AddItem { item: book(), quantity: 2 })
            .then_events([added(2)]);
        AggregateTest::<Basket>::given([started()])
            .when(BasketCommand::AddItem { item: book(), quantity: 0 })
            .then_error_contains("at least 1");
        let mut basket = Basket::default();
        for e in [started(), added(2), added(3)] {
            basket.apply(&e);
        }
        assert_eq!(basket.lines["p-1"].quantity, 5);
        assert_eq!(basket.total_cents(), Some(4995));
    }

    #[test]
    fn removing_all_of_a_product_removes_its_line() {
        let mut basket = Basket::default();
        for e in [started(), added(3), BasketItemRemoved { product_id: "p-1".into(), quantity: 2 }.into()] {
            basket.apply(&e);
        }
        assert_eq!(basket.lines["p-1"].quantity, 1, "one left (the Go version dropped the line here)");
        basket.apply(&BasketItemRemoved { product_id: "p-1".into(), quantity: 1 }.into());
        assert!(basket.lines.is_empty());
        AggregateTest::<Basket>::given([started()])
            .when(BasketCommand::RemoveItem { product_id: "p-1".into(), quantity: 1 })
            .then_error_contains("not in the basket");
    }

    #[test]
    fn checkout_needs_items_and_a_payment() {
        AggregateTest::<Basket>::given([started(), added(1)])
            .when(BasketCommand::Checkout { payment_id: "pay-1".into() })
            .then_events([BasketCheckedOut { payment_id: "pay-1".into() }.into()]);
        AggregateTest::<Basket>::given([started()])
            .when(BasketCommand::Checkout { payment_id: "pay-1".into() })
            .then_error_contains("empty");
        AggregateTest::<Basket>::given([started(), added(1)])
            .when(BasketCommand::Checkout { payment_id: "".into() })
            .then_error_contains("payment id is required");
    }

    #[test]
    fn only_an_open_basket_changes() {
        let checked_out = [started(), added(1), BasketCheckedOut { payment_id: "pay-1".into() }.into()];
        AggregateTest::<Basket>::given(checked_out.clone())
            .when(BasketCommand::AddItem { item: book(), quantity: 1 })
            .then_error_contains("checked out");
        AggregateTest::<Basket>::given(checked_out).when(cancel()).then_error_contains("checked out");
        AggregateTest::<Basket>::given([started(), canceled(CancelReason::Customer)])
            .when(BasketCommand::Checkout { payment_id: "pay-1".into() })
            .then_error_contains("canceled");
        AggregateTest::<Basket>::given([started()]).when(cancel()).then_events([canceled(CancelReason::Customer)]);
        AggregateTest::<Basket>::given_nothing().when(cancel()).then_error_contains("not found");
    }

    fn cancel() -> BasketCommand {
        BasketCommand::Cancel { reason: CancelReason::Customer }
    }

    fn canceled(reason: CancelReason) -> BasketEvent {
        BasketCanceled { reason }.into()
    }

    /// At its deadline an open basket is canceled like a kiosk's cancel, saying why; one
    /// checked out or canceled already refuses (its expiry is then nothing to do).
    #[test]
    fn an_open_basket_expires_and_a_closed_one_does_not() {
        let expire = || BasketCommand::Cancel { reason: CancelReason::Expired };
        AggregateTest::<Basket>::given([started(), added(1)])
            .when(expire())
            .then_events([canceled(CancelReason::Expired)]);
        let checked_out = [started(), added(1), BasketCheckedOut { payment_id: "pay-1".into() }.into()];
        AggregateTest::<Basket>::given(checked_out)
            .when(expire())
            .then_error(BasketError::NotOpen(BasketStatus::CheckedOut));
        AggregateTest::<Basket>::given([started(), canceled(CancelReason::Expired)])
            .when(expire())
            .then_error(BasketError::NotOpen(BasketStatus::Canceled));
    }

    /// Cancellations stored before reasons were given read as the customer's.
    #[test]
    fn a_cancellation_stored_without_a_reason_was_the_customer_s() {
        let old: BasketCanceled = serde_json::from_str("{}").expect("decodes");
        assert_eq!(old.reason, CancelReason::Customer);
        let expired = serde_json::to_value(BasketCanceled { reason: CancelReason::Expired }).expect("encodes");
        assert_eq!(expired, serde_json::json!({ "reason": "expired" }));
    }
}
