//! The in-memory [`Store`]: every port in one process, with the same transaction boundaries as
//! the SQL stores. Writes are staged in the [`Transaction`] and checked and applied under one
//! lock at commit, so nothing is visible before commit and positions follow commit order.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::message::{Message, MessageId};
use crate::store::{
    AppendResult, ExpectedVersion, LeaseGrant, NewEvent, OutboxRecord, RecordedEvent, SagaRecord, Snapshot, Store,
    StoreError, Transaction,
};

/// The in-memory store. Cheap to clone; clones share the data.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    data: Mutex<Data>,
    changes: Notify,
}

#[derive(Debug, Default)]
struct Data {
    /// The global log; position `p` is `log[p - 1]`.
    log: Vec<RecordedEvent>,
    /// Indices into `log` per stream, in version order.
    streams: HashMap<String, Vec<usize>>,
    snapshots: HashMap<String, Snapshot>,
    outbox: BTreeMap<u64, Message>,
    /// Scheduled messages by sequence (shared with `outbox`, so the outbox order covers both),
    /// with their due time.
    scheduled: BTreeMap<u64, (DateTime<Utc>, Message)>,
    outbox_next: u64,
    /// Named leases (kept after release, so fencing tokens only grow).
    leases: HashMap<String, Lease>,
    inbox: HashSet<(String, MessageId)>,
    /// Checkpoints: position and the fencing token saved with it (0: none).
    checkpoints: HashMap<String, (u64, u64)>,
    sagas: HashMap<(String, String), SagaRecord>,
}

/// One named lease.
#[derive(Debug)]
struct Lease {
    holder: String,
    /// When it runs out (at once after a release).
    until: std::time::Instant,
    token: u64,
}

impl Data {
    /// Checks a conditional checkpoint save against the committed checkpoint.
    fn check_checkpoint(&self, name: &str, expected: u64, token: Option<u64>) -> Result<(), StoreError> {
        let found = self.checkpoints.get(name).copied();
        check_checkpoint(name, found, expected, token)
    }

    fn version(&self, stream: &str) -> u64 {
        self.streams.get(stream).map_or(0, |v| v.len() as u64)
    }

    /// The due outbox messages (immediate, and scheduled at or before `now`) in outbox order.
    fn due_outbox(&self, now: DateTime<Utc>) -> impl Iterator<Item = (u64, &Message)> {
        let mut immediate = self.outbox.iter().map(|(&s, m)| (s, m)).peekable();
        let mut due =
            self.scheduled.iter().filter(move |(_, (at, _))| *at <= now).map(|(&s, (_, m))| (s, m)).peekable();
        std::iter::from_fn(move || match (immediate.peek(), due.peek()) {
            (Some(a), Some(b)) if b.0 < a.0 => due.next(),
            (Some(_), _) => immediate.next(),
            (None, _) => due.next(),
        })
    }

