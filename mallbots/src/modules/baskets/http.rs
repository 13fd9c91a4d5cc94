//! REST endpoints of baskets (kiosk endpoints: public, validated).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, BasketTtl, BasketView};
use crate::error::AppResult;
use crate::http::{ApiJson, ApiPath, AppState, Created, ErrorBody, IdempotencyKeyHeader, create, write};

/// A new basket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartBasketRequest {
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S")]
    pub customer_id: String,
}

/// A product and how many.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemRequest {
    pub product_id: String,
    /// 1 to 10 000 (a basket holds at most 10 000 of one product).
    #[schema(minimum = 1, maximum = 10000, example = 2)]
    pub quantity: u32,
}

/// The payment to check out with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutRequest {
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S")]
    pub payment_id: String,
}

/// The routes of baskets.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_basket))
        .routes(routes!(get_basket, cancel_basket))
        .routes(routes!(add_item))
        .routes(routes!(remove_item))
        .routes(routes!(checkout_basket))
}

const TAG: &str = "baskets";

/// Starts a basket for a customer. A basket neither checked out nor canceled within the
/// server's `basket_ttl` (30 minutes by default) is canceled then.
#[utoipa::path(post, path = "/api/baskets", tag = TAG, request_body = StartBasketRequest,
    params(IdempotencyKeyHeader),
    responses((status = CREATED, body = Created), (status = BAD_REQUEST, body = ErrorBody),
        (status = CONFLICT, description = "the Idempotency-Key was used for another request", body = ErrorBody)))]
async fn start_basket(
    State(state): State<AppState>,
    Extension(ttl): Extension<BasketTtl>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<StartBasketRequest>,
) -> AppResult<Response> {
    let customer_id = request.customer_id.clone();
    create(&state, &headers, "POST /api/baskets", &request, move |tx| {
        Box::pin(async move { app::start_basket(tx, customer_id, ttl).await })
    })
    .await
}

/// One basket, with its items and total.
#[utoipa::path(get, path = "/api/baskets/{id}", tag = TAG, params(("id" = String, Path, description = "basket id")),
    responses((status = OK, body = BasketView), (status = NOT_FOUND, body = ErrorBody)))]
async fn get_basket(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<Json<BasketView>> {
    Ok(Json(app::get_basket(state.store.as_ref(), &id).await?))
}

/// Abandons a basket.
#[utoipa::path(delete, path = "/api/baskets/{id}", tag = TAG, params(("id" = String, Path, description = "basket id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = CONFLICT, body = ErrorBody)))]
async fn cancel_basket(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::cancel(tx, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a product (name and price from the local catalog).
#[utoipa::path(put, path = "/api/baskets/{id}/addItem", tag = TAG, params(("id" = String, Path, description = "basket id")),
    request_body = ItemRequest,
    responses((status = NO_CONTENT), (status = BAD_REQUEST, body = ErrorBody), (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, body = ErrorBody)))]
async fn add_item(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ItemRequest>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::add_item(tx, &id, &request.product_id, request.quantity).await }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes some of a product out (all of it removes the line).
#[utoipa::path(put, path = "/api/baskets/{id}/removeItem", tag = TAG, params(("id" = String, Path, description = "basket id")),
    request_body = ItemRequest,
    responses((status = NO_CONTENT), (status = BAD_REQUEST, body = ErrorBody), (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, body = ErrorBody)))]
async fn remove_item(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ItemRequest>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::remove_item(tx, &id, request.product_id, request.quantity).await }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks out with a payment id (publishes BasketCheckedOut).
#[utoipa::path(put, path = "/api/baskets/{id}/checkout", tag = TAG, params(("id" = String, Path, description = "basket id")),
    request_body = CheckoutRequest,
    responses((status = NO_CONTENT), (status = BAD_REQUEST, body = ErrorBody), (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, body = ErrorBody)))]
async fn checkout_basket(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<CheckoutRequest>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::checkout(tx, &id, request.payment_id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}
