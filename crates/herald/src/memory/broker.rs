//! The in-memory broker: a [`QueueBackend`] over plain collections, for tests and single-process
//! use. It keeps every message for the life of the process and honours the full pub/sub
//! contract (groups, per-key order, ack wait, nack delay, dead letters, start positions).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::message::Message;
use crate::observability::EarlierMessages;
use crate::pubsub::{Capabilities, PubSubError, Settlement, StartFrom};
use crate::queue::{
    Claimed, Doorbells, EnsuredGroup, GroupPolicy, QueueBackend, QueueBroker, dead_letter_for, expired_reason,
};

/// The in-memory broker. Cheap to clone; clones share the same topics.
pub type MemoryBroker = QueueBroker<MemoryQueue>;

impl MemoryBroker {
    /// An empty in-memory broker.
    pub fn in_memory() -> Self {
        QueueBroker::new(MemoryQueue::default())
    }
}

/// The storage behind [`MemoryBroker`].
#[derive(Debug, Default)]
pub struct MemoryQueue {
    state: Mutex<State>,
    changed: Notify,
    doorbells: Doorbells,
}

#[derive(Debug, Default)]
struct State {
    topics: HashMap<String, Topic>,
}

#[derive(Debug, Default)]
struct Topic {
    /// Position `p` is `log[p - 1]`.
    log: Vec<Message>,
    groups: HashMap<String, Group>,
}

#[derive(Debug)]
struct Group {
    /// The next position not yet taken into `pending`.
    next: u64,
    /// Unsettled messages by position.
    pending: BTreeMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    attempts: u32,
    visible_at: Instant,
}

impl State {
    fn append(&mut self, message: Message) {
        self.topics.entry(message.topic.clone()).or_default().log.push(message);
    }
}

impl MemoryQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the broker, so a poisoned lock is simply taken over.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn unknown_group(topic: &str, group: &str) -> PubSubError {
    PubSubError::InvalidOptions(format!("group `{group}` on topic `{topic}` does not exist"))
}

#[async_trait]
impl QueueBackend for MemoryQueue {
    fn capabilities(&self) -> Capabilities {
        Capabilities { durable: false, ..Capabilities::FULL }
    }

    async fn append(&self, messages: &[Message]) -> Result<(), PubSubError> {
        let mut state = self.lock();
        for m in messages {
            state.append(m.clone());
        }
        Ok(())
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<Option<u64>, PubSubError> {
        let state = self.lock();
        let Some(t) = state.topics.get(topic) else { return Ok(None) };
        let end = t.log.len() as u64 + 1;
        Ok(t.groups.get(group).map(|g| end.saturating_sub(g.next) + g.pending.len() as u64))
    }

    async fn ensure_group(&self, topic: &str, group: &str, start: StartFrom) -> Result<EnsuredGroup, PubSubError> {
        let mut state = self.lock();
        let topic = state.topics.entry(topic.to_owned()).or_default();
        let end = topic.log.len() as u64 + 1;
        if topic.groups.contains_key(group) {
            return Ok(EnsuredGroup::Existing);
        }
        let next = match start {
            StartFrom::Beginning => 1,
            StartFrom::Latest => end,
            StartFrom::Position(p) => p.max(1),
        };
        topic.groups.insert(group.to_owned(), Group { next, pending: BTreeMap::new() });
        let skipped = if start == StartFrom::Latest { topic.log.len() as u64 } else { 0 };
        Ok(EnsuredGroup::Created { skipped: EarlierMessages::Exactly(skipped) })
    }

    async fn claim(
        &self,
        topic_name: &str,
        group_name: &str,
        max: usize,
        policy: &GroupPolicy,
    ) -> Result<Vec<Claimed>, PubSubError> {
        let now = Instant::now();
        let mut state = self.lock();
        let topic = state.topics.get_mut(topic_name).ok_or_else(|| unknown_group(topic_name, group_name))?;
        let group = topic.groups.get_mut(group_name).ok_or_else(|| unknown_group(topic_name, group_name))?;
        let end = topic.log.len() as u64 + 1;
        for p in group.next..end {
            group.pending.insert(p, Entry { attempts: 0, visible_at: now });
        }
        group.next = group.next.max(end);

        let mut claimed = Vec::new();
        let mut expired = Vec::new();
        let mut blocked_keys = HashSet::new();
        for (&position, entry) in &mut group.pending {
            if claimed.len() >= max {
                break;
            }
            let message = &topic.log[(position - 1) as usize];
            if !message.key.is_empty() && !blocked_keys.insert(message.key.as_str()) {
                continue; // an older message of this key is unsettled
            }
            if entry.visible_at > now {
                continue;
            }
            if entry.attempts >= policy.max_deliveries {
                expired.push((position, entry.attempts));
                continue;
            }
            entry.attempts += 1;
            entry.visible_at = now + policy.ack_wait;
            claimed.push(Claimed { message: message.clone(), position, attempt: entry.attempts });
        }
        let dead: Vec<Message> = expired
            .into_iter()
            .map(|(position, attempts)| {
                group.pending.remove(&position);
                let m = &topic.log[(position - 1) as usize];
                dead_letter_for(m, group_name, attempts, &expired_reason(attempts), &policy.dead_letter_topic)
            })
            .collect();
        let any_dead = !dead.is_empty();
        for d in dead {
            state.append(d);
        }
        drop(state);
        if any_dead {
            self.changed.notify_waiters();
        }
        Ok(claimed)
    }

    async fn settle(
        &self,
        topic_name: &str,
        group_name: &str,
        position: u64,
        attempt: u32,
        settlement: Settlement,
        policy: &GroupPolicy,
    ) -> Result<(), PubSubError> {
        let mut state = self.lock();
        let topic = state.topics.get_mut(topic_name).ok_or_else(|| unknown_group(topic_name, group_name))?;
        let group = topic.groups.get_mut(group_name).ok_or_else(|| unknown_group(topic_name, group_name))?;
        let Some(entry) = group.pending.get_mut(&position).filter(|e| e.attempts == attempt) else {
            return Err(PubSubError::LeaseLost);
        };
        let reason = match settlement {
            Settlement::Ack => {
                group.pending.remove(&position);
                return Ok(());
            }
            Settlement::Nack { delay, reason } if entry.attempts < policy.max_deliveries => {
                let _ = reason;
                entry.visible_at = Instant::now() + delay;
                return Ok(());
            }
            Settlement::Nack { reason, .. } => crate::queue::last_nack_reason(reason, policy.max_deliveries),
            Settlement::DeadLetter { reason } => reason,
        };
        group.pending.remove(&position);
        let original = &topic.log[(position - 1) as usize];
        let dead = dead_letter_for(original, group_name, attempt, &reason, &policy.dead_letter_topic);
        state.append(dead);
        Ok(())
    }

    async fn release(&self, topic: &str, group: &str, position: u64, attempt: u32) -> Result<(), PubSubError> {
        let mut state = self.lock();
        let entry = state
            .topics
            .get_mut(topic)
            .and_then(|t| t.groups.get_mut(group))
            .and_then(|g| g.pending.get_mut(&position))
            .filter(|e| e.attempts == attempt);
        if let Some(entry) = entry {
            entry.attempts -= 1;
            entry.visible_at = Instant::now();
        }
        Ok(())
    }

    fn changed(&self) -> &Notify {
        &self.changed
    }

    fn doorbells(&self) -> &Doorbells {
        &self.doorbells
    }

    fn poll_interval(&self) -> Duration {
        // Everything happens in this process and notifies; the poll only backs that up.
        Duration::from_secs(1)
    }
}
