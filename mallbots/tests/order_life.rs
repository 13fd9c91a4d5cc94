//! The whole order life, end to end, through the REST API only (as a kiosk, the depot staff
//! and an admin would), with every module running: the happy path to `completed`, and the
//! rejection and cancel paths. Every scenario runs on each backend: SQLite with the SQL
//! broker, and PostgreSQL with the SQL broker, NATS JetStream, Redis Streams, RabbitMQ and Kafka
//! (skipped loudly without the server; a failure with `CI` set).

mod support;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use support::{
    Backend, RunningApp, Setup, admin_get, catalog, eventually, eventually_within, order, register, shopping_list,
    spawn_running_app_with, status_becomes,
};

async fn an_order_goes_from_checkout_to_completed(app: RunningApp) {
    let t = &app.t;
    // The admin's live feed sees the order's life too (through the gateway for services).
    let mut feed = support::live::connect(&t.base_url().expect("served over TCP"), support::TOKEN, None).await;
    let product = catalog(t).await;
    let customer = register(t, "Ada").await;
    let order = order(t, &customer, &product, json!(19.98)).await;

    status_becomes(t, &order, "approved").await;
    let list = shopping_list(t, &order).await;
    assert_eq!(list["status"], "available", "InitiateShopping made it available");
    assert_eq!(list["stops"][0]["storeName"], "Books");
    assert_eq!(list["stops"][0]["items"][0]["quantity"], 2);
    assert_eq!(t.get(&format!("/api/ordering/{order}")).await.body["shoppingId"], list["id"]);
    let available = admin_get(t, "/api/depot/shopping?status=available").await;
    assert!(available.as_array().is_some_and(|l| l.iter().any(|s| s["id"] == list["id"])));

    let id = list["id"].as_str().expect("id");
    assert_eq!(t.put(&format!("/api/depot/shopping/{id}/complete"), true, None).await.status, StatusCode::CONFLICT);
    let assign = t.put(&format!("/api/depot/shopping/{id}/assign"), true, Some(json!({ "botId": "bot-1" }))).await;
    assert_eq!(assign.status, StatusCode::NO_CONTENT);
    assert_eq!(t.put(&format!("/api/depot/shopping/{id}/complete"), true, None).await.status, StatusCode::NO_CONTENT);
    status_becomes(t, &order, "ready").await;
    assert_eq!(
        t.delete(&format!("/api/ordering/{order}"), false).await.status,
        StatusCode::CONFLICT,
        "too late to cancel"
    );

    let find = format!("/api/payments/invoices?orderId={order}");
    eventually("the invoice exists", || async {
        t.request(Method::GET, &find, true, None, &[]).await.status == StatusCode::OK
    })
    .await;
    let invoice = admin_get(t, &find).await;
    assert_eq!(invoice["amount"], 19.98);
    assert_eq!(invoice["status"], "pending");
    let invoice_id = invoice["id"].as_str().expect("id");
    assert_eq!(
        t.put(&format!("/api/payments/invoices/{invoice_id}/pay"), true, None).await.status,
        StatusCode::NO_CONTENT
    );
    status_becomes(t, &order, "completed").await;
    assert_eq!(admin_get(t, &find).await["status"], "paid");

    // notifications sent an SMS at created, ready and completed.
    let sent = format!("/api/notifications?customerId={customer}");
    eventually("three SMS were sent", || async { admin_get(t, &sent).await.as_array().map(Vec::len) == Some(3) }).await;
    let kinds: Vec<Value> =
        admin_get(t, &sent).await.as_array().map(|l| l.iter().map(|n| n["kind"].clone()).collect()).unwrap_or_default();
    assert_eq!(kinds, vec![json!("created"), json!("ready"), json!("completed")]);
    assert_eq!(admin_get(t, &sent).await[0]["smsNumber"], "555 0100");
    assert_eq!(t.get(&sent).await.status, StatusCode::UNAUTHORIZED);
    let missing = t.request(Method::GET, "/api/notifications", true, None, &[]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);

    // analytics (a projection of the order streams) counts it, the saga's approval and its
    // revenue (in all, and in the minute it completed).
    eventually("analytics sees the completed order", || async {
        let summary = admin_get(t, "/api/analytics/summary").await;
        summary["ordersByStatus"]["completed"] == 1 && summary["sagaOutcomes"]["approved"] == 1
    })
    .await;
    let summary = admin_get(t, "/api/analytics/summary").await;
    assert_eq!(summary["revenue"], 19.98);
    assert_eq!(summary["sagaOutcomes"], json!({ "approved": 1, "rejected": 0 }));
    let minutes = summary["revenueByMinute"].as_array().expect("revenue by minute");
    assert_eq!(minutes.len(), 1, "{summary}");
    assert_eq!((&minutes[0]["revenue"], &minutes[0]["orders"]), (&json!(19.98), &json!(1)), "{summary}");
    assert_eq!(summary["topProducts"][0]["productName"], "Treasury");
    assert_eq!(summary["topProducts"][0]["quantity"], 2);
    assert_eq!(t.get("/api/analytics/summary").await.status, StatusCode::UNAUTHORIZED);

    let life: Vec<String> = support::live::until(&mut feed, "ordersapi.OrderCompleted.v1", &order)
        .await
        .iter()
        .filter(|e| e["key"] == order.as_str() && e["topic"] == "ordering.events.Order")
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected = ["Created", "Approved", "Readied", "Completed"].map(|n| format!("ordersapi.Order{n}.v1"));
    assert_eq!(life, expected, "the order's life on the live feed");
    app.stop().await;
}

