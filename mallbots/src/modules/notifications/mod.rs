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

use herald::router::{Route, handler_fn};
use herald::{StartFrom, SubscribeOptions};

use crate::modules::customers::api as customers;
use crate::modules::ordering::api as ordering;

pub use application::{RecordingGateway, SmsGateway};

/// The message routes of notifications.
pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            SubscribeOptions::new(customers::EVENT_TOPIC, "notifications-customers").start(StartFrom::Beginning),
        )
        .on::<customers::CustomerIntegrationEvent>(handler_fn(
            |cx, event: customers::CustomerIntegrationEvent| Box::pin(application::on_customer_event(cx, event)),
        )),
        Route::new(SubscribeOptions::new(ordering::EVENT_TOPIC, "notifications-orders").start(StartFrom::Beginning))
            .on::<ordering::OrderIntegrationEvent>(handler_fn(|cx, event: ordering::OrderIntegrationEvent| {
            Box::pin(application::on_order_event(cx, event, &RecordingGateway))
        })),
    ]
}
