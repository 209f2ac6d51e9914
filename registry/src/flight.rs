//! Duplicate suppression across concurrent pulls. Per layer: the first
//! pull that needs a ChainID (a blob on its parent) downloads and registers
//! it; every other pull that needs it meanwhile waits for that one and then
//! takes its own reference. Per image: concurrent resolves of one reference
//! and platform share one manifest and one config download. Waiters are
//! woken by the leader's result (the value, or the error's words), never
//! poll; a leader that goes away without a result (cancelled) lets one
//! waiter take over.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

type Outcome<V> = Option<Result<V, String>>;

pub struct Flights<K, V = ()> {
    map: Mutex<HashMap<K, watch::Receiver<Outcome<V>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights { map: Mutex::new(HashMap::new()) }
    }
}

pub enum Join<K: Hash + Eq + Clone, V = ()> {
    Leader(Leader<K, V>),
    Follower(watch::Receiver<Outcome<V>>),
}

/// The one doing the work. Dropping it without [`Leader::finish`] wakes the
/// followers to try again.
pub struct Leader<K: Hash + Eq + Clone, V = ()> {
    flights: Arc<Flights<K, V>>,
    key: K,
    tx: Option<watch::Sender<Outcome<V>>>,
}

impl<K: Hash + Eq + Clone, V> Flights<K, V> {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, watch::Receiver<Outcome<V>>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn join(self: &Arc<Self>, key: &K) -> Join<K, V> {
        let mut map = self.map();
        if let Some(rx) = map.get(key) {
            return Join::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Join::Leader(Leader { flights: self.clone(), key: key.clone(), tx: Some(tx) })
    }

    /// Downloads in flight (for tests: zero when idle).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq + Clone, V> Leader<K, V> {
    pub fn finish(mut self, result: Result<V, String>) {
        self.flights.map().remove(&self.key);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(result));
        }
    }
}

impl<K: Hash + Eq + Clone, V> Drop for Leader<K, V> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.flights.map().remove(&self.key);
        }
    }
}

/// Wait for a leader: `Some(result)` when it finished, `None` when it went
/// away without one (the caller tries again, maybe as leader).
pub async fn wait<V: Clone>(mut rx: watch::Receiver<Outcome<V>>) -> Option<Result<V, String>> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_result_and_a_vanished_leader_frees_the_key() {
        let f: Arc<Flights<u32, ()>> = Arc::default();
        let Join::Leader(l) = f.join(&1) else { panic!("first is leader") };
        let Join::Follower(rx) = f.join(&1) else { panic!("second follows") };
        let w = tokio::spawn(wait(rx));
        l.finish(Err("bad digest".into()));
        assert_eq!(w.await.unwrap(), Some(Err("bad digest".into())));
        assert!(f.is_empty());
        let Join::Leader(l) = f.join(&1) else { panic!("key free again") };
        let Join::Follower(rx) = f.join(&1) else { panic!("follows") };
        drop(l);
        assert_eq!(wait(rx).await, None);
        assert!(f.is_empty());
    }
}
