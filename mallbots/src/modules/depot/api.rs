//! The public contract of depot: shopping-list events, the commands it handles and its reply.

use herald::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Topic of the shopping-list events (keyed by order id).
pub const EVENT_TOPIC: &str = "depot.events.ShoppingList";
/// Topic of the commands depot handles.
pub const COMMAND_TOPIC: &str = "depot.commands";

/// One product to pick up in a store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingItem {
    pub store_id: String,
    pub store_name: String,
    pub product_id: String,
    pub product_name: String,
    pub quantity: u32,
}

/// Command (saga step 2): make the shopping list of an order. Replies [`CreatedShoppingList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreateShoppingList {
    pub order_id: String,
    pub items: Vec<ShoppingItem>,
}
impl Event for CreateShoppingList {
    const NAME: &'static str = "depotapi.CreateShoppingList.v1";
}

/// Reply to [`CreateShoppingList`]: the list's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreatedShoppingList {
    pub id: String,
}
impl Event for CreatedShoppingList {
    const NAME: &'static str = "depotapi.CreatedShoppingList.v1";
}

/// Command (compensation of step 2): cancel a shopping list (idempotent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelShoppingList {
    pub id: String,
}
impl Event for CancelShoppingList {
    const NAME: &'static str = "depotapi.CancelShoppingList.v1";
}

/// Command (saga step 4): the order is paid for; make its list available to the bots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InitiateShopping {
    pub id: String,
}
impl Event for InitiateShopping {
    const NAME: &'static str = "depotapi.InitiateShopping.v1";
}

herald::event_set! {
    /// Everything on [`COMMAND_TOPIC`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum DepotCommand {
        Create(CreateShoppingList),
        Cancel(CancelShoppingList),
        Initiate(InitiateShopping),
    }
}
herald::event_schemas!(DepotCommand: CreateShoppingList, CancelShoppingList, InitiateShopping);

/// A shopping list was made for an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingListCreated {
    pub id: String,
    pub order_id: String,
}
impl Event for ShoppingListCreated {
    const NAME: &'static str = "depotapi.ShoppingListCreated.v1";
}

/// A bot took the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingListAssigned {
    pub id: String,
    pub order_id: String,
    pub bot_id: String,
}
impl Event for ShoppingListAssigned {
    const NAME: &'static str = "depotapi.ShoppingListAssigned.v1";
}

/// The list's bot picked the items at one store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingListStopPicked {
    pub id: String,
    pub order_id: String,
    pub bot_id: String,
    pub store_id: String,
}
impl Event for ShoppingListStopPicked {
    const NAME: &'static str = "depotapi.ShoppingListStopPicked.v1";
}

/// The list's bot let it go (disconnected or fell silent): it is available again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingListReleased {
    pub id: String,
    pub order_id: String,
    pub bot_id: String,
    pub reason: String,
}
impl Event for ShoppingListReleased {
    const NAME: &'static str = "depotapi.ShoppingListReleased.v1";
}

/// Everything on the list is at the depot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingListCompleted {
    pub id: String,
    pub order_id: String,
}
impl Event for ShoppingListCompleted {
    const NAME: &'static str = "depotapi.ShoppingListCompleted.v1";
}

/// The list was canceled (its bot, if any, is free).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShoppingListCanceled {
    pub id: String,
    pub order_id: String,
}
impl Event for ShoppingListCanceled {
    const NAME: &'static str = "depotapi.ShoppingListCanceled.v1";
}

herald::event_set! {
    /// Everything on [`EVENT_TOPIC`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum ShoppingListIntegrationEvent {
        Created(ShoppingListCreated),
        Assigned(ShoppingListAssigned),
        StopPicked(ShoppingListStopPicked),
        Released(ShoppingListReleased),
        Completed(ShoppingListCompleted),
        Canceled(ShoppingListCanceled),
    }
}
herald::event_schemas!(ShoppingListIntegrationEvent:
    ShoppingListCreated, ShoppingListAssigned, ShoppingListStopPicked,
    ShoppingListReleased, ShoppingListCompleted, ShoppingListCanceled,
);
