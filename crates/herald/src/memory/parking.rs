//! The in-memory [`ParkingLot`]: sequences in a map, changes staged as commit hooks of the
//! caller's transaction (visible at commit, gone on rollback), like the in-memory dead-letter
//! archive. It works with the transactions of any store.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::staged::{self, StagedKeys};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::message::{Message, MessageId, now_millis};
use crate::parking::{ParkedKey, ParkingLot};
use crate::store::{StoreError, Transaction};

/// Parked sequences kept in memory. Cheap to clone; clones share the data.
#[derive(Clone, Debug, Default)]
pub struct MemoryParkingLot {
    shared: Arc<Mutex<Data>>,
}

type SequenceKey = (String, String);

#[derive(Debug)]
struct Entry {
    id: MessageId,
    message: Option<Message>,
    parked_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Data {
    sequences: BTreeMap<SequenceKey, VecDeque<Entry>>,
    /// Sequences with a change staged in a transaction that has not ended yet.
    staged: HashSet<SequenceKey>,
}

impl MemoryParkingLot {
    /// An empty lot.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `key` as changed by `tx` (a second transaction changing it before the first ends
    /// conflicts) and stages `apply` for `tx`'s commit; on rollback the mark is removed.
    fn stage(
        &self,
        tx: &mut dyn Transaction,
        data: &mut Data,
        key: SequenceKey,
        apply: impl FnOnce(&mut Data) + Send + 'static,
    ) -> Result<(), StoreError> {
        if !data.staged.insert(key.clone()) {
            return Err(StoreError::Conflict {
                subject: format!("parked sequence of key `{}` in group `{}`", key.1, key.0),
                detail: "changed by a concurrent transaction that has not ended".into(),
            });
        }
        staged::stage(tx, &self.shared, key, apply);
        Ok(())
    }
}

impl StagedKeys<SequenceKey> for Data {
    fn staged(&mut self) -> &mut HashSet<SequenceKey> {
        &mut self.staged
    }
}

fn key_of(group: &str, key: &str) -> SequenceKey {
    (group.to_owned(), key.to_owned())
}

#[async_trait]
impl ParkingLot for MemoryParkingLot {
    async fn head(&self, _tx: &mut dyn Transaction, group: &str, key: &str) -> Result<Option<MessageId>, StoreError> {
        Ok(self.data().sequences.get(&key_of(group, key)).and_then(|s| s.front()).map(|e| e.id))
    }

    async fn park(
        &self,
        tx: &mut dyn Transaction,
        group: &str,
        key: &str,
        id: MessageId,
        message: Option<&Message>,
    ) -> Result<bool, StoreError> {
        let k = key_of(group, key);
        let mut data = self.data();
        if data.sequences.get(&k).is_some_and(|s| s.iter().any(|e| e.id == id)) {
            return Ok(false);
        }
        let entry = Entry { id, message: message.cloned(), parked_at: now_millis() };
        self.stage(tx, &mut data, k.clone(), move |data| {
            let sequence = data.sequences.entry(k).or_default();
            if !sequence.iter().any(|e| e.id == entry.id) {
                sequence.push_back(entry);
            }
        })?;
        Ok(true)
    }

    async fn advance(
        &self,
        tx: &mut dyn Transaction,
        group: &str,
        key: &str,
        head: MessageId,
    ) -> Result<Option<Message>, StoreError> {
        let k = key_of(group, key);
        let mut data = self.data();
        let Some(sequence) = data.sequences.get(&k) else { return Ok(None) };
        if sequence.front().is_none_or(|e| e.id != head) {
            return Ok(None);
        }
        let next = sequence.get(1).and_then(|e| e.message.clone());
        self.stage(tx, &mut data, k.clone(), move |data| {
            if let Some(sequence) = data.sequences.get_mut(&k)
                && sequence.front().is_some_and(|e| e.id == head)
            {
                sequence.pop_front();
                if sequence.is_empty() {
                    data.sequences.remove(&k);
                }
            }
        })?;
        Ok(next)
    }

    async fn parked(&self, group: Option<&str>) -> Result<Vec<ParkedKey>, StoreError> {
        let data = self.data();
        Ok(data
            .sequences
            .iter()
            .filter(|((g, _), _)| group.is_none_or(|want| want == g))
            .filter_map(|((g, k), sequence)| {
                let head = sequence.front()?;
                Some(ParkedKey {
                    group: g.clone(),
                    key: k.clone(),
                    head: head.id,
                    entries: sequence.len() as u64,
                    since: head.parked_at,
                })
            })
            .collect())
    }
}
