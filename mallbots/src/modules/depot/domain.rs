//! The depot domain: `ShoppingList`. Pure: no I/O.
//!
//! pending → available → assigned → (active →) completed, or canceled from any non-final status.

use herald::Event;
use herald::aggregate::Aggregate;
use serde::{Deserialize, Serialize};

use super::api::ShoppingItem;

/// Where a shopping list is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShoppingStatus {
    #[default]
    Unknown,
    Pending,
    Available,
    Assigned,
    Active,
    Completed,
    Canceled,
}

impl ShoppingStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Pending => "pending",
            Self::Available => "available",
            Self::Assigned => "assigned",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Canceled => "canceled",
        }
    }

    /// From what [`as_str`](Self::as_str) wrote; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Available, Self::Assigned, Self::Active, Self::Completed, Self::Canceled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// What a shopper bot is doing, as the depot's table of bots shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BotStatus {
    /// Connected, without a list.
    Idle,
    /// Connected, working on a list.
    Busy,
    /// Not connected (or its depot process is gone).
    Offline,
}

impl BotStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Offline => "offline",
        }
    }

    /// From what [`as_str`](Self::as_str) wrote; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Idle, Self::Busy, Self::Offline].into_iter().find(|s| s.as_str() == text)
    }
}

/// The list was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoppingListCreated {
    pub order_id: String,
    pub items: Vec<ShoppingItem>,
}
impl Event for ShoppingListCreated {
    const NAME: &'static str = "depot.ShoppingListCreated.v1";
}

/// The bots may take it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoppingListAvailable {}
impl Event for ShoppingListAvailable {
    const NAME: &'static str = "depot.ShoppingListAvailable.v1";
}

/// A bot took it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoppingListAssigned {
    pub bot_id: String,
}
impl Event for ShoppingListAssigned {
    const NAME: &'static str = "depot.ShoppingListAssigned.v1";
}

/// Its bot picked the items at one store (the list is active from the first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoppingListStopPicked {
    pub store_id: String,
}
impl Event for ShoppingListStopPicked {
    const NAME: &'static str = "depot.ShoppingListStopPicked.v1";
}

/// Its bot let it go (disconnected or fell silent): available again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoppingListReleased {
    pub bot_id: String,
    pub reason: String,
}
impl Event for ShoppingListReleased {
    const NAME: &'static str = "depot.ShoppingListReleased.v1";
}

/// Done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoppingListCompleted {}
impl Event for ShoppingListCompleted {
    const NAME: &'static str = "depot.ShoppingListCompleted.v1";
}

/// Canceled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoppingListCanceled {}
impl Event for ShoppingListCanceled {
    const NAME: &'static str = "depot.ShoppingListCanceled.v1";
}

herald::event_set! {
    /// What happens to a shopping list.
    #[derive(Clone, Debug, PartialEq)]
    pub enum ShoppingEvent {
        Created(ShoppingListCreated),
        Available(ShoppingListAvailable),
        Assigned(ShoppingListAssigned),
        StopPicked(ShoppingListStopPicked),
        Released(ShoppingListReleased),
        Completed(ShoppingListCompleted),
        Canceled(ShoppingListCanceled),
    }
}

/// What can be asked of a shopping list.
#[derive(Clone, Debug)]
pub enum ShoppingCommand {
    Create {
        order_id: String,
        items: Vec<ShoppingItem>,
    },
    Initiate,
    Assign {
        bot_id: String,
    },
    /// The bot `bot_id` picked the items at `store_id`.
    PickStop {
        bot_id: String,
        store_id: String,
    },
    /// The bot `bot_id` lets the list go.
    Release {
        bot_id: String,
        reason: String,
    },
    Complete,
    Cancel,
}

/// Why a shopping list refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShoppingError {
    #[error("shopping list not found")]
    NotFound,
    #[error("the shopping list already exists")]
    AlreadyExists,
    #[error("a shopping list needs items, each with a quantity of at least 1")]
    NoItems,
    #[error("a bot id is required")]
    NoBot,
    #[error("the shopping list is not this bot's")]
    NotYours,
    #[error("the shopping list has no stop at store {0}")]
    NoSuchStop(String),
    #[error("the shopping list is {status}; it cannot be {action}")]
    WrongStatus { status: &'static str, action: &'static str },
}

