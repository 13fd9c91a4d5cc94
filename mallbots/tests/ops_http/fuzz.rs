//! MallBots' REST API against its own OpenAPI document (`/openapi.json`).
//!
//! The document must be exact, so that generated clients and schema-driven fuzzers are not
//! misled: it declares every path parameter and what each request body requires, and requests
//! generated from it (proptest, deterministic seed) are answered as it says. Mostly valid
//! requests, on the ids of real entities or random ones, and some that break it one way each:
//! never a 5xx or a panic; a valid one gets a documented status, and almost always a 2xx, 404 or
//! 409 (not a 400: what the document accepts, the API accepts); a broken one gets a 400 (or the
//! 404/409 of what it names, where the broken rule is checked after the lookup); a request
//! without the admin token, to an admin operation, a 401. A quarter of the requests go over a
//! real connection to the running app, which must never drop one. On SQLite, and on PostgreSQL
//! when its server runs.

#[path = "json_schema.rs"]
mod json_schema;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use json_schema::{Breach, Carrier, Ids, Schemas, types};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{TestCaseError, TestError, TestRng, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{
    Backend, RunningApp, TestApp, eventually, order, register, shopping_list, spawn_app, spawn_running_app,
    spawn_running_app_on, status_becomes,
};

/// Generated requests per operation (3 for one that takes no input).
const CASES: u32 = 80;

/// The least share of valid requests that must be answered 2xx, 404 or 409.
const LEAST_ACCEPTED: f64 = 0.9;

/// Where a parameter goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Path,
    Query,
    Header,
}

#[derive(Clone, Debug)]
struct Parameter {
    name: String,
    place: Place,
    required: bool,
    schema: Value,
}

/// One operation of the document.
#[derive(Clone, Debug)]
struct Operation {
    method: Method,
    /// The path template, `{name}` for each path parameter.
    path: String,
    parameters: Vec<Parameter>,
    /// The schema of its JSON body, if it takes one.
    body: Option<Value>,
    /// The statuses it documents.
    statuses: BTreeSet<u16>,
    /// Whether it needs the admin token.
    admin: bool,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Every operation of `doc`.
fn operations(doc: &Value) -> Vec<Operation> {
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else { continue };
            let parameters = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| Parameter {
                    name: p["name"].as_str().expect("a parameter name").to_owned(),
                    place: match p["in"].as_str() {
                        Some("path") => Place::Path,
                        Some("query") => Place::Query,
                        Some("header") => Place::Header,
                        other => panic!("{method} {path}: a parameter in {other:?}"),
                    },
                    required: p["required"] == true,
                    schema: p["schema"].clone(),
                })
                .collect();
            let body = operation["requestBody"]["content"]["application/json"]["schema"].clone();
            operations.push(Operation {
                method,
                path: path.clone(),
                parameters,
                body: (!body.is_null()).then_some(body),
                statuses: operation["responses"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(status, _)| status.parse().ok())
                    .collect(),
                admin: operation["security"].as_array().is_some_and(|s| !s.is_empty()),
            });
        }
    }
    operations
}

/// The `{name}`s of a path template.
fn template_parameters(path: &str) -> BTreeSet<&str> {
    path.split('{').skip(1).filter_map(|rest| rest.split_once('}')).map(|(name, _)| name).collect()
}

/// What a generated request is meant to be.
#[derive(Clone, Debug)]
enum Intent {
    /// Everything as the document says.
    Valid,
    /// One thing breaks the document.
    Invalid { what: String, breach: Breach },
    /// Valid, but without the admin token.
    Anonymous,
}

/// A generated request.
#[derive(Clone, Debug)]
struct Call {
    method: Method,
    uri: String,
    headers: Vec<(String, String)>,
    /// Sent as `application/json` (not necessarily JSON).
    body: Option<String>,
    admin: bool,
    intent: Intent,
    /// Sent over a real connection (else through the router in this process).
    tcp: bool,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.intent {
            Intent::Valid => f.write_str("valid: ")?,
            Intent::Invalid { what, breach } => write!(f, "invalid ({breach:?}: {what}): ")?,
            Intent::Anonymous => f.write_str("without the admin token: ")?,
        }
        write!(f, "{} {}{}", self.method, self.uri, if self.tcp { " (over TCP)" } else { "" })?;
        for (name, value) in &self.headers {
            write!(f, " {name}: {value:?}")?;
        }
        match &self.body {
            Some(body) if body.chars().count() > 300 => write!(f, " {}…", body.chars().take(300).collect::<String>()),
            Some(body) => write!(f, " {body}"),
            None => Ok(()),
        }
    }
}

