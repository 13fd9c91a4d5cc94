//! The HTTP layer shared by every module: the state handlers see, the error → status mapping,
//! extractors that turn bad input into a 400 with a JSON message (never a 500 or a panic), the
//! admin bearer-token check, idempotent creation, health and readiness, the OpenAPI document
//! with its Swagger UI, and the AsyncAPI document of the messages (`/asyncapi.json`).

use herald_sql::any::query;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::future::BoxFuture;
use herald::asyncapi::{AsyncApi, AsyncApiError};
use herald::{Store, Transaction};
use herald_sql::AnyDatabase;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{Object, ObjectBuilder, Ref, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::db;
use crate::error::{AppError, AppResult};
use crate::module::{self, Gauges};

/// What a module's handlers can reach: its own store and database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The module's Herald store: every write is a unit of work begun here.
    pub store: Arc<dyn Store>,
    /// The module's database pool, for queries of its read models.
    pub db: AnyDatabase,
    /// The bearer token admin endpoints require.
    pub admin_token: Arc<str>,
    /// Seals and opens personal data (see `ModuleContext::shredder`).
    pub shredder: herald::shredding::Shredder,
}

/// What the process's own endpoints (`/readyz`, `/metrics`) reach: everything the process
/// runs.
#[derive(Clone)]
pub struct Ops {
    /// The modules this process runs.
    pub modules: Vec<&'static str>,
    /// Every database it opened.
    pub databases: Vec<AnyDatabase>,
    /// Its distinct stores (for the outbox backlog).
    pub stores: Vec<Arc<dyn Store>>,
    /// The modules' gauges.
    pub gauges: Vec<Gauges>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops").field("modules", &self.modules).field("databases", &self.databases.len()).finish()
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub message: String,
}

/// The body answering a creation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    /// The new resource's id.
    pub id: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::Invalid(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Internal(e) => {
                tracing::error!(error = %e, source = ?e, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut response = (status, Json(ErrorBody { message: self.to_string() })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body whose every rejection (syntax, missing field, wrong type, bad amount, wrong
/// content type) is a 400 with the reason.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(AppError::Invalid(rejection.body_text())),
        }
    }
}

/// Path parameters whose rejection is a 400 with the reason.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(AppError::Invalid(rejection.body_text())),
        }
    }
}

/// Proof that the request carries the admin bearer token (`Authorization: Bearer …`).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin
where
    AppState: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let state = AppState::from_ref(state);
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match token {
            Some(token) if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) => Ok(Admin),
            _ => Err(AppError::Unauthorized),
        }
    }
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `given` is the admin `token` (REST and gRPC alike), compared in constant time.
pub fn token_matches(given: &str, token: &str) -> bool {
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// The `Idempotency-Key` header of a creating request.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `Idempotency-Key` header as the OpenAPI document shows it (what [`idempotency_key`]
/// takes; HTTP trims a header value, and it must be visible ASCII to be text).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// Makes the creation repeat-safe: a repeat with this key gets the first answer back (a
    /// repeat with another body, a 409). 1 to 200 visible ASCII characters.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$")]
    pub key: Option<String>,
}

/// The schema of a text that must be one of `values` (`nullable`: or null), for a field that
/// the server checks against a list (`#[schema(schema_with = …)]`, which drops the field's doc
/// comment: hence the `description`).
pub fn one_of(description: &str, values: &[&str], nullable: bool) -> Object {
    let mut allowed: Vec<serde_json::Value> = values.iter().map(|v| (*v).into()).collect();
    let types = if nullable {
        allowed.push(serde_json::Value::Null);
        SchemaType::Array(vec![Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    ObjectBuilder::new().schema_type(types).description(Some(description)).enum_values(Some(allowed)).build()
}

/// The `Idempotency-Key` header, if any (at most 200 characters).
pub fn idempotency_key(headers: &HeaderMap) -> AppResult<Option<String>> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => {
            let key = value.to_str().map_err(|_| AppError::invalid("the Idempotency-Key header must be text"))?.trim();
            if key.is_empty() || key.len() > 200 {
                return Err(AppError::invalid("the Idempotency-Key header must have 1 to 200 characters"));
            }
            Ok(Some(key.to_owned()))
        }
    }
}

/// A unit of work for a write.
pub type Work<'a, T> = BoxFuture<'a, AppResult<T>>;

/// Runs `work` in one Herald transaction and commits it.
pub async fn write<T>(
    state: &AppState,
    work: impl for<'a> FnOnce(&'a mut dyn Transaction) -> Work<'a, T>,
) -> AppResult<T> {
    let mut tx = state.store.begin().await?;
    let value = work(tx.as_mut()).await?;
    tx.commit().await?;
    Ok(value)
}

