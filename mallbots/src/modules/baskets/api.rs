//! The public contract of baskets: its integration events.

use herald::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Topic of the basket events (keyed by basket id).
pub const EVENT_TOPIC: &str = "baskets.events.Basket";

/// A customer started a basket at a kiosk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketStarted {
    pub id: String,
    pub customer_id: String,
}
impl Event for BasketStarted {
    const NAME: &'static str = "basketsapi.BasketStarted.v1";
}

/// Why a basket was canceled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The customer abandoned it (the kiosk's cancel).
    #[default]
    Customer,
    /// It was still open at its deadline (`basket_ttl` after it started).
    Expired,
}

/// A basket was abandoned: canceled at the kiosk, or still open at its deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketCanceled {
    pub id: String,
    /// Why (`customer` in events from before reasons were given).
    #[serde(default)]
    pub reason: CancelReason,
}
impl Event for BasketCanceled {
    const NAME: &'static str = "basketsapi.BasketCanceled.v1";
}

/// One line of a checked-out basket, with the names and price the customer saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketItem {
    pub store_id: String,
    pub product_id: String,
    pub store_name: String,
    pub product_name: String,
    pub price_cents: i64,
    pub quantity: u32,
}

/// A basket was paid for with `payment_id`: ordering creates the order (order id = basket id)
/// from this event alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BasketCheckedOut {
    pub id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub items: Vec<BasketItem>,
}
impl Event for BasketCheckedOut {
    const NAME: &'static str = "basketsapi.BasketCheckedOut.v1";
}

herald::event_set! {
    /// Everything on [`EVENT_TOPIC`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum BasketIntegrationEvent {
        Started(BasketStarted),
        Canceled(BasketCanceled),
        CheckedOut(BasketCheckedOut),
    }
}
herald::event_schemas!(BasketIntegrationEvent: BasketStarted, BasketCanceled, BasketCheckedOut);
