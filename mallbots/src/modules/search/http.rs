//! REST endpoints of search (admin: it shows every customer's orders).

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, OrderSummary, SearchOrders, SearchPage};
use crate::error::AppResult;
use crate::http::{Admin, ApiJson, ApiPath, AppState, ErrorBody};

/// The routes of search.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search_orders)).routes(routes!(get_order))
}

/// Orders by customer, time range, stores, products, total range and status, a page at a time.
#[utoipa::path(post, path = "/api/search/orders", tag = "search", security(("admin" = [])), request_body = SearchOrders,
    responses((status = OK, body = SearchPage), (status = BAD_REQUEST, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn search_orders(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(filters): ApiJson<SearchOrders>,
) -> AppResult<Json<SearchPage>> {
    Ok(Json(app::search(&state.db, filters).await?))
}

/// One order, as search has it.
#[utoipa::path(get, path = "/api/search/orders/{id}", tag = "search", security(("admin" = [])),
    params(("id" = String, Path, description = "order id")),
    responses((status = OK, body = OrderSummary), (status = NOT_FOUND, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn get_order(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<Json<OrderSummary>> {
    Ok(Json(app::get(&state.db, &id).await?))
}