/// A list of things for a bot to collect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShoppingList {
    pub status: ShoppingStatus,
    pub order_id: String,
    pub items: Vec<ShoppingItem>,
    pub bot_id: Option<String>,
}

impl ShoppingList {
    fn expect(&self, allowed: &[ShoppingStatus], action: &'static str) -> Result<(), ShoppingError> {
        match self.status {
            ShoppingStatus::Unknown => Err(ShoppingError::NotFound),
            s if allowed.contains(&s) => Ok(()),
            s => Err(ShoppingError::WrongStatus { status: s.as_str(), action }),
        }
    }
}

impl Aggregate for ShoppingList {
    const TYPE: &'static str = "shopping_list";
    type Command = ShoppingCommand;
    type Event = ShoppingEvent;
    type Error = ShoppingError;

    fn handle(&self, command: ShoppingCommand) -> Result<Vec<ShoppingEvent>, ShoppingError> {
        use ShoppingStatus::{Active, Assigned, Available, Canceled, Pending};
        match command {
            ShoppingCommand::Create { order_id, items } => {
                if self.status != ShoppingStatus::Unknown {
                    return Err(ShoppingError::AlreadyExists);
                }
                if items.is_empty() || items.iter().any(|i| i.quantity == 0) {
                    return Err(ShoppingError::NoItems);
                }
                Ok(vec![ShoppingListCreated { order_id, items }.into()])
            }
            ShoppingCommand::Initiate => {
                self.expect(&[Pending], "initiated")?;
                Ok(vec![ShoppingListAvailable {}.into()])
            }
            ShoppingCommand::Assign { bot_id } => {
                self.expect(&[Available], "assigned")?;
                let bot_id = bot_id.trim();
                if bot_id.is_empty() {
                    return Err(ShoppingError::NoBot);
                }
                Ok(vec![ShoppingListAssigned { bot_id: bot_id.to_owned() }.into()])
            }
            ShoppingCommand::PickStop { bot_id, store_id } => {
                self.expect(&[Assigned, Active], "picked")?;
                if self.bot_id.as_deref() != Some(bot_id.as_str()) {
                    return Err(ShoppingError::NotYours);
                }
                if !self.items.iter().any(|i| i.store_id == store_id) {
                    return Err(ShoppingError::NoSuchStop(store_id));
                }
                Ok(vec![ShoppingListStopPicked { store_id }.into()])
            }
            ShoppingCommand::Release { bot_id, reason } => {
                self.expect(&[Assigned, Active], "released")?;
                if self.bot_id.as_deref() != Some(bot_id.as_str()) {
                    return Err(ShoppingError::NotYours);
                }
                Ok(vec![ShoppingListReleased { bot_id, reason }.into()])
            }
            ShoppingCommand::Complete => {
                self.expect(&[Assigned, Active], "completed")?;
                Ok(vec![ShoppingListCompleted {}.into()])
            }
            // A compensation: canceling a canceled list again is fine (and changes nothing).
            ShoppingCommand::Cancel if self.status == Canceled => Ok(vec![]),
            ShoppingCommand::Cancel => {
                self.expect(&[Pending, Available, Assigned, Active], "canceled")?;
                Ok(vec![ShoppingListCanceled {}.into()])
            }
        }
    }

