//! customers over HTTP.

mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;
use support::spawn_app;

#[tokio::test]
async fn a_customer_registers_changes_sms_and_is_disabled_and_enabled_by_an_admin() {
    let t = spawn_app().await;
    let id = t.post("/api/customers", false, json!({ "name": "Ada", "smsNumber": "+44 555 0100" })).await.id();
    let customer = t.get(&format!("/api/customers/{id}")).await;
    assert_eq!(customer.body, json!({ "id": id, "name": "Ada", "smsNumber": "+44 555 0100", "enabled": true }));

    let changed =
        t.put(&format!("/api/customers/{id}/change-sms"), false, Some(json!({ "smsNumber": "555-0199" }))).await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/customers/{id}")).await.body["smsNumber"], "555-0199");

    assert_eq!(t.put(&format!("/api/customers/{id}/disable"), false, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        t.put(&format!("/api/customers/{id}/disable"), true, Some(json!({}))).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.get(&format!("/api/customers/{id}")).await.body["enabled"], false);
    assert_eq!(t.put(&format!("/api/customers/{id}/disable"), true, None).await.status, StatusCode::CONFLICT);
    assert_eq!(t.put(&format!("/api/customers/{id}/enable"), false, None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(t.put(&format!("/api/customers/{id}/enable"), true, None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/customers/{id}")).await.body["enabled"], true);
}

#[tokio::test]
async fn customer_validation_and_unknown_ids() {
    let t = spawn_app().await;
    for body in [
        json!({ "name": "", "smsNumber": "555" }),
        json!({ "name": "Ada", "smsNumber": "" }),
        json!({ "name": "Ada", "smsNumber": "call me maybe" }),
        json!({ "name": "Ada" }),
        json!({ "name": "Ada", "sms_number": "555" }),
        json!([1, 2]),
    ] {
        let reply = t.post("/api/customers", false, body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body} gave {reply:?}");
        assert!(!reply.message().is_empty());
    }
    assert_eq!(t.get("/api/customers/nope").await.status, StatusCode::NOT_FOUND);
    let sms = t.put("/api/customers/nope/change-sms", false, Some(json!({ "smsNumber": "555" }))).await;
    assert_eq!(sms.status, StatusCode::NOT_FOUND);
    assert_eq!(t.put("/api/customers/nope/disable", true, None).await.status, StatusCode::NOT_FOUND);
    let id = t.post("/api/customers", false, json!({ "name": "Ada", "smsNumber": "555" })).await.id();
    let bad = t.put(&format!("/api/customers/{id}/change-sms"), false, Some(json!({ "smsNumber": " " }))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn registering_twice_with_one_idempotency_key_creates_one_customer() {
    let t = spawn_app().await;
    let body = json!({ "name": "Ada", "smsNumber": "555" });
    let key = [("Idempotency-Key", "kiosk-7-req-1")];
    let first = t.request(Method::POST, "/api/customers", false, Some(body.clone()), &key).await.id();
    let again = t.request(Method::POST, "/api/customers", false, Some(body), &key).await.id();
    assert_eq!(first, again);
    let blank_key = t
        .request(
            Method::POST,
            "/api/customers",
            false,
            Some(json!({ "name": "B", "smsNumber": "555" })),
            &[("Idempotency-Key", " ")],
        )
        .await;
    assert_eq!(blank_key.status, StatusCode::BAD_REQUEST);
}

/// Repeats of one creation racing on PostgreSQL (writers are not serialised there as on
/// SQLite): exactly one customer is created; every answer is that creation, its replay, or a
/// 409 asking to retry — never a 500 or a second customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_repeats_with_one_idempotency_key_create_once_on_postgres() {
    let Some(t) = support::spawn_app_on(support::Backend::Postgres).await else { return };
    let body = json!({ "name": "Ada", "smsNumber": "555 0100" });
    let post =
        || t.request(Method::POST, "/api/customers", false, Some(body.clone()), &[("idempotency-key", "race-1")]);
    let replies = futures::future::join_all((0..8).map(|_| post())).await;
    let mut ids = std::collections::BTreeSet::new();
    for reply in &replies {
        match reply.status {
            StatusCode::CREATED => {
                ids.insert(reply.id());
            }
            StatusCode::CONFLICT => assert!(reply.message().contains("retry"), "{reply:?}"),
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "one customer, whatever the interleaving: {replies:?}");
    let again = post().await;
    assert_eq!(
        (again.id(), again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap_or(""))),
        (ids.into_iter().next().unwrap_or_default(), Some("true"))
    );
}
