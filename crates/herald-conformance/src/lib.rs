//! # Herald conformance suites
//!
//! One set of black-box scenarios that every implementation of Herald's ports must pass: the
//! in-memory broker and store, the SQL store and broker, NATS, RabbitMQ, Redis. The contracts
//! written in the module docs of [`herald::pubsub`] and [`herald::store`] are checked here, once,
//! instead of each backend re-inventing its own tests (and its own idea of "at least once").
//!
//! * [`pubsub_suite!`] checks a [`Publisher`] / [`Subscriber`] pair: round trips with metadata,
//!   topic isolation, fan-out between groups, competing consumers, nack with delay, ack-wait
//!   redelivery, dead letters, per-key order under concurrency, start positions (a new group
//!   starts at the beginning by default; `Beginning` is never refused), close, and
//!   10,000 messages handled effectively once with the inbox.
//! * [`store_suite!`] checks a [`Store`]: streams and optimistic concurrency, the global log
//!   under concurrent writers, atomic multi-stream appends, snapshots, the outbox and its relay
//!   (including crashes between commit, publish and remove), scheduled messages (published
//!   once at their time, never before, holding nothing back, surviving a restart), the inbox,
//!   checkpoints and sagas, named leases with fencing tokens, conditional (fenced) checkpoint
//!   saves, and two leased runners of one projection applying every event exactly once.
//! * [`dead_letter_suite!`] checks a [`DeadLetterArchive`](herald::dead_letters::DeadLetterArchive)
//!   in its store: transactional, idempotent archiving; filtered, paged listing; a pending dead
//!   letter resolved once, also under concurrency; replays committed with their outbox rows.
//! * [`parking_suite!`] checks a [`ParkingLot`](herald::parking::ParkingLot) in its store: a
//!   key's parked sequence keeps its order and advances from its head only, transactional,
//!   once per message, keys and groups independent.
//!
//! Each macro expands to one `#[test]` per scenario, named as a sentence
//! (`a_nacked_message_is_redelivered_after_its_delay`), so a failure names the broken promise.
//! Every scenario calls the setup function once and gets a fresh fixture; names of topics,
//! groups and streams carry a unique suffix, so the suites can also run against shared servers.
//!
//! # Wiring an adapter
//!
//! An adapter crate adds `herald-conformance` as a dev-dependency and, in
//! `tests/conformance.rs`, gives a setup function per suite:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use herald::memory::{MemoryBroker, MemoryStore};
//! use herald_conformance::{PubSubFixture, StoreFixture};
//!
//! async fn broker() -> PubSubFixture {
//!     // A real adapter connects twice here (two clients = "two processes") and keeps the
//!     // server or temp directory alive in `guard`.
//!     let broker = MemoryBroker::in_memory();
//!     PubSubFixture::new(Arc::new(broker.clone()), Arc::new(broker.clone()), Arc::new(broker), Box::new(()))
//! }
//!
//! async fn store() -> StoreFixture {
//!     StoreFixture::new(Arc::new(MemoryStore::new()), Box::new(()))
//! }
//!
//! herald_conformance::pubsub_suite!(broker);
//! herald_conformance::store_suite!(store);
//! # fn main() {}
//! ```
//!
//! # Capabilities
//!
//! Not every broker can do everything: Redis Pub/Sub has no groups and no replay, NATS core has
//! no redelivery. A subscriber declares what it supports in
//! [`Subscriber::capabilities`] ([`Capabilities`]).
//! A scenario that needs a capability the subscriber does not declare prints a loud
//! `SKIPPED (not supported: <capability>)` line and passes; a scenario whose capability *is*
//! declared always runs and must pass. A missing capability is therefore visible in the test
//! output and in the adapter's declaration, never silently skipped. The store suite has no
//! capabilities: every store implements every port.
//!
//! Two scenarios ask a little more than one sentence of the contract might suggest, on purpose:
//! the global-log scenario starts a reader at position 0 on the fixture's store and expects
//! positions 1, 2, 3… with no gap (so give each scenario a fresh store), and
//! `a_dropped_subscription_stops_fetching` expects a message published after a subscription was
//! dropped to reach the group's next subscription as attempt 1, not to be leased by the dropped
//! one until its ack wait expires.
//!
//! Scenarios use generous timeouts ([`support::WAIT`]) when waiting for something that must
//! happen, and short windows when checking that something does *not* happen, so they stay fast
//! against the in-memory implementations and reliable against real servers.
//!
//! [`Publisher`]: herald::pubsub::Publisher
//! [`Subscriber`]: herald::pubsub::Subscriber
//! [`Store`]: herald::store::Store
//! [`Capabilities`]: herald::pubsub::Capabilities

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald::pubsub::{Publisher, Subscriber};
use herald::store::Store;

