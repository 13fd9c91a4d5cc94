//! baskets over HTTP, with the app running so that its catalog copy follows the stores events.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use herald::{EventSet, StartFrom, SubscribeOptions};
use mallbots::modules::baskets::api::{BasketCheckedOut, BasketIntegrationEvent, BasketItem};
use serde_json::json;
use support::{eventually, spawn_running_app};

#[tokio::test]
async fn a_kiosk_fills_a_basket_from_the_local_catalog_and_checks_out() {
    let app = spawn_running_app().await;
    let t = &app.t;
    let store = t.post("/api/stores", true, json!({ "name": "Books", "location": "L1" })).await.id();
    let product = t
        .post(
            &format!("/api/stores/{store}/products"),
            true,
            json!({ "name": "Treasury", "sku": "B-1", "price": 9.99 }),
        )
        .await
        .id();
    let basket = t.post("/api/baskets", false, json!({ "customerId": "c-1" })).await.id();

    // The catalog copy follows the stores events within moments.
    let add = json!({ "productId": product, "quantity": 2 });
    eventually("the product reaches the baskets' catalog", || async {
        t.put(&format!("/api/baskets/{basket}/addItem"), false, Some(add.clone())).await.status
            == StatusCode::NO_CONTENT
    })
    .await;
    let more = t
        .put(&format!("/api/baskets/{basket}/addItem"), false, Some(json!({ "productId": product, "quantity": 1 })))
        .await;
    assert_eq!(more.status, StatusCode::NO_CONTENT);
    let less = t
        .put(&format!("/api/baskets/{basket}/removeItem"), false, Some(json!({ "productId": product, "quantity": 1 })))
        .await;
    assert_eq!(less.status, StatusCode::NO_CONTENT);

    let view = t.get(&format!("/api/baskets/{basket}")).await;
    assert_eq!(
        view.body,
        json!({
            "id": basket, "customerId": "c-1", "paymentId": null, "status": "open", "total": 19.98,
            "items": [{ "storeId": store, "productId": product, "storeName": "Books", "productName": "Treasury",
                        "price": 9.99, "quantity": 2 }]
        })
    );

    let no_payment = t.put(&format!("/api/baskets/{basket}/checkout"), false, Some(json!({ "paymentId": " " }))).await;
    assert_eq!(no_payment.status, StatusCode::BAD_REQUEST);
    let checkout =
        t.put(&format!("/api/baskets/{basket}/checkout"), false, Some(json!({ "paymentId": "pay-1" }))).await;
    assert_eq!(checkout.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/baskets/{basket}")).await.body["status"], "checked_out");
    let late = t.put(&format!("/api/baskets/{basket}/addItem"), false, Some(add.clone())).await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(t.delete(&format!("/api/baskets/{basket}"), false).await.status, StatusCode::CONFLICT);

    // BasketCheckedOut carries everything ordering needs.
    let mut events = app
        .broker
        .subscribe(
            SubscribeOptions::new(mallbots::modules::baskets::api::EVENT_TOPIC, "test").start(StartFrom::Beginning),
        )
        .await
        .expect("subscribe");
    let checked_out = loop {
        let d =
            tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("in time").expect("a message");
        let event = BasketIntegrationEvent::decode(&d.message.name, &d.message.payload).expect("decodes");
        d.ack().await.expect("ack");
        if let BasketIntegrationEvent::CheckedOut(e) = event {
            break e;
        }
    };
    assert_eq!(
        checked_out,
        BasketCheckedOut {
            id: basket.clone(),
            customer_id: "c-1".into(),
            payment_id: "pay-1".into(),
            items: vec![BasketItem {
                store_id: store.clone(),
                product_id: product.clone(),
                store_name: "Books".into(),
                product_name: "Treasury".into(),
                price_cents: 999,
                quantity: 2,
            }],
        }
    );

    // A removed product leaves the catalog copy.
    assert_eq!(t.delete(&format!("/api/stores/products/{product}"), true).await.status, StatusCode::NO_CONTENT);
    let other = t.post("/api/baskets", false, json!({ "customerId": "c-2" })).await.id();
    eventually("the removal reaches the baskets' catalog", || async {
        t.put(&format!("/api/baskets/{other}/addItem"), false, Some(add.clone())).await.status == StatusCode::NOT_FOUND
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn basket_validation_unknown_ids_and_cancel() {
    let app = spawn_running_app().await;
    let t = &app.t;
    assert_eq!(t.post("/api/baskets", false, json!({ "customerId": "" })).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(t.post("/api/baskets", false, json!({})).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(t.get("/api/baskets/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.delete("/api/baskets/nope", false).await.status, StatusCode::NOT_FOUND);
    let basket = t.post("/api/baskets", false, json!({ "customerId": "c-1" })).await.id();
    for body in [
        json!({ "productId": "p", "quantity": 0 }),
        json!({ "productId": "p", "quantity": -1 }),
        json!({ "productId": "p", "quantity": 1.5 }),
        json!({ "productId": "p" }),
    ] {
        let reply = t.put(&format!("/api/baskets/{basket}/addItem"), false, Some(body.clone())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body} gave {reply:?}");
    }
    let unknown =
        t.put(&format!("/api/baskets/{basket}/addItem"), false, Some(json!({ "productId": "p", "quantity": 1 }))).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let empty = t.put(&format!("/api/baskets/{basket}/checkout"), false, Some(json!({ "paymentId": "pay-1" }))).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert!(empty.message().contains("empty"));
    assert_eq!(t.delete(&format!("/api/baskets/{basket}"), false).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/baskets/{basket}")).await.body["status"], "canceled");
    app.stop().await;
}
