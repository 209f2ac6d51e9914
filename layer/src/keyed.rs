//! Per-key async locks (containerd's kmutex idea): work on one ChainID or one
//! RW name is serialised, work on different keys runs in parallel. A key's
//! entry exists only while someone holds or waits for it, so the map does not
//! grow with the number of keys ever used.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::lockstats::{LockStats, Timer};

struct Slot {
    lock: Arc<AsyncMutex<()>>,
    users: usize,
}

pub(crate) struct KeyedLocks<K> {
    map: Arc<Mutex<HashMap<K, Slot>>>,
    stats: Arc<LockStats>,
}

/// Held while a key is locked; unlocking and freeing the entry happen on drop.
pub(crate) struct KeyGuard<K: Eq + Hash + Clone> {
    _guard: OwnedMutexGuard<()>,
    _user: User<K>,
    _hold: Timer,
}

/// Counts one user of a key; drop decrements and frees the entry at zero.
/// Created before awaiting the lock, so a cancelled wait still cleans up.
struct User<K: Eq + Hash + Clone> {
    map: Arc<Mutex<HashMap<K, Slot>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Drop for User<K> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = map.get_mut(&self.key) {
            slot.users -= 1;
            if slot.users == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    pub fn new(stats: Arc<LockStats>) -> Self {
        KeyedLocks { map: Arc::new(Mutex::new(HashMap::new())), stats }
    }

    pub async fn lock(&self, key: &K) -> KeyGuard<K> {
        let wait = self.stats.wait_timer();
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = map.entry(key.clone()).or_insert_with(|| Slot { lock: Arc::new(AsyncMutex::new(())), users: 0 });
            slot.users += 1;
            slot.lock.clone()
        };
        let user = User { map: self.map.clone(), key: key.clone() };
        let guard = lock.lock_owned().await;
        drop(wait);
        KeyGuard { _guard: guard, _user: user, _hold: self.stats.hold_timer() }
    }

    /// Keys currently held or waited for (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
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
