//! The gRPC service of ordering (`orderingpb.OrderingService`): the same application functions
//! as REST; open to kiosks.

use tonic::Request;

use super::application::{self as app, OrderItemView, OrderView};
use crate::grpc::pb::orderingpb::ordering_service_server::{OrderingService, OrderingServiceServer};
use crate::grpc::pb::orderingpb::*;
use crate::grpc::{RpcResult, ok, required};
use crate::http::{AppState, write};

/// The service, bound to the module's state.
pub fn service(state: AppState) -> OrderingServiceServer<Ordering> {
    OrderingServiceServer::new(Ordering { state })
}

/// ordering over gRPC.
#[derive(Debug)]
pub struct Ordering {
    state: AppState,
}

fn item(v: OrderItemView) -> Item {
    Item {
        store_id: v.store_id,
        product_id: v.product_id,
        store_name: v.store_name,
        product_name: v.product_name,
        price: v.price.as_f64(),
        quantity: v.quantity,
    }
}

fn order(v: OrderView) -> Order {
    Order {
        id: v.id,
        customer_id: v.customer_id,
        payment_id: v.payment_id,
        shopping_id: v.shopping_id.unwrap_or_default(),
        invoice_id: v.invoice_id.unwrap_or_default(),
        status: v.status.to_string(),
        items: v.items.into_iter().map(item).collect(),
        total: v.total.as_f64(),
    }
}

#[tonic::async_trait]
impl OrderingService for Ordering {
    async fn get_order(&self, request: Request<GetOrderRequest>) -> RpcResult<GetOrderResponse> {
        let id = request.into_inner().id;
        required("id", &id)?;
        ok(GetOrderResponse { order: Some(order(app::get_order(&*self.state.store, &id).await?)) })
    }

    async fn cancel_order(&self, request: Request<CancelOrderRequest>) -> RpcResult<CancelOrderResponse> {
        let id = request.into_inner().id;
        required("id", &id)?;
        write(&self.state, |tx| Box::pin(async move { app::cancel(tx, &id).await })).await?;
        ok(CancelOrderResponse {})
    }
}
