//! Command / reply messaging: a command asks one module to do something, and its handler
//! **always** answers on the reply topic the command names — success, failure with a reason, or
//! a typed reply — so whoever sent it (usually a [saga](crate::saga)) never waits forever for a
//! handler that failed.
//!
//! * A command carries [`REPLY_TO`] (the topic to answer on) and any number of headers starting
//!   with [`COPIED_PREFIX`] (a saga puts its name, id and step there). The reply carries the
//!   same `herald-saga-*` headers back, [`REPLY_OUTCOME`] (`success` or `failure`) and, on
//!   failure, [`REPLY_REASON`]. It is [caused by](crate::Message::caused_by) the command, so
//!   correlation id and trace context run on.
//! * [`Route::on_command`] routes typed commands to a handler for the [`Router`](crate::router::Router):
//!   the reply is written to the outbox in the handler's transaction, so it is published if and
//!   only if the handler's changes commit. A handler returns `Ok(Reply::failure(..))` for a
//!   business refusal (unknown customer, amount mismatch); a permanent error (a bug, a command
//!   that does not decode) rolls back whatever the handler wrote and commits a failure reply
//!   instead; a transient error is retried by the router like any other (and if it never
//!   succeeds, the command is dead-lettered and the sender's timeout takes over).

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;

use crate::codec::{CodecError, Event, EventSet};
use crate::message::Message;
use crate::router::{
    Handler, HandlerContext, HandlerError, HandlerFn, HandlerFnWith, Needs, Route, WithState, decode_for,
};

/// Header on a command: the topic its reply goes to.
pub const REPLY_TO: &str = "herald-reply-to";
/// Header on a reply: `success` or `failure`.
pub const REPLY_OUTCOME: &str = "herald-reply-outcome";
/// Header on a failure reply: why.
pub const REPLY_REASON: &str = "herald-reply-reason";
/// Headers on a command starting with this are copied to its reply.
pub const COPIED_PREFIX: &str = "herald-saga-";
/// Name of the generic success reply (empty payload).
pub const SUCCESS: &str = "herald.Success.v1";
/// Name of the generic failure reply (empty payload; the reason is in [`REPLY_REASON`]).
pub const FAILURE: &str = "herald.Failure.v1";

/// Whether the command did what it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It did.
    Success,
    /// It refused or failed; the reply's [`REPLY_REASON`] says why.
    Failure,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    /// The outcome a reply message declares; a message without a valid [`REPLY_OUTCOME`] header
    /// is not a reply.
    pub fn of(reply: &Message) -> Option<Self> {
        match reply.header(REPLY_OUTCOME)? {
            "success" => Some(Self::Success),
            "failure" => Some(Self::Failure),
            _ => None,
        }
    }
}

/// What a command handler answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    outcome: Outcome,
    name: String,
    payload: Vec<u8>,
    reason: Option<String>,
}

impl Reply {
    /// Done; nothing to report.
    pub fn success() -> Self {
        Self { outcome: Outcome::Success, name: SUCCESS.to_owned(), payload: Vec::new(), reason: None }
    }

    /// Refused or failed, with the reason the sender will see (and a saga will record).
    pub fn failure(reason: impl Into<String>) -> Self {
        Self { outcome: Outcome::Failure, name: FAILURE.to_owned(), payload: Vec::new(), reason: Some(reason.into()) }
    }

    /// Done, with a typed answer (e.g. the id of what was created).
    pub fn with<E: Event>(reply: &E) -> Result<Self, CodecError> {
        Ok(Self { outcome: Outcome::Success, name: E::NAME.to_owned(), payload: reply.encode()?, reason: None })
    }

    /// The outcome.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The reply message answering `command`, or `None` when the command names no reply topic.
    /// Copies the `herald-saga-*` headers and continues the command's correlation and trace.
    pub fn to_message(&self, command: &Message) -> Option<Message> {
        let topic = command.header(REPLY_TO)?;
        let mut reply = Message::new(topic, self.name.clone(), self.payload.clone())
            .with_key(command.key.clone())
            .with_header(REPLY_OUTCOME, self.outcome.as_str())
            .caused_by(command);
        for (name, value) in &command.metadata.headers {
            if name.starts_with(COPIED_PREFIX) {
                reply.metadata.headers.insert(name.clone(), value.clone());
            }
        }
        if let Some(reason) = &self.reason {
            reply.metadata.headers.insert(REPLY_REASON.to_owned(), reason.clone());
        }
        Some(reply)
    }
}

