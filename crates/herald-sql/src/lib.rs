//! # herald-sql
//!
//! Herald on SQL databases: the event store (with its ordered global log), snapshots, the
//! transactional outbox, the inbox, checkpoints, saga state, and a SQL broker, all in one
//! database. Two dialects share one schema shape and the row mapping: SQLite (the embedded
//! default, [`sqlite`]) and PostgreSQL ([`postgres`]; see `docs/adr/0002-sql-schema-and-dialects.md`
//! and `docs/adr/0003-postgres-global-log.md`).
//!
//! ## How it fits
//!
//! Herald's core defines the ports ([`herald::Store`], [`herald::Transaction`],
//! [`herald::queue::QueueBackend`]) and checks them with `herald-conformance`. This crate
//! implements them on SQLite through [`rusqlite`] (statements run in place, writers commit in
//! groups: ADR 0011) and on PostgreSQL through [`sqlx`]:
//!
//! * [`SqliteStore`] / [`SqliteTransaction`]: every storage port. A transaction is the unit of
//!   work: events, the handler's own tables ([`any::query`]`(..).execute(cx.tx()?)` on either
//!   dialect), outbox rows and the inbox record commit together. On SQLite it takes the write
//!   lock at its first statement, not at `begin`.
//!   Each store is also a [`DeadLetterArchive`](herald::dead_letters::DeadLetterArchive)
//!   (table `herald_dead_letters`) whose writes join the same transaction (ADR 0006), and a
//!   [`ParkingLot`](herald::parking::ParkingLot) (table `herald_parked`: the messages a parking
//!   route holds back behind a key's dead letter, parked and released in the same transaction).
//! * [`SqlBroker`]: herald's [`QueueBroker`](herald::queue::QueueBroker) over
//!   [`SqliteQueue`]: durable topics with consumer groups, per-key order, leases, nack delays
//!   and dead letters, kept in the same file. This is the embedded default: one SQLite file,
//!   no broker process.
//!
//! Both come from one [`SqliteDatabase`], which [`SqliteConfig`] builds (the config struct is
//! the factory). Every write transaction starts with `BEGIN IMMEDIATE` (at its first
//! statement), which is what keeps the global log gap-free; see [`sqlite`] for the reasoning.
//!
//! On PostgreSQL the same ports are [`PostgresStore`] / [`PostgresTransaction`] and
//! [`PgBroker`] over [`PostgresQueue`], from a [`PostgresDatabase`] that [`PostgresConfig`]
//! builds in a schema of its own (one schema per module). Appends take a transaction-scoped
//! advisory lock so positions commit in order; see [`postgres`].
//!
//! ## Features
//!
//! `sqlite` (on by default) builds the SQLite dialect, on rusqlite with SQLite's C source
//! bundled. An application on PostgreSQL only can turn it off (`default-features = false`):
//! the SQLite types are then left out, and rusqlite is not a dependency.
//!
//! ## Example
//!
//! ```
//! # #[cfg(feature = "sqlite")] // (the example opens a SQLite file)
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herald::pubsub::{Publisher, StartFrom, SubscribeOptions, Subscriber};
//! use herald::{ExpectedVersion, Message, NewEvent, Store};
//! use herald_sql::SqliteConfig;
//!
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! let db = SqliteConfig::new(format!("sqlite://{}", path.display())).open().await?;
//!
//! // The event store.
//! let store = db.store();
//! store.append("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced.v1", b"{}".to_vec())]).await?;
//! assert_eq!(store.read_all(0, 10).await?.len(), 1);
//!
//! // The SQL broker on the same file.
//! let broker = db.broker();
//! let mut sub = broker.subscribe(SubscribeOptions::new("orders", "billing").start(StartFrom::Beginning)).await?;
//! broker.publish(&[Message::new("orders", "OrderPlaced.v1", b"{}".to_vec()).with_key("order-1")]).await?;
//! let delivery = sub.next().await.ok_or("subscription ended")?;
//! delivery.ack().await?;
//! Publisher::close(&broker).await?;
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))] fn main() {}
//! ```

#![forbid(unsafe_code)]

pub mod any;
pub mod changes;
mod config;
mod dead_letters;
mod error;
mod parking;
pub mod postgres;
mod rows;
#[cfg(feature = "shredding")]
pub mod shredding;
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use any::AnyDatabase;
pub use config::PostgresConfig;
#[cfg(feature = "sqlite")]
pub use config::SqliteConfig;
pub use error::SqlError;
pub use postgres::{PgBroker, PostgresDatabase, PostgresQueue, PostgresStore, PostgresTransaction};
/// The SQLite client Herald runs on, for [`SqliteTransaction::connection`] and
/// [`SqliteDatabase::read`] (same version, so no second copy to match).
#[cfg(feature = "sqlite")]
pub use rusqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqlBroker, SqliteDatabase, SqliteQueue, SqliteStore, SqliteTransaction};
