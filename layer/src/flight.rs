//! Duplicate suppression ("singleflight"): concurrent calls with one key do
//! the work once. The first caller becomes the leader; the others wait on a
//! watch channel — no polling, no back-off — and receive the leader's result.
//! If the leader fails (or is dropped), waiters retry and one becomes leader.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

#[derive(Clone, Debug)]
enum State<V> {
    Running,
    Done(V),
    Failed,
}

pub(crate) struct Flights<K, V> {
    map: Arc<Mutex<HashMap<K, watch::Receiver<State<V>>>>>,
}

/// The leader's duty: report the outcome. Dropping it without `succeed`
/// counts as failure, which wakes the waiters so one of them takes over.
pub(crate) struct Leader<K: Eq + Hash + Clone, V: Clone> {
    map: Arc<Mutex<HashMap<K, watch::Receiver<State<V>>>>>,
    key: K,
    tx: watch::Sender<State<V>>,
    done: bool,
}

impl<K: Eq + Hash + Clone, V: Clone> Leader<K, V> {
    pub fn succeed(mut self, v: V) {
        self.finish(State::Done(v));
    }

    fn finish(&mut self, state: State<V>) {
        if self.done {
            return;
        }
        self.done = true;
        self.map.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
        let _ = self.tx.send(state);
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for Leader<K, V> {
    fn drop(&mut self) {
        self.finish(State::Failed);
    }
}

pub(crate) enum Role<K: Eq + Hash + Clone, V: Clone> {
    Leader(Leader<K, V>),
    /// Another caller did the work; here is its result.
    Joined(V),
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    pub fn new() -> Self {
        Flights { map: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Become the leader for `key`, or wait for the current leader's result.
    pub async fn join(&self, key: &K) -> Role<K, V> {
        loop {
            let mut rx = {
                let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
                match map.get(key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(State::Running);
                        map.insert(key.clone(), rx);
                        return Role::Leader(Leader { map: self.map.clone(), key: key.clone(), tx, done: false });
                    }
                }
            };
            let outcome = rx.wait_for(|s| !matches!(s, State::Running)).await.map(|s| s.clone());
            if let Ok(State::Done(v)) = outcome {
                return Role::Joined(v);
            }
            // Leader failed or vanished: try again, maybe as leader.
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twenty_callers_do_the_work_once() {
        let flights = Arc::new(Flights::<u32, u64>::new());
        let work = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (flights, work) = (flights.clone(), work.clone());
            tasks.push(tokio::spawn(async move {
                match flights.join(&7).await {
                    Role::Leader(l) => {
                        work.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        l.succeed(42);
                        42
                    }
                    Role::Joined(v) => v,
                }
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(work.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "keys must be freed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_takes_over_when_the_leader_fails() {
        let flights = Arc::new(Flights::<u32, u64>::new());
        let Role::Leader(first) = flights.join(&1).await else { panic!("first caller must lead") };
        let f2 = flights.clone();
        let waiter = tokio::spawn(async move {
            match f2.join(&1).await {
                Role::Leader(l) => {
                    l.succeed(2);
                    "led"
                }
                Role::Joined(_) => "joined",
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first); // fails
        assert_eq!(waiter.await.unwrap(), "led");
        assert_eq!(flights.len(), 0);
    }
}
