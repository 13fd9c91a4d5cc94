//! ordering: a checkout becomes a pending order; the saga's commands approve or reject it;
//! the kiosk reads and cancels it.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use herald::command::{Outcome, REPLY_REASON, expect_reply};
use herald::{Message, Publisher, StartFrom, SubscribeOptions, Subscriber};
use mallbots::modules::ordering::api::{ApproveOrder, COMMAND_TOPIC, RejectOrder};
use serde_json::json;
use support::{RunningApp, eventually, spawn_running_app};

/// A checked-out basket of 2 × 9.99; returns its id (= the order id).
async fn checked_out_basket(app: &RunningApp) -> String {
    let t = &app.t;
    let store = t.post("/api/stores", true, json!({ "name": "Books", "location": "L1" })).await.id();
    let product =
        t.post(&format!("/api/stores/{store}/products"), true, json!({ "name": "Treasury", "price": 9.99 })).await.id();
    let basket = t.post("/api/baskets", false, json!({ "customerId": "c-1" })).await.id();
    let add = json!({ "productId": product, "quantity": 2 });
    eventually("the product reaches the baskets' catalog", || async {
        t.put(&format!("/api/baskets/{basket}/addItem"), false, Some(add.clone())).await.status
            == StatusCode::NO_CONTENT
    })
    .await;
    let checkout =
        t.put(&format!("/api/baskets/{basket}/checkout"), false, Some(json!({ "paymentId": "pay-1" }))).await;
    assert_eq!(checkout.status, StatusCode::NO_CONTENT);
    basket
}

#[tokio::test]
async fn a_checkout_creates_a_pending_order_that_the_saga_approves_and_the_kiosk_cancels() {
    let app = spawn_running_app().await;
    let t = &app.t;
    let order = checked_out_basket(&app).await;
    eventually("the order exists", || async {
        t.get(&format!("/api/ordering/{order}")).await.status == StatusCode::OK
    })
    .await;
    let view = t.get(&format!("/api/ordering/{order}")).await;
    assert_eq!(view.body["status"], "pending");
    assert_eq!(view.body["customerId"], "c-1");
    assert_eq!(view.body["paymentId"], "pay-1");
    assert_eq!(view.body["total"], 19.98);
    assert_eq!(view.body["items"][0]["quantity"], 2);

    let mut replies = app
        .broker
        .subscribe(SubscribeOptions::new("test.replies", "test").start(StartFrom::Beginning))
        .await
        .expect("subscribe");
    let approve = Message::encode(COMMAND_TOPIC, &ApproveOrder { id: order.clone(), shopping_id: "sl-1".into() })
        .expect("encode");
    app.broker.publish(&[expect_reply(approve, "test.replies")]).await.expect("publish");
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("in time").expect("a reply");
    assert_eq!(Outcome::of(&reply.message), Some(Outcome::Success));
    reply.ack().await.expect("ack");
    let view = t.get(&format!("/api/ordering/{order}")).await;
    assert_eq!(view.body["status"], "approved");
    assert_eq!(view.body["shoppingId"], "sl-1");

    assert_eq!(t.delete(&format!("/api/ordering/{order}"), false).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/ordering/{order}")).await.body["status"], "canceled");
    assert_eq!(t.delete(&format!("/api/ordering/{order}"), false).await.status, StatusCode::CONFLICT);

    let reject = Message::encode(COMMAND_TOPIC, &RejectOrder { id: order.clone() }).expect("encode");
    app.broker.publish(&[expect_reply(reject, "test.replies")]).await.expect("publish");
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("in time").expect("a reply");
    assert_eq!(Outcome::of(&reply.message), Some(Outcome::Failure));
    assert_eq!(reply.message.header(REPLY_REASON), Some("the order is canceled; it cannot be rejected"));
    reply.ack().await.expect("ack");

    assert_eq!(t.get("/api/ordering/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.delete("/api/ordering/nope", false).await.status, StatusCode::NOT_FOUND);
    app.stop().await;
}
