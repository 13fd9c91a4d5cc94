//! REST endpoints of analytics (admin: business figures, and rebuilding them).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, Summary};
use super::control::{AnalyticsControl, RebuildError};
use crate::error::{AppError, AppResult};
use crate::http::{Admin, AppState, ErrorBody};

/// What analytics' handlers see: the module's state and the projection's runner.
#[derive(Clone, Debug)]
pub struct AnalyticsState {
    pub app: AppState,
    pub control: AnalyticsControl,
}

impl axum::extract::FromRef<AnalyticsState> for AppState {
    fn from_ref(state: &AnalyticsState) -> Self {
        state.app.clone()
    }
}

/// The routes of analytics.
pub fn routes() -> OpenApiRouter<AnalyticsState> {
    OpenApiRouter::new().routes(routes!(summary)).routes(routes!(rebuild)).routes(routes!(projection))
}

/// Orders by status, revenue and top products.
#[utoipa::path(get, path = "/api/analytics/summary", tag = "analytics", security(("admin" = [])),
    responses((status = OK, body = Summary), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn summary(_: Admin, State(state): State<AnalyticsState>) -> AppResult<Json<Summary>> {
    Ok(Json(app::summary(&state.app.db).await?))
}

/// What a rebuild did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rebuilt {
    /// Events of the log replayed by this process (those analytics ignores included; 0 when
    /// another analytics process holds the projection's lease and replayed them).
    pub events: u64,
    /// The log position reached.
    pub position: u64,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
    /// `false` if the app's shutdown interrupted it (the next start resumes it).
    pub completed: bool,
}

/// Rebuilds the analytics read model from the start of its event log, while the app runs: the
/// read model is reset and the analytics process holding the projection's lease (this one or
/// another) replays the log; the answer comes when it has caught up. One rebuild at a time.
#[utoipa::path(post, path = "/api/analytics/rebuild", tag = "analytics", security(("admin" = [])),
    responses((status = OK, body = Rebuilt), (status = UNAUTHORIZED, body = ErrorBody),
        (status = CONFLICT, description = "a rebuild is already running", body = ErrorBody)))]
async fn rebuild(_: Admin, State(state): State<AnalyticsState>) -> AppResult<Json<Rebuilt>> {
    Ok(Json(rebuilt(&state.control).await?))
}

/// Rebuilds (REST and gRPC): see [`rebuild`].
pub(super) async fn rebuilt(control: &AnalyticsControl) -> AppResult<Rebuilt> {
    let report = control.rebuild().await.map_err(|e| match e {
        RebuildError::Busy => AppError::conflict(e),
        RebuildError::Failed(e) => AppError::internal(e),
    })?;
    Ok(Rebuilt {
        events: report.events,
        position: report.position,
        elapsed_ms: u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        completed: report.completed,
    })
}

/// Where the analytics projection stands.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionView {
    /// Its name (its checkpoint key).
    pub name: String,
    /// catching-up, live, standby (another process holds its lease), rebuilding, retrying,
    /// failed or stopped.
    pub phase: String,
    /// The last event projected (a position in analytics' own log).
    pub position: u64,
    /// The newest position in the log.
    pub head: u64,
    /// Events still to project.
    pub events_behind: u64,
    /// How far behind in time (0 when caught up).
    pub seconds_behind: f64,
}

/// The analytics projection's position and lag.
#[utoipa::path(get, path = "/api/analytics/projection", tag = "analytics", security(("admin" = [])),
    responses((status = OK, body = ProjectionView), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn projection(_: Admin, State(state): State<AnalyticsState>) -> AppResult<Json<ProjectionView>> {
    Ok(Json(projection_view(&state.control).await?))
}

/// Where the projection stands (REST and gRPC).
pub(super) async fn projection_view(control: &AnalyticsControl) -> AppResult<ProjectionView> {
    use herald::projection::Phase;
    let status = control.runner().status().await?;
    let phase = match &status.phase {
        Phase::Live => "live".to_owned(),
        Phase::Standby => "standby".to_owned(),
        Phase::Stopped => "stopped".to_owned(),
        Phase::Retrying { attempt, error } => format!("retrying (attempt {attempt}: {error})"),
        Phase::Failed { error } => format!("failed: {error}"),
        Phase::Idle => "idle".to_owned(),
        Phase::CatchingUp => "catching-up".to_owned(),
        Phase::Rebuilding => "rebuilding".to_owned(),
    };
    Ok(ProjectionView {
        name: status.name,
        phase,
        position: status.position,
        head: status.head,
        events_behind: status.events_behind,
        seconds_behind: status.seconds_behind,
    })
}