    fn apply(&mut self, event: &ShoppingEvent) {
        match event {
            ShoppingEvent::Created(e) => {
                self.status = ShoppingStatus::Pending;
                self.order_id.clone_from(&e.order_id);
                self.items.clone_from(&e.items);
            }
            ShoppingEvent::Available(_) => self.status = ShoppingStatus::Available,
            ShoppingEvent::Assigned(e) => {
                self.status = ShoppingStatus::Assigned;
                self.bot_id = Some(e.bot_id.clone());
            }
            ShoppingEvent::StopPicked(_) => self.status = ShoppingStatus::Active,
            ShoppingEvent::Released(_) => {
                self.status = ShoppingStatus::Available;
                self.bot_id = None;
            }
            ShoppingEvent::Completed(_) => self.status = ShoppingStatus::Completed,
            ShoppingEvent::Canceled(_) => {
                self.status = ShoppingStatus::Canceled;
                self.bot_id = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use herald::aggregate::testing::AggregateTest;

    use super::*;

    fn item() -> ShoppingItem {
        ShoppingItem {
            store_id: "s-1".into(),
            store_name: "Books".into(),
            product_id: "p-1".into(),
            product_name: "Treasury".into(),
            quantity: 2,
        }
    }

    fn created() -> ShoppingEvent {
        ShoppingListCreated { order_id: "o-1".into(), items: vec![item()] }.into()
    }

    #[test]
    fn a_list_is_created_with_items_then_made_available_assigned_and_completed() {
        AggregateTest::<ShoppingList>::given_nothing()
            .when(ShoppingCommand::Create { order_id: "o-1".into(), items: vec![item()] })
            .then_events([created()]);
        AggregateTest::<ShoppingList>::given_nothing()
            .when(ShoppingCommand::Create { order_id: "o-1".into(), items: vec![] })
            .then_error_contains("needs items");
        AggregateTest::<ShoppingList>::given([created()])
            .when(ShoppingCommand::Initiate)
            .then_events([ShoppingListAvailable {}.into()]);
        AggregateTest::<ShoppingList>::given([created()])
            .when(ShoppingCommand::Assign { bot_id: "bot-1".into() })
            .then_error_contains("is pending; it cannot be assigned");
        AggregateTest::<ShoppingList>::given([created(), ShoppingListAvailable {}.into()])
            .when(ShoppingCommand::Assign { bot_id: "bot-1".into() })
            .then_events([ShoppingListAssigned { bot_id: "bot-1".into() }.into()]);
        AggregateTest::<ShoppingList>::given([created(), ShoppingListAvailable {}.into()])
            .when(ShoppingCommand::Complete)
            .then_error_contains("is available; it cannot be completed");
        AggregateTest::<ShoppingList>::given([
            created(),
            ShoppingListAvailable {}.into(),
            ShoppingListAssigned { bot_id: "bot-1".into() }.into(),
        ])
        .when(ShoppingCommand::Complete)
        .then_events([ShoppingListCompleted {}.into()]);
    }

    #[test]
    fn its_bot_picks_stops_then_completes_or_lets_it_go() {
        let assigned =
            || [created(), ShoppingListAvailable {}.into(), ShoppingListAssigned { bot_id: "bot-1".into() }.into()];
        let pick = |bot: &str, store: &str| ShoppingCommand::PickStop { bot_id: bot.into(), store_id: store.into() };
        AggregateTest::<ShoppingList>::given(assigned())
            .when(pick("bot-1", "s-1"))
            .then_events([ShoppingListStopPicked { store_id: "s-1".into() }.into()]);
        AggregateTest::<ShoppingList>::given(assigned())
            .when(pick("bot-2", "s-1"))
            .then_error_contains("not this bot's");
        AggregateTest::<ShoppingList>::given(assigned()).when(pick("bot-1", "s-9")).then_error_contains("no stop");
        let release = ShoppingCommand::Release { bot_id: "bot-1".into(), reason: "gone".into() };
        AggregateTest::<ShoppingList>::given(assigned()).when(release.clone()).then_events([ShoppingListReleased {
            bot_id: "bot-1".into(),
            reason: "gone".into(),
        }
        .into()]);
        let mut released = assigned().to_vec();
        released.push(ShoppingListReleased { bot_id: "bot-1".into(), reason: "gone".into() }.into());
        AggregateTest::<ShoppingList>::given(released.clone())
            .when(ShoppingCommand::Assign { bot_id: "bot-2".into() })
            .then_events([ShoppingListAssigned { bot_id: "bot-2".into() }.into()]);
        AggregateTest::<ShoppingList>::given(released).when(release).then_error_contains("is available");
    }

    #[test]
    fn a_list_is_canceled_from_any_non_final_status_and_twice_is_harmless() {
        AggregateTest::<ShoppingList>::given([created()])
            .when(ShoppingCommand::Cancel)
            .then_events([ShoppingListCanceled {}.into()]);
        AggregateTest::<ShoppingList>::given([created(), ShoppingListCanceled {}.into()])
            .when(ShoppingCommand::Cancel)
            .then_events([]);
        AggregateTest::<ShoppingList>::given([
            created(),
            ShoppingListAvailable {}.into(),
            ShoppingListAssigned { bot_id: "b".into() }.into(),
            ShoppingListCompleted {}.into(),
        ])
        .when(ShoppingCommand::Cancel)
        .then_error_contains("is completed");
    }
}
