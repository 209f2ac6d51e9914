//! Lock wait and hold time histograms, one per lock, cheap enough to record on
//! every acquisition (a few atomic adds). Exported by the daemon as metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Bucket upper bounds, in microseconds.
pub const BUCKETS_US: [u64; 12] = [1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 1_000_000];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Cumulative-free counts: `counts[i]` counts samples in bucket `i`; the
    /// last slot counts samples above the largest bound.
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    total: AtomicU64,
}

impl Histogram {
    pub fn record(&self, us: u64) {
        let i = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// (bucket counts, sum in µs, sample count).
    pub fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        let counts = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (counts, self.sum_us.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }

    /// The largest bucket bound any sample reached (µs), for quick checks.
    pub fn max_bucket_us(&self) -> u64 {
        let (counts, _, _) = self.snapshot();
        match counts.iter().rposition(|&c| c > 0) {
            None => 0,
            Some(i) if i < BUCKETS_US.len() => BUCKETS_US[i],
            Some(_) => u64::MAX,
        }
    }
}

#[derive(Debug)]
pub struct LockStats {
    pub name: &'static str,
    pub wait: Histogram,
    pub hold: Histogram,
}

impl LockStats {
    pub fn new(name: &'static str) -> Self {
        LockStats { name, wait: Histogram::default(), hold: Histogram::default() }
    }
    pub(crate) fn wait_timer(self: &Arc<Self>) -> Timer {
        Timer { stats: self.clone(), start: Instant::now(), hold: false }
    }
    pub(crate) fn hold_timer(self: &Arc<Self>) -> Timer {
        Timer { stats: self.clone(), start: Instant::now(), hold: true }
    }
}

/// Records the time from its creation to its drop.
pub(crate) struct Timer {
    stats: Arc<LockStats>,
    start: Instant,
    hold: bool,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let us = self.start.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        if self.hold {
            self.stats.hold.record(us);
        } else {
            self.stats.wait.record(us);
        }
    }
}

/// A std mutex for the store's maps that measures wait and hold time. The
/// guard must never live across I/O or an `.await` (Architecture Invariant).
pub(crate) struct MapLock<T> {
    inner: Mutex<T>,
    stats: Arc<LockStats>,
}

pub(crate) struct MapGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    _hold: Timer,
}

impl<T> std::ops::Deref for MapGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for MapGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> MapLock<T> {
    pub fn new(value: T, stats: Arc<LockStats>) -> Self {
        MapLock { inner: Mutex::new(value), stats }
    }

    pub fn lock(&self) -> MapGuard<'_, T> {
        let wait = self.stats.wait_timer();
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        drop(wait);
        MapGuard { guard, _hold: self.stats.hold_timer() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_samples() {
        let h = Histogram::default();
        h.record(0);
        h.record(3);
        h.record(2_000_000);
        let (counts, sum, total) = h.snapshot();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[BUCKETS_US.len()], 1);
        assert_eq!(sum, 2_000_003);
        assert_eq!(total, 3);
        assert_eq!(h.max_bucket_us(), u64::MAX);
    }

    #[test]
    fn map_lock_records_hold_and_wait() {
        let stats = Arc::new(LockStats::new("t"));
        let l = MapLock::new(5, stats.clone());
        {
            let mut g = l.lock();
            *g += 1;
        }
        assert_eq!(*l.lock(), 6);
        assert_eq!(stats.hold.snapshot().2, 2);
        assert_eq!(stats.wait.snapshot().2, 2);
    }
}
