//! Dead letters over the admin API: a message a consumer cannot handle is archived with its
//! reason and group, listed, replayed to that group only (it fails again here, so a new dead
//! letter appears), discarded; bad ids are 400, unknown ones 404, resolved ones 409.

mod support;

use axum::http::{Method, StatusCode};
use herald::Message;
use mallbots::modules::stores::api as stores;
use serde_json::Value;
use support::{TestApp, eventually, spawn_running_app};

async fn pending(t: &TestApp) -> Vec<Value> {
    let reply = t.request(Method::GET, "/api/admin/dead-letters", true, None, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_archived_listed_replayed_and_discarded() {
    let app = spawn_running_app().await;
    let t = &app.t;
    // A product event whose payload is not the event: baskets' catalog copy cannot decode it.
    let poison = Message::new(stores::PRODUCT_TOPIC, "storesapi.ProductAdded.v1", b"not json".to_vec()).with_key("p-1");
    app.broker.publish(std::slice::from_ref(&poison)).await.expect("publish");

    eventually("the poison message is archived", || async { pending(t).await.len() == 1 }).await;
    let letter = pending(t).await.remove(0);
    assert_eq!(letter["group"], "baskets-products");
    assert_eq!(letter["status"], "pending");
    assert_eq!(letter["message"]["id"], poison.id.to_string());
    assert_eq!(letter["message"]["topic"], stores::PRODUCT_TOPIC);
    assert_eq!(letter["message"]["payload"], "not json");
    assert!(!letter["reason"].as_str().unwrap_or_default().is_empty(), "{letter}");
    let id = letter["id"].as_str().expect("id").to_owned();
    let one = t.request(Method::GET, &format!("/api/admin/dead-letters/{id}"), true, None, &[]).await;
    assert_eq!(one.body["id"], id.as_str());

    // Replayed to baskets-products only; still poison, so it is dead-lettered again.
    let replay = t.request(Method::POST, &format!("/api/admin/dead-letters/{id}/replay"), true, None, &[]).await;
    assert_eq!(replay.status, StatusCode::OK, "{replay:?}");
    let again = t.request(Method::POST, &format!("/api/admin/dead-letters/{id}/replay"), true, None, &[]).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "a dead letter is replayed once");
    eventually("the replay failed again and was archived anew", || async {
        pending(t).await.first().is_some_and(|l| l["id"] != id.as_str())
    })
    .await;
    let replayed = t.request(Method::GET, "/api/admin/dead-letters?status=replayed", true, None, &[]).await;
    assert_eq!(replayed.body[0]["id"], id.as_str());
    assert_eq!(replayed.body[0]["replayId"], replay.body["replayId"]);
    let second = pending(t).await.remove(0);
    assert_eq!(second["group"], "baskets-products", "only the failed group saw the replay");
    let all = t.request(Method::GET, "/api/admin/dead-letters?status=all", true, None, &[]).await;
    assert_eq!(all.body.as_array().map(Vec::len), Some(2), "no other group dead-lettered it");

    let second_id = second["id"].as_str().expect("id");
    let discard =
        t.request(Method::POST, &format!("/api/admin/dead-letters/{second_id}/discard"), true, None, &[]).await;
    assert_eq!((discard.status, discard.body["status"].as_str()), (StatusCode::OK, Some("discarded")));
    assert!(pending(t).await.is_empty());

    // Bad input.
    let unknown = "01890a5d-ac96-774b-bcce-b302099a8057";
    let cases = [
        (Method::GET, format!("/api/admin/dead-letters/{unknown}"), true, StatusCode::NOT_FOUND),
        (Method::POST, format!("/api/admin/dead-letters/{unknown}/replay"), true, StatusCode::NOT_FOUND),
        (Method::GET, "/api/admin/dead-letters/nope".to_owned(), true, StatusCode::BAD_REQUEST),
        (Method::GET, "/api/admin/dead-letters?status=lost".to_owned(), true, StatusCode::BAD_REQUEST),
        (Method::GET, "/api/admin/dead-letters?limit=0".to_owned(), true, StatusCode::BAD_REQUEST),
        (Method::GET, "/api/admin/dead-letters?colour=red".to_owned(), true, StatusCode::BAD_REQUEST),
        (Method::POST, format!("/api/admin/dead-letters/{second_id}/discard"), true, StatusCode::CONFLICT),
        (Method::GET, "/api/admin/dead-letters".to_owned(), false, StatusCode::UNAUTHORIZED),
    ];
    for (method, uri, admin, expected) in cases {
        let reply = t.request(method.clone(), &uri, admin, None, &[]).await;
        assert_eq!(reply.status, expected, "{method} {uri}: {reply:?}");
    }
    app.stop().await;
}

/// The live feed (`/api/admin/live`, WebSocket): refused without the admin token; with it, a
/// welcome, then every integration event as it happens, in order; a client that reconnects
/// with the last `seq` it saw gets what came after, and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_pushes_events_as_they_happen_and_resumes_after_a_reconnection() {
    use support::live::{connect, next, until};
    let app = spawn_running_app().await;
    let t = &app.t;
    let base = t.base_url().expect("a real listener");

    let mut refused = support::live::hello(&base, "wrong", None).await;
    let error = next(&mut refused).await.expect("a reason");
    assert_eq!((error["type"].as_str(), next(&mut refused).await), (Some("error"), None), "{error}");

    let mut socket = connect(&base, support::TOKEN, None).await;
    let product = support::catalog(t).await;
    let customer = support::register(t, "Ada").await;
    let order = support::order(t, &customer, &product, serde_json::json!(19.98)).await;
    let first = until(&mut socket, "ordersapi.OrderCreated.v1", &order).await;
    let created = first.last().expect("the order's creation");
    assert_eq!(created["topic"], "ordering.events.Order");
    assert_eq!(created["data"]["customer_id"].as_str().or(created["data"]["customerId"].as_str()), Some(&*customer));
    assert!(first.iter().any(|e| e["name"] == "customersapi.CustomerRegistered.v1" && e["key"] == customer.as_str()));
    let seqs: Vec<u64> = first.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let approved = until(&mut socket, "ordersapi.OrderApproved.v1", &order).await;
    drop(socket);

    // Resuming after the creation: the approval again, and nothing from before.
    let resume_after = created["seq"].as_u64().expect("seq");
    let mut again = connect(&base, support::TOKEN, Some(resume_after)).await;
    let resumed = until(&mut again, "ordersapi.OrderApproved.v1", &order).await;
    assert_eq!(resumed.first().and_then(|e| e["seq"].as_u64()), Some(resume_after + 1), "{resumed:?}");
    assert_eq!(resumed.len(), approved.len(), "the same events: {resumed:?} / {approved:?}");
    app.stop().await;
}
