//! The public contract of stores: its integration events. Consumers (baskets, depot, search)
//! keep local copies from them, so they carry the state they describe, not just the change.

use herald::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Topic of the store events (keyed by store id).
pub const STORE_TOPIC: &str = "stores.events.Store";
/// Topic of the product events (keyed by product id).
pub const PRODUCT_TOPIC: &str = "stores.events.Product";

/// A store opened in the mall (not yet participating).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreCreated {
    pub id: String,
    pub name: String,
    pub location: String,
}
impl Event for StoreCreated {
    const NAME: &'static str = "storesapi.StoreCreated.v1";
}

/// A store joined (`participating`) or left the mall's kiosk offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreParticipatingToggled {
    pub id: String,
    pub participating: bool,
}
impl Event for StoreParticipatingToggled {
    const NAME: &'static str = "storesapi.StoreParticipatingToggled.v1";
}

/// A store has a new name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoreRebranded {
    pub id: String,
    pub name: String,
}
impl Event for StoreRebranded {
    const NAME: &'static str = "storesapi.StoreRebranded.v1";
}

/// A product is on sale in a store. Prices are in cents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductAdded {
    pub id: String,
    pub store_id: String,
    pub name: String,
    pub description: String,
    pub sku: String,
    pub price_cents: i64,
}
impl Event for ProductAdded {
    const NAME: &'static str = "storesapi.ProductAdded.v1";
}

/// A product has a new name and description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRebranded {
    pub id: String,
    pub name: String,
    pub description: String,
}
impl Event for ProductRebranded {
    const NAME: &'static str = "storesapi.ProductRebranded.v1";
}

/// A product's price went up by `delta_cents` to `price_cents`. The new price is carried so
/// that a cache can set it rather than add a delta twice on a redelivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceIncreased {
    pub id: String,
    pub delta_cents: i64,
    pub price_cents: i64,
}
impl Event for ProductPriceIncreased {
    const NAME: &'static str = "storesapi.ProductPriceIncreased.v1";
}

/// A product's price went down by `delta_cents` (positive) to `price_cents`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceDecreased {
    pub id: String,
    pub delta_cents: i64,
    pub price_cents: i64,
}
impl Event for ProductPriceDecreased {
    const NAME: &'static str = "storesapi.ProductPriceDecreased.v1";
}

/// A product is no longer sold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRemoved {
    pub id: String,
}
impl Event for ProductRemoved {
    const NAME: &'static str = "storesapi.ProductRemoved.v1";
}

herald::event_set! {
    /// Everything on [`STORE_TOPIC`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum StoreIntegrationEvent {
        Created(StoreCreated),
        ParticipatingToggled(StoreParticipatingToggled),
        Rebranded(StoreRebranded),
    }
}
herald::event_schemas!(StoreIntegrationEvent: StoreCreated, StoreParticipatingToggled, StoreRebranded);

herald::event_set! {
    /// Everything on [`PRODUCT_TOPIC`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum ProductIntegrationEvent {
        Added(ProductAdded),
        Rebranded(ProductRebranded),
        PriceIncreased(ProductPriceIncreased),
        PriceDecreased(ProductPriceDecreased),
        Removed(ProductRemoved),
    }
}
herald::event_schemas!(ProductIntegrationEvent:
    ProductAdded, ProductRebranded, ProductPriceIncreased, ProductPriceDecreased, ProductRemoved
);
