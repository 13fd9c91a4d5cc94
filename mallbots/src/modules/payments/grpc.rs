//! The gRPC service of payments (`paymentspb.PaymentsService`): the same application functions
//! as REST; authorizing is open to kiosks, invoices need the admin token.

use tonic::{Request, Status};

use super::application::{self as app, InvoiceView};
use crate::grpc::pb::paymentspb::payments_service_server::{PaymentsService, PaymentsServiceServer};
use crate::grpc::pb::paymentspb::*;
use crate::grpc::{RpcResult, admin, ok, required};
use crate::http::{AppState, write};
use crate::money::Money;

/// The service, bound to the module's state.
pub fn service(state: AppState) -> PaymentsServiceServer<Payments> {
    PaymentsServiceServer::new(Payments { state })
}

/// payments over gRPC.
#[derive(Debug)]
pub struct Payments {
    state: AppState,
}

fn invoice(v: InvoiceView) -> Invoice {
    Invoice { id: v.id, order_id: v.order_id, amount: v.amount.as_f64(), status: v.status }
}

#[tonic::async_trait]
impl PaymentsService for Payments {
    async fn authorize_payment(
        &self,
        request: Request<AuthorizePaymentRequest>,
    ) -> RpcResult<AuthorizePaymentResponse> {
        let AuthorizePaymentRequest { customer_id, amount } = request.into_inner();
        required("customer_id", &customer_id)?;
        let amount = Money::from_f64(amount).map_err(|e| Status::invalid_argument(format!("amount: {e}")))?;
        let id =
            write(&self.state, |tx| Box::pin(async move { app::authorize_payment(tx, customer_id, amount).await }))
                .await?;
        ok(AuthorizePaymentResponse { id })
    }

    async fn get_invoice(&self, request: Request<GetInvoiceRequest>) -> RpcResult<GetInvoiceResponse> {
        admin(&request, &self.state.admin_token)?;
        let order_id = request.into_inner().order_id;
        required("order_id", &order_id)?;
        ok(GetInvoiceResponse { invoice: Some(invoice(app::find_invoice(&self.state.db, &order_id).await?)) })
    }

    async fn pay_invoice(&self, request: Request<PayInvoiceRequest>) -> RpcResult<PayInvoiceResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        required("id", &id)?;
        write(&self.state, |tx| Box::pin(async move { app::pay_invoice(tx, &id).await })).await?;
        ok(PayInvoiceResponse {})
    }

    async fn list_open_invoices(
        &self,
        request: Request<ListOpenInvoicesRequest>,
    ) -> RpcResult<ListOpenInvoicesResponse> {
        admin(&request, &self.state.admin_token)?;
        let limit = Some(request.into_inner().limit).filter(|&n| n != 0);
        let invoices = app::open_invoices(&self.state.db, limit).await?;
        ok(ListOpenInvoicesResponse { invoices: invoices.into_iter().map(invoice).collect() })
    }
}