/// A parameter's value as text, `None` for none (null).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Percent-encodes all but the unreserved characters (RFC 3986).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Operation {
    /// Whether anything of a request to it can vary.
    fn takes_input(&self) -> bool {
        !self.parameters.is_empty() || self.body.is_some()
    }

    /// The request of these parameter values (by index; `None`: left out) and body.
    fn call(&self, values: &[Option<String>], body: Option<String>, intent: Intent) -> Call {
        let mut path = self.path.clone();
        let mut query = Vec::new();
        let mut headers = Vec::new();
        for (parameter, value) in self.parameters.iter().zip(values) {
            let Some(value) = value else { continue };
            match parameter.place {
                Place::Path => path = path.replace(&format!("{{{}}}", parameter.name), &encode(value)),
                Place::Query => query.push(format!("{}={}", encode(&parameter.name), encode(value))),
                // A value that cannot be a header (a control character) is left out.
                Place::Header if HeaderValue::from_str(value).is_ok() => {
                    headers.push((parameter.name.clone(), value.clone()));
                }
                Place::Header => {}
            }
        }
        let uri = if query.is_empty() { path } else { format!("{path}?{}", query.join("&")) };
        let admin = self.admin && !matches!(intent, Intent::Anonymous);
        Call { method: self.method.clone(), uri, headers, body, admin, intent, tcp: false }
    }

    /// What the values of `parameter` are called when they are real ids: a path's `{id}` is an
    /// id of the collection before it (`/api/stores/{id}` → `storesId`).
    fn id_name(&self, parameter: &Parameter) -> String {
        let placeholder = format!("{{{}}}", parameter.name);
        let collection = self.path.split('/').take_while(|segment| *segment != placeholder).last();
        match collection {
            Some(collection) if parameter.place == Place::Path && parameter.name == "id" => format!("{collection}Id"),
            _ => parameter.name.clone(),
        }
    }
}

/// The requests generated for `operation`: 6 valid ones for 3 that break the document (and one
/// without the admin token, to an admin operation).
fn calls(operation: &Operation, schemas: &Schemas) -> BoxedStrategy<Call> {
    let values: Vec<BoxedStrategy<Option<String>>> = operation
        .parameters
        .iter()
        .map(|p| {
            let value = schemas.valid_named(&operation.id_name(p), &p.schema).prop_map(|v| text(&v));
            if p.required { value.boxed() } else { prop_oneof![Just(None), value].boxed() }
        })
        .collect();
    let body = match &operation.body {
        Some(schema) => schemas.valid(schema).prop_map(|v| Some(v.to_string())).boxed(),
        None => Just(None).boxed(),
    };
    let valid_parts = (values, body);
    let op = operation.clone();
    let valid = valid_parts.clone().prop_map(move |(values, body)| op.call(&values, body, Intent::Valid)).boxed();
    let mut choices = vec![(6, valid)];
    let invalid = invalid_calls(operation, schemas, &valid_parts);
    if !invalid.is_empty() {
        choices.push((3, Union::new(invalid).boxed()));
    }
    if operation.admin {
        let op = operation.clone();
        let anonymous = valid_parts.prop_map(move |(values, body)| op.call(&values, body, Intent::Anonymous));
        choices.push((1, anonymous.boxed()));
    }
    (Union::new_weighted(choices), proptest::bool::weighted(0.25)).prop_map(|(call, tcp)| Call { tcp, ..call }).boxed()
}

type Parts = (Vec<BoxedStrategy<Option<String>>>, BoxedStrategy<Option<String>>);

