//! The gRPC service of notifications (`notificationspb.NotificationsService`): what was sent,
//! as REST shows it; needs the admin token.

use tonic::Request;

use super::application as app;
use crate::grpc::pb::notificationspb::notifications_service_server::{
    NotificationsService, NotificationsServiceServer,
};
use crate::grpc::pb::notificationspb::*;
use crate::grpc::{RpcResult, admin, ok, required};
use crate::http::AppState;

/// The service, bound to the module's state.
pub fn service(state: AppState) -> NotificationsServiceServer<Notifications> {
    NotificationsServiceServer::new(Notifications { state })
}

/// notifications over gRPC.
#[derive(Debug)]
pub struct Notifications {
    state: AppState,
}

#[tonic::async_trait]
impl NotificationsService for Notifications {
    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> RpcResult<ListNotificationsResponse> {
        admin(&request, &self.state.admin_token)?;
        let customer_id = request.into_inner().customer_id;
        required("customer_id", &customer_id)?;
        let sent = app::sent_to(&self.state.db, &customer_id).await?;
        ok(ListNotificationsResponse {
            notifications: sent
                .into_iter()
                .map(|n| Notification {
                    customer_id: n.customer_id,
                    order_id: n.order_id,
                    kind: n.kind,
                    sms_number: n.sms_number,
                    text: n.text,
                    sent_at: n.sent_at,
                })
                .collect(),
        })
    }
}
