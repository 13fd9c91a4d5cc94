//! Operations endpoints over a running app: `/metrics` (Herald's metrics, HTTP request
//! metrics, business gauges) and the analytics rebuild; the whole REST API against its
//! OpenAPI document (`fuzz`); and the AsyncAPI document of the messages (`asyncapi`).

mod support;

// The REST API against its OpenAPI document (in this binary: a test binary more is link time).
#[path = "ops_http/fuzz.rs"]
mod fuzz;
// The AsyncAPI document of the messages (in this binary for the same reason).
#[path = "ops_http/asyncapi.rs"]
mod asyncapi;

use axum::http::{Method, StatusCode};
use herald_sql::any::{Conn, query};
use serde_json::json;
use support::{
    Backend, RunningApp, TestApp, admin_get, catalog, complete, eventually, order, register, spawn_running_app,
    spawn_running_app_on, status_becomes,
};

/// The value of the sample of `name` whose labels include every one of `labels`, from
/// Prometheus text. Several matches (other label values) are summed.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let pairs: Vec<(&str, &str)> = label_text
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        if labels.iter().all(|l| pairs.contains(l)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().expect("a number");
        }
    }
    found
}

async fn metrics_text(t: &TestApp) -> String {
    let reply = t.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"].to_str().expect("text").starts_with("text/plain"));
    reply.body.as_str().expect("text").to_owned()
}

/// SQLite, then PostgreSQL when its server runs: one after the other, because the business
/// gauges are process-wide and set from the scraping app's database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_herald_handlers_http_routes_and_business_gauges() {
    // On SQLite with its own SQL broker, messages go straight into the broker's table in the
    // unit of work (no relay); on PostgreSQL the outbox relay publishes them.
    metrics_scenario(spawn_running_app().await, false).await;
    if let Some(app) = spawn_running_app_on(Backend::Postgres).await {
        metrics_scenario(app, true).await;
    }
}