/// Requests to `operation` that break its document one way each: a parameter or the body
/// refused by its schema, a required parameter or the body missing, a body that is not JSON.
fn invalid_calls(operation: &Operation, schemas: &Schemas, valid: &Parts) -> Vec<BoxedStrategy<Call>> {
    let mut calls = Vec::new();
    for (index, parameter) in operation.parameters.iter().enumerate() {
        let carrier = match parameter.place {
            Place::Path => Carrier::Segment,
            Place::Query => Carrier::Query,
            Place::Header => Carrier::Header,
        };
        for refused in schemas.invalid(&parameter.schema, carrier) {
            let (op, name) = (operation.clone(), parameter.name.clone());
            let call = (valid.clone(), refused).prop_filter_map(
                "not a parameter value",
                move |((mut values, body), (bad, breach))| {
                    let bad = text(&bad)?;
                    let what = format!("parameter {name} = {bad:?}");
                    values[index] = Some(bad);
                    Some(op.call(&values, body, Intent::Invalid { what, breach }))
                },
            );
            calls.push(call.boxed());
        }
        if parameter.required && parameter.place != Place::Path {
            let (op, name) = (operation.clone(), parameter.name.clone());
            let call = valid.clone().prop_map(move |(mut values, body)| {
                values[index] = None;
                op.call(&values, body, Intent::Invalid { what: format!("no {name}"), breach: Breach::Shape })
            });
            calls.push(call.boxed());
        }
    }
    if let Some(schema) = &operation.body {
        let mut bodies: Vec<BoxedStrategy<(Option<String>, String, Breach)>> = schemas
            .invalid(schema, Carrier::Json)
            .into_iter()
            .map(|refused| {
                refused.prop_map(|(body, breach)| (Some(body.to_string()), format!("body {body}"), breach)).boxed()
            })
            .collect();
        let junk = prop_oneof![Just("{\"unterminated".to_owned()), Just("not json".to_owned()), Just(String::new())];
        bodies.push(junk.prop_map(|junk| (Some(junk.clone()), format!("body {junk:?}"), Breach::Shape)).boxed());
        bodies.push(Just((None, "no body".to_owned(), Breach::Shape)).boxed());
        for bad in bodies {
            let op = operation.clone();
            let call = (valid.0.clone(), bad).prop_map(move |(values, (body, what, breach))| {
                op.call(&values, body, Intent::Invalid { what, breach })
            });
            calls.push(call.boxed());
        }
    }
    calls
}

/// An answer.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
}

/// Where calls go: the app's router in this process, or its listener over a real connection.
struct Transport<'a> {
    t: &'a TestApp,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl<'a> Transport<'a> {
    fn new(t: &'a TestApp) -> Self {
        let base = t.base_url().expect("the app listens");
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Self { t, base, client }
    }

    /// The request of `call`, to `base` (empty: in this process).
    fn request<B: From<String> + Default>(&self, call: &Call, base: &str) -> Request<B> {
        let mut request = Request::builder().method(call.method.clone()).uri(format!("{base}{}", call.uri));
        if call.admin {
            request = request.header("authorization", format!("Bearer {}", self.t.token));
        }
        for (name, value) in &call.headers {
            request = request.header(name, value);
        }
        match &call.body {
            Some(body) => request.header("content-type", "application/json").body(B::from(body.clone())),
            None => request.body(B::default()),
        }
        .expect("a request")
    }

    /// Sends `call`; an `Err` if the connection failed or no answer came.
    async fn send(&self, call: &Call) -> Result<Answer, String> {
        let (status, bytes) = if call.tcp {
            let request = self.request::<Full<Bytes>>(call, &self.base);
            let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
                .await
                .map_err(|_| "no answer within 30 s".to_owned())?
                .map_err(|e| format!("the connection failed: {e:?}"))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| format!("the body broke off: {e}"))?;
            (status, body.to_bytes())
        } else {
            let response = self.t.router.clone().oneshot(self.request::<Body>(call, "")).await.expect("infallible");
            let status = response.status();
            (status, axum::body::to_bytes(response.into_body(), 1 << 24).await.expect("a body"))
        };
        Ok(Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }
}