pub use dead_letters::DeadLetterFixture;
pub use parking::ParkingFixture;

pub mod dead_letters;
pub mod faults;
pub mod lag;
pub mod lease;
pub mod outbox;
pub mod parking;
pub mod pubsub;
pub mod saga;
#[cfg(feature = "shredding")]
pub mod shredding;
pub mod store;
pub mod support;

/// What a pub/sub scenario runs against.
pub struct PubSubFixture {
    /// Publishes the scenario's messages.
    pub publisher: Arc<dyn Publisher>,
    /// Subscribes; its [`capabilities`](Subscriber::capabilities) decide which scenarios run.
    pub subscriber: Arc<dyn Subscriber>,
    /// An independent subscriber on the same backend (another connection / "another process"),
    /// used for competing consumers and for "a consumer dropped without acking gets its messages
    /// redelivered to another".
    pub other_subscriber: Arc<dyn Subscriber>,
    /// Keeps temp files / servers alive for the test's duration.
    pub guard: Box<dyn Any + Send>,
    /// The inbox used by the effectively-once scenario; `None` uses a fresh
    /// [`MemoryStore`](herald::memory::MemoryStore). A backend that also has a store (the SQL
    /// broker) passes it here to check the pair together.
    pub store: Option<Arc<dyn Store>>,
}

impl PubSubFixture {
    /// A fixture without a store of its own (the inbox scenario uses an in-memory store).
    pub fn new(
        publisher: Arc<dyn Publisher>,
        subscriber: Arc<dyn Subscriber>,
        other_subscriber: Arc<dyn Subscriber>,
        guard: Box<dyn Any + Send>,
    ) -> Self {
        Self { publisher, subscriber, other_subscriber, guard, store: None }
    }

    /// Uses `store` as the inbox in the effectively-once scenario.
    #[must_use]
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }
}

impl fmt::Debug for PubSubFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubFixture")
            .field("publisher", &self.publisher)
            .field("subscriber", &self.subscriber)
            .field("other_subscriber", &self.other_subscriber)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// What a store scenario runs against.
pub struct StoreFixture {
    /// The store under test: a fresh, empty one per scenario (the relay scenarios need the
    /// outbox relay's lease to themselves).
    pub store: Arc<dyn Store>,
    /// A second handle on the same data, as another process would open it (its own
    /// connections); `store` again when the backend has no such thing.
    pub other: Arc<dyn Store>,
    /// Keeps temp files / servers alive for the test's duration.
    pub guard: Box<dyn Any + Send>,
}

impl StoreFixture {
    /// A fixture for `store`, keeping `guard` alive as long as the scenario runs.
    pub fn new(store: Arc<dyn Store>, guard: Box<dyn Any + Send>) -> Self {
        Self { other: store.clone(), store, guard }
    }

    /// Sets the second handle ("another process") on the same data.
    #[must_use]
    pub fn with_other(mut self, other: Arc<dyn Store>) -> Self {
        self.other = other;
        self
    }
}

impl fmt::Debug for StoreFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreFixture").field("store", &self.store).finish_non_exhaustive()
    }
}

/// The longest a single scenario may run before it is declared hung.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs a scenario on a fresh multi-thread runtime (2 workers, all drivers), so concurrency in
/// the scenarios is real. A scenario that hangs fails after [`SCENARIO_TIMEOUT`].
pub fn run<F: Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime for the scenario");
    runtime.block_on(async {
        match tokio::time::timeout(SCENARIO_TIMEOUT, f).await {
            Ok(output) => output,
            Err(_) => panic!("scenario did not finish within {SCENARIO_TIMEOUT:?}"),
        }
    })
}

/// Expands to one `#[test]` per listed scenario: `$crate::run($crate::<module>::<name>(setup))`.
#[doc(hidden)]
#[macro_export]
macro_rules! __scenarios {
    ($setup:expr, $guard:expr; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if !$guard {
                    return;
                }
                $crate::run($crate::$module::$name($setup))
            }
        )*
    };
}

