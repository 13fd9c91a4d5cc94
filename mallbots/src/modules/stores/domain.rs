//! The stores domain: `Store` and `Product`, event-sourced. Pure: no I/O.

use herald::Event;
use herald::aggregate::Aggregate;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Store

/// A store was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCreated {
    pub name: String,
    pub location: String,
}
impl Event for StoreCreated {
    const NAME: &'static str = "stores.StoreCreated.v1";
}

/// The store joined the mall's kiosk offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreParticipationEnabled {}
impl Event for StoreParticipationEnabled {
    const NAME: &'static str = "stores.StoreParticipationEnabled.v1";
}

/// The store left the mall's kiosk offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreParticipationDisabled {}
impl Event for StoreParticipationDisabled {
    const NAME: &'static str = "stores.StoreParticipationDisabled.v1";
}

/// The store has a new name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRebranded {
    pub name: String,
}
impl Event for StoreRebranded {
    const NAME: &'static str = "stores.StoreRebranded.v1";
}

herald::event_set! {
    /// What happens to a store.
    #[derive(Clone, Debug, PartialEq)]
    pub enum StoreEvent {
        Created(StoreCreated),
        ParticipationEnabled(StoreParticipationEnabled),
        ParticipationDisabled(StoreParticipationDisabled),
        Rebranded(StoreRebranded),
    }
}

/// What can be asked of a store.
#[derive(Clone, Debug)]
pub enum StoreCommand {
    Create { name: String, location: String },
    EnableParticipation,
    DisableParticipation,
    Rebrand { name: String },
}

/// Why a store refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the store name must not be blank")]
    BlankName,
    #[error("the store location must not be blank")]
    BlankLocation,
    #[error("the store already exists")]
    AlreadyExists,
    #[error("store not found")]
    NotFound,
    #[error("the store is already participating")]
    AlreadyParticipating,
    #[error("the store is already not participating")]
    AlreadyNotParticipating,
}

/// A store of the mall.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// Whether it was created (a fresh aggregate is not).
    pub exists: bool,
    pub name: String,
    pub location: String,
    /// Whether its products are offered at the kiosks.
    pub participating: bool,
}

fn not_blank<E>(value: &str, error: E) -> Result<String, E> {
    let value = value.trim();
    if value.is_empty() { Err(error) } else { Ok(value.to_owned()) }
}

impl Aggregate for Store {
    const TYPE: &'static str = "store";
    type Command = StoreCommand;
    type Event = StoreEvent;
    type Error = StoreError;

    fn handle(&self, command: StoreCommand) -> Result<Vec<StoreEvent>, StoreError> {
        if let StoreCommand::Create { name, location } = command {
            if self.exists {
                return Err(StoreError::AlreadyExists);
            }
            let name = not_blank(&name, StoreError::BlankName)?;
            let location = not_blank(&location, StoreError::BlankLocation)?;
            return Ok(vec![StoreCreated { name, location }.into()]);
        }
        if !self.exists {
            return Err(StoreError::NotFound);
        }
        match command {
            StoreCommand::Create { .. } => Err(StoreError::AlreadyExists),
            StoreCommand::EnableParticipation if self.participating => Err(StoreError::AlreadyParticipating),
            StoreCommand::EnableParticipation => Ok(vec![StoreParticipationEnabled {}.into()]),
            StoreCommand::DisableParticipation if !self.participating => Err(StoreError::AlreadyNotParticipating),
            StoreCommand::DisableParticipation => Ok(vec![StoreParticipationDisabled {}.into()]),
            StoreCommand::Rebrand { name } => {
                Ok(vec![StoreRebranded { name: not_blank(&name, StoreError::BlankName)? }.into()])
            }
        }
    }

    fn apply(&mut self, event: &StoreEvent) {
        match event {
            StoreEvent::Created(e) => {
                self.exists = true;
                self.name.clone_from(&e.name);
                self.location.clone_from(&e.location);
            }
            StoreEvent::ParticipationEnabled(_) => self.participating = true,
            StoreEvent::ParticipationDisabled(_) => self.participating = false,
            StoreEvent::Rebranded(e) => self.name.clone_from(&e.name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Product

/// A product was added to a store. Prices are in cents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductAdded {
    pub store_id: String,
    pub name: String,
    pub description: String,
    pub sku: String,
    pub price_cents: i64,
}
impl Event for ProductAdded {
    const NAME: &'static str = "stores.ProductAdded.v1";
}

/// The product has a new name and description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRebranded {
    pub name: String,
    pub description: String,
}
impl Event for ProductRebranded {
    const NAME: &'static str = "stores.ProductRebranded.v1";
}

/// The price went up by `delta_cents` (> 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductPriceIncreased {
    pub delta_cents: i64,
}
impl Event for ProductPriceIncreased {
    const NAME: &'static str = "stores.ProductPriceIncreased.v1";
}

/// The price went down by `delta_cents` (> 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductPriceDecreased {
    pub delta_cents: i64,
}
impl Event for ProductPriceDecreased {
    const NAME: &'static str = "stores.ProductPriceDecreased.v1";
}

