//! REST endpoints of payments: authorizing a payment is a kiosk endpoint; invoices are admin.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::application::{self as app, InvoiceView};
use crate::error::{AppError, AppResult};
use crate::http::{Admin, ApiJson, ApiPath, AppState, Created, ErrorBody, IdempotencyKeyHeader, create, write};
use crate::money::Money;

/// A payment to authorize.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizePaymentRequest {
    /// Not blank (trimmed).
    #[schema(min_length = 1, pattern = "\\S")]
    pub customer_id: String,
    /// Decimal amount, at most two fraction digits, greater than zero.
    #[schema(value_type = f64, exclusive_minimum = 0, maximum = 9999999999999.99, multiple_of = 0.01, example = 19.98)]
    pub amount: Money,
}

/// Which invoice.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct InvoiceQuery {
    /// The order whose invoice to find (required, not blank).
    #[param(required = true, min_length = 1, pattern = "\\S")]
    pub order_id: Option<String>,
}

/// How many open invoices.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OpenInvoicesQuery {
    /// 1 to 100 (default 100).
    #[param(minimum = 1, maximum = 100, default = 100)]
    pub limit: Option<u32>,
}

/// The routes of payments.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(authorize_payment))
        .routes(routes!(find_invoice))
        .routes(routes!(open_invoices))
        .routes(routes!(pay_invoice))
}

const TAG: &str = "payments";

/// Authorizes a payment; its id is what checkout needs.
#[utoipa::path(post, path = "/api/payments", tag = TAG, request_body = AuthorizePaymentRequest,
    params(IdempotencyKeyHeader),
    responses((status = CREATED, body = Created), (status = BAD_REQUEST, body = ErrorBody),
        (status = CONFLICT, description = "the Idempotency-Key was used for another request", body = ErrorBody)))]
async fn authorize_payment(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<AuthorizePaymentRequest>,
) -> AppResult<Response> {
    let AuthorizePaymentRequest { customer_id, amount } = request.clone();
    create(&state, &headers, "POST /api/payments", &request, move |tx| {
        Box::pin(async move { app::authorize_payment(tx, customer_id, amount).await })
    })
    .await
}

/// Finds an order's invoice.
#[utoipa::path(get, path = "/api/payments/invoices", tag = TAG, security(("admin" = [])), params(InvoiceQuery),
    responses((status = OK, body = InvoiceView), (status = BAD_REQUEST, body = ErrorBody),
        (status = NOT_FOUND, body = ErrorBody), (status = UNAUTHORIZED, body = ErrorBody)))]
async fn find_invoice(
    _: Admin,
    State(state): State<AppState>,
    query: Result<Query<InvoiceQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<InvoiceView>> {
    let Query(query) = query.map_err(|e| AppError::Invalid(e.body_text()))?;
    let order_id =
        query.order_id.filter(|o| !o.trim().is_empty()).ok_or_else(|| AppError::invalid("orderId is required"))?;
    Ok(Json(app::find_invoice(&state.db, order_id.trim()).await?))
}

/// Marks an invoice paid (the order completes).
#[utoipa::path(put, path = "/api/payments/invoices/{id}/pay", tag = TAG, security(("admin" = [])),
    params(("id" = String, Path, description = "invoice id")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = ErrorBody), (status = CONFLICT, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn pay_invoice(_: Admin, State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> AppResult<StatusCode> {
    write(&state, |tx| Box::pin(async move { app::pay_invoice(tx, &id).await })).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The invoices still to pay (pending), oldest first, at most `limit`.
#[utoipa::path(get, path = "/api/payments/open-invoices", tag = TAG, security(("admin" = [])),
    params(OpenInvoicesQuery),
    responses((status = OK, body = Vec<InvoiceView>), (status = BAD_REQUEST, body = ErrorBody),
        (status = UNAUTHORIZED, body = ErrorBody)))]
async fn open_invoices(
    _: Admin,
    State(state): State<AppState>,
    query: Result<Query<OpenInvoicesQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<Vec<InvoiceView>>> {
    let Query(query) = query.map_err(|e| AppError::Invalid(e.body_text()))?;
    Ok(Json(app::open_invoices(&state.db, query.limit).await?))
}
