//! The outbox relay: moves committed outbox messages to a broker.
//!
//! Handlers never publish to a broker directly; they [`enqueue`](crate::Transaction::enqueue)
//! messages in the same transaction as their state change. The relay publishes them in outbox
//! order and removes them only after the broker accepted them, so a crash at any point loses
//! nothing: at worst a message is published twice, and the consumer's inbox absorbs that.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pubsub::{PubSubError, Publisher};
use crate::store::{Store, StoreError};

/// Why a relay pass failed. The messages stay in the outbox; the next pass retries them.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or updating the outbox failed.
    #[error("outbox: {0}")]
    Store(#[from] StoreError),
    /// The broker did not accept the messages.
    #[error("publish: {0}")]
    Publish(#[from] PubSubError),
}

/// Publishes the outbox of a [`Store`] through a [`Publisher`].
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    batch: usize,
}

impl OutboxRelay {
    /// A relay from `store`'s outbox to `publisher`, 256 messages per batch.
    pub fn new(store: Arc<dyn Store>, publisher: Arc<dyn Publisher>) -> Self {
        Self { store, publisher, batch: 256 }
    }

    /// Sets the batch size.
    #[must_use]
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Publishes everything pending now, batch by batch, in outbox order; returns how many
    /// messages were published. A failed batch stays in the outbox, and nothing after it is
    /// published in this pass (so order is kept).
    pub async fn publish_pending(&self) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            let records = self.store.outbox_pending(self.batch).await?;
            if records.is_empty() {
                return Ok(total);
            }
            let sequences: Vec<u64> = records.iter().map(|r| r.sequence).collect();
            let messages: Vec<_> = records.into_iter().map(|r| r.message).collect();
            self.publisher.publish(&messages).await?;
            // Published but not yet removed: a crash here republishes these (same ids).
            self.store.outbox_remove(&sequences).await?;
            total += messages.len();
        }
    }

    /// Relays until `shutdown`, waking on every local commit and polling for others'. On
    /// shutdown, makes a last pass so nothing committed before it is left behind.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let changed = self.store.changes().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = match self.publish_pending().await {
                Ok(_) => {
                    failures = 0;
                    self.store.poll_interval()
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "outbox relay pass failed; will retry");
                    Duration::from_millis(50).saturating_mul(2u32.saturating_pow(failures.min(7)))
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = &mut changed, if failures == 0 => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(e) = self.publish_pending().await {
            tracing::warn!(error = %e, "final outbox flush failed; messages stay in the outbox");
        }
    }
}