/// What the requests to one operation got.
#[derive(Debug, Default)]
struct Tally {
    /// Answers by intent ("valid", "invalid", "anonymous") and status.
    statuses: BTreeMap<(&'static str, u16), usize>,
    valid: usize,
    /// Valid requests answered 2xx, 404 or 409.
    accepted: usize,
    /// Some valid requests refused with a 4xx other than 404/409, with the reason.
    refused: Vec<String>,
    /// Answers the document does not give.
    wrong: Vec<String>,
    /// Requests sent over a real connection.
    tcp: usize,
}

impl Tally {
    /// Counts `answer` to `call`; an `Err` (a 5xx) fails the case, so that proptest shrinks it.
    fn record(&mut self, operation: &Operation, call: &Call, answer: &Answer) -> Result<(), String> {
        let status = answer.status.as_u16();
        let shown = || format!("{call} → {status} {}", answer.body);
        self.tcp += usize::from(call.tcp);
        if answer.status.is_server_error() {
            return Err(format!("a server error: {}", shown()));
        }
        let documented = operation.statuses.contains(&status);
        let has_message = answer.body["message"].is_string();
        let kind = match call.intent {
            Intent::Valid => "valid",
            Intent::Invalid { .. } => "invalid",
            Intent::Anonymous => "anonymous",
        };
        *self.statuses.entry((kind, status)).or_default() += 1;
        let right = match &call.intent {
            Intent::Valid => {
                self.valid += 1;
                if answer.status.is_success() || matches!(status, 404 | 409) {
                    self.accepted += 1;
                } else if self.refused.len() < 3 {
                    self.refused.push(shown());
                }
                documented && status != 401
            }
            Intent::Anonymous => status == 401 && documented,
            Intent::Invalid { breach: Breach::Shape, .. } => status == 400 && documented,
            Intent::Invalid { breach: Breach::Rule, .. } => matches!(status, 400 | 404 | 409) && documented,
        };
        let error_without_message = answer.status.is_client_error() && !has_message;
        if (!right || error_without_message) && self.wrong.len() < 5 {
            self.wrong.push(shown());
        }
        Ok(())
    }
}

/// The ids of real entities, in every state a test can reach: a participating store with two
/// products, a customer, an order whose shopping list is available, an order that is ready with
/// its invoice pending, an open basket with an item, and an authorized payment.
async fn real_entities(t: &TestApp) -> Ids {
    let store = t.post("/api/stores", true, json!({ "name": "Books", "location": "L1" })).await.id();
    assert_eq!(t.put(&format!("/api/stores/{store}/participating"), true, None).await.status, StatusCode::NO_CONTENT);
    let products = format!("/api/stores/{store}/products");
    let product = t.post(&products, true, json!({ "name": "Treasury", "price": 9.99 })).await.id();
    let other = t.post(&products, true, json!({ "name": "Atlas", "price": 9.99 })).await.id();
    let customer = register(t, "Ada").await;
    let available = order(t, &customer, &product, json!(19.98)).await;
    let ready = order(t, &customer, &product, json!(19.98)).await;
    status_becomes(t, &ready, "approved").await;
    let list = shopping_list(t, &ready).await["id"].as_str().expect("a list id").to_owned();
    let assign = t.put(&format!("/api/depot/shopping/{list}/assign"), true, Some(json!({ "botId": "bot-1" }))).await;
    assert_eq!(assign.status, StatusCode::NO_CONTENT);
    let done = t.put(&format!("/api/depot/shopping/{list}/complete"), true, None).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT);
    status_becomes(t, &ready, "ready").await;
    status_becomes(t, &available, "approved").await;
    let available_list = shopping_list(t, &available).await["id"].as_str().expect("a list id").to_owned();
    let basket = t.post("/api/baskets", false, json!({ "customerId": customer })).await.id();
    let item = json!({ "productId": other, "quantity": 1 });
    eventually("the second product reaches the baskets' catalog", || async {
        t.put(&format!("/api/baskets/{basket}/addItem"), false, Some(item.clone())).await.status
            == StatusCode::NO_CONTENT
    })
    .await;
    let payment = t.post("/api/payments", false, json!({ "customerId": customer, "amount": 9.99 })).await.id();
    let mut ids = Ids::default();
    for (kind, id) in [
        ("store", &store),
        ("product", &product),
        ("product", &other),
        ("customer", &customer),
        ("payment", &payment),
        ("bot", &"bot-1".to_owned()),
        ("shopping", &available_list),
        ("shopping", &list),
        ("invoice", &ready),
    ] {
        ids.add(kind, id);
    }
    // An order's id is its basket's.
    for kind in ["basket", "order", "ordering"] {
        for id in [&available, &ready] {
            ids.add(kind, id);
        }
    }
    ids.add("basket", &basket);
    ids
}

