//! The gRPC service of customers (`customerspb.CustomersService`): the same application
//! functions as REST; enabling and disabling need the admin token.

use tonic::Request;

use super::application::{self as app, CustomerView};
use crate::grpc::pb::customerspb::customers_service_server::{CustomersService, CustomersServiceServer};
use crate::grpc::pb::customerspb::*;
use crate::grpc::{RpcResult, admin, ok, required};
use crate::http::{AppState, write};

/// The service, bound to the module's state.
pub fn service(state: AppState) -> CustomersServiceServer<Customers> {
    CustomersServiceServer::new(Customers { state })
}

/// customers over gRPC.
#[derive(Debug)]
pub struct Customers {
    state: AppState,
}

fn customer(v: CustomerView) -> Customer {
    Customer { id: v.id, name: v.name, sms_number: v.sms_number, enabled: v.enabled }
}

#[tonic::async_trait]
impl CustomersService for Customers {
    async fn register_customer(
        &self,
        request: Request<RegisterCustomerRequest>,
    ) -> RpcResult<RegisterCustomerResponse> {
        let RegisterCustomerRequest { name, sms_number } = request.into_inner();
        let shredder = self.state.shredder.clone();
        let id = app::new_customer(&shredder).await?;
        let id = write(&self.state, move |tx| {
            Box::pin(async move { app::register(tx, &shredder, id, name, sms_number).await })
        })
        .await?;
        ok(RegisterCustomerResponse { id })
    }

    async fn authorize_customer(
        &self,
        request: Request<AuthorizeCustomerRequest>,
    ) -> RpcResult<AuthorizeCustomerResponse> {
        let id = request.into_inner().id;
        required("id", &id)?;
        let shredder = self.state.shredder.clone();
        write(&self.state, move |tx| Box::pin(async move { app::authorize(tx, &shredder, &id).await })).await?;
        ok(AuthorizeCustomerResponse {})
    }

    async fn get_customer(&self, request: Request<GetCustomerRequest>) -> RpcResult<GetCustomerResponse> {
        let id = request.into_inner().id;
        required("id", &id)?;
        ok(GetCustomerResponse { customer: Some(customer(app::get_customer(&self.state.db, &id).await?)) })
    }

    async fn enable_customer(&self, request: Request<EnableCustomerRequest>) -> RpcResult<EnableCustomerResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        required("id", &id)?;
        let shredder = self.state.shredder.clone();
        write(&self.state, move |tx| Box::pin(async move { app::enable(tx, &shredder, &id).await })).await?;
        ok(EnableCustomerResponse {})
    }

    async fn disable_customer(&self, request: Request<DisableCustomerRequest>) -> RpcResult<DisableCustomerResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        required("id", &id)?;
        let shredder = self.state.shredder.clone();
        write(&self.state, move |tx| Box::pin(async move { app::disable(tx, &shredder, &id).await })).await?;
        ok(DisableCustomerResponse {})
    }

    async fn change_sms_number(&self, request: Request<ChangeSmsNumberRequest>) -> RpcResult<ChangeSmsNumberResponse> {
        let ChangeSmsNumberRequest { id, sms_number } = request.into_inner();
        required("id", &id)?;
        let shredder = self.state.shredder.clone();
        app::prepare_keys(&self.state.db, &shredder, &id).await?;
        write(&self.state, move |tx| Box::pin(async move { app::change_sms(tx, &shredder, &id, sms_number).await }))
            .await?;
        ok(ChangeSmsNumberResponse {})
    }
}
