//! stores over HTTP: the admin creates stores and products, the kiosk reads them.

mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;
use support::spawn_app;

#[tokio::test]
async fn an_admin_creates_a_store_and_the_kiosk_reads_it() {
    let t = spawn_app().await;
    let id = t.post("/api/stores", true, json!({ "name": "Waldorf Books", "location": "Level 1" })).await.id();

    let store = t.get(&format!("/api/stores/{id}")).await;
    assert_eq!(store.status, StatusCode::OK);
    assert_eq!(store.body, json!({ "id": id, "name": "Waldorf Books", "location": "Level 1", "participating": false }));
    assert_eq!(t.get("/api/stores").await.body.as_array().map(Vec::len), Some(1));
    assert_eq!(t.get("/api/stores/participating").await.body, json!([]));

    assert_eq!(
        t.put(&format!("/api/stores/{id}/participating"), true, Some(json!({}))).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.get("/api/stores/participating").await.body.as_array().map(Vec::len), Some(1));
    let twice = t.put(&format!("/api/stores/{id}/participating"), true, None).await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert!(twice.message().contains("already participating"));
    assert_eq!(t.delete(&format!("/api/stores/{id}/participating"), true).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.delete(&format!("/api/stores/{id}/participating"), true).await.status, StatusCode::CONFLICT);

    let rebranded = t.put(&format!("/api/stores/{id}/rebrand"), true, Some(json!({ "name": "Statler Books" }))).await;
    assert_eq!(rebranded.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/stores/{id}")).await.body["name"], "Statler Books");
}

#[tokio::test]
async fn products_are_added_repriced_rebranded_and_removed() {
    let t = spawn_app().await;
    let store = t.post("/api/stores", true, json!({ "name": "Books", "location": "L1" })).await.id();
    let product = t
        .post(
            &format!("/api/stores/{store}/products"),
            true,
            json!({ "name": "Muppet Treasury", "description": "A book", "sku": "B-1", "price": 9.99 }),
        )
        .await
        .id();

    let read = t.get(&format!("/api/stores/products/{product}")).await;
    assert_eq!(
        read.body,
        json!({ "id": product, "storeId": store, "name": "Muppet Treasury", "description": "A book", "sku": "B-1", "price": 9.99 })
    );
    let catalog = t.get(&format!("/api/stores/{store}/products")).await;
    assert_eq!(catalog.body.as_array().map(Vec::len), Some(1));

    let up =
        t.put(&format!("/api/stores/products/{product}/increasePrice"), true, Some(json!({ "price": 10.5 }))).await;
    assert_eq!(up.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/stores/products/{product}")).await.body["price"], 10.5);
    let not_up =
        t.put(&format!("/api/stores/products/{product}/increasePrice"), true, Some(json!({ "price": 10 }))).await;
    assert_eq!(not_up.status, StatusCode::CONFLICT, "{not_up:?}");
    let down =
        t.put(&format!("/api/stores/products/{product}/decreasePrice"), true, Some(json!({ "price": "8.00" }))).await;
    assert_eq!(down.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/stores/products/{product}")).await.body["price"], 8.0);
    let not_down =
        t.put(&format!("/api/stores/products/{product}/decreasePrice"), true, Some(json!({ "price": 9 }))).await;
    assert_eq!(not_down.status, StatusCode::CONFLICT);

    let rebrand = t
        .put(
            &format!("/api/stores/products/{product}/rebrand"),
            true,
            Some(json!({ "name": "Treasury", "description": "Old" })),
        )
        .await;
    assert_eq!(rebrand.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/stores/products/{product}")).await.body["name"], "Treasury");

    assert_eq!(t.delete(&format!("/api/stores/products/{product}"), true).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/stores/products/{product}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.delete(&format!("/api/stores/products/{product}"), true).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&format!("/api/stores/{store}/products")).await.body, json!([]));
}

#[tokio::test]
async fn bad_input_is_a_400_with_a_message() {
    let t = spawn_app().await;
    let blank = t.post("/api/stores", true, json!({ "name": " ", "location": "L1" })).await;
    assert_eq!(blank.status, StatusCode::BAD_REQUEST);
    assert!(blank.message().contains("name must not be blank"));
    let missing = t.post("/api/stores", true, json!({ "name": "Books" })).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.message().contains("location"), "{missing:?}");
    let not_json = t.request(Method::POST, "/api/stores", true, None, &[("content-type", "application/json")]).await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    let wrong_type = t.post("/api/stores", true, json!({ "name": 5, "location": "L1" })).await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);

    let store = t.post("/api/stores", true, json!({ "name": "Books", "location": "L1" })).await.id();
    let uri = format!("/api/stores/{store}/products");
    for price in [json!(-1), json!(9.999), json!("NaN"), json!("inf"), json!("1e400"), json!(null), json!("ten")] {
        let reply = t.post(&uri, true, json!({ "name": "Book", "price": price })).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "price {price} gave {reply:?}");
        assert!(!reply.message().is_empty());
    }
    let blank_product = t.post(&uri, true, json!({ "name": "", "price": 1 })).await;
    assert_eq!(blank_product.status, StatusCode::BAD_REQUEST);
    assert_eq!(t.get("/api/stores").await.body.as_array().map(Vec::len), Some(1), "nothing else was created");
    assert_eq!(t.get(&uri).await.body, json!([]));
}

