//! The gRPC service of search (`searchpb.SearchService`, the book's request shape): the same
//! application functions as REST; needs the admin token.

use tonic::{Request, Status};

use super::application::{self as app, OrderSummary, SearchOrders};
use crate::grpc::pb::searchpb::search_service_server::{SearchService, SearchServiceServer};
use crate::grpc::pb::searchpb::*;
use crate::grpc::{RpcResult, admin, ok, optional, required};
use crate::http::AppState;
use crate::money::Money;

/// The service, bound to the module's state.
pub fn service(state: AppState) -> SearchServiceServer<Search> {
    SearchServiceServer::new(Search { state })
}

/// search over gRPC.
#[derive(Debug)]
pub struct Search {
    state: AppState,
}

fn order(v: OrderSummary) -> Order {
    Order {
        id: v.id,
        customer_id: v.customer_id,
        customer_name: v.customer_name.unwrap_or_default(),
        status: v.status,
        total: v.total.as_f64(),
        store_ids: v.store_ids,
        product_ids: v.product_ids,
        created_at: v.created_at,
    }
}

fn time(field: &str, value: String) -> Result<Option<chrono::DateTime<chrono::Utc>>, Status> {
    optional(value)
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(&v)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| Status::invalid_argument(format!("{field}: not an RFC 3339 time: {e}")))
        })
        .transpose()
}

fn amount(field: &str, value: Option<f64>) -> Result<Option<Money>, Status> {
    value.map(|v| Money::from_f64(v).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))).transpose()
}

/// The book's request as the application's filters.
fn filters(request: SearchOrdersRequest) -> Result<SearchOrders, Status> {
    let f = request.filters.unwrap_or_default();
    let limit = match request.limit {
        0 => None,
        n => Some(u32::try_from(n).map_err(|_| Status::invalid_argument("limit must be between 1 and 100"))?),
    };
    Ok(SearchOrders {
        customer_id: optional(f.customer_id),
        created_after: time("filters.after", f.after)?,
        created_before: time("filters.before", f.before)?,
        store_ids: f.store_ids,
        product_ids: f.product_ids,
        min_total: amount("filters.min_total", f.min_total)?,
        max_total: amount("filters.max_total", f.max_total)?,
        status: optional(f.status),
        cursor: optional(request.next),
        limit,
        newest_first: request.newest_first,
    })
}

#[tonic::async_trait]
impl SearchService for Search {
    async fn search_orders(&self, request: Request<SearchOrdersRequest>) -> RpcResult<SearchOrdersResponse> {
        admin(&request, &self.state.admin_token)?;
        let page = app::search(&self.state.db, filters(request.into_inner())?).await?;
        ok(SearchOrdersResponse {
            orders: page.orders.into_iter().map(order).collect(),
            next: page.next.unwrap_or_default(),
        })
    }

    async fn get_order(&self, request: Request<GetOrderRequest>) -> RpcResult<GetOrderResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        required("id", &id)?;
        ok(GetOrderResponse { order: Some(order(app::get(&self.state.db, &id).await?)) })
    }
}
