//! REST endpoints of stores. Reads are public (the kiosks show the catalog); changes need the
//! admin token.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, NewProduct, ProductView, StoreView};
use crate::error::AppResult;
use crate::http::{Admin, ApiJson, ApiPath, AppState, Created, ErrorBody, IdempotencyKeyHeader, create, write};
use crate::money::Money;

/// A new store.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateStoreRequest {
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S", example = "Books")]
    pub name: String,
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S", example = "Level 1")]
    pub location: String,
}

/// A store's new name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebrandStoreRequest {
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S", example = "Books & Maps")]
    pub name: String,
}

/// A new product.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddProductRequest {
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S", example = "Treasure Island")]
    pub name: String,
    #[serde(default)]
    #[schema(default = "")]
    pub description: String,
    #[serde(default)]
    #[schema(default = "")]
    pub sku: String,
    /// Decimal amount, at most two fraction digits, not negative.
    #[schema(value_type = f64, minimum = 0, maximum = 9999999999999.99, multiple_of = 0.01, example = 9.99)]
    pub price: Money,
}

/// A product's new name and description.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebrandProductRequest {
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S", example = "Treasure Island")]
    pub name: String,
    #[serde(default)]
    #[schema(default = "")]
    pub description: String,
}

/// A product's new price.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangePriceRequest {
    /// Decimal amount, at most two fraction digits, not negative.
    #[schema(value_type = f64, minimum = 0, maximum = 9999999999999.99, multiple_of = 0.01, example = 10.99)]
    pub price: Money,
}

/// The routes of stores.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_store, get_stores))
        .routes(routes!(get_participating_stores))
        .routes(routes!(get_store))
        .routes(routes!(enable_participation, disable_participation))
        .routes(routes!(rebrand_store))
        .routes(routes!(add_product, get_catalog))
        .routes(routes!(get_product, remove_product))
        .routes(routes!(rebrand_product))
        .routes(routes!(increase_price))
        .routes(routes!(decrease_price))
}

const TAG: &str = "stores";

/// Creates a store (not yet participating).
#[utoipa::path(post, path = "/api/stores", tag = TAG, request_body = CreateStoreRequest,
    security(("admin" = [])), params(IdempotencyKeyHeader),
    responses((status = CREATED, body = Created), (status = BAD_REQUEST, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody),
        (status = CONFLICT, description = "the Idempotency-Key was used for another request", body = ErrorBody)))]
async fn create_store(
    _: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateStoreRequest>,
) -> AppResult<Response> {
    let CreateStoreRequest { name, location } = request.clone();
    create(&state, &headers, "POST /api/stores", &request, move |tx| {
        Box::pin(async move { app::create_store(tx, name, location).await })
    })
    .await
}

/// Every store.
#[utoipa::path(get, path = "/api/stores", tag = TAG, responses((status = OK, body = Vec<StoreView>)))]
async fn get_stores(State(state): State<AppState>) -> AppResult<Json<Vec<StoreView>>> {
    Ok(Json(app::get_stores(&state.db, false).await?))
}

/// The stores taking part in the kiosk offer.
#[utoipa::path(get, path = "/api/stores/participating", tag = TAG, responses((status = OK, body = Vec<StoreView>)))]
async fn get_participating_stores(State(state): State<AppState>) -> AppResult<Json<Vec<StoreView>>> {
    Ok(Json(app::get_stores(&state.db, true).await?))
}

/// One store.
#[utoipa::path(get, path = "/api/stores/{id}", tag = TAG, params(("id" = String, Path, description = "store id")),
    responses((status = OK, body = StoreView), (status = NOT_FOUND, body = ErrorBody)))]
async fn get_store(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<Json<StoreView>> {
    Ok(Json(app::get_store(&state.db, &id).await?))
}

/// Lets the store take part in the kiosk offer.
#[utoipa::path(put, path = "/api/stores/{id}/participating", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "store id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = CONFLICT, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn enable_participation(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::enable_participation(tx, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes the store out of the kiosk offer.
#[utoipa::path(delete, path = "/api/stores/{id}/participating", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "store id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = CONFLICT, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn disable_participation(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::disable_participation(tx, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Renames a store.
#[utoipa::path(put, path = "/api/stores/{id}/rebrand", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "store id")), request_body = RebrandStoreRequest,
    responses((status = NO_CONTENT), (status = BAD_REQUEST, body = ErrorBody), (status = NOT_FOUND, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn rebrand_store(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<RebrandStoreRequest>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::rebrand_store(tx, &id, request.name).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a product to a store.
#[utoipa::path(post, path = "/api/stores/{id}/products", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "store id"), IdempotencyKeyHeader),
    request_body = AddProductRequest,
    responses((status = CREATED, body = Created), (status = BAD_REQUEST, body = ErrorBody),
        (status = NOT_FOUND, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody),
        (status = CONFLICT, description = "the Idempotency-Key was used for another request", body = ErrorBody)))]
async fn add_product(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(store_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<AddProductRequest>,
) -> AppResult<Response> {
    let route = format!("POST /api/stores/{store_id}/products");
    let AddProductRequest { name, description, sku, price } = request.clone();
    create(&state, &headers, &route, &request, move |tx| {
        Box::pin(async move { app::add_product(tx, &store_id, NewProduct { name, description, sku, price }).await })
    })
    .await
}

/// The products of a store.
#[utoipa::path(get, path = "/api/stores/{id}/products", tag = TAG, params(("id" = String, Path, description = "store id")),
    responses((status = OK, body = Vec<ProductView>), (status = NOT_FOUND, body = ErrorBody)))]
async fn get_catalog(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<Json<Vec<ProductView>>> {
    Ok(Json(app::get_catalog(&state.db, &id).await?))
}

/// One product.
#[utoipa::path(get, path = "/api/stores/products/{id}", tag = TAG, params(("id" = String, Path, description = "product id")),
    responses((status = OK, body = ProductView), (status = NOT_FOUND, body = ErrorBody)))]
async fn get_product(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<Json<ProductView>> {
    Ok(Json(app::get_product(&state.db, &id).await?))
}

/// Stops selling a product.
#[utoipa::path(delete, path = "/api/stores/products/{id}", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "product id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn remove_product(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::remove_product(tx, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Renames and redescribes a product.
#[utoipa::path(put, path = "/api/stores/products/{id}/rebrand", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "product id")), request_body = RebrandProductRequest,
    responses((status = NO_CONTENT), (status = BAD_REQUEST, body = ErrorBody), (status = NOT_FOUND, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn rebrand_product(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<RebrandProductRequest>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::rebrand_product(tx, &id, request.name, request.description).await }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Raises a product's price (the new price must be higher).
#[utoipa::path(put, path = "/api/stores/products/{id}/increasePrice", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "product id")), request_body = ChangePriceRequest,
    responses((status = NO_CONTENT), (status = BAD_REQUEST, body = ErrorBody), (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn increase_price(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ChangePriceRequest>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::increase_price(tx, &id, request.price).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lowers a product's price (the new price must be lower).
#[utoipa::path(put, path = "/api/stores/products/{id}/decreasePrice", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "product id")), request_body = ChangePriceRequest,
    responses((status = NO_CONTENT), (status = BAD_REQUEST, body = ErrorBody), (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn decrease_price(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ChangePriceRequest>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::decrease_price(tx, &id, request.price).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}
