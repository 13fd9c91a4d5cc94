//! payments: authorizing at the kiosk, confirming for the saga (the invoice's part of the
//! order's life is in `order_life.rs`).

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use herald::command::{Outcome, REPLY_REASON, expect_reply};
use herald::{Message, StartFrom, SubscribeOptions};
use mallbots::modules::payments::api::{COMMAND_TOPIC, ConfirmPayment};
use serde_json::json;
use support::{spawn_app, spawn_running_app};

#[tokio::test]
async fn a_payment_is_authorized_with_a_valid_amount() {
    let t = spawn_app().await;
    let id = t.post("/api/payments", false, json!({ "customerId": "c-1", "amount": 19.98 })).await.id();
    assert!(!id.is_empty());
    for body in [
        json!({ "customerId": "c-1", "amount": 0 }),
        json!({ "customerId": "c-1", "amount": -1 }),
        json!({ "customerId": "c-1", "amount": 1.999 }),
        json!({ "customerId": "c-1", "amount": "NaN" }),
        json!({ "customerId": "", "amount": 1 }),
        json!({ "amount": 1 }),
    ] {
        let reply = t.post("/api/payments", false, body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body} gave {reply:?}");
    }
    assert_eq!(t.get("/api/payments/invoices?orderId=x").await.status, StatusCode::UNAUTHORIZED);
    let reply = t.request(axum::http::Method::GET, "/api/payments/invoices", true, None, &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = t.request(axum::http::Method::GET, "/api/payments/invoices?orderId=x", true, None, &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(t.put("/api/payments/invoices/x/pay", true, None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn confirm_payment_succeeds_only_for_a_known_payment_of_the_exact_amount() {
    let app = spawn_running_app().await;
    let payment = app.t.post("/api/payments", false, json!({ "customerId": "c-1", "amount": "19.98" })).await.id();
    let mut replies = app
        .broker
        .subscribe(SubscribeOptions::new("test.replies", "test").start(StartFrom::Beginning))
        .await
        .expect("subscribe");
    for (id, amount_cents) in [(payment.as_str(), 1998), (payment.as_str(), 1999), ("nope", 1998)] {
        let command = Message::encode(COMMAND_TOPIC, &ConfirmPayment { id: id.into(), amount_cents }).expect("encode");
        app.broker.publish(&[expect_reply(command, "test.replies")]).await.expect("publish");
        let reply =
            tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("in time").expect("a reply");
        let outcome = (Outcome::of(&reply.message), reply.message.header(REPLY_REASON).map(str::to_owned));
        reply.ack().await.expect("ack");
        match (id, amount_cents) {
            ("nope", _) => assert_eq!(outcome, (Some(Outcome::Failure), Some("unknown payment".into()))),
            (_, 1998) => assert_eq!(outcome, (Some(Outcome::Success), None)),
            _ => assert_eq!(outcome.0, Some(Outcome::Failure)),
        }
    }
    app.stop().await;
}
