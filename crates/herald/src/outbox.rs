//! The outbox relay: moves committed outbox messages to a broker.
//!
//! Handlers never publish to a broker directly; they [`enqueue`](crate::Transaction::enqueue)
//! messages in the same transaction as their state change. The relay publishes them in outbox
//! order and removes them only after the broker accepted them, so a crash at any point loses
//! nothing: at worst a message is published twice, and the consumer's inbox absorbs that.
//!
//! # Several relays
//!
//! Run a relay in every process that writes to the store, for availability: they take turns
//! through the store's lease [`OUTBOX_RELAY`]
//! ([`Store::acquire_lease`]), so exactly one publishes at
//! a time and the outbox order survives (batches published in parallel by several relays would
//! overtake each other). [`OutboxRelay::run`] is a [`Singleton`] on that lease: the others
//! stand by, polling every third of [`OutboxRelay::lease_ttl`]; when the active relay stops
//! cleanly it releases the lease and a standby takes over at once (at its next poll), and when
//! it dies the lease runs out after the time to live. ADR 0004 has the reasoning (and why not
//! `FOR UPDATE SKIP LOCKED` batches), ADR 0015 the general lease.
//!
//! # Scheduled messages
//!
//! Messages [scheduled](crate::Transaction::schedule) for a time sit in the outbox until they
//! are due; [`Store::outbox_pending`] lists them from then on, so every pass publishes them like
//! any other. Between passes the active relay sleeps until the earliest one falls due
//! ([`Store::next_scheduled`], asked again when a commit scheduled something:
//! [`Store::scheduled_changes`]) or until woken, whichever comes first: no polling for them, and
//! a relay that takes the lease over (after a restart) asks at once. ADR 0021.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::lease::{OUTBOX_RELAY, Singleton};
use crate::observability;
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

/// At most this many messages of a batch are linked from its `relay` span.
const MAX_LINKS: usize = 64;

/// What one relay pass did.
struct Pass {
    published: usize,
    /// Whether this relay held the lease (false: another relay is active).
    active: bool,
}