/// The seed of the generated requests: fixed, or `MALLBOTS_FUZZ_SEED` to explore others.
fn rng(config: &ProptestConfig) -> TestRng {
    match std::env::var("MALLBOTS_FUZZ_SEED").ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(seed) => TestRng::from_seed(config.rng_algorithm, &seed.to_le_bytes().repeat(4)),
        None => TestRng::deterministic_rng(config.rng_algorithm),
    }
}

#[test]
fn generated_requests_get_the_answers_the_openapi_document_gives() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let app = runtime.block_on(spawn_running_app());
    fuzz(&runtime, app, "SQLite");
}

/// The same on PostgreSQL (when its server runs), whose text cannot hold what SQLite's can.
#[test]
fn generated_requests_get_the_answers_the_openapi_document_gives_on_postgres() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    if let Some(app) = runtime.block_on(spawn_running_app_on(Backend::Postgres)) {
        fuzz(&runtime, app, "PostgreSQL");
    }
}

/// Sends every operation of the app's document its generated requests, prints what they got,
/// and checks it.
fn fuzz(runtime: &tokio::runtime::Runtime, app: RunningApp, backend: &str) {
    let t = &app.t;
    let ids = runtime.block_on(real_entities(t));
    let doc = runtime.block_on(t.get("/openapi.json")).body;
    let schemas = Schemas::new(&doc, ids);
    let transport = Transport::new(t);
    let started = std::time::Instant::now();
    let (mut failures, mut wrong, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    let (mut valid, mut accepted, mut tcp) = (0, 0, 0);
    let mut histogram: BTreeMap<u16, usize> = BTreeMap::new();
    // Printed at once at the end: the tests of both backends run side by side.
    let mut summary = format!("{backend}: requests per operation; answers by intent and status; valid ones accepted\n");
    let mut operations = operations(&doc);
    // Not `/metrics` (it takes no input): a scrape sets the process-wide business gauges from
    // its app's database, and would race the scrape of the metrics test in this binary.
    operations.retain(|o| o.path != "/metrics");
    // Deletions last: until then, the real entities are there for the other operations.
    operations.sort_by_key(|o| o.method == Method::DELETE);
    for operation in operations {
        let cases = if operation.takes_input() { CASES } else { 3 };
        let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
        let mut runner = TestRunner::new_with_rng(config.clone(), rng(&config));
        let tally = RefCell::new(Tally::default());
        let outcome = runner.run(&calls(&operation, &schemas), |call| {
            let answer =
                runtime.block_on(transport.send(&call)).map_err(|e| TestCaseError::fail(format!("{call}: {e}")))?;
            tally.borrow_mut().record(&operation, &call, &answer).map_err(TestCaseError::fail)
        });
        match outcome {
            Ok(()) => {}
            Err(TestError::Fail(reason, call)) => failures.push(format!("{operation}: {reason}\n  minimal: {call}")),
            Err(e) => failures.push(format!("{operation}: {e}")),
        }
        let tally = tally.into_inner();
        let answers: Vec<String> =
            tally.statuses.iter().map(|((kind, status), n)| format!("{kind} {status}×{n}")).collect();
        let sent: usize = tally.statuses.values().sum();
        summary += &format!("  {operation}: {sent}; {}; {}/{}\n", answers.join(", "), tally.accepted, tally.valid);
        for ((_, status), n) in &tally.statuses {
            *histogram.entry(*status).or_default() += n;
        }
        valid += tally.valid;
        tcp += tally.tcp;
        accepted += tally.accepted;
        wrong.extend(tally.wrong.into_iter().map(|w| format!("{operation}: {w}")));
        refused.extend(tally.refused.into_iter().map(|r| format!("{operation}: {r}")));
    }
    #[allow(clippy::cast_precision_loss)]
    let share = accepted as f64 / valid.max(1) as f64;
    let total: usize = histogram.values().sum();
    summary += &format!(
        "{backend}: {total} requests ({tcp} over TCP) in {:.1} s; statuses {histogram:?}; \
         valid ones accepted: {accepted}/{valid} ({:.1} %)\n",
        started.elapsed().as_secs_f64(),
        share * 100.0
    );
    for line in &refused {
        summary += &format!("  refused though valid: {line}\n");
    }
    println!("{summary}");
    runtime.block_on(app.stop());
    assert!(failures.is_empty(), "server errors or panics:\n{}", failures.join("\n"));
    assert!(wrong.is_empty(), "answers the document does not give:\n{}", wrong.join("\n"));
    assert!(
        share >= LEAST_ACCEPTED,
        "only {accepted} of {valid} valid requests were accepted:\n{}",
        refused.join("\n")
    );
}

#[tokio::test]
async fn the_openapi_document_declares_every_path_parameter_and_what_each_body_requires() {
    let t = spawn_app().await;
    let doc = t.get("/openapi.json").await.body;
    let schemas = Schemas::new(&doc, Ids::default());
    let mut problems = Vec::new();
    for operation in operations(&doc) {
        let in_path = template_parameters(&operation.path);
        let declared: BTreeSet<&str> =
            operation.parameters.iter().filter(|p| p.place == Place::Path).map(|p| p.name.as_str()).collect();
        if in_path != declared {
            problems.push(format!("{operation}: path parameters {in_path:?}, declared {declared:?}"));
        }
        for parameter in &operation.parameters {
            if parameter.place == Place::Path && !parameter.required {
                problems.push(format!("{operation}: path parameter {} is not required", parameter.name));
            }
            if types(schemas.resolve(&parameter.schema)).is_empty() {
                problems.push(format!("{operation}: parameter {} has no type", parameter.name));
            }
        }
        // Every value an enumeration of a query parameter lists is one the API takes.
        for parameter in operation.parameters.iter().filter(|p| p.place == Place::Query) {
            let listed = schemas.resolve(&parameter.schema)["enum"].as_array().cloned().unwrap_or_default();
            for value in listed.iter().filter_map(Value::as_str) {
                if operation.method != Method::GET || !in_path.is_empty() {
                    break;
                }
                let uri = format!("{}?{}={}", operation.path, parameter.name, encode(value));
                let reply = t.request(Method::GET, &uri, operation.admin, None, &[]).await;
                if !reply.status.is_success() {
                    problems
                        .push(format!("{operation}: {} {value:?} is listed but refused: {reply:?}", parameter.name));
                }
            }
        }
        if !in_path.is_empty() && !operation.statuses.contains(&404) {
            problems.push(format!("{operation}: names something by id but documents no 404"));
        }
        if operation.admin && !operation.statuses.contains(&401) {
            problems.push(format!("{operation}: needs the admin token but documents no 401"));
        }
        let Some(body) = &operation.body else { continue };
        if !operation.statuses.contains(&400) {
            problems.push(format!("{operation}: takes a body but documents no 400"));
        }
        let schema = schemas.resolve(body);
        if types(schema) != ["object"] {
            problems.push(format!("{operation}: the body is not an object: {schema}"));
            continue;
        }
        let properties = schema["properties"].as_object().cloned().unwrap_or_default();
        let required = json_schema::required(schema);
        for name in &required {
            if !properties.contains_key(name) {
                problems.push(format!("{operation}: required {name} is no property"));
            }
        }
        // An optional property says what its absence means: null, or its default.
        for (name, property) in &properties {
            let property = schemas.resolve(property);
            let branches: Vec<&Value> = property["oneOf"].as_array().into_iter().flatten().collect();
            let has_type = !types(property).is_empty() || !branches.is_empty();
            let nullable = types(property).contains(&"null") || branches.iter().any(|b| types(b) == ["null"]);
            let absence_said = nullable || property.get("default").is_some();
            if !has_type {
                problems.push(format!("{operation}: property {name} has no type"));
            }
            if !required.contains(name) && !absence_said {
                problems.push(format!("{operation}: optional property {name} is neither nullable nor defaulted"));
            }
        }
        if required.is_empty() && properties.is_empty() {
            problems.push(format!("{operation}: the body lists no property"));
        }
    }
    assert!(problems.is_empty(), "the OpenAPI document is not exact:\n{}", problems.join("\n"));
}
