//! REST endpoints of search (admin: it shows every customer's orders).

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use serde::Deserialize;

use super::application::{self as app, OrderSummary, SearchOrders, SearchPage};
use crate::error::{AppError, AppResult};
use crate::http::{Admin, ApiJson, ApiPath, AppState, ErrorBody};
use crate::money::Money;

/// The routes of search.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search_orders)).routes(routes!(get_order))
}

/// Orders by customer, time range, stores, products, total range and status, a page at a time.
/// The body is the filters themselves (below), or the book's shape: `{"filters": {"customerId",
/// "after", "before", "storeIds", "productIds", "minTotal", "maxTotal", "status"}, "next",
/// "limit", "newestFirst"}`.
#[utoipa::path(post, path = "/api/search/orders", tag = "search", security(("admin" = [])), request_body = SearchOrders,
    responses((status = OK, body = SearchPage), (status = BAD_REQUEST, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn search_orders(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> AppResult<Json<SearchPage>> {
    let filters = if body.get("filters").is_some() {
        serde_json::from_value::<BookSearch>(body).map(SearchOrders::from)
    } else {
        serde_json::from_value::<SearchOrders>(body)
    }
    .map_err(|e| AppError::invalid(format!("invalid search request: {e}")))?;
    Ok(Json(app::search(&state.db, filters).await?))
}

/// The book's request: filters apart from the page.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BookSearch {
    #[serde(default)]
    filters: BookFilters,
    next: Option<String>,
    limit: Option<u32>,
    #[serde(default)]
    newest_first: bool,
}

/// The book's filters.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BookFilters {
    customer_id: Option<String>,
    after: Option<chrono::DateTime<chrono::Utc>>,
    before: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    store_ids: Vec<String>,
    #[serde(default)]
    product_ids: Vec<String>,
    min_total: Option<Money>,
    max_total: Option<Money>,
    status: Option<String>,
}

impl From<BookSearch> for SearchOrders {
    fn from(BookSearch { filters: f, next, limit, newest_first }: BookSearch) -> Self {
        Self {
            customer_id: f.customer_id,
            created_after: f.after,
            created_before: f.before,
            store_ids: f.store_ids,
            product_ids: f.product_ids,
            min_total: f.min_total,
            max_total: f.max_total,
            status: f.status,
            cursor: next,
            limit,
            newest_first,
        }
    }
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
