//! Changes staged as commit hooks of the caller's transaction, for the in-memory ports that join
//! any store's transactions (the dead-letter archive, the parking lot): applied at commit; on
//! rollback (the hook dropped unrun) the "being changed" mark of their key is removed, so a
//! concurrent change of the same key conflicts only while the first transaction lives.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::Transaction;

/// Data with a set of keys that have a change staged in a transaction that has not ended.
pub(super) trait StagedKeys<K> {
    /// The keys being changed.
    fn staged(&mut self) -> &mut HashSet<K>;
}

/// Stages `apply` for `key` in `tx` (the caller has already marked `key` in the data's staged
/// set): it runs at commit; when the hook is dropped, run or not, the mark is removed.
pub(super) fn stage<D, K>(
    tx: &mut dyn Transaction,
    shared: &Arc<Mutex<D>>,
    key: K,
    apply: impl FnOnce(&mut D) + Send + 'static,
) where
    D: StagedKeys<K> + Send + 'static,
    K: Eq + Hash + Send + 'static,
{
    let mut staged = Staged { shared: shared.clone(), key, apply: Some(Box::new(apply)) };
    tx.on_commit(Box::new(move || staged.apply()));
}

/// What a staged change does to the data at commit.
type Apply<D> = Box<dyn FnOnce(&mut D) + Send>;

struct Staged<D: StagedKeys<K>, K: Eq + Hash> {
    shared: Arc<Mutex<D>>,
    key: K,
    apply: Option<Apply<D>>,
}

impl<D: StagedKeys<K>, K: Eq + Hash> Staged<D, K> {
    fn apply(&mut self) {
        let mut data = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(apply) = self.apply.take() {
            apply(&mut data);
        }
    }
}

impl<D: StagedKeys<K>, K: Eq + Hash> Drop for Staged<D, K> {
    fn drop(&mut self) {
        let mut data = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        data.staged().remove(&self.key);
    }
}
