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

/// Readies an approved order by hand (assign and complete its shopping list) and waits for its
/// invoice.
async fn ready(t: &support::TestApp, order: &str) {
    support::status_becomes(t, order, "approved").await;
    let list = support::shopping_list(t, order).await;
    let id = list["id"].as_str().expect("shopping list id");
    let assign = t.put(&format!("/api/depot/shopping/{id}/assign"), true, Some(json!({ "botId": "bot-1" }))).await;
    assert_eq!(assign.status, StatusCode::NO_CONTENT);
    assert_eq!(t.put(&format!("/api/depot/shopping/{id}/complete"), true, None).await.status, StatusCode::NO_CONTENT);
    let find = format!("/api/payments/invoices?orderId={order}");
    support::eventually("the invoice exists", || async {
        t.request(axum::http::Method::GET, &find, true, None, &[]).await.status == StatusCode::OK
    })
    .await;
}

/// The invoices to pay: pending ones only, oldest (issued first) first, in the shape of one
/// invoice; `limit` 1 to 100; admin only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_invoices_are_the_pending_ones_oldest_first() {
    let app = spawn_running_app().await;
    let t = &app.t;
    let open = || support::admin_get(t, "/api/payments/open-invoices");
    assert_eq!(open().await, json!([]));
    let product = support::catalog(t).await;
    let customer = support::register(t, "Ada").await;
    let (first, second) = (
        support::order(t, &customer, &product, json!(19.98)).await,
        support::order(t, &customer, &product, json!(19.98)).await,
    );
    // The second order is readied (invoiced) first.
    ready(t, &second).await;
    ready(t, &first).await;
    let both = open().await;
    let one = support::admin_get(t, &format!("/api/payments/invoices?orderId={second}")).await;
    assert_eq!(both[0], one, "the same shape as one invoice");
    let orders: Vec<&str> = both.as_array().expect("a list").iter().filter_map(|i| i["orderId"].as_str()).collect();
    assert_eq!(orders, [second.as_str(), first.as_str()], "oldest invoice first");
    assert_eq!(support::admin_get(t, "/api/payments/open-invoices?limit=1").await, json!([one]));

    let paid = t.put(&format!("/api/payments/invoices/{}/pay", one["id"].as_str().expect("id")), true, None).await;
    assert_eq!(paid.status, StatusCode::NO_CONTENT);
    let left = open().await;
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!((left[0]["orderId"].as_str(), left[0]["status"].as_str()), (Some(first.as_str()), Some("pending")));

    for bad in ["0", "101", "-1", "many"] {
        let reply = t
            .request(axum::http::Method::GET, &format!("/api/payments/open-invoices?limit={bad}"), true, None, &[])
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "limit={bad}: {reply:?}");
    }
    assert_eq!(t.get("/api/payments/open-invoices").await.status, StatusCode::UNAUTHORIZED);
    let doc = t.get("/openapi.json").await.body;
    assert!(doc["paths"]["/api/payments/open-invoices"]["get"].is_object(), "documented");
    app.stop().await;
}
