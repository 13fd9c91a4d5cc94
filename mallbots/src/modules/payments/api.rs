//! The public contract of payments: its integration events and the command it handles.

use herald::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Topic of the invoice events (keyed by order id).
pub const EVENT_TOPIC: &str = "payments.events.Invoice";
/// Topic of the commands payments handles.
pub const COMMAND_TOPIC: &str = "payments.commands";

/// The customer paid the invoice of an order at the depot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoicePaid {
    pub id: String,
    pub order_id: String,
}
impl Event for InvoicePaid {
    const NAME: &'static str = "paymentsapi.InvoicePaid.v1";
}

/// The invoice of a canceled order was canceled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceCanceled {
    pub id: String,
    pub order_id: String,
}
impl Event for InvoiceCanceled {
    const NAME: &'static str = "paymentsapi.InvoiceCanceled.v1";
}

herald::event_set! {
    /// Everything on [`EVENT_TOPIC`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum InvoiceIntegrationEvent {
        Paid(InvoicePaid),
        Canceled(InvoiceCanceled),
    }
}
herald::event_schemas!(InvoiceIntegrationEvent: InvoicePaid, InvoiceCanceled);

/// Command (saga step 3): does payment `id` cover exactly `amount_cents`? Success, or a failure
/// for an unknown payment or a different amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmPayment {
    pub id: String,
    pub amount_cents: i64,
}
impl Event for ConfirmPayment {
    const NAME: &'static str = "paymentsapi.ConfirmPayment.v1";
}
