//! The AsyncAPI document (`/asyncapi.json`) of a running mall: every module's messages with
//! their payload schemas, every `$ref` resolving.

use axum::http::StatusCode;
use herald::codec::EventSet;
use mallbots::modules::{baskets, customers, depot, notifications, ordering, payments, stores};
use serde_json::Value;

use crate::support::spawn_running_app;

/// Every `$ref` anywhere under `value`.
fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                found.push(r);
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

/// What a local `$ref` (`#/components/…`) points at.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    reference
        .strip_prefix('#')
        .and_then(|pointer| doc.pointer(pointer))
        .unwrap_or_else(|| panic!("{reference} does not resolve"))
}

/// The schema `schema` is, following one `$ref`.
fn followed<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    schema["$ref"].as_str().map_or(schema, |r| resolve(doc, r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asyncapi_document_lists_every_message_of_the_modules_with_its_payload_schema() {
    let mut app = spawn_running_app().await;
    // Over the app's own HTTP listener, as a client would fetch it.
    app.t.gateway = app.t.base_url();
    let reply = app.t.get("/asyncapi.json").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let doc = &reply.body;
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "MallBots");

    // Every integration event, command and typed reply of the modules, on its topic.
    let published: Vec<(&str, Vec<&str>)> = vec![
        (stores::api::STORE_TOPIC, stores::api::StoreIntegrationEvent::names()),
        (stores::api::PRODUCT_TOPIC, stores::api::ProductIntegrationEvent::names()),
        (customers::api::EVENT_TOPIC, customers::api::CustomerIntegrationEvent::names()),
        (customers::api::COMMAND_TOPIC, customers::api::AuthorizeCustomer::names()),
        (baskets::api::EVENT_TOPIC, baskets::api::BasketIntegrationEvent::names()),
        (ordering::api::EVENT_TOPIC, ordering::api::OrderIntegrationEvent::names()),
        (ordering::api::COMMAND_TOPIC, ordering::api::OrderingCommand::names()),
        (payments::api::EVENT_TOPIC, payments::api::InvoiceIntegrationEvent::names()),
        (payments::api::COMMAND_TOPIC, payments::api::ConfirmPayment::names()),
        (depot::api::EVENT_TOPIC, depot::api::ShoppingListIntegrationEvent::names()),
        (depot::api::COMMAND_TOPIC, depot::api::DepotCommand::names()),
        (mallbots::modules::cosec::REPLY_TOPIC, depot::api::CreatedShoppingList::names()),
        (notifications::api::EVENT_TOPIC, notifications::api::NotificationSent::names()),
    ];
    let channels = doc["channels"].as_object().expect("channels");
    for (topic, names) in &published {
        let channel = channels.values().find(|c| c["address"] == *topic).unwrap_or_else(|| panic!("no {topic}"));
        for name in names {
            let message = followed(doc, &channel["messages"][*name]);
            assert_eq!(message["name"], *name, "{topic}");
            assert_eq!(message["contentType"], "application/json", "{name}");
            let payload = followed(doc, &message["payload"]);
            assert_eq!(payload["type"], "object", "{name}: {payload}");
            assert!(followed(doc, &message["headers"])["properties"]["herald-metadata"].is_object(), "{name}");
        }
    }
    let messages = doc["components"]["messages"].as_object().expect("messages");
    let all: usize = published.iter().map(|(_, names)| names.len()).sum();
    assert!(messages.len() >= all, "{} messages, {all} expected at least", messages.len());

    // The order's fields, and its lines' (a nested type, in components.schemas).
    let created = followed(doc, &messages[<ordering::api::OrderCreated as herald::Event>::NAME]["payload"]);
    for field in ["id", "customer_id", "payment_id", "items", "total_cents"] {
        assert!(created["properties"][field].is_object(), "{field}: {created}");
    }
    let line = followed(doc, &created["properties"]["items"]["items"]);
    assert_eq!(line["properties"]["price_cents"]["type"], "integer", "{line}");

    // Who handles what: the saga starts from OrderCreated, and answers come back to it.
    let operations = doc["operations"].as_object().expect("operations");
    let saga = operations.values().find(|o| o["x-herald-group"] == "cosec-ordering").expect("cosec's route");
    assert_eq!(saga["action"], "receive");
    assert!(operations.values().any(|o| o["x-herald-group"] == "depot-commands" && o["reply"].is_object()));

    let mut refs = Vec::new();
    references(doc, &mut refs);
    assert!(refs.len() > all, "{} references", refs.len());
    for r in refs {
        resolve(doc, r);
    }
    app.stop().await;
}