async fn a_disabled_customer_s_order_is_rejected(app: RunningApp) {
    let t = &app.t;
    let product = catalog(t).await;
    let customer = register(t, "Bob").await;
    assert_eq!(t.put(&format!("/api/customers/{customer}/disable"), true, None).await.status, StatusCode::NO_CONTENT);
    let order = order(t, &customer, &product, json!(19.98)).await;
    status_becomes(t, &order, "rejected").await;
    eventually("analytics counts the rejection", || async {
        let summary = admin_get(t, "/api/analytics/summary").await;
        summary["ordersByStatus"]["rejected"] == 1 && summary["sagaOutcomes"]["rejected"] == 1
    })
    .await;
    let summary = admin_get(t, "/api/analytics/summary").await;
    assert_eq!(summary["sagaOutcomes"], json!({ "approved": 0, "rejected": 1 }));
    assert_eq!(summary["revenueByMinute"], json!([]), "nothing completed");
    app.stop().await;
}

async fn a_wrong_amount_cancels_the_shopping_list_and_rejects_the_order(app: RunningApp) {
    let t = &app.t;
    let product = catalog(t).await;
    let customer = register(t, "Cy").await;
    let order = order(t, &customer, &product, json!(5)).await;
    status_becomes(t, &order, "rejected").await;
    let list = shopping_list(t, &order).await;
    assert_eq!(list["status"], "canceled");
    let sent = format!("/api/notifications?customerId={customer}");
    eventually("the created SMS was sent", || async { admin_get(t, &sent).await.as_array().map(Vec::len) == Some(1) })
        .await;
    app.stop().await;
}

async fn canceling_an_approved_order_cancels_its_shopping_list(app: RunningApp) {
    let t = &app.t;
    let product = catalog(t).await;
    let customer = register(t, "Di").await;
    let order = order(t, &customer, &product, json!("19.98")).await;
    status_becomes(t, &order, "approved").await;
    assert_eq!(t.delete(&format!("/api/ordering/{order}"), false).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&format!("/api/ordering/{order}")).await.body["status"], "canceled");
    let id = shopping_list(t, &order).await["id"].as_str().expect("id").to_owned();
    eventually("the shopping list is canceled", || async {
        admin_get(t, &format!("/api/depot/shopping/{id}")).await["status"] == "canceled"
    })
    .await;
    app.stop().await;
}

