//! REST endpoint of analytics (admin: business figures).

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, Summary};
use crate::error::AppResult;
use crate::http::{Admin, AppState, ErrorBody};

/// The routes of analytics.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(summary))
}

/// Orders by status, revenue and top products.
#[utoipa::path(get, path = "/api/analytics/summary", tag = "analytics", security(("admin" = [])),
    responses((status = OK, body = Summary), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn summary(_: Admin, State(state): State<AppState>) -> AppResult<Json<Summary>> {
    Ok(Json(app::summary(&state.db).await?))
}
