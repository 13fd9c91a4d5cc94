//! The in-memory [`DeadLetterArchive`]: dead letters in a map, changes staged as commit hooks
//! of the caller's transaction, so they follow the same boundaries as the SQL archives (visible
//! at commit, gone on rollback). It works with the transactions of any store.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::staged::{self, StagedKeys};

use async_trait::async_trait;

use crate::dead_letters::{
    DeadLetter, DeadLetterArchive, DeadLetterFilter, DeadLetterStatus, Page, Resolution, check_resolution,
};
use crate::message::{MessageId, now_millis};
use crate::store::{StoreError, Transaction};

/// Dead letters kept in memory. Cheap to clone; clones share the data.
#[derive(Clone, Debug, Default)]
pub struct MemoryDeadLetterArchive {
    shared: Arc<Mutex<Data>>,
}

#[derive(Debug, Default)]
struct Data {
    letters: BTreeMap<MessageId, DeadLetter>,
    /// Ids with a change staged in a transaction that has not ended yet.
    staged: HashSet<MessageId>,
}

impl MemoryDeadLetterArchive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stages `apply` for `id` in `tx`: it runs at commit; on rollback the staging is undone.
    fn stage(&self, tx: &mut dyn Transaction, id: MessageId, apply: impl FnOnce(&mut Data) + Send + 'static) {
        staged::stage(tx, &self.shared, id, apply);
    }
}

impl StagedKeys<MessageId> for Data {
    fn staged(&mut self) -> &mut HashSet<MessageId> {
        &mut self.staged
    }
}

fn concurrent(id: MessageId) -> StoreError {
    StoreError::Conflict {
        subject: format!("dead letter {id}"),
        detail: "changed by a concurrent transaction that has not ended".into(),
    }
}

#[async_trait]
impl DeadLetterArchive for MemoryDeadLetterArchive {
    async fn archive(&self, tx: &mut dyn Transaction, letter: &DeadLetter) -> Result<bool, StoreError> {
        {
            let mut data = self.data();
            if data.letters.contains_key(&letter.id) {
                return Ok(false);
            }
            if !data.staged.insert(letter.id) {
                return Err(concurrent(letter.id));
            }
        }
        let letter =
            DeadLetter { status: DeadLetterStatus::Pending, resolved_at: None, replay_id: None, ..letter.clone() };
        self.stage(tx, letter.id, move |data| {
            data.letters.entry(letter.id).or_insert(letter);
        });
        Ok(true)
    }

    async fn get(&self, id: MessageId) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.data().letters.get(&id).cloned())
    }

    async fn list(&self, filter: &DeadLetterFilter, page: &Page) -> Result<Vec<DeadLetter>, StoreError> {
        let data = self.data();
        let after = |l: &&DeadLetter| page.after.is_none_or(|a| l.id > a);
        Ok(data.letters.values().filter(after).filter(|l| filter.matches(l)).take(page.limit).cloned().collect())
    }

    async fn count(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        Ok(self.data().letters.values().filter(|l| filter.matches(l)).count() as u64)
    }

    async fn resolve(
        &self,
        tx: &mut dyn Transaction,
        id: MessageId,
        status: DeadLetterStatus,
        replay_id: Option<MessageId>,
    ) -> Result<Resolution, StoreError> {
        check_resolution(status)?;
        let resolved = {
            let mut data = self.data();
            let Some(letter) = data.letters.get(&id) else { return Ok(Resolution::NotFound) };
            if letter.status != DeadLetterStatus::Pending {
                return Ok(Resolution::NotPending(letter.status));
            }
            let resolved = DeadLetter { status, resolved_at: Some(now_millis()), replay_id, ..letter.clone() };
            if !data.staged.insert(id) {
                return Err(concurrent(id));
            }
            resolved
        };
        let stored = resolved.clone();
        self.stage(tx, id, move |data| {
            data.letters.insert(id, stored);
        });
        Ok(Resolution::Resolved(Box::new(resolved)))
    }
}