async fn search_filters_orders_and_pages_with_a_cursor(app: RunningApp) {
    let t = &app.t;
    let product = catalog(t).await;
    let ada = register(t, "Ada").await;
    let bob = register(t, "Bob").await;
    let first = order(t, &ada, &product, json!(19.98)).await;
    let second = order(t, &ada, &product, json!(1)).await;
    let third = order(t, &bob, &product, json!(19.98)).await;
    status_becomes(t, &first, "approved").await;
    status_becomes(t, &second, "rejected").await;
    status_becomes(t, &third, "approved").await;

    let search =
        |body: Value| async move { t.request(Method::POST, "/api/search/orders", true, Some(body), &[]).await };
    let ids = |page: &Value| -> Vec<String> {
        page["orders"]
            .as_array()
            .map(|l| l.iter().filter_map(|o| o["id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    // The search read model lags the orders: wait until it shows every order's final status
    // and its customer's name (from the customers' events), then assert on a settled model.
    eventually("search has every order's final status and customer", || async {
        let approved = search(json!({ "status": "approved" })).await.body;
        let rejected = search(json!({ "status": "rejected" })).await.body;
        let all = search(json!({})).await.body;
        let named = all["orders"].as_array().is_some_and(|l| {
            l.len() == 3 && l.iter().all(|o| o["customerName"].as_str().is_some_and(|n| !n.is_empty()))
        });
        ids(&approved) == vec![first.clone(), third.clone()] && ids(&rejected) == vec![second.clone()] && named
    })
    .await;
    let by_customer = search(json!({ "customerId": ada })).await;
    assert_eq!(by_customer.status, StatusCode::OK);
    assert_eq!(ids(&by_customer.body), vec![first.clone(), second.clone()]);
    assert_eq!(by_customer.body["orders"][0]["customerName"], "Ada");
    assert_eq!(by_customer.body["orders"][0]["total"], 19.98);
    assert_eq!(ids(&search(json!({ "status": "rejected" })).await.body), vec![second.clone()]);
    assert_eq!(ids(&search(json!({ "productIds": [product], "customerId": bob })).await.body), vec![third.clone()]);
    assert_eq!(ids(&search(json!({ "productIds": ["nope"] })).await.body), Vec::<String>::new());
    assert_eq!(ids(&search(json!({ "minTotal": 20 })).await.body), Vec::<String>::new());
    assert_eq!(ids(&search(json!({ "maxTotal": 19.98, "createdAfter": "2000-01-01T00:00:00Z" })).await.body).len(), 3);

    // The book's request shape: filters apart from the page.
    let book = search(json!({ "filters": { "customerId": ada, "status": "approved" }, "limit": 10 })).await;
    assert_eq!((book.status, ids(&book.body)), (StatusCode::OK, vec![first.clone()]), "{book:?}");
    let book_page1 = search(json!({ "filters": {}, "limit": 2 })).await.body;
    let book_page2 = search(json!({ "filters": {}, "next": book_page1["next"], "limit": 2 })).await.body;
    assert_eq!(ids(&book_page2), vec![third.clone()]);
    assert_eq!(
        search(json!({ "filters": { "after": "2000-01-01T00:00:00Z", "minTotal": 1 } })).await.body["orders"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    for bad in [json!({ "filters": { "colour": "red" } }), json!({ "filters": {}, "cursor": "x" })] {
        assert_eq!(search(bad.clone()).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }

    let page1 = search(json!({ "limit": 2 })).await.body;
    assert_eq!(ids(&page1), vec![first.clone(), second.clone()]);
    let page2 = search(json!({ "limit": 2, "cursor": page1["next"] })).await.body;
    assert_eq!(ids(&page2), vec![third.clone()]);
    assert!(page2["next"].is_null());

    // Newest first, paged in that direction (both request shapes).
    let newest1 = search(json!({ "limit": 2, "newestFirst": true })).await.body;
    assert_eq!(ids(&newest1), vec![third.clone(), second.clone()]);
    let newest2 = search(json!({ "limit": 2, "newestFirst": true, "cursor": newest1["next"] })).await.body;
    assert_eq!((ids(&newest2), newest2["next"].is_null()), (vec![first.clone()], true));
    let book_newest = search(json!({ "filters": { "customerId": ada }, "newestFirst": true })).await.body;
    assert_eq!(ids(&book_newest), vec![second.clone(), first.clone()]);
    assert_eq!(search(json!({ "newestFirst": "yes" })).await.status, StatusCode::BAD_REQUEST);

    for bad in [
        json!({ "status": "lost" }),
        json!({ "limit": 0 }),
        json!({ "limit": 101 }),
        json!({ "minTotal": -1 }),
        json!({ "createdAfter": "yesterday" }),
        json!({ "colour": "red" }),
        json!({ "minTotal": 5, "maxTotal": 1 }),
    ] {
        assert_eq!(search(bad.clone()).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(t.post("/api/search/orders", false, json!({})).await.status, StatusCode::UNAUTHORIZED);
    let one = t.request(Method::GET, &format!("/api/search/orders/{third}"), true, None, &[]).await;
    assert_eq!(one.body["customerName"], "Bob");
    assert_eq!(t.request(Method::GET, "/api/search/orders/nope", true, None, &[]).await.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

/// The right to erasure: a forgotten customer's name and SMS number are gone from every read
/// model that had them (customers, search, notifications and the messages it sent), its
/// retained events never held them in the clear, and a rebuild — its registration replayed from
/// the broker's history through the read models' handlers — brings nothing back.
async fn a_forgotten_customer_s_name_is_gone_from_every_read_model_after_a_rebuild(app: RunningApp) {
    use herald::pubsub::{StartFrom, SubscribeOptions};
    use mallbots::modules::customers::api as customers;
    let t = &app.t;
    let product = catalog(t).await;
    let ada =
        t.post("/api/customers", false, json!({ "name": "Ada Lovelace", "smsNumber": "+44 20 7946 0000" })).await.id();
    let first = order(t, &ada, &product, json!(19.98)).await;
    status_becomes(t, &first, "approved").await;
    let search = async || t.post("/api/search/orders", true, json!({ "customerId": ada })).await.body;
    let sent = async || admin_get(t, &format!("/api/notifications?customerId={ada}")).await;
    eventually("search and notifications know Ada", || async {
        search().await["orders"][0]["customerName"] == "Ada Lovelace"
            && sent()
                .await
                .as_array()
                .is_some_and(|l| l.iter().any(|m| m["text"].as_str().is_some_and(|x| x.contains("Ada"))))
    })
    .await;

    let forget = format!("/api/customers/{ada}/forget");
    assert_eq!(t.post(&forget, false, json!({})).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(t.post("/api/customers/nobody/forget", true, json!({})).await.status, StatusCode::NOT_FOUND);
    for _ in 0..2 {
        assert_eq!(t.post(&forget, true, json!({})).await.status, StatusCode::NO_CONTENT, "idempotent");
    }
    let customer = t.get(&format!("/api/customers/{ada}")).await.body;
    assert_eq!((customer["name"].as_str(), customer["smsNumber"].as_str()), (Some("[forgotten]"), Some("[forgotten]")));
    let forgotten = async || {
        let orders = search().await;
        let messages = sent().await;
        orders["orders"][0]["customerName"] == "[forgotten]"
            && messages.as_array().is_some_and(|l| {
                !l.is_empty() && l.iter().all(|m| m["text"] == "[forgotten]" && m["smsNumber"] == "[forgotten]")
            })
    };
    eventually("search and notifications forget Ada", forgotten).await;

    // The rebuild: the customer's events from the beginning of the broker's history, as a new
    // read model would read them. None holds the name in the clear; replayed (as new messages)
    // through the live read models, the registration opens as forgotten.
    let mut history = app
        .broker
        .subscribe(SubscribeOptions::new(customers::EVENT_TOPIC, "erasure-audit").start(StartFrom::Beginning))
        .await
        .expect("subscribes");
    let registration = loop {
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), history.next())
            .await
            .expect("the customer's history")
            .expect("a delivery");
        let payload = String::from_utf8_lossy(&d.message.payload).into_owned();
        assert!(!payload.contains("Ada") && !payload.contains("7946"), "in the clear: {payload}");
        let mine = d.message.key == ada && d.message.name == <customers::CustomerRegistered as herald::Event>::NAME;
        let message = d.message.clone();
        d.ack().await.expect("ack");
        if mine {
            break message;
        }
    };
    let mut replayed =
        herald::Message::new(customers::EVENT_TOPIC, registration.name.clone(), registration.payload.clone());
    replayed.key = ada.clone();
    app.broker.publish(&[replayed]).await.expect("replays");
    let again = order(t, &ada, &product, json!(19.98)).await;
    status_becomes(t, &again, "approved").await;
    eventually("the replayed registration and a new order stay forgotten", || async {
        let orders = search().await;
        orders["orders"]
            .as_array()
            .is_some_and(|o| o.len() == 2 && o.iter().all(|o| o["customerName"] == "[forgotten]"))
            && forgotten().await
    })
    .await;
    app.stop().await;
}

/// How long baskets stay open in [`an_abandoned_basket_expires_at_its_deadline`]: long enough
/// for a kiosk to check out in (a couple of requests), short enough to wait for.
const SHORT_BASKET_TTL: Duration = Duration::from_secs(3);

/// Issue 13: a basket left open expires at its deadline — Herald's scheduled messages: starting
/// a basket schedules its expiry in the same unit of work, the outbox relay publishes it at its
/// time, and baskets cancels the basket if it is still open (as a kiosk's cancel, saying
/// `expired`). One checked out before its deadline stays checked out, its order goes on.
async fn an_abandoned_basket_expires_at_its_deadline(app: RunningApp) {
    let t = &app.t;
    let mut feed = support::live::connect(&t.base_url().expect("served over TCP"), support::TOKEN, None).await;
    let product = catalog(t).await;
    let customer = register(t, "Eve").await;
    let payment = t.post("/api/payments", false, json!({ "customerId": customer, "amount": 19.98 })).await.id();
    let start = async || t.post("/api/baskets", false, json!({ "customerId": customer })).await.id();
    let add_item = async |basket: &str| {
        let add = json!({ "productId": product, "quantity": 2 });
        t.put(&format!("/api/baskets/{basket}/addItem"), false, Some(add)).await.status
    };
    let basket = async |basket: &str| t.get(&format!("/api/baskets/{basket}")).await.body;
    // The catalog reaches baskets first (tried on a basket of its own, left to expire too), so
    // the checkout below takes moments, well within the kept basket's lifetime.
    let warm_up = start().await;
    eventually("the product reaches the baskets' catalog", || async {
        add_item(&warm_up).await == StatusCode::NO_CONTENT
    })
    .await;

    let started = Instant::now();
    let kept = start().await;
    let abandoned = start().await;
    assert_eq!(add_item(&kept).await, StatusCode::NO_CONTENT);
    let checkout = t.put(&format!("/api/baskets/{kept}/checkout"), false, Some(json!({ "paymentId": payment }))).await;
    assert_eq!(checkout.status, StatusCode::NO_CONTENT, "{checkout:?}");
    let before = basket(&abandoned).await;
    if started.elapsed() < SHORT_BASKET_TTL {
        assert_eq!(before["status"], "open", "canceled before its deadline: {before}");
    }

    eventually_within("the abandoned basket is canceled at its deadline", SHORT_BASKET_TTL * 10, || async {
        basket(&abandoned).await["status"] == "canceled"
    })
    .await;
    assert!(started.elapsed() >= SHORT_BASKET_TTL, "expired after {:?}, before its deadline", started.elapsed());
    // As a kiosk's cancel: integration event and all, saying why.
    let canceled = support::live::until(&mut feed, "basketsapi.BasketCanceled.v1", &abandoned).await;
    let canceled = canceled.last().expect("the cancellation");
    assert_eq!(canceled["data"], json!({ "id": abandoned, "reason": "expired" }), "{canceled}");
    assert_eq!(add_item(&abandoned).await, StatusCode::CONFLICT, "an expired basket takes no more items");

    // The kept basket's deadline has passed too (it started first): its expiry changed nothing,
    // and its order goes on.
    let kept_now = basket(&kept).await;
    assert_eq!((&kept_now["status"], &kept_now["paymentId"]), (&json!("checked_out"), &json!(payment)), "{kept_now}");
    status_becomes(t, &kept, "approved").await;
    eventually("the warm-up basket expired too", || async { basket(&warm_up).await["status"] == "canceled" }).await;
    assert_eq!(basket(&kept).await["status"], "checked_out");
    app.stop().await;
}

/// What the scenarios run with, unless they name a [`Setup`] of their own.
const DEFAULT_SETUP: Setup = Setup { basket_ttl: None };
/// Baskets that expire quickly.
const EXPIRING_BASKETS: Setup = Setup { basket_ttl: Some(SHORT_BASKET_TTL) };

/// One test per scenario in a module per backend; a scenario may name its [`Setup`]
/// (`scenario(SETUP)`).
macro_rules! scenarios {
    ($($backend:ident => $variant:ident: [$($scenario:ident $(($setup:expr))?),* $(,)?]),* $(,)?) => {$(
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let setup = [DEFAULT_SETUP $(, $setup)?];
                    if let Some(app) = spawn_running_app_with(Backend::$variant, setup[setup.len() - 1]).await {
                        super::$scenario(app).await;
                    }
                }
            )*
        }
    )*};
}

// Every scenario on the embedded default, on PostgreSQL with its SQL broker, and with NATS.
// Redis and RabbitMQ run the happy path and the compensating path: each app declares about 30
// quorum queues on RabbitMQ, and a burst of five apps at once has stalled the local node.
scenarios! {
    sqlite => Sqlite: [
        an_order_goes_from_checkout_to_completed,
        a_disabled_customer_s_order_is_rejected,
        a_wrong_amount_cancels_the_shopping_list_and_rejects_the_order,
        canceling_an_approved_order_cancels_its_shopping_list,
        search_filters_orders_and_pages_with_a_cursor,
        a_forgotten_customer_s_name_is_gone_from_every_read_model_after_a_rebuild,
        an_abandoned_basket_expires_at_its_deadline(EXPIRING_BASKETS),
    ],
    postgres => Postgres: [
        an_order_goes_from_checkout_to_completed,
        a_disabled_customer_s_order_is_rejected,
        a_wrong_amount_cancels_the_shopping_list_and_rejects_the_order,
        canceling_an_approved_order_cancels_its_shopping_list,
        search_filters_orders_and_pages_with_a_cursor,
        an_abandoned_basket_expires_at_its_deadline(EXPIRING_BASKETS),
    ],
    postgres_nats => PostgresNats: [
        an_order_goes_from_checkout_to_completed,
        a_disabled_customer_s_order_is_rejected,
        a_wrong_amount_cancels_the_shopping_list_and_rejects_the_order,
        canceling_an_approved_order_cancels_its_shopping_list,
        search_filters_orders_and_pages_with_a_cursor,
        a_forgotten_customer_s_name_is_gone_from_every_read_model_after_a_rebuild,
        an_abandoned_basket_expires_at_its_deadline(EXPIRING_BASKETS),
    ],
    // The distributed shape: one process per module (the real binary), nginx in front.
    services => Services: [
        an_order_goes_from_checkout_to_completed,
        a_disabled_customer_s_order_is_rejected,
        a_wrong_amount_cancels_the_shopping_list_and_rejects_the_order,
        canceling_an_approved_order_cancels_its_shopping_list,
        a_forgotten_customer_s_name_is_gone_from_every_read_model_after_a_rebuild,
        an_abandoned_basket_expires_at_its_deadline(EXPIRING_BASKETS),
    ],
    postgres_redis => PostgresRedis: [
        an_order_goes_from_checkout_to_completed,
        a_wrong_amount_cancels_the_shopping_list_and_rejects_the_order,
    ],
    postgres_rabbitmq => PostgresRabbitMq: [
        an_order_goes_from_checkout_to_completed,
        a_wrong_amount_cancels_the_shopping_list_and_rejects_the_order,
    ],
    postgres_kafka => PostgresKafka: [
        an_order_goes_from_checkout_to_completed,
        a_wrong_amount_cancels_the_shopping_list_and_rejects_the_order,
    ],
}

/// An order event that overtakes its customer's registration (they travel on different topics;
/// the customers process may die before relaying it) still gets its SMS once the registration
/// arrives: it is retried, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_that_overtakes_its_customer_s_registration_still_gets_its_sms() {
    use herald::Message;
    use mallbots::modules::{customers::api as customers, ordering::api as ordering};
    let app = support::spawn_running_app().await;
    let created = ordering::OrderIntegrationEvent::Created(ordering::OrderCreated {
        id: "order-early".into(),
        customer_id: "c-late".into(),
        payment_id: "p".into(),
        items: vec![],
        total_cents: 100,
    });
    let created = Message::encode(ordering::EVENT_TOPIC, &created).expect("encodes").with_key("order-early");
    app.broker.publish(&[created]).await.expect("publish");
    // The first attempts find no customer.
    support::eventually("the order event was attempted", || async {
        let metrics = app.t.get("/metrics").await.body;
        metrics.as_str().is_some_and(|m| {
            m.lines().any(|l| l.starts_with("herald_messages_failed_total") && l.contains("notifications-orders"))
        })
    })
    .await;
    let registered = customers::CustomerIntegrationEvent::Registered(customers::CustomerRegistered {
        id: "c-late".into(),
        // Not sealed (as events from before sealing): they read as they are.
        name: herald::shredding::Sealed::from_stored("Grace"),
        sms_number: herald::shredding::Sealed::from_stored("555 0100"),
    });
    let registered = Message::encode(customers::EVENT_TOPIC, &registered).expect("encodes").with_key("c-late");
    app.broker.publish(&[registered]).await.expect("publish");
    support::eventually_within("the SMS of the early order", std::time::Duration::from_secs(30), || async {
        let sent = admin_get(&app.t, "/api/notifications?customerId=c-late").await;
        sent.as_array().is_some_and(|l| l.len() == 1 && l[0]["orderId"] == "order-early")
    })
    .await;
    app.stop().await;
}

/// Module processes die (kill -9, no clean shutdown) and come back while orders flow: every
/// accepted order is approved, then (with notifications and analytics killed and restarted
/// meanwhile) completed, with one shopping list, one invoice and three SMS (created, ready,
/// completed) per order — no duplicate side effect — and analytics counts every order. A
/// message a killed process held is redelivered after its ack wait, so this can take a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_lose_nothing_when_module_processes_are_killed_while_orders_flow() {
    use support::{Running, spawn_cluster};
    const ORDERS: usize = 8;
    let Some(mut app) = spawn_cluster(&[]).await else { return };
    let support::RunningApp { t, running, .. } = &mut app;
    let Running::Cluster(cluster) = running else { unreachable!("a cluster") };
    let product = catalog(t).await;
    let mut customers = Vec::new();
    for i in 0..ORDERS {
        customers.push(register(t, &format!("Shopper {i}")).await);
    }
    let mut orders = Vec::new();
    // Not on the path of placing an order (baskets and payments serve those requests; the
    // customers are registered already).
    let victims = ["ordering", "cosec", "depot", "customers", "notifications", "analytics", "search"];
    let mut killed: Option<&str> = None;
    for (i, customer) in customers.iter().enumerate() {
        if i % 2 == 0 {
            if let Some(module) = killed.take() {
                cluster.restart(module, 0).await.expect("restart");
            }
            let module = victims[fastrand::usize(..victims.len())];
            eprintln!("order {i}: kill -9 {module}");
            cluster.kill(module, 0).await.expect("kill -9");
            killed = Some(module);
        }
        orders.push((customer.clone(), order(t, customer, &product, json!(19.98)).await));
    }
    if let Some(module) = killed.take() {
        cluster.restart(module, 0).await.expect("restart");
    }

    let limit = std::time::Duration::from_secs(90);
    for (_, order) in &orders {
        eventually_within(&format!("order {order} is approved"), limit, || async {
            t.get(&format!("/api/ordering/{order}")).await.body["status"] == "approved"
        })
        .await;
    }
    let lists = admin_get(t, "/api/depot/shopping").await;
    for (_, order) in &orders {
        let of_order = lists.as_array().map_or(0, |l| l.iter().filter(|s| s["orderId"] == order.as_str()).count());
        assert_eq!(of_order, 1, "one shopping list for order {order}: {lists}");
    }

    // Completing them (depot, ordering and payments serve these requests) while the processes
    // that only react die and come back.
    for (i, (_, order)) in orders.iter().enumerate() {
        match i {
            1 => cluster.kill("notifications", 0).await.expect("kill -9"),
            3 => cluster.kill("analytics", 0).await.expect("kill -9"),
            5 => {
                cluster.restart("notifications", 0).await.expect("restart");
                cluster.restart("analytics", 0).await.expect("restart");
            }
            _ => {}
        }
        support::complete(t, order).await;
    }
    for (customer, order) in &orders {
        let invoices = admin_get(t, &format!("/api/payments/invoices?orderId={order}")).await;
        assert_eq!(invoices["status"], "paid", "one paid invoice for order {order}: {invoices}");
        let sent = format!("/api/notifications?customerId={customer}");
        eventually_within(&format!("created, ready and completed SMS for {customer}"), limit, || async {
            admin_get(t, &sent).await.as_array().map(Vec::len) == Some(3)
        })
        .await;
    }
    eventually_within("analytics counts every order completed", limit, || async {
        admin_get(t, "/api/analytics/summary").await["ordersByStatus"]["completed"] == ORDERS
    })
    .await;
    app.stop().await;
}

/// Scale-out where the CPU is not the limit: with an SMS gateway that takes 50 ms per message
/// (one at a time per process), two notifications processes send about twice as many SMS per
/// second as one (their consumer groups share the partitions of the order topic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_notifications_processes_send_about_twice_the_sms_of_one() {
    let Some(one) = sms_rate(1).await else { return };
    let Some(two) = sms_rate(2).await else { return };
    eprintln!("SMS per second: one process {one:.1}, two processes {two:.1} ({:.2}x)", two / one);
    assert!(one < 25.0, "one process is bounded by its gateway (20/s): {one:.1}/s");
    assert!(two / one >= 1.5, "two processes: {two:.1}/s, one: {one:.1}/s");
}

/// SMS per second of `replicas` notifications processes for a burst of orders.
async fn sms_rate(replicas: usize) -> Option<f64> {
    use herald::Message;
    use mallbots::modules::{customers::api as customers, ordering::api as ordering};
    const ORDERS: usize = 60;
    let app =
        support::spawn_cluster_with(&[("notifications", replicas)], &["notifications"], &["--sms-latency-ms", "50"])
            .await?;
    let t = &app.t;
    let customer = customers::CustomerRegistered {
        id: "c-1".into(),
        name: herald::shredding::Sealed::from_stored("Ada"),
        sms_number: herald::shredding::Sealed::from_stored("555"),
    };
    let registered = customers::CustomerIntegrationEvent::Registered(customer);
    let created = |id: String| {
        let event = ordering::OrderIntegrationEvent::Created(ordering::OrderCreated {
            id: id.clone(),
            customer_id: "c-1".into(),
            payment_id: "p".into(),
            items: vec![],
            total_cents: 100,
        });
        Message::encode(ordering::EVENT_TOPIC, &event).expect("encodes").with_key(id)
    };
    // SMS of the orders whose id starts with `prefix`.
    let sent = |prefix: &'static str| async move {
        let list = admin_get(t, "/api/notifications?customerId=c-1").await;
        list.as_array()
            .map_or(0, |l| l.iter().filter(|n| n["orderId"].as_str().is_some_and(|o| o.starts_with(prefix))).count())
    };
    // The customer first; then probe orders until one gets its SMS: notifications knows them.
    let customer = Message::encode(customers::EVENT_TOPIC, &registered).expect("encodes").with_key("c-1");
    app.broker.publish(&[customer]).await.expect("publish");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for probe in 0.. {
        app.broker.publish(&[created(format!("probe-{probe}"))]).await.expect("publish");
        let waited = std::time::Instant::now();
        while sent("probe-").await == 0 && waited.elapsed() < std::time::Duration::from_millis(500) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if sent("probe-").await > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "notifications never sent an SMS");
    }
    let started = std::time::Instant::now();
    let burst: Vec<_> = (0..ORDERS).map(|i| created(format!("burst-{i}"))).collect();
    app.broker.publish(&burst).await.expect("publish");
    support::eventually_within("every SMS", std::time::Duration::from_secs(30), || async {
        sent("burst-").await == ORDERS
    })
    .await;
    let rate = ORDERS as f64 / started.elapsed().as_secs_f64();
    app.stop().await;
    Some(rate)
}

/// Two analytics processes: one projects (it holds the projection's lease), the other stands
/// by. Rebuilds asked through the gateway (nginx takes turns, so each process answers one)
/// reset the read model and the lease holder replays it, while more orders come: every order
/// counts once (a product's order count would grow with a double application).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_asked_of_either_analytics_process_counts_every_order_once() {
    use herald::Message;
    use mallbots::modules::ordering::api as ordering;
    let Some(app) = support::spawn_cluster_with(&[("analytics", 2)], &["analytics"], &[]).await else { return };
    let t = &app.t;
    let created = |i: usize| {
        let id = format!("order-{i}");
        let item = ordering::OrderItem {
            store_id: "s-1".into(),
            product_id: "p-1".into(),
            store_name: "Books".into(),
            product_name: "Treasury".into(),
            price_cents: 999,
            quantity: 1,
        };
        let event = ordering::OrderIntegrationEvent::Created(ordering::OrderCreated {
            id: id.clone(),
            customer_id: "c-1".into(),
            payment_id: "p".into(),
            items: vec![item],
            total_cents: 999,
        });
        Message::encode(ordering::EVENT_TOPIC, &event).expect("encodes").with_key(id)
    };
    let counted = |n: i64| async move {
        let summary = admin_get(t, "/api/analytics/summary").await;
        summary["ordersByStatus"]["pending"] == n && summary["topProducts"][0]["orders"] == n
    };
    let mut sent = 0;
    let mut publish = async |n: usize| {
        let batch: Vec<_> = (sent..sent + n).map(created).collect();
        app.broker.publish(&batch).await.expect("publish");
        sent += n;
        i64::try_from(sent).expect("small")
    };
    let total = publish(20).await;
    support::eventually("analytics counts the first orders", || counted(total)).await;
    for round in 0..2 {
        let more = publish(10).await;
        let rebuilt = t.request(Method::POST, "/api/analytics/rebuild", true, None, &[]).await;
        assert_eq!(rebuilt.status, StatusCode::OK, "rebuild {round}: {rebuilt:?}");
        assert_eq!(rebuilt.body["completed"], true, "{rebuilt:?}");
        support::eventually("every order counted once after the rebuild", || counted(more)).await;
    }
    let status = admin_get(t, "/api/analytics/projection").await;
    eprintln!("after the rebuilds: {status}");
    app.stop().await;
}

/// One trace follows an order across processes: every process exports its spans over OTLP to a
/// collector (here, the test's own), the kiosk's checkout carries a W3C `traceparent`, and the
/// spans of that trace come from the baskets process (the HTTP request and its command), then
/// ordering, the saga (cosec) and the modules it commands, and notifications — each its own
/// process, parented across the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_order_across_the_processes() {
    use support::spawn_cluster_with;
    let (endpoint, collector) = collector::start().await;
    let Some(app) = spawn_cluster_with(&[], &[], &["--otlp-endpoint", &endpoint]).await else { return };
    let t = &app.t;
    let product = catalog(t).await;
    let customer = register(t, "Ada").await;
    // The kiosk's own span: the root of the trace.
    let (trace_id, kiosk_span) = (format!("{:032x}", fastrand::u128(1..)), format!("{:016x}", fastrand::u64(1..)));
    let traceparent = format!("00-{trace_id}-{kiosk_span}-01");
    let order = support::order_with(t, &customer, &product, json!(19.98), &[("traceparent", &traceparent)]).await;
    status_becomes(t, &order, "approved").await;

    let expected = ["baskets", "ordering", "cosec", "customers", "payments", "depot", "notifications"];
    // The trace as collected so far: its services, and its spans whose parent is not in it
    // (but for the kiosk's). Spans are exported in batches, every few seconds.
    let trace = || {
        let spans: Vec<_> = collector.spans().into_iter().filter(|s| s.trace_id == trace_id).collect();
        let ids: std::collections::HashSet<String> = spans.iter().map(|s| s.span_id.clone()).collect();
        let orphans: Vec<String> = spans
            .iter()
            .filter(|s| s.parent_span_id != kiosk_span && !ids.contains(&s.parent_span_id))
            .map(|s| format!("{} in {}", s.name, s.service))
            .collect();
        let mut services: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
        services.sort();
        services.dedup();
        (spans, services, orphans)
    };
    // Not `eventually`: on a timeout, the trace as it stands says what is missing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (spans, services, orphans) = trace();
        if orphans.is_empty() && expected.iter().all(|m| services.contains(&format!("mallbots-{m}"))) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every module on the order's path exports spans of its trace, each parented in it; \
             services {services:?}, orphans {orphans:?}, {} spans of the trace, {} spans in all",
            spans.len(),
            collector.spans().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (spans, services, _) = trace();
    let http = spans.iter().find(|s| s.name == "PUT /api/baskets/{id}/checkout").expect("the checkout's HTTP span");
    assert_eq!(http.service, "mallbots-baskets");
    assert_eq!(http.parent_span_id, kiosk_span, "the HTTP span's parent is the kiosk's span");
    let handled = spans.iter().filter(|s| s.name == "handle").count();
    assert!(handled >= expected.len() - 1, "handle spans in the trace: {handled}");
    eprintln!("services in the order's trace: {services:?}; {} spans", spans.len());
    app.stop().await;
}

