//! The notifications application: the customer copy, the SMS port and its recording adapter.

use async_trait::async_trait;
use herald::router::{HandlerContext, HandlerError};
use herald::shredding::{FORGOTTEN, Shredder};
use herald::{Message, Transaction};
use herald_sql::AnyDatabase;
use herald_sql::SqlError;
use herald_sql::any::{FromRow, Row, query};
use serde::Serialize;
use utoipa::ToSchema;

use super::api;
use crate::db;
use crate::error::{AppError, AppResult};
use crate::modules::customers::api as customers;
use crate::modules::ordering::api as ordering;

/// One SMS to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sms {
    pub customer_id: String,
    pub order_id: String,
    pub kind: &'static str,
    pub to: String,
    pub text: String,
}

/// The port to an SMS service. It sends inside the handler's transaction, so an adapter that
/// records (like [`RecordingGateway`]) records exactly once per handled event.
#[async_trait]
pub trait SmsGateway: Send + Sync {
    /// Sends (or records) one message.
    async fn send(&self, tx: &mut dyn Transaction, sms: &Sms) -> AppResult<()>;
}

/// The default adapter: records each message in `notifications_sent`. With a latency, it
/// behaves like an SMS provider's connection that sends one message at a time and takes that
/// long for each (so a process's SMS rate is bounded, and more processes send more): for
/// demonstrating and testing scale-out.
#[derive(Clone, Debug, Default)]
pub struct RecordingGateway {
    latency: std::time::Duration,
    line: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl RecordingGateway {
    /// A gateway taking `latency` per message, one message at a time.
    pub fn with_latency(latency: std::time::Duration) -> Self {
        Self { latency, line: std::sync::Arc::default() }
    }
}

#[async_trait]
impl SmsGateway for RecordingGateway {
    async fn send(&self, tx: &mut dyn Transaction, sms: &Sms) -> AppResult<()> {
        if !self.latency.is_zero() {
            let _line = self.line.lock().await;
            tokio::time::sleep(self.latency).await;
        }
        query(
            "INSERT INTO notifications_sent (customer_id, order_id, kind, sms_number, text, sent_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&sms.customer_id)
        .bind(&sms.order_id)
        .bind(sms.kind)
        .bind(&sms.to)
        .bind(&sms.text)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(db::conn(tx)?)
        .await?;
        Ok(())
    }
}

/// An order event for a customer whose registration has not reached notifications (yet).
#[derive(Debug, thiserror::Error)]
#[error("customer {0} is not known to notifications yet (its registration has not arrived)")]
pub struct CustomerNotKnownYet(pub String);

fn transient(e: impl Into<AppError>) -> HandlerError {
    HandlerError::transient(e.into())
}

/// Keeps `notifications_customers` up to date: the name and SMS number opened from the sealed
/// event fields (`[forgotten]` if the customer was forgotten before this copy was made), and
/// drops its copies — the customer row and what the sent messages said — when a customer is
/// forgotten.
pub async fn on_customer_event(
    cx: &mut HandlerContext,
    event: customers::CustomerIntegrationEvent,
    shredder: &Shredder,
) -> Result<(), HandlerError> {
    let result = match &event {
        customers::CustomerIntegrationEvent::Registered(e) => {
            let (name, sms_number) = (shredder.reveal(&e.name).await?, shredder.reveal(&e.sms_number).await?);
            query(
                "INSERT INTO notifications_customers (id, name, sms_number) VALUES (?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, sms_number = excluded.sms_number",
            )
            .bind(&e.id)
            .bind(name)
            .bind(sms_number)
            .execute(db::conn(cx.tx()?).map_err(transient)?)
            .await
        }
        customers::CustomerIntegrationEvent::SmsChanged(e) => {
            let sms_number = shredder.reveal(&e.sms_number).await?;
            query("UPDATE notifications_customers SET sms_number = ? WHERE id = ?")
                .bind(sms_number)
                .bind(&e.id)
                .execute(db::conn(cx.tx()?).map_err(transient)?)
                .await
        }
        customers::CustomerIntegrationEvent::Forgotten(e) => {
            let mut conn = db::conn(cx.tx()?).map_err(transient)?;
            query("UPDATE notifications_customers SET name = ?, sms_number = ? WHERE id = ?")
                .bind(FORGOTTEN)
                .bind(FORGOTTEN)
                .bind(&e.id)
                .execute(&mut conn)
                .await
                .map_err(transient)?;
            query("UPDATE notifications_sent SET sms_number = ?, text = ? WHERE customer_id = ?")
                .bind(FORGOTTEN)
                .bind(FORGOTTEN)
                .bind(&e.id)
                .execute(conn)
                .await
        }
        customers::CustomerIntegrationEvent::Enabled(_) | customers::CustomerIntegrationEvent::Disabled(_) => {
            return Ok(());
        }
    };
    result.map_err(transient)?;
    Ok(())
}

/// Sends the SMS an order event calls for.
pub async fn on_order_event(
    cx: &mut HandlerContext,
    event: ordering::OrderIntegrationEvent,
    gateway: &dyn SmsGateway,
) -> Result<(), HandlerError> {
    let (customer_id, order_id, kind) = match &event {
        ordering::OrderIntegrationEvent::Created(e) => (&e.customer_id, &e.id, "created"),
        ordering::OrderIntegrationEvent::Readied(e) => (&e.customer_id, &e.id, "ready"),
        ordering::OrderIntegrationEvent::Canceled(e) => (&e.customer_id, &e.id, "canceled"),
        ordering::OrderIntegrationEvent::Completed(e) => (&e.customer_id, &e.id, "completed"),
        _ => return Ok(()),
    };
    let cause = cx.message().clone();
    let tx = cx.tx()?;
    let customer: Option<(String, String)> = query("SELECT name, sms_number FROM notifications_customers WHERE id = ?")
        .bind(customer_id)
        .fetch_optional(db::conn(tx).map_err(transient)?)
        .await
        .map_err(transient)?;
    // The customer's copy comes from another topic, so an order event can overtake it (the
    // customers process died before relaying the registration, say): wait for it through
    // retries, and dead-letter with this reason if it never comes. Never drop the SMS.
    let Some((name, to)) = customer else {
        return Err(HandlerError::transient(CustomerNotKnownYet(customer_id.clone())));
    };
    if to == FORGOTTEN {
        return Ok(()); // a forgotten customer has no number to send to
    }
    let short = order_id.get(..8).unwrap_or(order_id);
    let text = match kind {
        "created" => format!("Hi {name}, we received your order {short}."),
        "ready" => format!("Hi {name}, your order {short} is ready at the depot."),
        "canceled" => format!("Hi {name}, your order {short} was canceled."),
        _ => format!("Hi {name}, thank you! Your order {short} is complete."),
    };
    let sms = Sms { customer_id: customer_id.clone(), order_id: order_id.clone(), kind, to, text };
    gateway.send(tx, &sms).await.map_err(transient)?;
    let sent = api::NotificationSent { customer_id: sms.customer_id, order_id: sms.order_id, kind: kind.to_owned() };
    let message = Message::encode(api::EVENT_TOPIC, &sent)?.with_key(customer_id.as_str()).caused_by(&cause);
    tx.enqueue(vec![message]).await?;
    Ok(())
}

/// A notification as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    pub customer_id: String,
    pub order_id: String,
    /// created, ready, canceled or completed.
    pub kind: String,
    pub sms_number: String,
    pub text: String,
    /// RFC 3339.
    pub sent_at: String,
}

impl FromRow for NotificationView {
    fn from_row(row: &Row) -> Result<Self, SqlError> {
        Ok(Self {
            customer_id: row.get("customer_id")?,
            order_id: row.get("order_id")?,
            kind: row.get("kind")?,
            sms_number: row.get("sms_number")?,
            text: row.get("text")?,
            sent_at: row.get("sent_at")?,
        })
    }
}

/// The notifications sent to a customer, oldest first.
pub async fn sent_to(db: &AnyDatabase, customer_id: &str) -> AppResult<Vec<NotificationView>> {
    Ok(query(
        "SELECT customer_id, order_id, kind, sms_number, text, sent_at FROM notifications_sent
         WHERE customer_id = ? ORDER BY seq LIMIT 500",
    )
    .bind(customer_id)
    .fetch_all(db)
    .await?)
}