async fn metrics_scenario(app: RunningApp, relayed: bool) {
    let t = &app.t;
    let product = catalog(t).await;
    let customer = register(t, "Ada").await;
    let basket = order(t, &customer, &product, json!(19.98)).await;
    complete(t, &basket).await;
    assert_eq!(t.get("/no/such/route").await.status, StatusCode::NOT_FOUND);
    eventually("analytics sees the completed order", || async {
        admin_get(t, "/api/analytics/summary").await["ordersByStatus"]["completed"] == 1
    })
    .await;
    let sent = format!("/api/notifications?customerId={customer}");
    eventually("three SMS were sent", || async { admin_get(t, &sent).await.as_array().map(Vec::len) == Some(3) }).await;

    let text = metrics_text(t).await;
    // Herald: ordering handled the checkout, through its route on the baskets' topic.
    let handled = sample(
        &text,
        "herald_messages_handled_total",
        &[("topic", "baskets.events.Basket"), ("handler", "ordering-baskets")],
    );
    assert!(handled.is_some_and(|n| n >= 1.0), "handled: {handled:?}\n{text}");
    let timed = sample(&text, "herald_handler_duration_seconds_count", &[("handler", "ordering-baskets")]);
    assert!(timed.is_some_and(|n| n >= 1.0), "handler durations: {timed:?}\n{text}");
    let published = sample(&text, "herald_messages_published_total", &[("topic", "ordering.events.Order")]);
    assert!(published.is_some_and(|n| n >= 4.0), "created, approved, readied, completed: {published:?}\n{text}");
    if relayed {
        assert!(sample(&text, "herald_outbox_relayed_total", &[]).is_some_and(|n| n >= 1.0), "{text}");
    }
    assert_eq!(sample(&text, "mallbots_outbox_pending", &[]), Some(0.0), "nothing left unpublished\n{text}");
    assert!(
        sample(&text, "herald_projection_lag", &[("projection", mallbots::modules::analytics::PROJECTION)]).is_some(),
        "{text}"
    );
    // The consumer lag of ordering's group on the baskets' topic, sampled by its subscription;
    // and the admin module's archive: no dead letter pending for that group.
    let ordering = [("topic", "baskets.events.Basket"), ("group", "ordering-baskets")];
    let lag = sample(&text, "herald_consumer_lag", &ordering);
    assert!(lag.is_some(), "consumer lag: {lag:?}\n{text}");
    assert_eq!(sample(&text, "herald_dead_letters_pending", &ordering), Some(0.0), "{text}");

    // HTTP: counted per route template (not per basket id) and status.
    let created = sample(
        &text,
        "mallbots_http_requests_total",
        &[("method", "POST"), ("route", "/api/baskets"), ("status", "201")],
    );
    assert!(created.is_some_and(|n| n >= 1.0), "basket creations: {created:?}\n{text}");
    let checkouts = sample(
        &text,
        "mallbots_http_requests_total",
        &[("method", "PUT"), ("route", "/api/baskets/{id}/checkout"), ("status", "204")],
    );
    assert!(checkouts.is_some_and(|n| n >= 1.0), "checkouts: {checkouts:?}\n{text}");
    let unmatched = sample(&text, "mallbots_http_requests_total", &[("route", "unmatched"), ("status", "404")]);
    assert!(unmatched.is_some_and(|n| n >= 1.0), "{text}");
    assert!(!text.contains(&basket), "no raw path (basket id) in any label\n{text}");
    let durations =
        sample(&text, "mallbots_http_request_duration_seconds_count", &[("method", "POST"), ("route", "/api/baskets")]);
    assert!(durations.is_some_and(|n| n >= 1.0), "{text}");
    assert!(text.contains("mallbots_http_request_duration_seconds_bucket{"), "a histogram, not a summary\n{text}");

    // Business gauges, read from this app's database at the scrape.
    assert_eq!(sample(&text, "mallbots_orders", &[("status", "completed")]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "mallbots_orders", &[("status", "canceled")]), Some(0.0), "{text}");
    assert_eq!(sample(&text, "mallbots_sms_sent_total", &[]), Some(3.0), "created, ready, completed\n{text}");
    assert!(sample(&text, "mallbots_outbox_pending", &[]).is_some(), "{text}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_rebuild_replays_the_log_while_the_app_runs() {
    rebuild_scenario(spawn_running_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_rebuild_on_postgres() {
    if let Some(app) = spawn_running_app_on(Backend::Postgres).await {
        rebuild_scenario(app).await;
    }
}

async fn rebuild_scenario(app: RunningApp) {
    let t = &app.t;
    let product = catalog(t).await;
    let ada = register(t, "Ada").await;
    let first = order(t, &ada, &product, json!(19.98)).await;
    complete(t, &first).await;
    let second = order(t, &ada, &product, json!(1)).await;
    status_becomes(t, &second, "rejected").await;
    eventually("analytics sees both orders", || async {
        let summary = admin_get(t, "/api/analytics/summary").await;
        summary["ordersByStatus"]["completed"] == 1
            && summary["ordersByStatus"]["rejected"] == 1
            && summary["sagaOutcomes"] == json!({ "approved": 1, "rejected": 1 })
    })
    .await;
    let before = admin_get(t, "/api/analytics/summary").await;
    assert_eq!(before["revenue"], 19.98);
    // The completed order's revenue, in the minute it completed (by the event's time).
    let minutes = before["revenueByMinute"].as_array().expect("revenue by minute");
    assert_eq!(minutes.len(), 1, "{before}");
    assert_eq!((&minutes[0]["revenue"], &minutes[0]["orders"]), (&json!(19.98), &json!(1)), "{before}");
    let minute = minutes[0]["minute"].as_str().expect("a minute");
    let start = chrono::DateTime::parse_from_rfc3339(minute).expect("RFC 3339");
    assert_eq!(start.timestamp() % 60, 0, "a minute's start: {minute}");
    let age = chrono::Utc::now().signed_duration_since(start);
    assert!(age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::minutes(5), "{minute}");

    let doc = t.get("/openapi.json").await.body;
    let documented = &doc["paths"]["/api/analytics/rebuild"]["post"];
    assert_eq!(documented["security"][0]["admin"], json!([]), "{documented}");
    assert!(documented["responses"]["409"].is_object(), "{documented}");
    assert!(doc["paths"]["/metrics"]["get"].is_object());

    let rebuild = || t.request(Method::POST, "/api/analytics/rebuild", true, None, &[]);
    let anonymous = t.request(Method::POST, "/api/analytics/rebuild", false, None, &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Break the read model behind the projection's back.
    let mut tx = app.store.begin().await.expect("tx");
    query("UPDATE analytics_orders SET status = 'lost'")
        .execute(Conn::of(&mut *tx).expect("SQL"))
        .await
        .expect("update");
    for table in ["analytics_products", "analytics_completions", "analytics_saga_outcomes"] {
        query(format!("DELETE FROM {table}")).execute(Conn::of(&mut *tx).expect("SQL")).await.expect("delete");
    }
    tx.commit().await.expect("commit");
    let broken = admin_get(t, "/api/analytics/summary").await;
    assert_ne!(broken, before);

    // Two at once: one rebuilds; the other is refused if it arrives while the first runs (a
    // rebuild of this small log can also finish first: then both run, one after the other).
    // The refusal itself is tested deterministically in `analytics::control`.
    let (a, b) = tokio::join!(rebuild(), rebuild());
    let (done, other) = if a.status == StatusCode::OK { (a, b) } else { (b, a) };
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    if other.status == StatusCode::CONFLICT {
        assert_eq!(other.message(), "an analytics rebuild is already running");
    } else {
        assert_eq!(other.status, StatusCode::OK, "{other:?}");
    }
    assert_eq!(done.body["completed"], true, "{done:?}");
    assert!(done.body["events"].as_u64().is_some_and(|n| n > 0), "{done:?}");
    assert!(done.body["elapsedMs"].is_u64(), "{done:?}");
    assert_eq!(admin_get(t, "/api/analytics/summary").await, before);

    // A rebuild once the first is over is fine, and the live run follows the log again.
    assert_eq!(rebuild().await.status, StatusCode::OK);
    let third = order(t, &ada, &product, json!(1)).await;
    status_becomes(t, &third, "rejected").await;
    eventually("the restarted projection sees a new order", || async {
        let summary = admin_get(t, "/api/analytics/summary").await;
        summary["ordersByStatus"]["rejected"] == 2 && summary["sagaOutcomes"] == json!({ "approved": 1, "rejected": 2 })
    })
    .await;
    app.stop().await;
}
