//! REST endpoints of depot (admin: the depot staff and, for now, the bots).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, BotView, ShoppingListView};
use crate::error::{AppError, AppResult};
use crate::http::{Admin, ApiJson, ApiPath, AppState, ErrorBody, one_of, write};

/// The bot taking a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignRequest {
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S", example = "bot-1")]
    pub bot_id: String,
}

/// Which lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// pending, available, assigned, active, completed or canceled.
    #[param(schema_with = list_statuses)]
    pub status: Option<String>,
}

/// The statuses a list can be asked by (those `ShoppingStatus::parse` knows).
fn list_statuses() -> utoipa::openapi::Object {
    one_of(
        "Only lists of this status.",
        &["pending", "available", "assigned", "active", "completed", "canceled"],
        false,
    )
}

/// The routes of depot.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_shopping))
        .routes(routes!(get_shopping))
        .routes(routes!(assign_shopping))
        .routes(routes!(complete_shopping))
        .routes(routes!(list_bots))
}

/// Which bots.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BotQuery {
    /// idle, busy or offline.
    #[param(schema_with = bot_statuses)]
    pub status: Option<String>,
}

/// The statuses a bot can be asked by (those `BotStatus::parse` knows).
fn bot_statuses() -> utoipa::openapi::Object {
    one_of("Only bots of this status.", &["idle", "busy", "offline"], false)
}

const TAG: &str = "depot";

/// Shopping lists, optionally of one status.
#[utoipa::path(get, path = "/api/depot/shopping", tag = TAG, security(("admin" = [])), params(ListQuery),
    responses((status = OK, body = Vec<ShoppingListView>), (status = BAD_REQUEST, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn list_shopping(
    _: Admin,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<Vec<ShoppingListView>>> {
    let Query(query) = query.map_err(|e| AppError::Invalid(e.body_text()))?;
    Ok(Json(app::list(&state.db, query.status.as_deref()).await?))
}

/// One shopping list, with its stops.
#[utoipa::path(get, path = "/api/depot/shopping/{id}", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "shopping list id")),
    responses((status = OK, body = ShoppingListView), (status = NOT_FOUND, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn get_shopping(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<Json<ShoppingListView>> {
    Ok(Json(app::get(&state.db, &id).await?))
}

/// A bot takes an available list.
#[utoipa::path(put, path = "/api/depot/shopping/{id}/assign", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "shopping list id")), request_body = AssignRequest,
    responses((status = NO_CONTENT), (status = BAD_REQUEST, body = ErrorBody), (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn assign_shopping(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<AssignRequest>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::assign(tx, &id, request.bot_id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The bot brought everything to the depot (the order becomes ready).
#[utoipa::path(put, path = "/api/depot/shopping/{id}/complete", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "shopping list id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = CONFLICT, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn complete_shopping(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::complete(tx, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The shopper bots (idle, busy with a list, or offline), by id, optionally of one status.
#[utoipa::path(get, path = "/api/depot/bots", tag = TAG, security(("admin" = [])), params(BotQuery),
    responses((status = OK, body = Vec<BotView>), (status = BAD_REQUEST, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn list_bots(
    _: Admin,
    State(state): State<AppState>,
    query: Result<Query<BotQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<Vec<BotView>>> {
    let Query(query) = query.map_err(|e| AppError::Invalid(e.body_text()))?;
    Ok(Json(app::list_bots(&state.db, query.status.as_deref()).await?))
}