/// Publishes the outbox of a [`Store`] through a [`Publisher`].
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    batch: usize,
    holder: String,
    lease_ttl: Duration,
    /// When the lease was last granted to us (measured before asking, so it errs early): the
    /// lease is only renewed once a third of its time to live has passed, not before every
    /// batch, which would make each pass one more write transaction.
    granted_at: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl OutboxRelay {
    /// A relay from `store`'s outbox to `publisher`, 256 messages per batch, with a unique
    /// lease holder name and a 10 s lease.
    pub fn new(store: Arc<dyn Store>, publisher: Arc<dyn Publisher>) -> Self {
        let holder = format!("relay-{}", uuid::Uuid::now_v7());
        Self { store, publisher, batch: 256, holder, lease_ttl: Duration::from_secs(10), granted_at: Arc::default() }
    }

    /// Names this relay in the lease. A stable name per deployment slot (e.g. the host or pod
    /// name) lets a restarted relay take its lease back at once instead of waiting for it to
    /// run out; two relays running at the same time must never share a name.
    #[must_use]
    pub fn holder(mut self, name: impl Into<String>) -> Self {
        self.holder = name.into();
        self
    }

    /// How long the lease outlives its last renewal: how soon a standby takes over from a relay
    /// that died. The active relay renews it every third of this (in [`run`](Self::run);
    /// [`publish_pending`](Self::publish_pending) before a batch when a third has passed), so
    /// keep it well above a batch's publish time. At least 100 ms.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(100));
        self
    }

    /// This relay's name in the lease.
    pub fn holder_name(&self) -> &str {
        &self.holder
    }

    /// Sets the batch size.
    #[must_use]
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Publishes everything pending now, batch by batch, in outbox order; returns how many
    /// messages were published. A failed batch stays in the outbox, and nothing after it is
    /// published in this pass (so order is kept). Publishes nothing (and returns 0) while
    /// another relay holds the lease; the lease is renewed before every batch, so a relay that
    /// lost it stops after the batch in hand.
    pub async fn publish_pending(&self) -> Result<usize, RelayError> {
        Ok(self.pass(None).await?.published)
    }

    /// A pass, with the outbox gauges kept up to date: zero after a pass that emptied the
    /// outbox, read from the store after a failed one (the backlog is what an alert watches).
    async fn pass(&self, held: Option<&CancellationToken>) -> Result<Pass, RelayError> {
        let result = self.relay_pending(held).await;
        match &result {
            Ok(pass) if pass.active => observability::record_outbox(0, Duration::ZERO),
            Ok(_) => {} // standby: the active relay reports
            Err(_) => match self.store.outbox_stats().await {
                Ok(stats) => {
                    let age = stats.oldest.map(|t| (Utc::now() - t).to_std().unwrap_or_default()).unwrap_or_default();
                    observability::record_outbox(stats.backlog, age);
                }
                Err(e) => tracing::debug!(error = %e, "reading the outbox backlog failed"),
            },
        }
        result
    }

    /// Publishes batches until the outbox is empty. Without `held`, renews (or takes) the lease
    /// before each batch and stops if it is another relay's; with it, the caller holds the lease
    /// until `held` is cancelled, and the pass stops then (after the batch in hand).
    async fn relay_pending(&self, held: Option<&CancellationToken>) -> Result<Pass, RelayError> {
        let mut published = 0;
        loop {
            let holding = match held {
                Some(cancel) => !cancel.is_cancelled(),
                None => self.hold_lease().await?,
            };
            if !holding {
                return Ok(Pass { published, active: false });
            }
            let records = self.store.outbox_pending(self.batch).await?;
            if records.is_empty() {
                return Ok(Pass { published, active: true });
            }
            // A short batch was everything committed when it was read: no need to ask again
            // (a commit since then has notified `changes`, which `run` waits on).
            let last = records.len() < self.batch;
            let sequences: Vec<u64> = records.iter().map(|r| r.sequence).collect();
            let messages: Vec<_> = records.into_iter().map(|r| r.message).collect();
            // The batch mixes messages of many traces: its span is a root, linked to each.
            let span = tracing::info_span!(
                parent: None,
                "relay",
                otel.kind = "producer",
                otel.status_code = tracing::field::Empty,
                messages = messages.len(),
                holder = %self.holder,
            );
            for m in messages.iter().take(MAX_LINKS) {
                observability::add_link(&span, &m.metadata);
            }
            if let Err(e) = self.publisher.publish(&messages).instrument(span.clone()).await {
                observability::mark_error(&span);
                return Err(e.into());
            }
            // Published but not yet removed: a crash here republishes these (same ids).
            self.store.outbox_remove(&sequences).await?;
            observability::record_relayed(messages.len());
            published += messages.len();
            if last {
                return Ok(Pass { published, active: true });
            }
        }
    }

    /// Whether this relay holds the lease, renewing it when a third of its time to live has
    /// passed since it was last granted.
    async fn hold_lease(&self) -> Result<bool, RelayError> {
        let fresh = self.lock_granted().is_some_and(|at| at.elapsed() < self.lease_ttl / 3);
        if fresh {
            return Ok(true);
        }
        let asked = Instant::now();
        let held = self.store.acquire_lease(OUTBOX_RELAY, &self.holder, self.lease_ttl).await;
        *self.lock_granted() = matches!(held, Ok(Some(_))).then_some(asked);
        Ok(held?.is_some())
    }

    fn lock_granted(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.granted_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Relays until `shutdown`, as a [`Singleton`] on the relay lease: while this relay holds
    /// it, publishes, waking on every commit notification and polling every
    /// [`Store::poll_interval`] for others' commits; while another relay holds it, stands by,
    /// trying to take it every third of the lease's time to live (so it notices a dead relay's
    /// lease running out). A relay that loses the lease stops after the batch in hand. On
    /// shutdown, the active relay makes a last pass so nothing committed before it is left
    /// behind, then releases the lease so a standby takes over at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let singleton = Singleton::new(self.store.clone(), OUTBOX_RELAY, self.holder.clone(), self.lease_ttl);
        let result = singleton
            .run(shutdown.clone(), |_grant, cancel| {
                let (relay, shutdown) = (self.clone(), shutdown.clone());
                async move {
                    relay.relay_while_held(&cancel).await;
                    if shutdown.is_cancelled() {
                        // Still holding the lease (the singleton renews it until this returns);
                        // `publish_pending` checks it anyway.
                        if let Err(e) = relay.publish_pending().await {
                            tracing::warn!(error = %e, "final outbox flush failed; messages stay in the outbox");
                        }
                    }
                    *relay.lock_granted() = None;
                    Ok::<(), std::convert::Infallible>(())
                }
            })
            .await;
        if let Err(never) = result {
            match never {}
        }
    }

    /// The active relay's loop: a pass on every commit notification, when the next scheduled
    /// message falls due, and every poll interval, backing off after failures, until `cancel`.
    async fn relay_while_held(&self, cancel: &CancellationToken) {
        let mut failures = 0u32;
        let idle = self.store.poll_interval();
        // A store that announces scheduling commits on the outbox signal itself: any outbox
        // commit may have scheduled something.
        let shared_signal = std::ptr::eq(self.store.scheduled_changes(), self.store.outbox_changes());
        // When the earliest scheduled message falls due (`None`: nothing scheduled), and
        // whether that must be asked again after the next pass (at first: this relay may have
        // just taken over from one that knew).
        let mut next_due: Option<Instant> = None;
        let mut ask = true;
        while !cancel.is_cancelled() {
            let changed = self.store.outbox_changes().notified();
            let scheduled = self.store.scheduled_changes().notified();
            tokio::pin!(changed, scheduled);
            changed.as_mut().enable();
            scheduled.as_mut().enable();
            let wait = match self.pass(Some(cancel)).await {
                Ok(_) => {
                    failures = 0;
                    if ask {
                        // After the pass, so what it published is no longer counted.
                        match self.store.next_scheduled().await {
                            Ok(due) => {
                                // Too far ahead to represent: the poll interval comes first anyway.
                                next_due = due.and_then(|d| Instant::now().checked_add(d));
                                ask = false;
                            }
                            Err(e) => tracing::warn!(error = %e, "reading the next scheduled time failed; will retry"),
                        }
                    }
                    next_due.map_or(idle, |at| idle.min(at.saturating_duration_since(Instant::now())))
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "outbox relay pass failed; will retry");
                    Duration::from_millis(50).saturating_mul(2u32.saturating_pow(failures.min(7)))
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                () = &mut changed, if failures == 0 => ask |= shared_signal,
                () = &mut scheduled, if failures == 0 => ask = true,
                // A scheduled message fell due (published by the next pass; then the one after
                // it is asked for), or the poll interval passed (others' schedules unannounced).
                () = tokio::time::sleep(wait) => ask = true,
            }
        }
    }
}