/// Marks `command` as expecting its reply on `reply_topic`.
pub fn expect_reply(command: Message, reply_topic: &str) -> Message {
    command.with_header(REPLY_TO, reply_topic)
}

impl Route {
    /// Handles every command of `C` with `f`, an async function or closure taking
    /// `(&mut HandlerContext, C)` and answering a [`Reply`], which is always sent (see the
    /// [module docs](self)): `.on_command(async |cx: &mut HandlerContext, cmd: AuthorizeCustomer| { … })`.
    /// Needs a router with a store (the reply goes through the outbox).
    #[must_use]
    pub fn on_command<C, F>(self, f: F) -> Self
    where
        C: EventSet,
        F: for<'a> HandlerFn<'a, C, Reply>,
    {
        self.register::<C>(Arc::new(CommandHandler(f, PhantomData)))
    }

    /// Like [`on_command`](Self::on_command), for a handler that needs state: `f` gets
    /// `&state` as its third argument.
    #[must_use]
    pub fn on_command_with<C, S, F>(self, state: S, f: F) -> Self
    where
        C: EventSet,
        S: Send + Sync + 'static,
        F: for<'a> HandlerFnWith<'a, S, C, Reply>,
    {
        self.on_command(WithState { state, f })
    }
}

struct CommandHandler<C, F>(F, PhantomData<fn() -> C>);

#[async_trait]
impl<C, F> Handler for CommandHandler<C, F>
where
    C: EventSet,
    F: for<'a> HandlerFn<'a, C, Reply>,
{
    fn needs(&self) -> Needs {
        Needs::STORE
    }

    async fn handle(&self, cx: &mut HandlerContext) -> Result<(), HandlerError> {
        let outcome = match decode_for::<C>(cx) {
            Ok(command) => self.0.call(cx, command).await,
            Err(e) => Err(e),
        };
        let reply = match outcome {
            Ok(reply) => reply,
            Err(e) if e.is_permanent() => {
                // Keep nothing the handler wrote, but keep the inbox record (a redelivered
                // command must not run again) and answer with the failure.
                cx.restart_tx().await?;
                let (handler, id) = (cx.handler().to_owned(), cx.message().id);
                cx.tx()?.record_handled(&handler, id).await?;
                tracing::warn!(command = %cx.message().name, error = %e, "command failed; replying with the failure");
                Reply::failure(e.to_string())
            }
            Err(e) => return Err(e),
        };
        match reply.to_message(cx.message()) {
            // `to_message` already continued the command's correlation and trace; `enqueue`
            // (not `publish`) keeps them as they are.
            Some(message) => cx.tx()?.enqueue(vec![message]).await?,
            None => tracing::debug!(command = %cx.message().name, "command names no reply topic; no reply sent"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_answers_on_the_named_topic_with_the_copied_headers() {
        let command =
            expect_reply(Message::new("customers.commands", "AuthorizeCustomer.v1", b"{}".to_vec()), "replies")
                .with_key("c-1")
                .with_header("herald-saga-id", "s-1")
                .with_header("other", "x");
        let reply = Reply::failure("customer disabled").to_message(&command).expect("a reply");
        assert_eq!(reply.topic, "replies");
        assert_eq!(reply.name, FAILURE);
        assert_eq!(reply.key, "c-1");
        assert_eq!(reply.header("herald-saga-id"), Some("s-1"));
        assert_eq!(reply.header("other"), None, "only herald-saga-* headers are copied");
        assert_eq!(Outcome::of(&reply), Some(Outcome::Failure));
        assert_eq!(reply.header(REPLY_REASON), Some("customer disabled"));
        assert_eq!(reply.metadata.causation_id, Some(command.id));
        assert_eq!(reply.correlation_id(), command.id);

        let no_reply_topic = Message::new("t", "N", Vec::new());
        assert!(Reply::success().to_message(&no_reply_topic).is_none());
        assert_eq!(Outcome::of(&no_reply_topic), None, "not a reply");
    }
}
