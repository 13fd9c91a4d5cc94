//! In-memory implementations of every port, for tests and single-process use. They keep the
//! same contracts as the durable implementations (checked by the same conformance suites),
//! except that nothing survives the process.

mod broker;
mod dead_letters;
mod parking;
mod staged;
mod store;

pub use broker::{MemoryBroker, MemoryQueue};
pub use dead_letters::MemoryDeadLetterArchive;
pub use parking::MemoryParkingLot;
pub use store::{MemoryStore, MemoryTransaction, check_saga_version, inbox_conflict, validate_append};