/// The product is no longer sold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRemoved {}
impl Event for ProductRemoved {
    const NAME: &'static str = "stores.ProductRemoved.v1";
}

herald::event_set! {
    /// What happens to a product.
    #[derive(Clone, Debug, PartialEq)]
    pub enum ProductEvent {
        Added(ProductAdded),
        Rebranded(ProductRebranded),
        PriceIncreased(ProductPriceIncreased),
        PriceDecreased(ProductPriceDecreased),
        Removed(ProductRemoved),
    }
}

/// What can be asked of a product. Prices in cents.
#[derive(Clone, Debug)]
pub enum ProductCommand {
    Add { store_id: String, name: String, description: String, sku: String, price_cents: i64 },
    Rebrand { name: String, description: String },
    IncreasePrice { price_cents: i64 },
    DecreasePrice { price_cents: i64 },
    Remove,
}

/// Why a product refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    #[error("the product name must not be blank")]
    BlankName,
    #[error("the price must not be negative")]
    NegativePrice,
    #[error("the product already exists")]
    AlreadyExists,
    #[error("product not found")]
    NotFound,
    #[error("an increase must raise the price (now {current_cents} cents)")]
    NotAnIncrease { current_cents: i64 },
    #[error("a decrease must lower the price (now {current_cents} cents)")]
    NotADecrease { current_cents: i64 },
}

/// A product of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Whether it was added and not removed.
    pub exists: bool,
    /// Whether it was removed (it cannot come back under the same id).
    pub removed: bool,
    pub store_id: String,
    pub name: String,
    pub description: String,
    pub sku: String,
    pub price_cents: i64,
}