    fn stream_events(&self, stream: &str, from_version: u64) -> impl Iterator<Item = &RecordedEvent> {
        let from = from_version.max(1) as usize - 1;
        self.streams.get(stream).into_iter().flat_map(move |idx| idx.iter().skip(from).map(|&i| &self.log[i]))
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.shared.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Staged appends to one stream.
#[derive(Debug)]
struct StagedStream {
    stream: String,
    /// The committed version when this transaction first appended; must still hold at commit
    /// unless every append to the stream expected [`ExpectedVersion::Any`].
    base_version: u64,
    /// Whether every append expected `Any`: then the events go after whatever is there at commit.
    any_version: bool,
    events: Vec<NewEvent>,
}

/// Checks a conditional checkpoint save against `found` (position and token).
fn check_checkpoint(
    name: &str,
    found: Option<(u64, u64)>,
    expected: u64,
    token: Option<u64>,
) -> Result<(), StoreError> {
    let (position, found_token) = (found.map(|f| f.0), found.map_or(0, |f| f.1));
    let stale = token.is_some_and(|mine| found_token > mine);
    if stale || position.unwrap_or(0) != expected {
        return Err(StoreError::fenced(name, expected, position, token, found_token));
    }
    Ok(())
}

/// A unit of work on a [`MemoryStore`].
pub struct MemoryTransaction {
    store: MemoryStore,
    streams: Vec<StagedStream>,
    snapshots: Vec<Snapshot>,
    /// Staged outbox messages, with their due time if scheduled, in the order given.
    outbox: Vec<(Option<DateTime<Utc>>, Message)>,
    inbox: Vec<(String, MessageId)>,
    /// Staged checkpoints: position and fencing token (`None`: keep the stored one).
    checkpoints: HashMap<String, (u64, Option<u64>)>,
    /// Conditions of conditional saves on committed checkpoints, checked again at commit:
    /// name, expected position, token.
    checkpoint_conditions: Vec<(String, u64, Option<u64>)>,
    sagas: Vec<SagaRecord>,
    hooks: Vec<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for MemoryTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransaction").field("streams", &self.streams).finish_non_exhaustive()
    }
}

impl MemoryTransaction {
    fn staged(&self, stream: &str) -> Option<&StagedStream> {
        self.streams.iter().find(|s| s.stream == stream)
    }
}

#[async_trait]
impl Transaction for MemoryTransaction {
    async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        let committed = self.store.data().version(stream);
        let (base, staged) = self.staged(stream).map_or((committed, 0), |s| (s.base_version, s.events.len() as u64));
        let current = base + staged;
        if !expected.matches(current) {
            return Err(StoreError::version_conflict(stream, expected, current));
        }
        let next_expected_version = current + events.len() as u64;
        let any_version = expected == ExpectedVersion::Any;
        match self.streams.iter_mut().find(|s| s.stream == stream) {
            Some(s) => {
                s.any_version &= any_version;
                s.events.extend(events);
            }
            None => {
                self.streams.push(StagedStream { stream: stream.to_owned(), base_version: base, any_version, events })
            }
        }
        Ok(AppendResult { next_expected_version })
    }

    async fn read_stream(
        &mut self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut out: Vec<_> = self.store.data().stream_events(stream, from_version).take(limit).cloned().collect();
        if let Some(s) = self.staged(stream) {
            for (i, e) in s.events.iter().enumerate() {
                let version = s.base_version + i as u64 + 1;
                if version >= from_version && out.len() < limit {
                    out.push(recorded(stream, version, 0, e));
                }
            }
        }
        Ok(out)
    }

