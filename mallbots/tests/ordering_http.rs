//! ordering: a checkout becomes an order (order id = basket id) that the kiosk reads; the
//! saga's commands get replies.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use herald::command::{Outcome, REPLY_REASON, expect_reply};
use herald::{Message, StartFrom, SubscribeOptions};
use mallbots::modules::ordering::api::{ApproveOrder, COMMAND_TOPIC};
use serde_json::json;
use support::{eventually, spawn_running_app};

#[tokio::test]
async fn a_checkout_by_an_unknown_customer_becomes_an_order_that_the_saga_rejects() {
    let app = spawn_running_app().await;
    let t = &app.t;
    let store = t.post("/api/stores", true, json!({ "name": "Books", "location": "L1" })).await.id();
    let product =
        t.post(&format!("/api/stores/{store}/products"), true, json!({ "name": "Treasury", "price": 9.99 })).await.id();
    let order = t.post("/api/baskets", false, json!({ "customerId": "nobody" })).await.id();
    let add = json!({ "productId": product, "quantity": 2 });
    eventually("the product reaches the baskets' catalog", || async {
        t.put(&format!("/api/baskets/{order}/addItem"), false, Some(add.clone())).await.status == StatusCode::NO_CONTENT
    })
    .await;
    let checkout = t.put(&format!("/api/baskets/{order}/checkout"), false, Some(json!({ "paymentId": "pay-1" }))).await;
    assert_eq!(checkout.status, StatusCode::NO_CONTENT);

    eventually("the saga rejects the order", || async {
        t.get(&format!("/api/ordering/{order}")).await.body["status"] == "rejected"
    })
    .await;
    let view = t.get(&format!("/api/ordering/{order}")).await;
    assert_eq!(view.body["customerId"], "nobody");
    assert_eq!(view.body["paymentId"], "pay-1");
    assert_eq!(view.body["total"], 19.98);
    assert_eq!(view.body["items"][0]["quantity"], 2);
    assert_eq!(view.body["items"][0]["productName"], "Treasury");

    // A late command gets a failure reply with the reason.
    let mut replies = app
        .broker
        .subscribe(SubscribeOptions::new("test.replies", "test").start(StartFrom::Beginning))
        .await
        .expect("subscribe");
    let approve = Message::encode(COMMAND_TOPIC, &ApproveOrder { id: order.clone(), shopping_id: "sl-1".into() })
        .expect("encode");
    app.broker.publish(&[expect_reply(approve, "test.replies")]).await.expect("publish");
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("in time").expect("a reply");
    assert_eq!(Outcome::of(&reply.message), Some(Outcome::Failure));
    assert_eq!(reply.message.header(REPLY_REASON), Some("the order is rejected; it cannot be approved"));
    reply.ack().await.expect("ack");

    assert_eq!(t.delete(&format!("/api/ordering/{order}"), false).await.status, StatusCode::CONFLICT);
    assert_eq!(t.get("/api/ordering/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.delete("/api/ordering/nope", false).await.status, StatusCode::NOT_FOUND);
    app.stop().await;
}
