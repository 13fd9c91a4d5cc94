//! **analytics** (**new**): business figures — orders by status (so the saga's outcomes),
//! revenue, top products — as a [`Projection`](herald::projection::Projection) of the event
//! store's global log.
//!
//! It reads the whole history from the first event: added to a running mall, it comes up to
//! date without any other module changing, and renaming it ([`PROJECTION`]) rebuilds it from
//! the start (its `reset` clears the tables), and so does `POST /api/analytics/rebuild` while
//! the app runs ([`AnalyticsControl`]).

pub mod application;
pub mod control;
pub mod http;

pub use application::{AnalyticsProjection, PROJECTION};
pub use control::AnalyticsControl;