/// Creates something and answers `201 {"id": …}`. With an `Idempotency-Key`, the first
/// response to that key on this `route` is stored in the same transaction as the creation, and
/// a repeat gets it back instead of creating again (a repeat with another body is a 409).
/// SQLite write transactions are serialised (`BEGIN IMMEDIATE`), so two racing repeats cannot
/// both create; on PostgreSQL the second one's key insert waits for the first and fails on the
/// primary key, which answers 409 (retry) and rolls its creation back.
pub async fn create(
    state: &AppState,
    headers: &HeaderMap,
    route: &str,
    fingerprint: &impl Serialize,
    work: impl for<'a> FnOnce(&'a mut dyn Transaction) -> Work<'a, String>,
) -> AppResult<Response> {
    let key = idempotency_key(headers)?;
    let fingerprint = serde_json::to_string(fingerprint).map_err(AppError::internal)?;
    let mut tx = state.store.begin().await?;
    if let Some(key) = &key {
        let stored: Option<(String, i64, String)> =
            query("SELECT fingerprint, status, body FROM http_idempotency WHERE key = ? AND route = ?")
                .bind(key)
                .bind(route)
                .fetch_optional(db::conn(tx.as_mut())?)
                .await?;
        if let Some((stored_fingerprint, status, body)) = stored {
            if stored_fingerprint != fingerprint {
                return Err(AppError::conflict("this Idempotency-Key was used for a different request"));
            }
            let status =
                u16::try_from(status).ok().and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::CREATED);
            let mut response = (status, body).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
    }
    let id = work(tx.as_mut()).await?;
    let body = serde_json::to_string(&Created { id }).map_err(AppError::internal)?;
    if let Some(key) = &key {
        query(
            "INSERT INTO http_idempotency (key, route, fingerprint, status, body, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(key)
        .bind(route)
        .bind(&fingerprint)
        .bind(i64::from(StatusCode::CREATED.as_u16()))
        .bind(&body)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(db::conn(tx.as_mut())?)
        .await?;
    }
    tx.commit().await?;
    let mut response = (StatusCode::CREATED, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = OK, description = "alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: every database of the process answers. Names the modules it runs.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = OK, description = "ready"), (status = SERVICE_UNAVAILABLE, description = "not ready")))]
async fn readyz(axum::extract::State(ops): axum::extract::State<Ops>) -> Response {
    for db in &ops.databases {
        if let Err(e) = db.ping().await {
            tracing::warn!(error = %e, "not ready: a database does not answer");
            let body = serde_json::json!({ "status": "database unavailable", "modules": ops.modules });
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    }
    Json(serde_json::json!({ "status": "ready", "modules": ops.modules })).into_response()
}

async fn not_found() -> AppError {
    AppError::NotFound("route".into())
}

use crate::error::NUL_REFUSED;

/// The largest JSON body read (axum's default limit of the JSON extractor).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Refuses, with a 400, a request whose path, query or JSON body holds the NUL character
/// (`%00`, `\u0000`): no text of the API may hold one, and PostgreSQL cannot store one (the
/// statement would fail, a 500; or an event would carry it to consumers that fail on it).
async fn refuse_nul(request: Request, next: Next) -> Response {
    let uri = request.uri();
    if uri.path().contains("%00") || uri.query().is_some_and(|q| q.contains("%00")) {
        return AppError::invalid(NUL_REFUSED).into_response();
    }
    let json =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
    if !json {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(e) => return AppError::invalid(format!("the body could not be read (at most 2 MiB): {e}")).into_response(),
    };
    if holds_nul(&bytes) {
        return AppError::invalid(NUL_REFUSED).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Whether JSON text holds the NUL character: JSON can only write it as the escape `\u0000`
/// (a backslash not itself escaped, i.e. after an even number of backslashes).
fn holds_nul(json: &[u8]) -> bool {
    json.windows(6).enumerate().any(|(at, window)| {
        window == br"\u0000" && json[..at].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 0
    })
}

/// Documents the 400 of every operation that takes input and does not say so yet: any text
/// with the NUL character is refused (see [`refuse_nul`]), whatever the operation.
fn document_bad_requests(api: &mut utoipa::openapi::OpenApi) {
    let bad_request = ResponseBuilder::new()
        .description("invalid input (e.g. text with the NUL character)")
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build();
    for item in api.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            let takes_input =
                operation.request_body.is_some() || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
            if takes_input {
                operation.responses.responses.entry("400".into()).or_insert_with(|| bad_request.clone().into());
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "MallBots",
        description = "The kiosk and admin REST API of MallBots, Herald's reference application. \
        Admin endpoints need `Authorization: Bearer <admin token>`. Amounts are decimal numbers with at most two \
        fraction digits. Creating requests honour an `Idempotency-Key` header. No text may hold the NUL character \
        (U+0000): a request with one is a 400."
    ),
    components(schemas(ErrorBody, Created))
)]
struct ApiDoc;

/// The AsyncAPI document of the messages of `modules` (by name): what each publishes, what each
/// of its consumer groups handles, every payload's JSON Schema (ADR 0022).
pub fn asyncapi(modules: &[&str]) -> Result<serde_json::Value, AsyncApiError> {
    let doc = AsyncApi::new("MallBots", env!("CARGO_PKG_VERSION")).description(
        "The messages of MallBots' modules (those this process runs): integration events, and the create-order \
        saga's commands and replies. Payloads are JSON; Herald's headers carry each message's name, ordering key \
        and metadata (correlation, causation, W3C trace context).",
    );
    modules.iter().filter_map(|name| module::find(name)).fold(doc, |doc, m| (m.messages)(doc)).build()
}

/// The HTTP application of a process: its modules' routes (their state bound), the ops
/// endpoints, `/openapi.json` (of what this process serves) and Swagger UI at `/docs`, and
/// `/asyncapi.json` (the messages of the modules it runs).
pub fn router(ops: Ops, modules: Vec<OpenApiRouter>) -> Router {
    // Built once: a description that contradicts itself is a bug, answered as a 500 naming it.
    let asyncapi = Arc::new(asyncapi(&ops.modules).map_err(|e| e.to_string()));
    let process: OpenApiRouter = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(utoipa_axum::routes!(healthz))
        .routes(utoipa_axum::routes!(readyz))
        .routes(utoipa_axum::routes!(crate::metrics::scrape))
        .with_state(ops);
    let (router, mut api) = modules.into_iter().fold(process, OpenApiRouter::merge).split_for_parts();
    document_bad_requests(&mut api);
    if let Some(components) = api.components.as_mut() {
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
    router
        .route(
            "/asyncapi.json",
            axum::routing::get(move || {
                let asyncapi = asyncapi.clone();
                async move {
                    match asyncapi.as_ref() {
                        Ok(doc) => Json(doc.clone()).into_response(),
                        Err(e) => AppError::internal(e.clone()).into_response(),
                    }
                }
            }),
        )
        .fallback(not_found)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .layer(axum::middleware::from_fn(refuse_nul))
        .layer(axum::middleware::from_fn(crate::metrics::observe_http))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_nul_character_is_found_in_json_only_where_it_is_one() {
        assert!(holds_nul(br#"{"name":"a\u0000b"}"#));
        assert!(holds_nul(br#"{"name":"\\\u0000"}"#), "an escaped backslash, then NUL");
        assert!(!holds_nul(br#"{"name":"\\u0000"}"#), "a backslash, then the text u0000");
        assert!(!holds_nul(br#"{"name":"u0000 \u0001"}"#));
    }

    /// Every route of every module is a receive operation of the AsyncAPI document (same topic,
    /// same group), and every receive operation is a route: the two lists cannot drift apart.
    /// (Admin's archive routes are left out: they follow the other routes' dead-letter topics.)
    #[tokio::test]
    async fn the_asyncapi_document_has_every_route_of_every_module() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("routes.db");
        let db: AnyDatabase =
            herald_sql::SqliteConfig::new(path.to_string_lossy()).open().await.expect("opens SQLite").into();
        let cx = module::ModuleContext {
            store: db.store(),
            broker: db.broker(),
            shredder: herald::shredding::Shredder::new(Arc::new(herald::shredding::MemoryKeyStore::default())),
            db,
            admin_token: "token".into(),
            stop: tokio_util::sync::CancellationToken::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            sms_latency: std::time::Duration::ZERO,
            basket_ttl: crate::settings::DEFAULT_BASKET_TTL,
            instance: "test".into(),
        };
        let routes: BTreeSet<(String, String)> = module::MODULES
            .iter()
            .flat_map(|m| (m.routes)(&cx))
            .map(|r| (r.options().topic.clone(), r.options().group.clone()))
            .filter(|(_, group)| group != crate::modules::admin::ARCHIVE_GROUP)
            .collect();
        let doc = asyncapi(&module::names_of(module::MODULES.iter())).expect("a consistent description");
        let described: BTreeSet<(String, String)> = doc["operations"]
            .as_object()
            .expect("operations")
            .values()
            .filter(|o| o["action"] == "receive")
            .map(|o| {
                let channel = o["channel"]["$ref"].as_str().and_then(|r| doc.pointer(&r[1..])).expect("its channel");
                let group = o["x-herald-group"].as_str().expect("a group");
                (channel["address"].as_str().expect("an address").to_owned(), group.to_owned())
            })
            .collect();
        assert_eq!(described, routes);
    }

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