    async fn save_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.snapshots.push(snapshot);
        Ok(())
    }

    async fn load_snapshot(&mut self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        if let Some(s) = self.snapshots.iter().rev().find(|s| s.stream == stream) {
            return Ok(Some(s.clone()));
        }
        Ok(self.store.data().snapshots.get(stream).cloned())
    }

    async fn enqueue(&mut self, mut messages: Vec<Message>) -> Result<(), StoreError> {
        for m in &mut messages {
            crate::observability::fill_current(&mut m.metadata);
        }
        self.outbox.extend(messages.into_iter().map(|m| (None, m)));
        Ok(())
    }

    async fn schedule(&mut self, mut messages: Vec<Message>, at: DateTime<Utc>) -> Result<(), StoreError> {
        for m in &mut messages {
            crate::observability::fill_current(&mut m.metadata);
        }
        self.outbox.extend(messages.into_iter().map(|m| (Some(at), m)));
        Ok(())
    }

    async fn record_handled(&mut self, handler: &str, message_id: MessageId) -> Result<bool, StoreError> {
        let key = (handler.to_owned(), message_id);
        if self.inbox.contains(&key) || self.store.data().inbox.contains(&key) {
            return Ok(false);
        }
        self.inbox.push(key);
        Ok(true)
    }

    async fn save_checkpoint(&mut self, name: &str, position: u64) -> Result<(), StoreError> {
        let token = self.checkpoints.get(name).and_then(|c| c.1);
        self.checkpoints.insert(name.to_owned(), (position, token));
        Ok(())
    }

    async fn save_checkpoint_if(
        &mut self,
        name: &str,
        expected: u64,
        position: u64,
        token: Option<u64>,
    ) -> Result<(), StoreError> {
        match self.checkpoints.get(name).copied() {
            Some((staged, staged_token)) => {
                let committed_token = self.store.data().checkpoints.get(name).map_or(0, |c| c.1);
                let found_token = staged_token.unwrap_or(0).max(committed_token);
                check_checkpoint(name, Some((staged, found_token)), expected, token)?;
            }
            None => {
                self.store.data().check_checkpoint(name, expected, token)?;
                self.checkpoint_conditions.push((name.to_owned(), expected, token));
            }
        }
        let token = token.or_else(|| self.checkpoints.get(name).and_then(|c| c.1));
        self.checkpoints.insert(name.to_owned(), (position, token));
        Ok(())
    }

    async fn load_checkpoint(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        if let Some((p, _)) = self.checkpoints.get(name) {
            return Ok(Some(*p));
        }
        Ok(self.store.data().checkpoints.get(name).map(|c| c.0))
    }

    async fn save_saga(&mut self, record: &SagaRecord) -> Result<(), StoreError> {
        let current = match self.sagas.iter().rev().find(|s| s.name == record.name && s.id == record.id) {
            Some(s) => s.version,
            None => self.store.data().sagas.get(&(record.name.clone(), record.id.clone())).map_or(0, |s| s.version),
        };
        check_saga_version(record, current)?;
        self.sagas.push(record.clone());
        Ok(())
    }

    async fn load_saga(&mut self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError> {
        if let Some(s) = self.sagas.iter().rev().find(|s| s.name == name && s.id == id) {
            return Ok(Some(s.clone()));
        }
        Ok(self.store.data().sagas.get(&(name.to_owned(), id.to_owned())).cloned())
    }

    fn on_commit(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.hooks.push(f);
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send) {
        self
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let this = *self;
        {
            let mut data = this.store.data();
            // Check everything first, so a conflict leaves the store untouched.
            let mut streams = this.streams;
            for s in &mut streams {
                let now = data.version(&s.stream);
                if s.any_version {
                    s.base_version = now;
                } else if now != s.base_version {
                    return Err(StoreError::version_conflict(&s.stream, ExpectedVersion::Exact(s.base_version), now));
                }
            }
            for key in &this.inbox {
                if data.inbox.contains(key) {
                    return Err(inbox_conflict(&key.0, key.1));
                }
            }
            for (name, expected, token) in &this.checkpoint_conditions {
                data.check_checkpoint(name, *expected, *token)?;
            }
            let mut saga_versions: HashMap<(String, String), u64> = HashMap::new();
            for r in &this.sagas {
                let key = (r.name.clone(), r.id.clone());
                let current =
                    saga_versions.get(&key).copied().unwrap_or_else(|| data.sagas.get(&key).map_or(0, |s| s.version));
                check_saga_version(r, current)?;
                saga_versions.insert(key, r.version);
            }

            for s in streams {
                for (i, e) in s.events.iter().enumerate() {
                    let position = data.log.len() as u64 + 1;
                    let event = recorded(&s.stream, s.base_version + i as u64 + 1, position, e);
                    let index = data.log.len();
                    data.log.push(event);
                    data.streams.entry(s.stream.clone()).or_default().push(index);
                }
            }
            for snap in this.snapshots {
                data.snapshots.insert(snap.stream.clone(), snap);
            }
            for (at, m) in this.outbox {
                data.outbox_next += 1;
                let seq = data.outbox_next;
                if let Some(at) = at {
                    data.scheduled.insert(seq, (at, m));
                } else {
                    data.outbox.insert(seq, m);
                }
            }
            data.inbox.extend(this.inbox);
            for (name, (position, token)) in this.checkpoints {
                let stored = data.checkpoints.get(&name).map_or(0, |c| c.1);
                data.checkpoints.insert(name, (position, token.map_or(stored, |t| t.max(stored))));
            }
            for r in this.sagas {
                data.sagas.insert((r.name.clone(), r.id.clone()), r);
            }
        }
        this.store.shared.changes.notify_waiters();
        for hook in this.hooks {
            hook();
        }
        Ok(())
    }
}

fn recorded(stream: &str, version: u64, position: u64, e: &NewEvent) -> RecordedEvent {
    RecordedEvent {
        stream: stream.to_owned(),
        version,
        position,
        id: e.id,
        name: e.name.clone(),
        payload: e.payload.clone(),
        metadata: e.metadata.clone(),
    }
}

/// Rejects appends that cannot be meant: an empty stream name or no events.
pub fn validate_append(stream: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    if stream.is_empty() {
        return Err(StoreError::Invalid("stream name is empty".into()));
    }
    if events.is_empty() {
        return Err(StoreError::Invalid(format!("append to `{stream}` has no events")));
    }
    Ok(())
}

