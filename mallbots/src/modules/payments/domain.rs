//! The payments domain: payment authorizations and the `Invoice`. Pure: no I/O.

use herald::Event;
use herald::aggregate::Aggregate;
use serde::{Deserialize, Serialize};

/// A payment authorized at a kiosk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub customer_id: String,
    pub amount_cents: i64,
}

/// Why a payment does not cover an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("unknown payment")]
    Unknown,
    #[error("the payment of {authorized} cents does not match the order total of {asked} cents")]
    AmountMismatch { authorized: i64, asked: i64 },
}

/// Whether `payment` covers exactly `amount_cents`.
pub fn confirm(payment: Option<&Payment>, amount_cents: i64) -> Result<(), PaymentError> {
    match payment {
        None => Err(PaymentError::Unknown),
        Some(p) if p.amount_cents != amount_cents => {
            Err(PaymentError::AmountMismatch { authorized: p.amount_cents, asked: amount_cents })
        }
        Some(_) => Ok(()),
    }
}

/// An invoice was issued for a ready order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceCreated {
    pub order_id: String,
    pub amount_cents: i64,
}
impl Event for InvoiceCreated {
    const NAME: &'static str = "payments.InvoiceCreated.v1";
}

/// The invoice was paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoicePaid {}
impl Event for InvoicePaid {
    const NAME: &'static str = "payments.InvoicePaid.v1";
}

/// The invoice was canceled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceCanceled {}
impl Event for InvoiceCanceled {
    const NAME: &'static str = "payments.InvoiceCanceled.v1";
}

herald::event_set! {
    /// What happens to an invoice.
    #[derive(Clone, Debug, PartialEq)]
    pub enum InvoiceEvent {
        Created(InvoiceCreated),
        Paid(InvoicePaid),
        Canceled(InvoiceCanceled),
    }
}

/// What can be asked of an invoice.
#[derive(Clone, Debug)]
pub enum InvoiceCommand {
    Create { order_id: String, amount_cents: i64 },
    Pay,
    Cancel,
}

/// Where an invoice is: pending → paid or canceled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    #[default]
    Unknown,
    Pending,
    Paid,
    Canceled,
}

impl InvoiceStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Canceled => "canceled",
        }
    }

    /// From what [`as_str`](Self::as_str) wrote.
    pub fn parse(text: &str) -> Self {
        match text {
            "pending" => Self::Pending,
            "paid" => Self::Paid,
            "canceled" => Self::Canceled,
            _ => Self::Unknown,
        }
    }
}

/// Why an invoice refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    #[error("invoice not found")]
    NotFound,
    #[error("the invoice already exists")]
    AlreadyExists,
    #[error("the invoice amount must not be negative")]
    NegativeAmount,
    #[error("the invoice is {0}; only a pending invoice can be paid or canceled")]
    NotPending(&'static str),
}

/// The bill of an order, paid at the depot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub status: InvoiceStatus,
    pub order_id: String,
    pub amount_cents: i64,
}

impl Aggregate for Invoice {
    const TYPE: &'static str = "invoice";
    type Command = InvoiceCommand;
    type Event = InvoiceEvent;
    type Error = InvoiceError;

    fn handle(&self, command: InvoiceCommand) -> Result<Vec<InvoiceEvent>, InvoiceError> {
        match (command, self.status) {
            (InvoiceCommand::Create { .. }, s) if s != InvoiceStatus::Unknown => Err(InvoiceError::AlreadyExists),
            (InvoiceCommand::Create { amount_cents, .. }, _) if amount_cents < 0 => Err(InvoiceError::NegativeAmount),
            (InvoiceCommand::Create { order_id, amount_cents }, _) => {
                Ok(vec![InvoiceCreated { order_id, amount_cents }.into()])
            }
            (_, InvoiceStatus::Unknown) => Err(InvoiceError::NotFound),
            (_, s @ (InvoiceStatus::Paid | InvoiceStatus::Canceled)) => Err(InvoiceError::NotPending(s.as_str())),
            (InvoiceCommand::Pay, InvoiceStatus::Pending) => Ok(vec![InvoicePaid {}.into()]),
            (InvoiceCommand::Cancel, InvoiceStatus::Pending) => Ok(vec![InvoiceCanceled {}.into()]),
        }
    }

    fn apply(&mut self, event: &InvoiceEvent) {
        match event {
            InvoiceEvent::Created(e) => {
                self.status = InvoiceStatus::Pending;
                self.order_id.clone_from(&e.order_id);
                self.amount_cents = e.amount_cents;
            }
            InvoiceEvent::Paid(_) => self.status = InvoiceStatus::Paid,
            InvoiceEvent::Canceled(_) => self.status = InvoiceStatus::Canceled,
        }
    }
}

#[cfg(test)]
mod tests {
    use herald::aggregate::testing::AggregateTest;

    use super::*;

    fn created() -> InvoiceEvent {
        InvoiceCreated { order_id: "o-1".into(), amount_cents: 1998 }.into()
    }

    #[test]
    fn a_payment_confirms_only_its_exact_amount() {
        let payment = Payment { customer_id: "c-1".into(), amount_cents: 1998 };
        assert_eq!(confirm(Some(&payment), 1998), Ok(()));
        assert_eq!(confirm(Some(&payment), 1999), Err(PaymentError::AmountMismatch { authorized: 1998, asked: 1999 }));
        assert_eq!(confirm(None, 1998), Err(PaymentError::Unknown));
    }

    #[test]
    fn an_invoice_is_created_once_then_paid_or_canceled() {
        AggregateTest::<Invoice>::given_nothing()
            .when(InvoiceCommand::Create { order_id: "o-1".into(), amount_cents: 1998 })
            .then_events([created()]);
        AggregateTest::<Invoice>::given([created()])
            .when(InvoiceCommand::Create { order_id: "o-1".into(), amount_cents: 1998 })
            .then_error_contains("already exists");
        AggregateTest::<Invoice>::given([created()]).when(InvoiceCommand::Pay).then_events([InvoicePaid {}.into()]);
        AggregateTest::<Invoice>::given([created()])
            .when(InvoiceCommand::Cancel)
            .then_events([InvoiceCanceled {}.into()]);
    }

    #[test]
    fn only_a_pending_invoice_changes() {
        AggregateTest::<Invoice>::given([created(), InvoicePaid {}.into()])
            .when(InvoiceCommand::Pay)
            .then_error_contains("is paid");
        AggregateTest::<Invoice>::given([created(), InvoiceCanceled {}.into()])
            .when(InvoiceCommand::Pay)
            .then_error_contains("is canceled");
        AggregateTest::<Invoice>::given_nothing().when(InvoiceCommand::Pay).then_error_contains("not found");
    }
}
