//! gRPC, MallBots' other face: every module serves its service (`proto/<module>.proto`, the
//! book's services) on the process's gRPC address (`--grpc-addr`), beside REST. Both call the
//! same application functions; errors are status codes (`InvalidArgument`, `NotFound`,
//! `FailedPrecondition`, `Unauthenticated`, `Internal`), and admin calls carry the same bearer
//! token as REST, as `authorization` metadata. Server reflection lists every service. No request
//! may hold the NUL character (U+0000) in any string, as on REST: the codec of every service
//! refuses it with `InvalidArgument` ([`NulRefusingCodec`]).

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::error::AppError;

mod nul;
pub use nul::{NulRefusingCodec, NulRefusingDecoder};

/// The generated messages, servers and clients, one module per `.proto` package.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
    pub mod storespb {
        tonic::include_proto!("storespb");
    }
    pub mod customerspb {
        tonic::include_proto!("customerspb");
    }
    pub mod basketspb {
        tonic::include_proto!("basketspb");
    }
    pub mod orderingpb {
        tonic::include_proto!("orderingpb");
    }
    pub mod paymentspb {
        tonic::include_proto!("paymentspb");
    }
    pub mod depotpb {
        tonic::include_proto!("depotpb");
    }
    pub mod notificationspb {
        tonic::include_proto!("notificationspb");
    }
    pub mod searchpb {
        tonic::include_proto!("searchpb");
    }
    pub mod analyticspb {
        tonic::include_proto!("analyticspb");
    }
    pub mod adminpb {
        tonic::include_proto!("adminpb");
    }
}

/// Every `.proto` file, compiled: what reflection publishes.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mallbots_descriptor");

impl From<AppError> for Status {
    fn from(e: AppError) -> Self {
        let code = match &e {
            AppError::Invalid(_) => Code::InvalidArgument,
            AppError::NotFound(_) => Code::NotFound,
            AppError::Unauthorized => Code::Unauthenticated,
            AppError::Conflict(_) => Code::FailedPrecondition,
            AppError::Internal(source) => {
                tracing::error!(error = %source, source = ?source, "gRPC call failed");
                Code::Internal
            }
        };
        Status::new(code, e.to_string())
    }
}

/// The result of an RPC.
pub type RpcResult<T> = Result<tonic::Response<T>, Status>;

/// Answers `value`.
pub fn ok<T>(value: T) -> RpcResult<T> {
    Ok(tonic::Response::new(value))
}

/// Where a `mallbots serve` process listens, from the line it prints at start-up (`MallBots on
/// http://HOST:PORT (…; gRPC on HOST:PORT; …)`): the HTTP and gRPC `host:port`. The cluster and
/// the simulator's embedded server read it.
pub fn listening(line: &str) -> Option<(String, Option<String>)> {
    let rest = line.strip_prefix("MallBots on http://")?;
    let http = rest.split_whitespace().next()?.to_owned();
    let grpc = rest.split("gRPC on ").nth(1).and_then(|r| r.split(';').next()).map(str::to_owned);
    Some((http, grpc))
}

/// Refuses the call unless it carries `authorization: Bearer <admin token>` (compared in
/// constant time, as REST does).
pub fn admin<T>(request: &tonic::Request<T>, token: &str) -> Result<(), Status> {
    let given = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
    match given.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(given) if crate::http::token_matches(given, token) => Ok(()),
        _ => Err(AppError::Unauthorized.into()),
    }
}

/// Checks that a required text field is set; `InvalidArgument` naming it otherwise.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(value)
}

/// A proto3 string field as an option: empty means unset.
pub fn optional(value: String) -> Option<String> {
    Some(value).filter(|v| !v.is_empty())
}

/// Serves `routes` and the reflection service on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    routes: tonic::service::Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| anyhow::anyhow!("building the gRPC reflection service: {e}"))?;
    tonic::transport::Server::builder()
        .add_routes(routes.add_service(reflection))
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await
        .map_err(|e| anyhow::anyhow!("serving gRPC: {e}"))
}
