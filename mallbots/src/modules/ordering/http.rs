//! REST endpoints of ordering (kiosk endpoints: public).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, OrderView};
use crate::error::AppResult;
use crate::http::{ApiPath, AppState, ErrorBody, write};

/// The routes of ordering.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_order, cancel_order))
}

const TAG: &str = "ordering";

/// One order with its status and items.
#[utoipa::path(get, path = "/api/ordering/{id}", tag = TAG, params(("id" = String, Path, description = "order id (= basket id)")),
    responses((status = OK, body = OrderView), (status = NOT_FOUND, body = ErrorBody)))]
async fn get_order(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<Json<OrderView>> {
    Ok(Json(app::get_order(state.store.as_ref(), &id).await?))
}

/// Cancels an order that is not ready yet.
#[utoipa::path(delete, path = "/api/ordering/{id}", tag = TAG, params(("id" = String, Path, description = "order id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = CONFLICT, body = ErrorBody)))]
async fn cancel_order(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::cancel(tx, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}
