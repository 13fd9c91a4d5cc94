//! The gRPC service of depot (`depotpb.DepotService`): the same application functions as REST;
//! every call needs the admin token.

use tonic::{Request, Response, Status, Streaming};

use super::application::{self as app, ShoppingListView};
use super::bots::Bots;
use crate::grpc::pb::depotpb::depot_service_server::{DepotService, DepotServiceServer};
use crate::grpc::pb::depotpb::shopper_bot_server::{ShopperBot, ShopperBotServer};
use crate::grpc::pb::depotpb::*;
use crate::grpc::{RpcResult, admin, ok, required};
use crate::http::{AppState, write};

/// The service, bound to the module's state.
pub fn service(state: AppState) -> DepotServiceServer<Depot> {
    DepotServiceServer::new(Depot { state })
}

/// depot over gRPC.
#[derive(Debug)]
pub struct Depot {
    state: AppState,
}

/// A shopping list as the proto has it.
pub(super) fn shopping_list(v: ShoppingListView) -> ShoppingList {
    ShoppingList {
        id: v.id,
        order_id: v.order_id,
        status: v.status,
        bot_id: v.bot_id.unwrap_or_default(),
        stops: v
            .stops
            .into_iter()
            .map(|s| Stop {
                store_id: s.store_id,
                store_name: s.store_name,
                items: s
                    .items
                    .into_iter()
                    .map(|i| StopItem { product_id: i.product_id, product_name: i.product_name, quantity: i.quantity })
                    .collect(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl DepotService for Depot {
    async fn get_shopping_list(&self, request: Request<GetShoppingListRequest>) -> RpcResult<GetShoppingListResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        required("id", &id)?;
        ok(GetShoppingListResponse { shopping_list: Some(shopping_list(app::get(&self.state.db, &id).await?)) })
    }

    async fn list_shopping_lists(
        &self,
        request: Request<ListShoppingListsRequest>,
    ) -> RpcResult<ListShoppingListsResponse> {
        admin(&request, &self.state.admin_token)?;
        let status = request.into_inner().status;
        let lists = app::list(&self.state.db, Some(status.as_str()).filter(|s| !s.is_empty())).await?;
        ok(ListShoppingListsResponse { shopping_lists: lists.into_iter().map(shopping_list).collect() })
    }

    async fn assign_shopping_list(
        &self,
        request: Request<AssignShoppingListRequest>,
    ) -> RpcResult<AssignShoppingListResponse> {
        admin(&request, &self.state.admin_token)?;
        let AssignShoppingListRequest { id, bot_id } = request.into_inner();
        required("id", &id)?;
        required("bot_id", &bot_id)?;
        write(&self.state, |tx| Box::pin(async move { app::assign(tx, &id, bot_id).await })).await?;
        ok(AssignShoppingListResponse {})
    }

    async fn complete_shopping_list(
        &self,
        request: Request<CompleteShoppingListRequest>,
    ) -> RpcResult<CompleteShoppingListResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        required("id", &id)?;
        write(&self.state, |tx| Box::pin(async move { app::complete(tx, &id).await })).await?;
        ok(CompleteShoppingListResponse {})
    }

    async fn list_bots(&self, request: Request<ListBotsRequest>) -> RpcResult<ListBotsResponse> {
        admin(&request, &self.state.admin_token)?;
        let status = request.into_inner().status;
        let bots = app::list_bots(&self.state.db, Some(status.as_str()).filter(|s| !s.is_empty())).await?;
        ok(ListBotsResponse {
            bots: bots
                .into_iter()
                .map(|b| Bot {
                    id: b.id,
                    status: b.status,
                    shopping_id: b.shopping_id.unwrap_or_default(),
                    last_seen: b.last_seen,
                })
                .collect(),
        })
    }
}

/// The bots' stream, bound to the depot's bots.
pub fn bot_service(bots: Bots) -> ShopperBotServer<BotStream> {
    ShopperBotServer::new(BotStream { bots })
}

/// `depotpb.ShopperBot`: the bots' stream.
#[derive(Debug)]
pub struct BotStream {
    bots: Bots,
}

#[tonic::async_trait]
impl ShopperBot for BotStream {
    type ConnectStream = tokio_stream::wrappers::ReceiverStream<Result<DepotMessage, Status>>;

    async fn connect(&self, request: Request<Streaming<BotMessage>>) -> Result<Response<Self::ConnectStream>, Status> {
        let outbound = self.bots.connect(request.into_inner()).await?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(outbound)))
    }
}
