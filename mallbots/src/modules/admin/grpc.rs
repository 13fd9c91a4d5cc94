//! The gRPC service of admin (`adminpb.DeadLettersService`): the same functions as REST;
//! needs the admin token.

use tonic::Request;

use super::dead_letters::{DeadLetterView, ListQuery, list_letters, parse_id};
use crate::grpc::pb::adminpb::dead_letters_service_server::{DeadLettersService, DeadLettersServiceServer};
use crate::grpc::pb::adminpb::*;
use crate::grpc::{RpcResult, admin, ok, optional, required};
use crate::http::AppState;

/// The service, bound to the module's state.
pub fn service(state: AppState) -> DeadLettersServiceServer<DeadLetters> {
    DeadLettersServiceServer::new(DeadLetters { state })
}

/// Dead letters over gRPC.
#[derive(Debug)]
pub struct DeadLetters {
    state: AppState,
}

fn dead_letter(v: DeadLetterView) -> DeadLetter {
    DeadLetter {
        id: v.id,
        status: v.status,
        group: v.group,
        reason: v.reason,
        attempts: v.attempts,
        dead_lettered_at: v.dead_lettered_at,
        resolved_at: v.resolved_at.unwrap_or_default(),
        replay_id: v.replay_id.unwrap_or_default(),
        message: Some(FailedMessage {
            id: v.message.id,
            name: v.message.name,
            topic: v.message.topic,
            key: v.message.key,
            payload: match v.message.payload {
                serde_json::Value::String(text) => text,
                json => json.to_string(),
            },
        }),
    }
}

#[tonic::async_trait]
impl DeadLettersService for DeadLetters {
    async fn list_dead_letters(&self, request: Request<ListDeadLettersRequest>) -> RpcResult<ListDeadLettersResponse> {
        admin(&request, &self.state.admin_token)?;
        let ListDeadLettersRequest { status, group, after, limit } = request.into_inner();
        let query = ListQuery {
            status: optional(status),
            group: optional(group),
            after: optional(after),
            limit: (limit > 0).then(|| usize::try_from(limit).unwrap_or(usize::MAX)),
        };
        let letters = list_letters(&self.state, query).await?;
        ok(ListDeadLettersResponse { dead_letters: letters.into_iter().map(dead_letter).collect() })
    }

    async fn get_dead_letter(&self, request: Request<GetDeadLetterRequest>) -> RpcResult<GetDeadLetterResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        let id = parse_id(required("id", &id)?)?;
        let letter = super::dead_letters::api(&self.state.db).get(id).await.map_err(crate::error::AppError::from)?;
        ok(GetDeadLetterResponse { dead_letter: Some(dead_letter(letter.into())) })
    }

    async fn replay_dead_letter(
        &self,
        request: Request<ReplayDeadLetterRequest>,
    ) -> RpcResult<ReplayDeadLetterResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        let id = parse_id(required("id", &id)?)?;
        let message =
            super::dead_letters::api(&self.state.db).replay(id).await.map_err(crate::error::AppError::from)?;
        ok(ReplayDeadLetterResponse { replay_id: message.id.to_string() })
    }

    async fn discard_dead_letter(
        &self,
        request: Request<DiscardDeadLetterRequest>,
    ) -> RpcResult<DiscardDeadLetterResponse> {
        admin(&request, &self.state.admin_token)?;
        let id = request.into_inner().id;
        let id = parse_id(required("id", &id)?)?;
        let letter =
            super::dead_letters::api(&self.state.db).discard(id).await.map_err(crate::error::AppError::from)?;
        ok(DiscardDeadLetterResponse { dead_letter: Some(dead_letter(letter.into())) })
    }
}
