//! What the kiosks and admins measure, shared between them: counters the progress bar reads,
//! every placed order's checkout time and last known status, the two latency histograms and the
//! errors by kind.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Where an order is, as far as the simulator has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Checked out; the saga has not decided yet.
    Pending,
    /// The saga approved it; the admins have not completed it yet.
    Approved,
    /// The saga rejected it (final).
    Rejected,
    /// Paid and completed (final).
    Completed,
    /// Another status the simulator does not drive (`ready`, `canceled`, …); final for the run.
    Other,
    /// No decision within the time allowed (final for the run).
    TimedOut,
}

impl Stage {
    /// Whether nothing more will happen to the order in this run.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Rejected | Self::Completed | Self::Other | Self::TimedOut)
    }
}

/// One placed order.
#[derive(Debug)]
struct Order {
    /// When its checkout request was sent: the start of both latencies.
    checkout: Instant,
    stage: Stage,
}

/// The measurements of a run. Shared by reference (`Arc<Stats>`); no lock is held across an
/// `.await`.
#[derive(Debug)]
pub struct Stats {
    /// When the load phase ended (unset while it lasts): approvals before it count for
    /// orders/s.
    load_end: Mutex<Option<Instant>>,
    /// Orders checked out.
    pub placed: AtomicU64,
    /// Orders the saga approved (at any time).
    pub approved: AtomicU64,
    /// Orders the saga approved before the load phase ended.
    pub approved_in_load: AtomicU64,
    /// Orders the saga rejected.
    pub rejected: AtomicU64,
    /// Orders completed.
    pub completed: AtomicU64,
    /// Failed requests (unexpected status, timeout, connection, bad response).
    pub errors: AtomicU64,
    /// Orders in a final stage.
    finished: AtomicU64,
    orders: Mutex<HashMap<String, Order>>,
    /// Checkout → approved, in microseconds.
    to_approved: Mutex<Histogram<u64>>,
    /// Checkout → completed, in microseconds.
    to_completed: Mutex<Histogram<u64>>,
    /// Errors by `step: kind`.
    error_kinds: Mutex<BTreeMap<String, u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Up to an hour, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking kiosk must not take the measurements of the others with it.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Stats {
    pub fn new() -> Self {
        Self {
            load_end: Mutex::new(None),
            placed: AtomicU64::new(0),
            approved: AtomicU64::new(0),
            approved_in_load: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            orders: Mutex::default(),
            to_approved: Mutex::new(histogram()),
            to_completed: Mutex::new(histogram()),
            error_kinds: Mutex::default(),
        }
    }

    /// Approvals from now on no longer count for orders/s.
    pub fn end_load(&self) {
        lock(&self.load_end).get_or_insert_with(Instant::now);
    }

    /// A request of `step` failed with `kind`.
    pub fn error(&self, step: &str, kind: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.error_kinds).entry(format!("{step}: {kind}")).or_default() += 1;
    }

    /// Order `id` was checked out at `checkout`.
    pub fn placed(&self, id: &str, checkout: Instant) {
        self.placed.fetch_add(1, Ordering::Relaxed);
        lock(&self.orders).insert(id.to_owned(), Order { checkout, stage: Stage::Pending });
    }

    /// Order `id` reached `stage` (seen now); records its latency the first time it reaches
    /// approved or completed.
    pub fn reached(&self, id: &str, stage: Stage) {
        let now = Instant::now();
        let (checkout, was) = {
            let mut orders = lock(&self.orders);
            let Some(order) = orders.get_mut(id) else { return };
            if order.stage == stage || order.stage.is_final() {
                return;
            }
            (order.checkout, std::mem::replace(&mut order.stage, stage))
        };
        if stage.is_final() {
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let count_approval = || {
            self.approved.fetch_add(1, Ordering::Relaxed);
            if lock(&self.load_end).is_none_or(|end| now < end) {
                self.approved_in_load.fetch_add(1, Ordering::Relaxed);
            }
        };
        match stage {
            Stage::Approved => {
                count_approval();
                lock(&self.to_approved).saturating_record(micros(now - checkout));
            }
            Stage::Completed => {
                if was == Stage::Pending {
                    // Completed before its kiosk saw it approved: it was approved all the same
                    // (its approval latency is unknown).
                    count_approval();
                }
                self.completed.fetch_add(1, Ordering::Relaxed);
                lock(&self.to_completed).saturating_record(micros(now - checkout));
            }
            Stage::Rejected => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Stage::Pending | Stage::Other | Stage::TimedOut => {}
        }
    }

    /// Orders not in a final stage.
    pub fn in_flight(&self) -> u64 {
        // Placed is counted before finished can be: never negative.
        self.placed.load(Ordering::Relaxed).saturating_sub(self.finished.load(Ordering::Relaxed))
    }

    /// Orders by the stage they ended the run in.
    pub fn by_stage(&self) -> HashMap<Stage, u64> {
        let mut counts = HashMap::new();
        for order in lock(&self.orders).values() {
            *counts.entry(order.stage).or_default() += 1;
        }
        counts
    }

    /// Errors by `step: kind`.
    pub fn error_kinds(&self) -> BTreeMap<String, u64> {
        lock(&self.error_kinds).clone()
    }

    /// Checkout → approved.
    pub fn to_approved(&self) -> Histogram<u64> {
        lock(&self.to_approved).clone()
    }

    /// Checkout → completed.
    pub fn to_completed(&self) -> Histogram<u64> {
        lock(&self.to_completed).clone()
    }
}
