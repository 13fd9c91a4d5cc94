//! The common path in one import: `use herald::prelude::*;`.
//!
//! Aggregates and their repository, events, messages, the store and its unit of work, the
//! router with its handlers, middleware and retries, the outbox relay, projections, and what
//! implementing Herald's traits and shutting down need (`async_trait`, `CancellationToken`).

pub use crate::aggregate::{Aggregate, Repository, RepositoryError};
pub use crate::codec::{Event, EventSet};
pub use crate::message::Message;
pub use crate::outbox::OutboxRelay;
pub use crate::projection::{EventFilter, Projection, ProjectionError, ProjectionRunner};
pub use crate::pubsub::{Broker, Publisher, StartFrom, SubscribeOptions, Subscriber};
pub use crate::router::{HandlerContext, HandlerError, Inbox, Retry, Route, Router};
pub use crate::store::{RecordedEvent, Store, Transaction};
pub use crate::{CancellationToken, async_trait, event_set, events};
