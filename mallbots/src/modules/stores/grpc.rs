//! The gRPC service of stores (`storespb.StoresService`): the same application functions as
//! REST; reads public, changes with the admin token.

use tonic::{Request, Status};

use super::application::{self as app, NewProduct, ProductView, StoreView};
use crate::grpc::pb::storespb::stores_service_server::{StoresService, StoresServiceServer};
use crate::grpc::pb::storespb::*;
use crate::grpc::{RpcResult, admin, ok, required};
use crate::http::{AppState, write};
use crate::money::Money;

/// The service, bound to the module's state.
pub fn service(state: AppState) -> StoresServiceServer<Stores> {
    StoresServiceServer::new(Stores { state })
}

/// stores over gRPC.
#[derive(Debug)]
pub struct Stores {
    state: AppState,
}

fn store(v: StoreView) -> Store {
    Store { id: v.id, name: v.name, location: v.location, participating: v.participating }
}

fn product(v: ProductView) -> Product {
    Product {
        id: v.id,
        store_id: v.store_id,
        name: v.name,
        description: v.description,
        sku: v.sku,
        price: v.price.as_f64(),
    }
}

fn price(value: f64) -> Result<Money, Status> {
    Money::from_f64(value).map_err(|e| Status::invalid_argument(format!("price: {e}")))
}

#[tonic::async_trait]
impl StoresService for Stores {
    async fn create_store(&self, request: Request<CreateStoreRequest>) -> RpcResult<CreateStoreResponse> {
        admin(&request, &self.state.admin_token)?;
        let CreateStoreRequest { name, location } = request.into_inner();
        let id = write(&self.state, |tx| Box::pin(async move { app::create_store(tx, name, location).await })).await?;
        ok(CreateStoreResponse { id })
    }

    async fn enable_participation(
        &self,
        request: Request<EnableParticipationRequest>,
    ) -> RpcResult<EnableParticipationResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        required("id", &id)?;
        write(&self.state, |tx| Box::pin(async move { app::enable_participation(tx, &id).await })).await?;
        ok(EnableParticipationResponse {})
    }

    async fn disable_participation(
        &self,
        request: Request<DisableParticipationRequest>,
    ) -> RpcResult<DisableParticipationResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        required("id", &id)?;
        write(&self.state, |tx| Box::pin(async move { app::disable_participation(tx, &id).await })).await?;
        ok(DisableParticipationResponse {})
    }

    async fn rebrand_store(&self, request: Request<RebrandStoreRequest>) -> RpcResult<RebrandStoreResponse> {
        admin(&request, &self.state.admin_token)?;
        let RebrandStoreRequest { id, name } = request.into_inner();
        required("id", &id)?;
        write(&self.state, |tx| Box::pin(async move { app::rebrand_store(tx, &id, name).await })).await?;
        ok(RebrandStoreResponse {})
    }

    async fn get_store(&self, request: Request<GetStoreRequest>) -> RpcResult<GetStoreResponse> {
        let id = request.into_inner().id;
        required("id", &id)?;
        ok(GetStoreResponse { store: Some(store(app::get_store(&self.state.db, &id).await?)) })
    }

    async fn get_stores(&self, _: Request<GetStoresRequest>) -> RpcResult<GetStoresResponse> {
        let stores = app::get_stores(&self.state.db, false).await?;
        ok(GetStoresResponse { stores: stores.into_iter().map(store).collect() })
    }

    async fn get_participating_stores(
        &self,
        _: Request<GetParticipatingStoresRequest>,
    ) -> RpcResult<GetParticipatingStoresResponse> {
        let stores = app::get_stores(&self.state.db, true).await?;
        ok(GetParticipatingStoresResponse { stores: stores.into_iter().map(store).collect() })
    }

    async fn add_product(&self, request: Request<AddProductRequest>) -> RpcResult<AddProductResponse> {
        admin(&request, &self.state.admin_token)?;
        let AddProductRequest { store_id, name, description, sku, price: amount } = request.into_inner();
        required("store_id", &store_id)?;
        let new = NewProduct { name, description, sku, price: price(amount)? };
        let id = write(&self.state, |tx| Box::pin(async move { app::add_product(tx, &store_id, new).await })).await?;
        ok(AddProductResponse { id })
    }

    async fn rebrand_product(&self, request: Request<RebrandProductRequest>) -> RpcResult<RebrandProductResponse> {
        admin(&request, &self.state.admin_token)?;
        let RebrandProductRequest { id, name, description } = request.into_inner();
        required("id", &id)?;
        write(&self.state, |tx| Box::pin(async move { app::rebrand_product(tx, &id, name, description).await }))
            .await?;
        ok(RebrandProductResponse {})
    }

    async fn increase_product_price(
        &self,
        request: Request<IncreaseProductPriceRequest>,
    ) -> RpcResult<IncreaseProductPriceResponse> {
        admin(&request, &self.state.admin_token)?;
        let IncreaseProductPriceRequest { id, price: amount } = request.into_inner();
        required("id", &id)?;
        let amount = price(amount)?;
        write(&self.state, |tx| Box::pin(async move { app::increase_price(tx, &id, amount).await })).await?;
        ok(IncreaseProductPriceResponse {})
    }

    async fn decrease_product_price(
        &self,
        request: Request<DecreaseProductPriceRequest>,
    ) -> RpcResult<DecreaseProductPriceResponse> {
        admin(&request, &self.state.admin_token)?;
        let DecreaseProductPriceRequest { id, price: amount } = request.into_inner();
        required("id", &id)?;
        let amount = price(amount)?;
        write(&self.state, |tx| Box::pin(async move { app::decrease_price(tx, &id, amount).await })).await?;
        ok(DecreaseProductPriceResponse {})
    }

    async fn remove_product(&self, request: Request<RemoveProductRequest>) -> RpcResult<RemoveProductResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        required("id", &id)?;
        write(&self.state, |tx| Box::pin(async move { app::remove_product(tx, &id).await })).await?;
        ok(RemoveProductResponse {})
    }

    async fn get_product(&self, request: Request<GetProductRequest>) -> RpcResult<GetProductResponse> {
        let id = request.into_inner().id;
        required("id", &id)?;
        ok(GetProductResponse { product: Some(product(app::get_product(&self.state.db, &id).await?)) })
    }

    async fn get_catalog(&self, request: Request<GetCatalogRequest>) -> RpcResult<GetCatalogResponse> {
        let store_id = request.into_inner().store_id;
        required("store_id", &store_id)?;
        let products = app::get_catalog(&self.state.db, &store_id).await?;
        ok(GetCatalogResponse { products: products.into_iter().map(product).collect() })
    }
}