/// Generates the pub/sub conformance tests, one `#[test]` per scenario.
///
/// `setup` is a function (or closure) `FnOnce() -> impl Future<Output = PubSubFixture>`, called
/// once per test. See the [crate docs](crate) for an example.
#[macro_export]
macro_rules! pubsub_suite {
    ($setup:expr) => {
        $crate::pubsub_suite!(@guarded $setup, true);
    };
    ($setup:expr, requires: $server:expr) => {
        $crate::pubsub_suite!(@guarded $setup, $crate::support::server_available($server));
    };
    (@guarded $setup:expr, $guard:expr) => {
        $crate::__scenarios!($setup, $guard;
            pubsub::a_published_message_arrives_intact,
            pubsub::subscribers_receive_only_their_own_topic,
            pubsub::every_group_receives_every_message,
            pubsub::subscriptions_in_one_group_share_the_work,
            pubsub::a_nacked_message_is_redelivered_after_its_delay,
            pubsub::a_message_not_acked_within_ack_wait_is_redelivered,
            pubsub::a_settlement_after_the_lease_was_lost_is_refused,
            pubsub::concurrent_acks_each_get_their_own_outcome,
            pubsub::a_dropped_consumers_messages_are_redelivered_to_another,
            pubsub::a_message_that_keeps_failing_becomes_a_dead_letter_with_the_reason,
            pubsub::a_message_never_settled_becomes_a_dead_letter_after_max_deliveries,
            pubsub::dead_letter_moves_a_message_at_once_with_the_reason,
            pubsub::messages_of_one_key_are_handled_in_order_while_keys_run_concurrently,
            pubsub::a_failing_key_does_not_block_other_keys,
            pubsub::a_new_group_can_start_from_the_beginning,
            pubsub::a_new_group_with_default_options_receives_earlier_messages,
            pubsub::a_new_group_starting_at_the_beginning_is_never_refused,
            pubsub::a_new_group_starting_at_latest_sees_only_new_messages,
            pubsub::a_new_group_starting_at_latest_over_earlier_messages_is_logged,
            pubsub::a_new_group_can_start_from_a_position,
            pubsub::an_existing_group_resumes_where_it_was,
            pubsub::a_dropped_subscription_stops_fetching,
            pubsub::closing_is_idempotent_and_ends_publishing_and_subscriptions,
            pubsub::ten_thousand_concurrent_messages_are_handled_exactly_once_with_the_inbox,
            pubsub::invalid_subscribe_options_are_refused,
            parking::a_dead_letter_parks_its_key_until_replayed_or_discarded,
        );
    };
}

/// Generates the parking-lot conformance tests (see [`parking`]), one `#[test]` per scenario.
/// `setup` gives a [`ParkingFixture`].
#[macro_export]
macro_rules! parking_suite {
    ($setup:expr) => {
        $crate::parking_suite!(@guarded $setup, true);
    };
    ($setup:expr, requires: $server:expr) => {
        $crate::parking_suite!(@guarded $setup, $crate::support::server_available($server));
    };
    (@guarded $setup:expr, $guard:expr) => {
        $crate::__scenarios!($setup, $guard;
            parking::a_parked_sequence_keeps_its_order_and_advances_from_its_head,
            parking::parking_commits_and_rolls_back_with_its_transaction,
            parking::parking_a_message_twice_changes_nothing,
            parking::advancing_from_anything_but_the_head_changes_nothing,
            parking::keys_and_groups_are_independent,
        );
    };
}

