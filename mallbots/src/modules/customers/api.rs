//! The public contract of customers: integration events and the command it handles.

use herald::Event;
use herald::shredding::Sealed;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Topic of the customer events (keyed by customer id).
pub const EVENT_TOPIC: &str = "customers.events.Customer";
/// Topic of the commands customers handles.
pub const COMMAND_TOPIC: &str = "customers.commands";

/// A customer registered at a kiosk (enabled).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerRegistered {
    pub id: String,
    /// Sealed with the customer's key: open it with the shredder (`[forgotten]` once forgotten).
    pub name: Sealed,
    /// Sealed like the name.
    pub sms_number: Sealed,
}
impl Event for CustomerRegistered {
    const NAME: &'static str = "customersapi.CustomerRegistered.v1";
}

/// A customer's SMS number changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerSmsChanged {
    pub id: String,
    /// Sealed with the customer's key.
    pub sms_number: Sealed,
}
impl Event for CustomerSmsChanged {
    const NAME: &'static str = "customersapi.CustomerSmsChanged.v1";
}

/// A customer was forgotten (the right to erasure): its key is gone, so its sealed data reads as
/// forgotten everywhere; modules that keep a copy of its personal data drop it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerForgotten {
    pub id: String,
}
impl Event for CustomerForgotten {
    const NAME: &'static str = "customersapi.CustomerForgotten.v1";
}

/// A customer may order again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerEnabled {
    pub id: String,
}
impl Event for CustomerEnabled {
    const NAME: &'static str = "customersapi.CustomerEnabled.v1";
}

/// A customer may no longer order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerDisabled {
    pub id: String,
}
impl Event for CustomerDisabled {
    const NAME: &'static str = "customersapi.CustomerDisabled.v1";
}

herald::event_set! {
    /// Everything on [`EVENT_TOPIC`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum CustomerIntegrationEvent {
        Registered(CustomerRegistered),
        SmsChanged(CustomerSmsChanged),
        Enabled(CustomerEnabled),
        Disabled(CustomerDisabled),
        Forgotten(CustomerForgotten),
    }
}
herald::event_schemas!(CustomerIntegrationEvent:
    CustomerRegistered, CustomerSmsChanged, CustomerEnabled, CustomerDisabled, CustomerForgotten
);

/// Command (on [`COMMAND_TOPIC`]): may this customer order? The reply is a success, or a
/// failure when the customer is unknown or disabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuthorizeCustomer {
    pub id: String,
}
impl Event for AuthorizeCustomer {
    const NAME: &'static str = "customersapi.AuthorizeCustomer.v1";
}