#[tokio::test]
async fn unknown_ids_are_a_404() {
    let t = spawn_app().await;
    assert_eq!(t.get("/api/stores/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get("/api/stores/nope/products").await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get("/api/stores/products/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.put("/api/stores/nope/participating", true, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        t.put("/api/stores/nope/rebrand", true, Some(json!({ "name": "X" }))).await.status,
        StatusCode::NOT_FOUND
    );
    let product = t.post("/api/stores/nope/products", true, json!({ "name": "Book", "price": 1 })).await;
    assert_eq!(product.status, StatusCode::NOT_FOUND);
    assert_eq!(product.message(), "store not found");
    let price = t.put("/api/stores/products/nope/increasePrice", true, Some(json!({ "price": 2 }))).await;
    assert_eq!(price.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get("/api/no/such/route").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn store_management_needs_the_admin_token() {
    let t = spawn_app().await;
    let anonymous = t.post("/api/stores", false, json!({ "name": "Books", "location": "L1" })).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    let wrong = t
        .request(
            Method::POST,
            "/api/stores",
            false,
            Some(json!({ "name": "Books", "location": "L1" })),
            &[("authorization", "Bearer wrong")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(t.get("/api/stores").await.body, json!([]), "nothing was created");

    let store = t.post("/api/stores", true, json!({ "name": "Books", "location": "L1" })).await.id();
    for (method, uri) in [
        (Method::PUT, format!("/api/stores/{store}/participating")),
        (Method::DELETE, format!("/api/stores/{store}/participating")),
        (Method::PUT, format!("/api/stores/{store}/rebrand")),
        (Method::POST, format!("/api/stores/{store}/products")),
        (Method::PUT, "/api/stores/products/x/rebrand".to_owned()),
        (Method::PUT, "/api/stores/products/x/increasePrice".to_owned()),
        (Method::PUT, "/api/stores/products/x/decreasePrice".to_owned()),
        (Method::DELETE, "/api/stores/products/x".to_owned()),
    ] {
        let reply = t.request(method.clone(), &uri, false, Some(json!({})), &[]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_result() {
    let t = spawn_app().await;
    let body = json!({ "name": "Books", "location": "L1" });
    let key = [("idempotency-key", "create-books-1")];
    let first = t.request(Method::POST, "/api/stores", true, Some(body.clone()), &key).await;
    let again = t.request(Method::POST, "/api/stores", true, Some(body.clone()), &key).await;
    assert_eq!(first.id(), again.id());
    assert_eq!(again.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(t.get("/api/stores").await.body.as_array().map(Vec::len), Some(1));

    let other_body =
        t.request(Method::POST, "/api/stores", true, Some(json!({ "name": "Toys", "location": "L2" })), &key).await;
    assert_eq!(other_body.status, StatusCode::CONFLICT);
    let other_key =
        t.request(Method::POST, "/api/stores", true, Some(body), &[("idempotency-key", "create-books-2")]).await;
    assert_ne!(other_key.id(), first.id());
    assert_eq!(t.get("/api/stores").await.body.as_array().map(Vec::len), Some(2));

    let store = first.id();
    let product = json!({ "name": "Book", "price": 1.25 });
    let uri = format!("/api/stores/{store}/products");
    let a = t.request(Method::POST, &uri, true, Some(product.clone()), &[("idempotency-key", "p")]).await;
    let b = t.request(Method::POST, &uri, true, Some(product), &[("idempotency-key", "p")]).await;
    assert_eq!(a.id(), b.id());
    assert_eq!(t.get(&uri).await.body.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn the_openapi_document_and_swagger_ui_are_served() {
    let t = spawn_app().await;
    let doc = t.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths = doc.body["paths"].as_object().expect("paths");
    for path in [
        "/api/stores",
        "/api/stores/{id}/products",
        "/api/stores/products/{id}/increasePrice",
        "/api/customers/{id}/change-sms",
    ] {
        assert!(paths.contains_key(path), "{path} missing from the OpenAPI document");
    }
    let ui = t.get("/docs/").await;
    assert_eq!(ui.status, StatusCode::OK, "{ui:?}");
    assert_eq!(t.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(t.get("/readyz").await.status, StatusCode::OK);
    let metrics = t.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.body.as_str().is_some_and(|m| m.contains("mallbots_outbox_pending 0")), "{metrics:?}");
}