/// Generates the store conformance tests (event store, global log, snapshots, outbox and relay,
/// inbox, checkpoints, sagas, leases and fenced checkpoints), one `#[test]` per scenario.
///
/// `setup` is a function (or closure) `FnOnce() -> impl Future<Output = StoreFixture>`, called
/// once per test. See the [crate docs](crate) for an example.
#[macro_export]
macro_rules! store_suite {
    ($setup:expr) => {
        $crate::store_suite!(@guarded $setup, true);
    };
    ($setup:expr, requires: $server:expr) => {
        $crate::store_suite!(@guarded $setup, $crate::support::server_available($server));
    };
    (@guarded $setup:expr, $guard:expr) => {
        $crate::__scenarios!($setup, $guard;
            store::appended_events_read_back_with_versions_positions_and_metadata,
            store::a_stream_can_be_read_from_a_version_and_with_a_limit,
            store::a_wrong_expected_version_conflicts_and_writes_nothing,
            store::invalid_appends_are_refused,
            store::a_transaction_reads_its_own_appends,
            store::an_append_in_a_dropped_transaction_writes_nothing,
            store::a_dropped_transaction_writes_nothing_in_any_port,
            store::commit_hooks_run_only_after_a_commit,
            store::concurrent_appenders_to_one_stream_get_gapless_versions,
            store::concurrent_appends_expecting_any_version_all_succeed,
            store::a_live_reader_sees_the_whole_global_log_in_order_under_concurrent_writers,
            store::a_multi_stream_append_is_all_or_nothing,
            store::snapshots_round_trip_and_the_newest_replaces_the_older,
            store::load_stream_returns_the_snapshot_and_the_events_after_it,
            store::a_reader_catches_up_then_follows_live_commits,
            store::the_inbox_records_a_message_once_per_handler,
            store::a_rolled_back_inbox_record_does_not_count,
            store::of_two_concurrent_inbox_records_at_most_one_commits,
            store::checkpoints_are_saved_overwritten_and_rolled_back,
            store::sagas_are_versioned_and_a_stale_save_conflicts,
            store::overdue_sagas_are_listed_earliest_first,
            outbox::outbox_messages_are_invisible_before_commit_and_in_order_after,
            outbox::a_rolled_back_transaction_leaves_no_outbox_rows,
            outbox::the_relay_publishes_in_order_and_removes,
            outbox::a_crash_between_commit_and_publish_loses_nothing,
            outbox::a_crash_between_publish_and_remove_is_absorbed_by_the_inbox,
            outbox::several_relays_take_turns_and_a_standby_takes_over_from_a_dead_one,
            outbox::a_scheduled_message_is_published_once_at_its_time_not_before,
            outbox::a_scheduled_message_holds_back_nothing_and_a_past_time_means_now,
            outbox::a_scheduled_message_survives_a_restart,
            lease::a_held_lease_is_refused_to_others_and_renewal_keeps_its_token,
            lease::a_released_lease_hands_over_at_once_with_a_larger_token,
            lease::an_expired_lease_hands_over_with_a_larger_token,
            lease::of_concurrent_acquirers_of_a_free_lease_exactly_one_wins,
            lease::a_conditional_checkpoint_save_is_refused_when_moved_or_fenced,
            lease::of_two_concurrent_conditional_saves_from_one_position_one_commits,
            lease::two_leased_runners_of_one_projection_apply_every_event_exactly_once,
            lease::a_stale_lease_holders_batch_is_refused_and_rolled_back,
            lease::a_rebuild_requested_from_any_replica_is_replayed_once_by_the_lease_holder,
        );
    };
}

/// Generates the saga tests, one `#[test]` per scenario: an orchestrated saga run end to end
/// over the fixture's store (required: [`PubSubFixture::with_store`]) and broker.
#[macro_export]
macro_rules! saga_suite {
    ($setup:expr) => {
        $crate::saga_suite!(@guarded $setup, true);
    };
    ($setup:expr, requires: $server:expr) => {
        $crate::saga_suite!(@guarded $setup, $crate::support::server_available($server));
    };
    (@guarded $setup:expr, $guard:expr) => {
        $crate::__scenarios!($setup, $guard;
            saga::a_saga_whose_steps_all_succeed_completes,
            saga::a_failure_at_each_step_compensates_exactly_the_earlier_steps,
            saga::duplicate_replies_are_harmless,
            saga::a_step_without_a_reply_times_out_and_compensates,
            saga::starting_reports_duplicates_and_never_swallows_errors,
        );
    };
}

/// Generates the dead-letter archive conformance tests (transactional, idempotent archiving;
/// filtered, paged listing; resolving once; replays through the outbox), one `#[test]` per
/// scenario.
///
/// `setup` is a function (or closure) `FnOnce() -> impl Future<Output = DeadLetterFixture>`,
/// called once per test, giving a fresh archive and the store it lives in.
#[macro_export]
macro_rules! dead_letter_suite {
    ($setup:expr) => {
        $crate::dead_letter_suite!(@guarded $setup, true);
    };
    ($setup:expr, requires: $server:expr) => {
        $crate::dead_letter_suite!(@guarded $setup, $crate::support::server_available($server));
    };
    (@guarded $setup:expr, $guard:expr) => {
        $crate::__scenarios!($setup, $guard;
            dead_letters::an_archived_dead_letter_reads_back_intact_after_commit,
            dead_letters::archiving_is_idempotent_and_rolls_back_with_its_transaction,
            dead_letters::listing_filters_and_pages_in_archive_order,
            dead_letters::a_pending_dead_letter_is_resolved_once,
            dead_letters::a_replay_commits_with_its_outbox_message,
            dead_letters::replay_all_replays_each_matching_pending_dead_letter_once,
            dead_letters::of_two_concurrent_resolutions_exactly_one_wins,
            dead_letters::pending_dead_letters_gauge_follows_archive_replay_and_discard,
        );
    };
}
