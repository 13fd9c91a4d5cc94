//! Dead letters over HTTP (admin): every message a MallBots consumer gave up on is archived
//! (by the admin module's archive routes on every route's dead-letter topic), and can be listed,
//! inspected, replayed to the group that failed it (and only that group), or discarded.

use axum::Json;
use axum::extract::{Query, State};
use herald::MessageId;
use herald::dead_letters::{DeadLetter, DeadLetterError, DeadLetterFilter, DeadLetterStatus, DeadLetters, Page};
use herald_sql::AnyDatabase;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{AppError, AppResult};
use crate::http::{Admin, ApiPath, AppState, ErrorBody, one_of};

/// The dead-letter API over `db`, with the live feed's hook: every dead letter archived or
/// resolved through it is on the feed.
pub(super) fn api(db: &AnyDatabase) -> DeadLetters {
    db.dead_letters().hook(super::live::DeadLetterFeed)
}

/// The consumer group of the archive routes.
pub const ARCHIVE_GROUP: &str = "mallbots-dead-letter-archive";

/// The routes of the dead-letter API.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(get)).routes(routes!(replay)).routes(routes!(discard))
}

/// A dead letter as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    pub id: String,
    /// pending, replayed or discarded.
    pub status: String,
    /// The consumer group that gave up.
    pub group: String,
    /// Why (the handler's last error).
    pub reason: String,
    pub attempts: u32,
    /// RFC 3339.
    pub dead_lettered_at: String,
    /// RFC 3339, once replayed or discarded.
    pub resolved_at: Option<String>,
    /// The id the replay was published under.
    pub replay_id: Option<String>,
    /// The message that failed.
    pub message: FailedMessage,
}

/// The message that failed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedMessage {
    pub id: String,
    pub name: String,
    pub topic: String,
    pub key: String,
    /// The payload as JSON when it is JSON, else as text (lossy UTF-8).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        let payload = super::live::payload_json(&d.message.payload);
        Self {
            id: d.id.to_string(),
            status: d.status.as_str().to_owned(),
            group: d.group,
            reason: d.reason,
            attempts: d.attempts,
            dead_lettered_at: d.dead_lettered_at.to_rfc3339(),
            resolved_at: d.resolved_at.map(|t| t.to_rfc3339()),
            replay_id: d.replay_id.map(|id| id.to_string()),
            message: FailedMessage {
                id: d.message.id.to_string(),
                name: d.message.name,
                topic: d.message.topic,
                key: d.message.key,
                payload,
            },
        }
    }
}

/// Which dead letters to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// pending (default), replayed, discarded or all.
    #[param(schema_with = statuses)]
    pub status: Option<String>,
    /// Only this consumer group.
    pub group: Option<String>,
    /// The id of the last dead letter of the previous page.
    #[param(format = Uuid)]
    pub after: Option<String>,
    /// 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<usize>,
}

/// The statuses a listing takes (those `DeadLetterStatus` parses, and `all`).
fn statuses() -> utoipa::openapi::Object {
    one_of("Only dead letters of this status (default pending).", &["pending", "replayed", "discarded", "all"], false)
}

pub(super) fn parse_id(id: &str) -> AppResult<MessageId> {
    MessageId::parse(id).map_err(|_| AppError::invalid(format!("{id:?} is not a dead-letter id (a UUID)")))
}

impl From<DeadLetterError> for AppError {
    fn from(e: DeadLetterError) -> Self {
        match e {
            DeadLetterError::NotFound(_) => AppError::NotFound("dead letter".into()),
            DeadLetterError::NotPending { .. } | DeadLetterError::NotReplayable { .. } => AppError::conflict(e),
            DeadLetterError::Store(e) => e.into(),
        }
    }
}

/// Dead letters, oldest first, a page at a time.
#[utoipa::path(get, path = "/api/admin/dead-letters", tag = "admin", params(ListQuery), security(("admin" = [])),
    responses((status = OK, body = [DeadLetterView]), (status = BAD_REQUEST, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn list(
    _: Admin,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<Vec<DeadLetterView>>> {
    let Query(query) = query.map_err(|e| AppError::invalid(e.body_text()))?;
    Ok(Json(list_letters(&state, query).await?))
}

/// The dead letters `query` asks for (REST and gRPC).
pub(super) async fn list_letters(state: &AppState, query: ListQuery) -> AppResult<Vec<DeadLetterView>> {
    let mut filter = match query.status.as_deref().unwrap_or("pending") {
        "all" => DeadLetterFilter::all(),
        status => DeadLetterFilter::all().status(status.parse::<DeadLetterStatus>().map_err(|_| {
            AppError::invalid(format!("unknown status {status:?}: pending, replayed, discarded or all"))
        })?),
    };
    if let Some(group) = query.group {
        filter = filter.group(group);
    }
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(AppError::invalid("limit must be between 1 and 100"));
    }
    let page = match query.after.as_deref() {
        Some(after) => Page::after(parse_id(after)?, limit),
        None => Page::first(limit),
    };
    let letters = api(&state.db).list(&filter, &page).await?;
    Ok(letters.into_iter().map(DeadLetterView::from).collect())
}

/// One dead letter.
#[utoipa::path(get, path = "/api/admin/dead-letters/{id}", tag = "admin", security(("admin" = [])),
    params(("id" = String, Path, description = "dead letter id", format = Uuid)),
    responses((status = OK, body = DeadLetterView),
        (status = BAD_REQUEST, description = "not a dead-letter id (a UUID)", body = ErrorBody),
        (status = NOT_FOUND, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn get(_: Admin, State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<Json<DeadLetterView>> {
    Ok(Json(api(&state.db).get(parse_id(&id)?).await?.into()))
}

/// What a replay published.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    /// The id of the replayed message.
    pub replay_id: String,
}

/// Replays a pending dead letter to the group that failed it (only that group sees it; it is
/// handled under the original message's id, so the inbox still de-duplicates).
#[utoipa::path(post, path = "/api/admin/dead-letters/{id}/replay", tag = "admin", security(("admin" = [])),
    params(("id" = String, Path, description = "dead letter id", format = Uuid)),
    responses((status = OK, body = Replayed),
        (status = BAD_REQUEST, description = "not a dead-letter id (a UUID)", body = ErrorBody),
        (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, description = "already replayed or discarded", body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn replay(_: Admin, State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<Json<Replayed>> {
    let message = api(&state.db).replay(parse_id(&id)?).await?;
    Ok(Json(Replayed { replay_id: message.id.to_string() }))
}

/// Discards a pending dead letter (kept, marked discarded).
#[utoipa::path(post, path = "/api/admin/dead-letters/{id}/discard", tag = "admin", security(("admin" = [])),
    params(("id" = String, Path, description = "dead letter id", format = Uuid)),
    responses((status = OK, body = DeadLetterView),
        (status = BAD_REQUEST, description = "not a dead-letter id (a UUID)", body = ErrorBody),
        (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, description = "already replayed or discarded", body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn discard(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> AppResult<Json<DeadLetterView>> {
    Ok(Json(api(&state.db).discard(parse_id(&id)?).await?.into()))
}
