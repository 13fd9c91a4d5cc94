//! # MallBots
//!
//! The reference application of Herald: a mall where customers choose items at a kiosk, pay,
//! and wait at the depot while shopper bots collect the items from the stores. Every module
//! (bounded context) talks to the others only through messages. All of them run in one process
//! on one SQLite file with the SQL broker — no other server needed (`mallbots serve`) — or each
//! in its own processes, in its own PostgreSQL schema, over NATS, Redis or RabbitMQ.
//!
//! * [`app`]: the composition root — open the database, wire Herald (store, broker, router with
//!   inbox and retries, outbox relay) and the HTTP server, run until shut down.
//! * [`grpc`]: the gRPC layer shared by the modules (generated code, status codes, admin auth,
//!   reflection); each module serves its service from `proto/<module>.proto`.
//! * [`http`]: the REST layer shared by the modules (errors, extractors, admin auth,
//!   idempotency, health, OpenAPI + Swagger UI).
//! * [`metrics`]: Prometheus `/metrics` (Herald's metrics, HTTP requests, business gauges).
//! * [`module`]: what a module is, and the one list of them ([`module::MODULES`]); `mallbots
//!   serve --modules …` runs any subset in a process.
//! * [`gateway`], [`cluster`]: the nginx gateway's configuration, and the local cluster (one
//!   process per module behind it) that `mallbots cluster` and the tests run.
//! * [`modules`]: stores, customers, … each with its public contract in `api.rs`.
//! * [`bot`]: a shopper bot, a client of the depot's gRPC stream (`mallbots bot`).
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
pub mod bot;
pub mod cluster;
pub mod db;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod module;
pub mod modules;
pub mod money;
pub mod ops_cli;
pub mod settings;
pub mod simulate;
