//! **notifications**: an SMS to the customer when their order is created, ready, canceled or
//! completed.
//!
//! Keeps a copy of each customer's name and SMS number (from the customer events), and sends
//! through the [`SmsGateway`] port. The default adapter, [`RecordingGateway`], records every
//! message in `notifications_sent` (queryable through `GET /api/notifications?customerId=`)
//! instead of calling a real SMS service (**fix**: stubs in the Go version).

pub mod api;
pub mod application;
pub mod http;

use herald::SubscribeOptions;
use herald::router::{HandlerContext, Route};

use crate::modules::customers::api as customers;
use crate::modules::ordering::api as ordering;

pub use application::{RecordingGateway, SmsGateway};

/// The message routes of notifications.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(SubscribeOptions::new(customers::EVENT_TOPIC, "notifications-customers"))
            .on(application::on_customer_event),
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "notifications-orders")).on_with(
            RecordingGateway,
            async |cx: &mut HandlerContext, event: ordering::OrderIntegrationEvent, gateway: &RecordingGateway| {
                application::on_order_event(cx, event, gateway).await
            },
        ),
    ]
}
