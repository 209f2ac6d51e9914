//! Per-key async locks for the store (one per ChainID, one per RW name),
//! timed: [`graphdriver::keyed::KeyedMutex`] — the one implementation the
//! drivers use too — with every wait and hold recorded in [`LockStats`].

use std::hash::Hash;
use std::sync::Arc;

use graphdriver::keyed::{KeyedGuard, KeyedMutex};

use crate::lockstats::{LockStats, Timer};

pub(crate) struct KeyedLocks<K> {
    inner: KeyedMutex<K>,
    stats: Arc<LockStats>,
}

/// Held while a key is locked; unlocking and freeing the entry happen on drop.
pub(crate) struct KeyGuard<K: Eq + Hash + Clone> {
    _guard: KeyedGuard<K, ()>,
    _hold: Timer,
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    pub fn new(stats: Arc<LockStats>) -> Self {
        KeyedLocks { inner: KeyedMutex::new(), stats }
    }

    pub async fn lock(&self, key: &K) -> KeyGuard<K> {
        let wait = self.stats.wait_timer();
        let guard = self.inner.lock(key).await;
        drop(wait);
        KeyGuard { _guard: guard, _hold: self.stats.hold_timer() }
    }

    /// Keys currently held or waited for (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.len()
    }
}

// The lock itself is tested in `graphdriver::keyed`; the store's stress test
// checks that every key entry is freed when idle (`Store::key_entries`).
