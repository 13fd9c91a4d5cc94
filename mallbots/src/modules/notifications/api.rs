//! The public contract of notifications.

use herald::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Topic of the notification events (keyed by customer id).
pub const EVENT_TOPIC: &str = "notifications.events.Notification";

/// An SMS went to a customer about an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationSent {
    pub customer_id: String,
    pub order_id: String,
    /// created, ready, canceled or completed.
    pub kind: String,
}
impl Event for NotificationSent {
    const NAME: &'static str = "notificationsapi.NotificationSent.v1";
}
