//! The gRPC service of baskets (`basketspb.BasketService`): the same application functions as
//! REST; open to kiosks.

use tonic::Request;

use super::application::{self as app, BasketItemView, BasketTtl, BasketView};
use crate::grpc::pb::basketspb::basket_service_server::{BasketService, BasketServiceServer};
use crate::grpc::pb::basketspb::*;
use crate::grpc::{RpcResult, ok, required};
use crate::http::{AppState, write};

/// The service, bound to the module's state; baskets it starts stay open for `ttl`.
pub fn service(state: AppState, ttl: BasketTtl) -> BasketServiceServer<Baskets> {
    BasketServiceServer::new(Baskets { state, ttl })
}

/// baskets over gRPC.
#[derive(Debug)]
pub struct Baskets {
    state: AppState,
    ttl: BasketTtl,
}

fn item(v: BasketItemView) -> Item {
    Item {
        store_id: v.store_id,
        product_id: v.product_id,
        store_name: v.store_name,
        product_name: v.product_name,
        price: v.price.as_f64(),
        quantity: v.quantity,
    }
}

fn basket(v: BasketView) -> Basket {
    Basket {
        id: v.id,
        customer_id: v.customer_id,
        payment_id: v.payment_id.unwrap_or_default(),
        status: v.status.to_string(),
        items: v.items.into_iter().map(item).collect(),
        total: v.total.as_f64(),
    }
}

#[tonic::async_trait]
impl BasketService for Baskets {
    async fn start_basket(&self, request: Request<StartBasketRequest>) -> RpcResult<StartBasketResponse> {
        let customer_id = request.into_inner().customer_id;
        required("customer_id", &customer_id)?;
        let ttl = self.ttl;
        let id =
            write(&self.state, |tx| Box::pin(async move { app::start_basket(tx, customer_id, ttl).await })).await?;
        ok(StartBasketResponse { id })
    }

    async fn cancel_basket(&self, request: Request<CancelBasketRequest>) -> RpcResult<CancelBasketResponse> {
        let id = request.into_inner().id;
        required("id", &id)?;
        write(&self.state, |tx| Box::pin(async move { app::cancel(tx, &id).await })).await?;
        ok(CancelBasketResponse {})
    }

    async fn checkout_basket(&self, request: Request<CheckoutBasketRequest>) -> RpcResult<CheckoutBasketResponse> {
        let CheckoutBasketRequest { id, payment_id } = request.into_inner();
        required("id", &id)?;
        required("payment_id", &payment_id)?;
        write(&self.state, |tx| Box::pin(async move { app::checkout(tx, &id, payment_id).await })).await?;
        ok(CheckoutBasketResponse {})
    }

    async fn add_item(&self, request: Request<AddItemRequest>) -> RpcResult<AddItemResponse> {
        let AddItemRequest { id, product_id, quantity } = request.into_inner();
        required("id", &id)?;
        required("product_id", &product_id)?;
        write(&self.state, |tx| Box::pin(async move { app::add_item(tx, &id, &product_id, quantity).await })).await?;
        ok(AddItemResponse {})
    }

    async fn remove_item(&self, request: Request<RemoveItemRequest>) -> RpcResult<RemoveItemResponse> {
        let RemoveItemRequest { id, product_id, quantity } = request.into_inner();
        required("id", &id)?;
        required("product_id", &product_id)?;
        write(&self.state, |tx| Box::pin(async move { app::remove_item(tx, &id, product_id, quantity).await })).await?;
        ok(RemoveItemResponse {})
    }

    async fn get_basket(&self, request: Request<GetBasketRequest>) -> RpcResult<GetBasketResponse> {
        let id = request.into_inner().id;
        required("id", &id)?;
        ok(GetBasketResponse { basket: Some(basket(app::get_basket(&*self.state.store, &id).await?)) })
    }
}
