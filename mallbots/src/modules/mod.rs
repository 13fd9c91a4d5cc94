//! The modules (bounded contexts), listed once in [`MODULES`](crate::module::MODULES). Each
//! has a public contract (`api.rs`: its messages, topics and ids) and a private core:
//! `domain.rs` (the aggregate, pure), `application.rs` (commands and queries in Herald
//! transactions) and `http.rs` (its REST endpoints). Modules talk only through messages.

pub mod admin;
pub mod analytics;
pub mod baskets;
pub mod cosec;
pub mod customers;
pub mod depot;
pub mod notifications;
pub mod ordering;
pub mod payments;
pub mod search;
pub mod stores;