/// The conflict raised when two transactions record the same inbox entry.
pub fn inbox_conflict(handler: &str, id: MessageId) -> StoreError {
    StoreError::Conflict {
        subject: format!("inbox {handler}/{id}"),
        detail: "already handled by a concurrent transaction".into(),
    }
}

/// Checks that `record.version` follows `current`.
pub fn check_saga_version(record: &SagaRecord, current: u64) -> Result<(), StoreError> {
    if record.version == current + 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            subject: format!("saga {}/{}", record.name, record.id),
            detail: format!("saving version {} but stored version is {current}", record.version),
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn begin(&self) -> Result<Box<dyn Transaction>, StoreError> {
        Ok(Box::new(MemoryTransaction {
            store: self.clone(),
            streams: Vec::new(),
            snapshots: Vec::new(),
            outbox: Vec::new(),
            inbox: Vec::new(),
            checkpoints: HashMap::new(),
            checkpoint_conditions: Vec::new(),
            sagas: Vec::new(),
            hooks: Vec::new(),
        }))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.data().stream_events(stream, from_version).take(limit).cloned().collect())
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let data = self.data();
        Ok(data.log.iter().skip(after as usize).take(limit).cloned().collect())
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.data().snapshots.get(stream).cloned())
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.data().checkpoints.get(name).map(|c| c.0))
    }

    async fn load_saga(&self, name: &str, id: &str) -> Result<Option<SagaRecord>, StoreError> {
        Ok(self.data().sagas.get(&(name.to_owned(), id.to_owned())).cloned())
    }

    async fn due_sagas(&self, name: &str, now_millis: u64, limit: usize) -> Result<Vec<SagaRecord>, StoreError> {
        let data = self.data();
        let mut due: Vec<SagaRecord> = data
            .sagas
            .values()
            .filter(|s| s.name == name && !s.done && s.deadline.is_some_and(|d| d <= now_millis))
            .cloned()
            .collect();
        due.sort_by_key(|s| s.deadline);
        due.truncate(limit);
        Ok(due)
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let data = self.data();
        let due = data.due_outbox(Utc::now()).take(limit);
        Ok(due.map(|(sequence, m)| OutboxRecord { sequence, message: m.clone() }).collect())
    }

    async fn outbox_stats(&self) -> Result<crate::store::OutboxStats, StoreError> {
        let now = Utc::now();
        let data = self.data();
        let oldest_immediate = data.outbox.values().next().map(|m| m.metadata.occurred_at);
        let due: Vec<DateTime<Utc>> = data.scheduled.values().map(|(at, _)| *at).filter(|at| *at <= now).collect();
        let oldest = oldest_immediate.into_iter().chain(due.iter().copied()).min();
        Ok(crate::store::OutboxStats { backlog: (data.outbox.len() + due.len()) as u64, oldest })
    }

    async fn outbox_remove(&self, sequences: &[u64]) -> Result<(), StoreError> {
        let mut data = self.data();
        for s in sequences {
            if data.outbox.remove(s).is_none() {
                data.scheduled.remove(s);
            }
        }
        Ok(())
    }

    async fn next_scheduled(&self) -> Result<Option<std::time::Duration>, StoreError> {
        let now = Utc::now();
        let earliest = self.data().scheduled.values().map(|(at, _)| *at).min();
        Ok(earliest.map(|at| (at - now).to_std().unwrap_or_default()))
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<LeaseGrant>, StoreError> {
        let now = std::time::Instant::now();
        let mut data = self.data();
        let token = match data.leases.get(name) {
            None => 1,
            Some(lease) if lease.until <= now => lease.token + 1,
            Some(lease) if lease.holder == holder => lease.token,
            Some(_) => return Ok(None),
        };
        data.leases.insert(name.to_owned(), Lease { holder: holder.to_owned(), until: now + ttl, token });
        Ok(Some(LeaseGrant { name: name.to_owned(), holder: holder.to_owned(), token }))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let now = std::time::Instant::now();
        let mut data = self.data();
        if let Some(lease) = data.leases.get_mut(name).filter(|l| l.holder == holder && l.until > now) {
            lease.until = now;
        }
        Ok(())
    }

    fn changes(&self) -> &Notify {
        &self.shared.changes
    }

    fn poll_interval(&self) -> std::time::Duration {
        // Every commit notifies `changes`; the poll only backs that up.
        std::time::Duration::from_secs(1)
    }
}
