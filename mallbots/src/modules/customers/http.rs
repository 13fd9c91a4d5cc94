//! REST endpoints of customers. Registering, reading and changing the SMS number are kiosk
//! endpoints (public); enabling and disabling need the admin token.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, CustomerView};
use crate::error::AppResult;
use crate::http::{Admin, ApiJson, ApiPath, AppState, Created, ErrorBody, IdempotencyKeyHeader, create, write};

/// A new customer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterCustomerRequest {
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S", example = "Ada")]
    pub name: String,
    /// Digits, spaces, `+`, `-`, `(` and `)`, with 3 to 20 digits.
    #[schema(min_length = 3, pattern = "^[ +()-]*([0-9][ +()-]*){3,20}$", example = "+44 555 0100")]
    pub sms_number: String,
}

/// A customer's new SMS number.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeSmsRequest {
    /// Digits, spaces, `+`, `-`, `(` and `)`, with 3 to 20 digits.
    #[schema(min_length = 3, pattern = "^[ +()-]*([0-9][ +()-]*){3,20}$", example = "+44 555 0100")]
    pub sms_number: String,
}

/// The routes of customers.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_customer))
        .routes(routes!(get_customer))
        .routes(routes!(change_sms))
        .routes(routes!(enable_customer))
        .routes(routes!(disable_customer))
        .routes(routes!(forget_customer))
}

const TAG: &str = "customers";

/// Registers a customer (enabled).
#[utoipa::path(post, path = "/api/customers", tag = TAG, request_body = RegisterCustomerRequest,
    params(IdempotencyKeyHeader),
    responses((status = CREATED, body = Created), (status = BAD_REQUEST, body = ErrorBody),
        (status = CONFLICT, description = "the Idempotency-Key was used for another request", body = ErrorBody)))]
async fn register_customer(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RegisterCustomerRequest>,
) -> AppResult<Response> {
    let RegisterCustomerRequest { name, sms_number } = request.clone();
    let shredder = state.shredder.clone();
    let id = app::new_customer(&shredder).await?;
    create(&state, &headers, "POST /api/customers", &request, move |tx| {
        Box::pin(async move { app::register(tx, &shredder, id, name, sms_number).await })
    })
    .await
}

/// One customer.
#[utoipa::path(get, path = "/api/customers/{id}", tag = TAG, params(("id" = String, Path, description = "customer id")),
    responses((status = OK, body = CustomerView), (status = NOT_FOUND, body = ErrorBody)))]
async fn get_customer(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<Json<CustomerView>> {
    Ok(Json(app::get_customer(&state.db, &id).await?))
}

/// Changes a customer's SMS number.
#[utoipa::path(put, path = "/api/customers/{id}/change-sms", tag = TAG,
    params(("id" = String, Path, description = "customer id")), request_body = ChangeSmsRequest,
    responses((status = NO_CONTENT), (status = BAD_REQUEST, body = ErrorBody), (status = NOT_FOUND, body = ErrorBody)))]
async fn change_sms(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ChangeSmsRequest>,
) -> AppResult<StatusCode> {
    let shredder = state.shredder.clone();
    app::prepare_keys(&state.db, &shredder, &id).await?;
    write(&state, move |tx| Box::pin(async move { app::change_sms(tx, &shredder, &id, request.sms_number).await }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lets a customer order again.
#[utoipa::path(put, path = "/api/customers/{id}/enable", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "customer id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = CONFLICT, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn enable_customer(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<StatusCode> {
    let shredder = state.shredder.clone();
    write(&state, move |tx| Box::pin(async move { app::enable(tx, &shredder, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops a customer from ordering (the create-order saga will reject their orders).
#[utoipa::path(put, path = "/api/customers/{id}/disable", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "customer id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = CONFLICT, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn disable_customer(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<StatusCode> {
    let shredder = state.shredder.clone();
    write(&state, move |tx| Box::pin(async move { app::disable(tx, &shredder, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Forgets a customer (the right to erasure): the key sealing its name and SMS number in every
/// event is deleted, so they read as `[forgotten]` everywhere, now and after any replay; its own
/// row and the copies other modules keep are blanked. Idempotent.
#[utoipa::path(post, path = "/api/customers/{id}/forget", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "customer id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn forget_customer(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<StatusCode> {
    app::forget_key(&state.db, &state.shredder, &id).await?;
    write(&state, move |tx| Box::pin(async move { app::forget(tx, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}
