//! REST endpoint of notifications (admin: it shows customers' SMS).

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, NotificationView};
use crate::error::{AppError, AppResult};
use crate::http::{Admin, AppState, ErrorBody};

/// Whose notifications.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// The customer (required, not blank).
    #[param(required = true, min_length = 1, pattern = "\\S")]
    pub customer_id: Option<String>,
}

/// The routes of notifications.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_notifications))
}

/// The SMS sent to a customer.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications", security(("admin" = [])), params(NotificationQuery),
    responses((status = OK, body = Vec<NotificationView>), (status = BAD_REQUEST, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn list_notifications(
    _: Admin,
    State(state): State<AppState>,
    query: Result<Query<NotificationQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<Vec<NotificationView>>> {
    let Query(query) = query.map_err(|e| AppError::Invalid(e.body_text()))?;
    let customer_id = query
        .customer_id
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| AppError::invalid("customerId is required"))?;
    Ok(Json(app::sent_to(&state.db, customer_id.trim()).await?))
}
