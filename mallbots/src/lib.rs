//! # MallBots
//!
//! The reference application of Herald: a mall where customers choose items at a kiosk, pay,
//! and wait at the depot while shopper bots collect the items from the stores. Every module
//! (bounded context) talks to the others only through messages; all of them run in one process
//! on one SQLite file with the SQL broker — no other server needed (`mallbots serve`).
//!
//! * [`app`]: the composition root — open the database, wire Herald (store, broker, router with
//!   inbox and retries, outbox relay) and the HTTP server, run until shut down.
//! * [`http`]: the REST layer shared by the modules (errors, extractors, admin auth,
//!   idempotency, health, OpenAPI + Swagger UI).
//! * [`metrics`]: Prometheus `/metrics` (Herald's metrics, HTTP requests, business gauges).
//! * [`modules`]: stores, customers, … each with its public contract in `api.rs`.
//! * [`simulate`]: the load generator behind `mallbots simulate` (kiosks, admins, a report).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use mallbots::app::{App, Config};
//! let app = App::build(Config::default()).await?;
//! println!("listening on {}", app.local_addr());
//! app.run(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod app;
pub mod db;
pub mod dead_letters;
pub mod error;
pub mod http;
pub mod metrics;
pub mod modules;
pub mod money;
pub mod simulate;