/// A minimal OTLP/gRPC trace collector: keeps every span it is sent, with its service name.
mod collector {
    use std::sync::{Arc, Mutex, PoisonError};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    /// A span as received; ids in lowercase hex (empty: none).
    #[derive(Clone, Debug)]
    pub struct Span {
        pub service: String,
        pub name: String,
        pub trace_id: String,
        pub span_id: String,
        pub parent_span_id: String,
    }

    #[derive(Clone, Default)]
    pub struct Collector(Arc<Mutex<Vec<Span>>>);

    impl Collector {
        pub fn spans(&self) -> Vec<Span> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut received = Vec::new();
            for resource_spans in request.into_inner().resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    received.push(Span {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                    });
                }
            }
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend(received);
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    /// Serves a collector on a free loopback port; returns its endpoint (`http://…`).
    pub async fn start() -> (String, Collector) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (endpoint, collector)
    }
}

/// `--pool-size` bounds what a module's process holds: a stores process started with
/// `--pool-size 2`, under 40 concurrent requests through the gateway, never shows more than its
/// pool plus the one connection that listens for other processes' commits in
/// `pg_stat_activity`, where its connections carry the name `mallbots/<schema>`. (The default
/// for one module, 8, opens more than 3 under this load: checked by running it without the flag.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_process_holds_no_more_connections_than_its_pool_size() {
    const POOL: i64 = 2;
    let Some(app) = support::spawn_cluster_with(&[], &["stores"], &["--pool-size", &POOL.to_string()]).await else {
        return;
    };
    let t = &app.t;
    let name = mallbots::app::application_name(&mallbots::module::schema(&t.config.namespace, "stores"));
    let pool = sqlx::PgPool::connect(&t.config.database).await.expect("connect to PostgreSQL");
    let connections = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&name)
            .fetch_one(&pool)
            .await
            .expect("count the connections")
    };
    let mut most = connections().await;
    assert!(most >= 1, "the process's connections carry the name `{name}`");
    for _ in 0..4 {
        let created = futures::future::join_all(
            (0..10).map(|i| t.post("/api/stores", true, json!({ "name": format!("Store {i}"), "location": "L1" }))),
        );
        let (replies, seen) = tokio::join!(created, async {
            let mut seen = 0;
            for _ in 0..20 {
                seen = seen.max(connections().await);
                tokio::task::yield_now().await;
            }
            seen
        });
        assert!(replies.iter().all(|r| r.status == StatusCode::CREATED), "{replies:?}");
        most = most.max(seen).max(connections().await);
    }
    println!("most connections named {name}: {most}");
    assert!(most <= POOL + 1, "{most} connections named {name}, with --pool-size {POOL} (+1 listening)");
    pool.close().await;
    app.stop().await;
}
