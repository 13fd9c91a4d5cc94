//! **stores**: stores, their products and their participation in the mall.
//!
//! `Store` and `Product` are event-sourced (with snapshots); the read models `stores_mall` and
//! `stores_catalog` change in the same transaction as the events, and so do the integration
//! events in the outbox ([`api`]). It consumes nothing.

pub mod api;
pub mod application;
pub mod domain;
pub mod http;
