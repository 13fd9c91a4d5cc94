//! **notifications**: an SMS to the customer when their order is created, ready, canceled or
//! completed.
//!
//! Keeps a copy of each customer's name and SMS number (from the customer events), and sends
//! through the [`SmsGateway`] port. The default adapter, [`RecordingGateway`], records every
//! message in `notifications_sent` (queryable through `GET /api/notifications?customerId=`)
//! instead of calling a real SMS service (**fix**: stubs in the Go version).

pub mod api;
mod application;
mod grpc;
mod http;

use std::sync::Arc;
use std::time::Duration;

use herald::SubscribeOptions;
use herald::asyncapi::AsyncApi;
use herald::router::{HandlerContext, Retry, Route};
use herald_sql::any::{Migration, query};

use crate::module::{Module, ModuleContext, Parts};
use crate::modules::customers::api as customers;
use crate::modules::ordering::api as ordering;

pub use application::{RecordingGateway, SmsGateway};

/// notifications in the list of modules.
pub const MODULE: Module = Module {
    name: "notifications",
    about: "SMS to customers when their order is created, ready, canceled or completed",
    http_prefixes: &["/api/notifications"],
    grpc_services: &["notificationspb.NotificationsService"],
    migrations: MIGRATIONS,
    routes,
    messages,
    start,
};

const MIGRATIONS: &[Migration] = &[Migration::per_dialect(
    1,
    "notifications_customers, notifications_sent (the recording SMS gateway)",
    "CREATE TABLE IF NOT EXISTS notifications_customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS notifications_sent (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, customer_id TEXT NOT NULL, order_id TEXT NOT NULL, kind TEXT NOT NULL,
        sms_number TEXT NOT NULL, text TEXT NOT NULL, sent_at TEXT NOT NULL);
     CREATE INDEX IF NOT EXISTS notifications_sent_by_customer ON notifications_sent (customer_id, seq)",
    "CREATE TABLE IF NOT EXISTS notifications_customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, sms_number TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS notifications_sent (
        seq BIGSERIAL PRIMARY KEY, customer_id TEXT NOT NULL, order_id TEXT NOT NULL, kind TEXT NOT NULL,
        sms_number TEXT NOT NULL, text TEXT NOT NULL, sent_at TEXT NOT NULL);
     CREATE INDEX IF NOT EXISTS notifications_sent_by_customer ON notifications_sent (customer_id, seq)",
)];

/// Counter: SMS recorded by notifications (read from its table at each scrape).
pub const SMS_SENT: &str = "mallbots_sms_sent_total";

fn start(cx: &ModuleContext) -> Parts {
    metrics::describe_counter!(SMS_SENT, "SMS recorded by notifications.");
    let db = cx.db.clone();
    Parts {
        gauges: Some(Arc::new(move || {
            let db = db.clone();
            Box::pin(async move {
                let (sms,): (i64,) = query("SELECT COUNT(*) FROM notifications_sent").fetch_one(&db).await?;
                metrics::counter!(SMS_SENT).absolute(u64::try_from(sms).unwrap_or(0));
                Ok(())
            })
        })),
        ..cx.apis(http::routes(), grpc::service)
    }
}

/// The message routes of notifications.
fn routes(cx: &ModuleContext) -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(customers::EVENT_TOPIC, "notifications-customers"))
            .on_with(cx.shredder.clone(), application::on_customer_event),
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "notifications-orders"))
            // An order can overtake its customer's registration (another topic): retry for
            // about a minute and a half before the message is dead-lettered.
            .retry(Retry::exponential(Duration::from_millis(200)).max_delay(Duration::from_secs(5)).attempts(25))
            .on_with(
                RecordingGateway::with_latency(cx.sms_latency),
                async |cx: &mut HandlerContext, event: ordering::OrderIntegrationEvent, gateway: &RecordingGateway| {
                    application::on_order_event(cx, event, gateway).await
                },
            ),
    ]
}

/// What notifications publishes and handles.
fn messages(doc: AsyncApi) -> AsyncApi {
    doc.sends::<api::NotificationSent>(api::EVENT_TOPIC)
        .receives::<customers::CustomerIntegrationEvent>(customers::EVENT_TOPIC, "notifications-customers")
        .receives::<ordering::OrderIntegrationEvent>(ordering::EVENT_TOPIC, "notifications-orders")
}
