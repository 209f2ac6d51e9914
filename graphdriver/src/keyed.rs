//! Per-key async locks (containerd's kmutex idea), the one implementation
//! the store (per ChainID, per RW name) and the drivers (per layer id) use:
//! work on one key is serialised, work on different keys runs in parallel.
//!
//! A key's entry may carry state `S` (a driver's mount count, say). The
//! entry exists while someone holds or waits for the key, or while its state
//! is not [`Idle`]; so the map does not grow with the number of keys ever
//! used. The map lock guards the map only, for a lookup or an insert; it is
//! never held across an `.await` or I/O.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Whether a key's state may be forgotten once nobody holds the key.
pub trait Idle {
    fn is_idle(&self) -> bool;
}

impl Idle for () {
    fn is_idle(&self) -> bool {
        true
    }
}

struct Entry<S> {
    cell: Arc<AsyncMutex<S>>,
    users: usize,
}

type Map<K, S> = Arc<Mutex<HashMap<K, Entry<S>>>>;

/// Per-key locks over state `S` (default: none).
pub struct KeyedMutex<K, S = ()> {
    map: Map<K, S>,
}

impl<K, S> Default for KeyedMutex<K, S> {
    fn default() -> Self {
        KeyedMutex { map: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<K, S> std::fmt::Debug for KeyedMutex<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("KeyedMutex").field("entries", &n).finish()
    }
}

/// Holds a key (and its state); unlocking and freeing an idle entry happen
/// on drop.
pub struct KeyedGuard<K: Eq + Hash + Clone, S: Idle> {
    // Declared first: dropped (unlocked) before `user` looks at the state.
    guard: OwnedMutexGuard<S>,
    _user: User<K, S>,
}

impl<K: Eq + Hash + Clone, S: Idle> Deref for KeyedGuard<K, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.guard
    }
}

impl<K: Eq + Hash + Clone, S: Idle> DerefMut for KeyedGuard<K, S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.guard
    }
}

/// One user of a key, counted from before the wait, so a cancelled wait
/// still cleans up.
struct User<K: Eq + Hash + Clone, S: Idle> {
    map: Map<K, S>,
    key: K,
}

impl<K: Eq + Hash + Clone, S: Idle> Drop for User<K, S> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(&self.key) {
            entry.users -= 1;
            // Nobody else can reach the cell while we hold the map lock and
            // the count is zero; a held cell is someone's, so it stays.
            if entry.users == 0 && entry.cell.try_lock().is_ok_and(|s| s.is_idle()) {
                map.remove(&self.key);
            }
        }
    }
}

impl<K: Eq + Hash + Clone, S: Idle + Default> KeyedMutex<K, S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lock `key`, creating its entry (state `S::default()`) if needed.
    pub async fn lock(&self, key: &K) -> KeyedGuard<K, S> {
        let cell = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = map
                .entry(key.clone())
                .or_insert_with(|| Entry { cell: Arc::new(AsyncMutex::new(S::default())), users: 0 });
            entry.users += 1;
            entry.cell.clone()
        };
        let user = User { map: self.map.clone(), key: key.clone() };
        KeyedGuard { guard: cell.lock_owned().await, _user: user }
    }

    /// Lock `key` only if it has an entry (someone holds it, or its state is
    /// not idle).
    pub async fn lock_existing(&self, key: &K) -> Option<KeyedGuard<K, S>> {
        let cell = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = map.get_mut(key)?;
            entry.users += 1;
            entry.cell.clone()
        };
        let user = User { map: self.map.clone(), key: key.clone() };
        Some(KeyedGuard { guard: cell.lock_owned().await, _user: user })
    }

    /// The keys that have an entry now.
    pub fn keys(&self) -> Vec<K> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// How many keys have an entry (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_key_is_serialised_and_entries_are_freed() {
        let locks = Arc::new(KeyedMutex::<String>::new());
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
        let locks = KeyedMutex::<u32>::new();
        let a = locks.lock(&1).await;
        let _b = locks.lock(&2).await;
        let waited = tokio::time::timeout(Duration::from_millis(10), locks.lock(&1)).await;
        assert!(waited.is_err());
        assert_eq!(locks.len(), 2);
        drop(a);
        assert_eq!(locks.len(), 1);
    }

    #[derive(Default)]
    struct Count(u32);

    impl Idle for Count {
        fn is_idle(&self) -> bool {
            self.0 == 0
        }
    }

    #[tokio::test]
    async fn state_that_is_not_idle_outlives_its_holders() {
        let locks = KeyedMutex::<u32, Count>::new();
        assert!(locks.lock_existing(&7).await.is_none());
        locks.lock(&7).await.0 = 2;
        assert_eq!(locks.keys(), vec![7], "a busy state was forgotten");
        let mut g = locks.lock_existing(&7).await.unwrap();
        assert_eq!(g.0, 2);
        g.0 = 0;
        drop(g);
        assert!(locks.is_empty(), "an idle state was kept");
    }
}
