//! What the kiosks and admins measure, shared between them: counters the progress bar reads,
//! every placed order's checkout time and last known status, the two latency histograms, the
//! errors by kind, and the same counts per interval of the run (the report's charts).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::report;

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
    /// When the measurements started (the load phase): the timeline's origin.
    started: Instant,
    timeline: Mutex<Timeline>,
}

/// The most intervals a run planned as a whole is divided into (the charts' points).
const MAX_INTERVALS: u32 = 120;

/// What happened in each interval of the run, in the order of the intervals (grown on demand).
#[derive(Debug)]
struct Timeline {
    interval: Duration,
    intervals: Vec<Interval>,
}

/// The events of one interval, counted when the simulator saw them.
#[derive(Clone, Debug, Default)]
struct Interval {
    placed: u64,
    approved: u64,
    completed: u64,
    rejected: u64,
    errors: u64,
    /// Checkout → approved of the orders approved in this interval, microseconds (created on
    /// the first one).
    to_approved: Option<Histogram<u64>>,
}

impl Interval {
    fn merge(&mut self, other: Self) {
        self.placed += other.placed;
        self.approved += other.approved;
        self.completed += other.completed;
        self.rejected += other.rejected;
        self.errors += other.errors;
        match (&mut self.to_approved, other.to_approved) {
            (Some(mine), Some(theirs)) => mine.add(theirs).expect("histograms of the same bounds add up"),
            (mine, theirs) => *mine = mine.take().or(theirs),
        }
    }
}

/// The interval for a run of `planned` (load and drain): a round number of seconds, at least
/// one, giving at most [`MAX_INTERVALS`] intervals.
fn interval_for(planned: Duration) -> Duration {
    const ROUND: [u64; 12] = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800];
    let least = planned.as_secs_f64() / f64::from(MAX_INTERVALS);
    let seconds = ROUND.into_iter().find(|&s| s as f64 >= least).unwrap_or(least.ceil() as u64);
    Duration::from_secs(seconds)
}

