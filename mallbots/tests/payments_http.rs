//! payments: authorizing at the kiosk, confirming for the saga, and the invoice that closes
//! the order's life (readied → invoice → paid → order completed).

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use herald::command::{Outcome, REPLY_REASON, expect_reply};
use herald::{Message, Publisher, StartFrom, SubscribeOptions, Subscriber};
use mallbots::modules::ordering::api::{ApproveOrder, COMMAND_TOPIC as ORDERING_COMMANDS};
use mallbots::modules::payments::api::{COMMAND_TOPIC, ConfirmPayment};
use serde_json::json;
use support::{eventually, spawn_app, spawn_running_app};

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

#[tokio::test]
async fn a_readied_order_is_invoiced_and_paying_the_invoice_completes_it() {
    let app = spawn_running_app().await;
    let t = &app.t;
    let store = t.post("/api/stores", true, json!({ "name": "Books", "location": "L1" })).await.id();
    let product =
        t.post(&format!("/api/stores/{store}/products"), true, json!({ "name": "Treasury", "price": 9.99 })).await.id();
    let customer = t.post("/api/customers", false, json!({ "name": "Ada", "smsNumber": "555" })).await.id();
    let payment = t.post("/api/payments", false, json!({ "customerId": customer, "amount": 19.98 })).await.id();
    let order = t.post("/api/baskets", false, json!({ "customerId": customer })).await.id();
    let add = json!({ "productId": product, "quantity": 2 });
    eventually("the product reaches the baskets' catalog", || async {
        t.put(&format!("/api/baskets/{order}/addItem"), false, Some(add.clone())).await.status == StatusCode::NO_CONTENT
    })
    .await;
    let checkout = t.put(&format!("/api/baskets/{order}/checkout"), false, Some(json!({ "paymentId": payment }))).await;
    assert_eq!(checkout.status, StatusCode::NO_CONTENT);
    eventually("the order is pending", || async {
        t.get(&format!("/api/ordering/{order}")).await.body["status"] == "pending"
    })
    .await;

    // Until the saga and depot exist: approve as the saga would, ready as depot's completion would.
    let approve = Message::encode(ORDERING_COMMANDS, &ApproveOrder { id: order.clone(), shopping_id: "sl-1".into() })
        .expect("encode");
    app.broker.publish(&[approve]).await.expect("publish");
    eventually("the order is approved", || async {
        t.get(&format!("/api/ordering/{order}")).await.body["status"] == "approved"
    })
    .await;
    let mut tx = app.store.begin().await.expect("begin");
    mallbots::modules::ordering::application::ready(tx.as_mut(), &order, None).await.expect("ready");
    tx.commit().await.expect("commit");

    let find = format!("/api/payments/invoices?orderId={order}");
    eventually("the invoice exists", || async {
        t.request(axum::http::Method::GET, &find, true, None, &[]).await.status == StatusCode::OK
    })
    .await;
    let invoice = t.request(axum::http::Method::GET, &find, true, None, &[]).await;
    assert_eq!(invoice.body, json!({ "id": order, "orderId": order, "amount": 19.98, "status": "pending" }));
    assert_eq!(
        t.put(&format!("/api/payments/invoices/{order}/pay"), false, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(t.put(&format!("/api/payments/invoices/{order}/pay"), true, None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.put(&format!("/api/payments/invoices/{order}/pay"), true, None).await.status, StatusCode::CONFLICT);
    eventually("the order is completed", || async {
        t.get(&format!("/api/ordering/{order}")).await.body["status"] == "completed"
    })
    .await;
    assert_eq!(t.get(&format!("/api/ordering/{order}")).await.body["invoiceId"], order.as_str());
    app.stop().await;
}
