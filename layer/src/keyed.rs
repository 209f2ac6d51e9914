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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_key_is_serialised_and_entries_are_freed() {
        let locks = Arc::new(KeyedLocks::<String>::new(Arc::new(LockStats::new("test"))));
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (locks, counter) = (locks.clone(), counter.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock(&"k".to_string()).await;
                let before = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(before, 0, "two holders of one key at once");
                tokio::time::sleep(Duration::from_millis(1)).await;
                counter.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_block_and_cancelled_waits_clean_up() {
        let locks = KeyedLocks::<u32>::new(Arc::new(LockStats::new("test")));
        let a = locks.lock(&1).await;
        let _b = locks.lock(&2).await;
        // A wait on a held key that is cancelled must not leak its entry.
        let waited = tokio::time::timeout(Duration::from_millis(10), locks.lock(&1)).await;
        assert!(waited.is_err());
        assert_eq!(locks.len(), 2);
        drop(a);
        assert_eq!(locks.len(), 1);
    }
}