/// Up to an hour, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Up to an hour, two significant digits: a fifth of the size, enough for a chart's p50 / p95.
fn interval_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking kiosk must not take the measurements of the others with it.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Stats {
    /// Measurements starting now, for a run planned to last `planned` (load and drain; it sets
    /// the timeline's interval).
    pub fn new(planned: Duration) -> Self {
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
            started: Instant::now(),
            timeline: Mutex::new(Timeline { interval: interval_for(planned), intervals: Vec::new() }),
        }
    }

    /// When the measurements started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Counts an event seen at `at` in its interval of the timeline.
    fn in_interval(&self, at: Instant, count: impl FnOnce(&mut Interval)) {
        let mut timeline = lock(&self.timeline);
        let index =
            (at.saturating_duration_since(self.started).as_secs_f64() / timeline.interval.as_secs_f64()) as usize;
        if timeline.intervals.len() <= index {
            timeline.intervals.resize_with(index + 1, Interval::default);
        }
        count(&mut timeline.intervals[index]);
    }

    /// Approvals from now on no longer count for orders/s.
    pub fn end_load(&self) {
        lock(&self.load_end).get_or_insert_with(Instant::now);
    }

    /// A request of `step` failed with `kind`.
    pub fn error(&self, step: &str, kind: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.error_kinds).entry(format!("{step}: {kind}")).or_default() += 1;
        self.in_interval(Instant::now(), |i| i.errors += 1);
    }

    /// Order `id` was checked out at `checkout`.
    pub fn placed(&self, id: &str, checkout: Instant) {
        self.placed.fetch_add(1, Ordering::Relaxed);
        lock(&self.orders).insert(id.to_owned(), Order { checkout, stage: Stage::Pending });
        self.in_interval(Instant::now(), |i| i.placed += 1);
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
                let latency = micros(now - checkout);
                lock(&self.to_approved).saturating_record(latency);
                self.in_interval(now, |i| {
                    i.approved += 1;
                    i.to_approved.get_or_insert_with(interval_histogram).saturating_record(latency);
                });
            }
            Stage::Completed => {
                if was == Stage::Pending {
                    // Completed before its kiosk saw it approved: it was approved all the same
                    // (its approval latency is unknown).
                    count_approval();
                }
                self.completed.fetch_add(1, Ordering::Relaxed);
                lock(&self.to_completed).saturating_record(micros(now - checkout));
                self.in_interval(now, |i| {
                    i.approved += u64::from(was == Stage::Pending);
                    i.completed += 1;
                });
            }
            Stage::Rejected => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.in_interval(now, |i| i.rejected += 1);
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

    /// The timeline from the start to `end`: every interval up to `end` (empty ones included),
    /// the last one merged into the one before when it is shorter than half an interval (a
    /// rate over a sliver of time would be noise).
    pub fn timeline(&self, end: Instant) -> report::Timeline {
        let (interval, mut intervals) = {
            let timeline = lock(&self.timeline);
            (timeline.interval, timeline.intervals.clone())
        };
        let width = interval.as_secs_f64();
        let run = end.saturating_duration_since(self.started).as_secs_f64();
        let covering = (run / width).ceil() as usize;
        if intervals.len() < covering {
            intervals.resize_with(covering, Interval::default);
        }
        let start = |index: usize| index as f64 * width;
        if intervals.len() >= 2 && run - start(intervals.len() - 1) < width / 2.0 {
            let last = intervals.pop().expect("two intervals or more");
            intervals.last_mut().expect("one interval or more").merge(last);
        }
        let count = intervals.len();
        let intervals = intervals
            .into_iter()
            .enumerate()
            .map(|(index, i)| {
                let quantile = |q| i.to_approved.as_ref().map(|h| report::micros_to_ms(h.value_at_quantile(q) as f64));
                report::Interval {
                    start_seconds: round3(start(index)),
                    // The last one ends with the run.
                    seconds: round3(if index + 1 == count { (run - start(index)).max(0.001) } else { width }),
                    placed: i.placed,
                    approved: i.approved,
                    completed: i.completed,
                    rejected: i.rejected,
                    errors: i.errors,
                    approved_p50_ms: quantile(0.50),
                    approved_p95_ms: quantile(0.95),
                }
            })
            .collect();
        report::Timeline { interval_seconds: width, intervals }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_round_seconds_at_most_120_a_run() {
        let secs = |s| interval_for(Duration::from_secs(s)).as_secs();
        assert_eq!([secs(0), secs(40), secs(120), secs(121), secs(600), secs(7200)], [1, 1, 1, 2, 5, 60]);
        assert_eq!(secs(1_000_000), 8334);
    }

    #[test]
    fn the_timeline_counts_events_in_their_interval_and_folds_a_short_last_one() {
        let stats = Stats::new(Duration::from_secs(10));
        let t0 = stats.started();
        stats.placed("a", t0);
        stats.placed("b", t0);
        stats.in_interval(t0 + Duration::from_millis(1500), |i| i.placed += 1);
        stats.in_interval(t0 + Duration::from_millis(3100), |i| i.errors += 1);
        // 3.2 s: intervals 0, 1, 2 and a sliver of 3, folded into 2.
        let timeline = stats.timeline(t0 + Duration::from_millis(3200));
        let placed: Vec<u64> = timeline.intervals.iter().map(|i| i.placed).collect();
        assert_eq!(placed, [2, 1, 0]);
        assert_eq!(timeline.intervals[2].errors, 1);
        assert_eq!(timeline.intervals[2].seconds, 1.2);
        assert_eq!(timeline.intervals[0].approved_p50_ms, None);

        // A run shorter than half an interval still has one.
        let stats = Stats::new(Duration::from_secs(10));
        let timeline = stats.timeline(stats.started() + Duration::from_millis(100));
        assert_eq!(timeline.intervals.len(), 1);
        assert_eq!(timeline.intervals[0].seconds, 0.1);
    }
}
