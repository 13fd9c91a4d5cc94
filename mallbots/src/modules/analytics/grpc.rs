//! The gRPC service of analytics (`analyticspb.AnalyticsService`): the same functions as REST;
//! needs the admin token.

use tonic::Request;

use super::application as app;
use super::http::{AnalyticsState, projection_view, rebuilt};
use crate::grpc::pb::analyticspb::analytics_service_server::{AnalyticsService, AnalyticsServiceServer};
use crate::grpc::pb::analyticspb::*;
use crate::grpc::{RpcResult, admin, ok};

/// The service, bound to the module's state.
pub fn service(state: AnalyticsState) -> AnalyticsServiceServer<Analytics> {
    AnalyticsServiceServer::new(Analytics { state })
}

/// analytics over gRPC.
#[derive(Debug)]
pub struct Analytics {
    state: AnalyticsState,
}

#[tonic::async_trait]
impl AnalyticsService for Analytics {
    async fn get_summary(&self, request: Request<GetSummaryRequest>) -> RpcResult<GetSummaryResponse> {
        admin(&request, &self.state.app.admin_token)?;
        let summary = app::summary(&self.state.app.db).await?;
        ok(GetSummaryResponse {
            orders_by_status: summary.orders_by_status.into_iter().collect(),
            revenue: summary.revenue.as_f64(),
            top_products: summary
                .top_products
                .into_iter()
                .map(|p| ProductFigures {
                    product_id: p.product_id,
                    product_name: p.product_name,
                    orders: p.orders,
                    quantity: p.quantity,
                    ordered_value: p.ordered_value.as_f64(),
                })
                .collect(),
            revenue_by_minute: summary
                .revenue_by_minute
                .into_iter()
                .map(|m| MinuteRevenue { minute: m.minute, revenue: m.revenue.as_f64(), orders: m.orders })
                .collect(),
            saga_outcomes: Some(SagaOutcomes {
                approved: summary.saga_outcomes.approved,
                rejected: summary.saga_outcomes.rejected,
            }),
        })
    }

    async fn get_projection(&self, request: Request<GetProjectionRequest>) -> RpcResult<GetProjectionResponse> {
        admin(&request, &self.state.app.admin_token)?;
        let view = projection_view(&self.state.control).await?;
        ok(GetProjectionResponse {
            name: view.name,
            phase: view.phase,
            position: view.position,
            head: view.head,
            events_behind: view.events_behind,
            seconds_behind: view.seconds_behind,
        })
    }

    async fn rebuild_projection(
        &self,
        request: Request<RebuildProjectionRequest>,
    ) -> RpcResult<RebuildProjectionResponse> {
        admin(&request, &self.state.app.admin_token)?;
        let done = rebuilt(&self.state.control).await?;
        ok(RebuildProjectionResponse {
            events: done.events,
            position: done.position,
            elapsed_ms: done.elapsed_ms,
            completed: done.completed,
        })
    }
}