impl Aggregate for Product {
    const TYPE: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn handle(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        if let ProductCommand::Add { store_id, name, description, sku, price_cents } = command {
            if self.exists || self.removed {
                return Err(ProductError::AlreadyExists);
            }
            let name = not_blank(&name, ProductError::BlankName)?;
            if price_cents < 0 {
                return Err(ProductError::NegativePrice);
            }
            let (description, sku) = (description.trim().to_owned(), sku.trim().to_owned());
            return Ok(vec![ProductAdded { store_id, name, description, sku, price_cents }.into()]);
        }
        if !self.exists {
            return Err(ProductError::NotFound);
        }
        match command {
            ProductCommand::Add { .. } => Err(ProductError::AlreadyExists),
            ProductCommand::Rebrand { name, description } => Ok(vec![
                ProductRebranded {
                    name: not_blank(&name, ProductError::BlankName)?,
                    description: description.trim().to_owned(),
                }
                .into(),
            ]),
            ProductCommand::IncreasePrice { price_cents } if price_cents < 0 => Err(ProductError::NegativePrice),
            ProductCommand::IncreasePrice { price_cents } if price_cents <= self.price_cents => {
                Err(ProductError::NotAnIncrease { current_cents: self.price_cents })
            }
            ProductCommand::IncreasePrice { price_cents } => {
                Ok(vec![ProductPriceIncreased { delta_cents: price_cents - self.price_cents }.into()])
            }
            ProductCommand::DecreasePrice { price_cents } if price_cents < 0 => Err(ProductError::NegativePrice),
            ProductCommand::DecreasePrice { price_cents } if price_cents >= self.price_cents => {
                Err(ProductError::NotADecrease { current_cents: self.price_cents })
            }
            ProductCommand::DecreasePrice { price_cents } => {
                Ok(vec![ProductPriceDecreased { delta_cents: self.price_cents - price_cents }.into()])
            }
            ProductCommand::Remove => Ok(vec![ProductRemoved {}.into()]),
        }
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::Added(e) => {
                self.exists = true;
                self.store_id.clone_from(&e.store_id);
                self.name.clone_from(&e.name);
                self.description.clone_from(&e.description);
                self.sku.clone_from(&e.sku);
                self.price_cents = e.price_cents;
            }
            ProductEvent::Rebranded(e) => {
                self.name.clone_from(&e.name);
                self.description.clone_from(&e.description);
            }
            ProductEvent::PriceIncreased(e) => self.price_cents += e.delta_cents,
            ProductEvent::PriceDecreased(e) => self.price_cents -= e.delta_cents,
            ProductEvent::Removed(_) => {
                self.exists = false;
                self.removed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use herald::aggregate::testing::AggregateTest;

    use super::*;

    fn created() -> StoreEvent {
        StoreCreated { name: "Waldorf Books".into(), location: "Level 1".into() }.into()
    }

    #[test]
    fn a_store_is_created_with_trimmed_name_and_location() {
        AggregateTest::<Store>::given_nothing()
            .when(StoreCommand::Create { name: " Waldorf Books ".into(), location: "Level 1".into() })
            .then_events([created()]);
    }

    #[test]
    fn a_store_needs_a_name_and_a_location() {
        AggregateTest::<Store>::given_nothing()
            .when(StoreCommand::Create { name: "  ".into(), location: "Level 1".into() })
            .then_error_contains("name must not be blank");
        AggregateTest::<Store>::given_nothing()
            .when(StoreCommand::Create { name: "Books".into(), location: "".into() })
            .then_error_contains("location must not be blank");
    }

    #[test]
    fn a_store_is_created_once() {
        AggregateTest::<Store>::given([created()])
            .when(StoreCommand::Create { name: "Other".into(), location: "L2".into() })
            .then_error_contains("already exists");
    }

    #[test]
    fn participation_is_enabled_then_disabled_and_twice_is_an_error() {
        AggregateTest::<Store>::given([created()])
            .when(StoreCommand::EnableParticipation)
            .then_events([StoreParticipationEnabled {}.into()]);
        AggregateTest::<Store>::given([created(), StoreParticipationEnabled {}.into()])
            .when(StoreCommand::EnableParticipation)
            .then_error_contains("already participating");
        AggregateTest::<Store>::given([created(), StoreParticipationEnabled {}.into()])
            .when(StoreCommand::DisableParticipation)
            .then_events([StoreParticipationDisabled {}.into()]);
        AggregateTest::<Store>::given([created()])
            .when(StoreCommand::DisableParticipation)
            .then_error_contains("already not participating");
    }

    #[test]
    fn a_store_is_rebranded_to_a_non_blank_name() {
        AggregateTest::<Store>::given([created()])
            .when(StoreCommand::Rebrand { name: "Waldorf & Statler".into() })
            .then_events([StoreRebranded { name: "Waldorf & Statler".into() }.into()]);
        AggregateTest::<Store>::given([created()])
            .when(StoreCommand::Rebrand { name: "".into() })
            .then_error_contains("must not be blank");
    }

    #[test]
    fn an_unknown_store_refuses_every_change() {
        AggregateTest::<Store>::given_nothing()
            .when(StoreCommand::EnableParticipation)
            .then_error_contains("not found");
    }

    fn added(price_cents: i64) -> ProductEvent {
        ProductAdded {
            store_id: "s-1".into(),
            name: "Muppet Treasury".into(),
            description: "A book".into(),
            sku: "B-1".into(),
            price_cents,
        }
        .into()
    }

    fn add(name: &str, price_cents: i64) -> ProductCommand {
        ProductCommand::Add {
            store_id: "s-1".into(),
            name: name.into(),
            description: "A book".into(),
            sku: "B-1".into(),
            price_cents,
        }
    }

    #[test]
    fn a_product_is_added_with_a_name_and_a_price_not_below_zero() {
        AggregateTest::<Product>::given_nothing().when(add("Muppet Treasury", 999)).then_events([added(999)]);
        AggregateTest::<Product>::given_nothing().when(add("Free sample", 0)).into_result().expect("free is fine");
        AggregateTest::<Product>::given_nothing().when(add(" ", 999)).then_error_contains("must not be blank");
        AggregateTest::<Product>::given_nothing().when(add("X", -1)).then_error_contains("must not be negative");
    }

    #[test]
    fn an_increase_must_raise_the_price() {
        AggregateTest::<Product>::given([added(999)])
            .when(ProductCommand::IncreasePrice { price_cents: 1099 })
            .then_events([ProductPriceIncreased { delta_cents: 100 }.into()]);
        AggregateTest::<Product>::given([added(999)])
            .when(ProductCommand::IncreasePrice { price_cents: 999 })
            .then_error_contains("must raise");
        AggregateTest::<Product>::given([added(999)])
            .when(ProductCommand::IncreasePrice { price_cents: 500 })
            .then_error_contains("must raise");
    }

    #[test]
    fn a_decrease_must_lower_the_price() {
        AggregateTest::<Product>::given([added(999), ProductPriceIncreased { delta_cents: 1 }.into()])
            .when(ProductCommand::DecreasePrice { price_cents: 900 })
            .then_events([ProductPriceDecreased { delta_cents: 100 }.into()]);
        AggregateTest::<Product>::given([added(999)])
            .when(ProductCommand::DecreasePrice { price_cents: 1000 })
            .then_error_contains("must lower");
    }

    #[test]
    fn a_product_is_rebranded_and_removed_once() {
        AggregateTest::<Product>::given([added(999)])
            .when(ProductCommand::Rebrand { name: "Treasury".into(), description: "".into() })
            .then_events([ProductRebranded { name: "Treasury".into(), description: "".into() }.into()]);
        AggregateTest::<Product>::given([added(999)])
            .when(ProductCommand::Remove)
            .then_events([ProductRemoved {}.into()]);
        AggregateTest::<Product>::given([added(999), ProductRemoved {}.into()])
            .when(ProductCommand::Remove)
            .then_error_contains("not found");
        AggregateTest::<Product>::given([added(999), ProductRemoved {}.into()])
            .when(add("Again", 1))
            .then_error_contains("already exists");
    }
}
