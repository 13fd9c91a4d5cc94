//! The `herald_dead_letters_pending{topic,group}` gauge: how many archived dead letters wait for
//! someone to replay or discard them.
//!
//! The number lives in the archive, not in a process: the gauge is set to what the archive
//! counts, never moved up and down by what this process did, so two processes changing one
//! archive (the archive route in one, the admin API in another) cannot drift apart. It is set
//! after each change [`DeadLetters`] commits (one count of the pair it changed) and by
//! [`DeadLetters::record_pending`], which samples every pair: call it when the process starts
//! (so a restarted process reports the truth before anything changes) and, where other
//! processes change the archive too, periodically or at each metrics scrape.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use super::{DeadLetterArchive, DeadLetterError, DeadLetterFilter, DeadLetters, Page};
use crate::message::MessageId;
use crate::observability::record_dead_letters_pending;
use crate::pubsub::SubscribeOptions;
use crate::store::StoreError;

/// How many pending dead letters one original topic has from one group (see
/// [`DeadLetterArchive::pending_counts`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PendingCount {
    /// The original topic of the dead letters.
    pub topic: String,
    /// The group that failed them.
    pub group: String,
    /// How many are pending.
    pub pending: u64,
}

/// The (topic, group) pairs this process reports: those it has set a count for, and those whose
/// dead letters its archive routes keep ([`watch`]). A sample that finds none pending for a pair
/// sets it to 0, instead of leaving the last count standing or the series missing until the
/// first dead letter. One set per process, like the metrics recorder the gauge lives in.
static REPORTED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// Makes [`DeadLetters::record_pending`] report the groups of `failing` (the routes whose dead
/// letters are archived) on their topics, at 0 while they have none pending.
pub(super) fn watch(failing: &[&SubscribeOptions]) {
    let mut reported = REPORTED.lock().unwrap_or_else(PoisonError::into_inner);
    reported.extend(failing.iter().map(|o| (o.topic.clone(), o.group.clone())));
}

fn set(topic: &str, group: &str, pending: u64) {
    REPORTED.lock().unwrap_or_else(PoisonError::into_inner).insert((topic.to_owned(), group.to_owned()));
    record_dead_letters_pending(topic, group, pending);
}

/// [`DeadLetterArchive::pending_counts`] for archives that cannot group in one query: pages
/// through the pending dead letters and counts them per topic and group.
pub(super) async fn count_by_listing<A: DeadLetterArchive + ?Sized>(
    archive: &A,
) -> Result<Vec<PendingCount>, StoreError> {
    const BATCH: usize = 1_000;
    let filter = DeadLetterFilter::pending();
    let mut counts = std::collections::BTreeMap::<(String, String), u64>::new();
    let mut page = Page::first(BATCH);
    loop {
        let batch = archive.list(&filter, &page).await?;
        let Some(last) = batch.last() else { break };
        page = Page::after(last.id, BATCH);
        for letter in batch {
            *counts.entry((letter.message.topic, letter.group)).or_default() += 1;
        }
    }
    Ok(counts.into_iter().map(|((topic, group), pending)| PendingCount { topic, group, pending }).collect())
}

/// Counts the pending dead letters of `topic` failed by `group` and sets the gauge; a failure
/// is logged and leaves the gauge as it was (the next change or sample corrects it).
pub(super) async fn record_pending_of(archive: &dyn DeadLetterArchive, topic: &str, group: &str) {
    let filter = DeadLetterFilter::pending().topic(topic).group(group);
    match archive.count(&filter).await {
        Ok(pending) => set(topic, group, pending),
        Err(e) => tracing::warn!(topic, group, error = %e, "counting pending dead letters for the gauge failed"),
    }
}

impl DeadLetters {
    /// Samples the whole archive into `herald_dead_letters_pending`: the count of every
    /// original topic and group with pending dead letters, and 0 for the pairs this process
    /// reported before, or archives the dead letters of
    /// ([`archive_routes_for`](Self::archive_routes_for)), that have none. Call it at start (a restarted process then reports
    /// the archive's count at once) and, when other processes change the archive too, at each
    /// metrics scrape or periodically; the changes made through this API update the gauge by
    /// themselves.
    pub async fn record_pending(&self) -> Result<(), DeadLetterError> {
        let counts = self.archive.pending_counts().await?;
        let stale: Vec<(String, String)> = {
            let reported = REPORTED.lock().unwrap_or_else(PoisonError::into_inner);
            reported.iter().filter(|(t, g)| !counts.iter().any(|c| c.topic == *t && c.group == *g)).cloned().collect()
        };
        for (topic, group) in stale {
            set(&topic, &group, 0);
        }
        for count in counts {
            set(&count.topic, &count.group, count.pending);
        }
        Ok(())
    }

    /// Updates the gauge for the pair of dead letter `id`, after a change to it committed.
    pub(super) async fn record_pending_of_letter(&self, id: MessageId) {
        match self.archive.get(id).await {
            Ok(Some(letter)) => record_pending_of(&*self.archive, &letter.message.topic, &letter.group).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(dead_letter.id = %id, error = %e, "reading a dead letter for the gauge failed"),
        }
    }

    /// Updates the gauge for every pair, after a change to many dead letters committed; a
    /// failure is logged (the next change or sample corrects it).
    pub(super) async fn record_pending_after_many(&self) {
        if let Err(e) = self.record_pending().await {
            tracing::warn!(error = %e, "sampling pending dead letters for the gauge failed");
        }
    }
}
