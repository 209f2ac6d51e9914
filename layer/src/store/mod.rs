//! The layer store.
//!
//! # Lock order (Architecture Invariant)
//! `name key` (per RW name) → `chain key` (per ChainID) → `mounts` map →
//! `layers` map. The two maps are leaves: held for a map update only, never
//! across I/O or `.await`, and never both at once. A task holds at most one
//! key lock at a time, except that a name key may be held while a chain key
//! is taken. Filesystem work happens under key locks or no lock at all.
//! The layerdb index's lock (inside `LayerDb`) is a leaf below all of
//! these, taken on the blocking pool around a rename (see `indexing`).

mod damaged;
mod export;
#[cfg(test)]
mod faults;
mod fsck;
mod graph;
mod indexing;
mod open;
mod register;
mod release;
mod rw;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use graphdriver::{Change, Driver, TarReader};
use tokio_util::task::TaskTracker;

use crate::digest::{ChainId, Digest};
use crate::error::{LayerStoreError, Result};
use crate::flight::Flights;
use crate::keyed::KeyedLocks;
use crate::lockstats::{LockStats, MapLock};
use crate::metadata::LayerDb;
use crate::name::RwName;
use crate::types::{LayerInfo, RegisterOpts, RwInfo, StoreInfo};

use graph::{Counts, Graph, LayerMeta};
use rw::RwState;

/// Populates an init layer, given its mounted root (Docker's `InitFunc`).
pub type InitFn = Box<dyn FnOnce(&Path) -> std::io::Result<()> + Send>;

/// Options of [`Store::create_rw`].
#[derive(Default)]
pub struct RwOpts {
    /// Create an `-init` layer between the parent and the RW layer.
    pub init: bool,
    /// Called with the init layer's mounted root to populate it (Docker's
    /// `InitFunc`). Without it an init layer is left empty.
    pub init_fn: Option<InitFn>,
    pub mount_label: String,
}

/// The lock statistics of one store, for metrics.
#[derive(Debug, Clone)]
pub struct StoreLockStats {
    pub all: Vec<Arc<LockStats>>,
}

/// Keys of duplicate suppression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FlightKey {
    /// The ChainID is known up front (the caller stated the DiffID).
    Chain(ChainId),
    /// Same compressed blob on the same parent.
    Blob(Option<ChainId>, Digest),
}

pub(crate) struct Inner {
    root: PathBuf,
    db: LayerDb,
    driver: Arc<dyn Driver>,
    layers: MapLock<Graph>,
    mounts: MapLock<rw::Mounts>,
    chain_keys: KeyedLocks<ChainId>,
    name_keys: KeyedLocks<RwName>,
    flights: Flights<FlightKey, ChainId>,
    /// Deferred deletions and other background work, awaited at shutdown.
    bg: TaskTracker,
    stats: StoreLockStats,
    /// Entries start-up kept without loading them (see `damaged`).
    damaged: damaged::Damaged,
    /// Benchmark baseline only: one global lock held across every operation,
    /// driver I/O included, with deletion done inline (moby's layerL).
    #[cfg(feature = "coarse-baseline")]
    coarse: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Operations running (the index writer waits for a quiet store).
    ops: Arc<indexing::Ops>,
    /// The check of the index a start used (see `indexing`), stopped at shutdown.
    verifier: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The start read the index rather than every record.
    from_index: bool,
    _root_lock: crate::rootlock::RootLock,
}

/// How a store is opened.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Layers start-up must not collect even if nothing on disk holds them:
    /// the top layers of the image store's images, which it leases when it
    /// opens (see `images::ImageStore::layers_to_keep`).
    pub keep: Vec<ChainId>,
    /// Emulate a coarse-locked store (one global lock held across driver I/O,
    /// deletion inline) — the baseline the benchmarks compare against. Never
    /// use it for real work. Only with the `coarse-baseline` feature, which
    /// only the benchmark enables.
    #[cfg(feature = "coarse-baseline")]
    pub coarse_baseline: bool,
}

impl StoreOptions {
    /// Options keeping `keep` at start-up (see [`StoreOptions::keep`]).
    // The baseline's extra field exists with the `coarse-baseline` feature only.
    #[allow(clippy::needless_update)]
    pub fn keeping(keep: Vec<ChainId>) -> StoreOptions {
        StoreOptions { keep, ..StoreOptions::default() }
    }
}

/// A handle to an open layer store. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Threads of the store's own blocking pool (see [`blocking`]).
const STORE_POOL_THREADS: usize = 64;

/// The store's own blocking capacity: a runtime whose blocking threads only
/// the store's metadata work uses (reads, writes, fsyncs, renames of the
/// layerdb), so reference writes and publishes go on however many slow
/// clients hold threads of the shared blocking pool in a read of their
/// request body or a driver unpack. Built once per process, never dropped.
fn store_pool() -> Option<&'static tokio::runtime::Handle> {
    static POOL: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(STORE_POOL_THREADS)
            .thread_name("layer-store-io")
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no dedicated store I/O pool; using the shared blocking pool"))
            .ok()
    })
    .as_ref()
    .map(tokio::runtime::Runtime::handle)
}

/// Run the store's metadata work `f` on the store's own blocking pool.
/// Never for anything that reads a caller's stream: that goes through
/// [`blocking_shared`].
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let task = match store_pool() {
        Some(pool) => pool.spawn_blocking(f),
        None => tokio::task::spawn_blocking(f),
    };
    task.await.map_err(|e| LayerStoreError::Internal(format!("blocking task failed: {e}")))?
}

/// Run `f` on tokio's shared blocking pool: work that may wait on a caller
/// (a request body) or run long (content verification, init functions).
pub(crate) async fn blocking_shared<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| LayerStoreError::Internal(format!("blocking task failed: {e}")))?
}

/// Run a store operation to completion on its own task, so a caller that goes
/// away (a dropped HTTP request) can't leave pins or staged dirs behind.
async fn detached<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    tokio::spawn(f).await.map_err(|e| LayerStoreError::Internal(format!("store task failed: {e}")))?
}

fn layer_info(meta: &LayerMeta, c: Counts) -> LayerInfo {
    LayerInfo {
        chain_id: meta.chain_id.clone(),
        diff_id: meta.diff_id.clone(),
        parent: meta.parent_chain().cloned(),
        size: meta.size,
        chain_size: meta.chain_size,
        depth: meta.depth,
        cache_id: meta.cache_id.to_string(),
        references: c.refs,
        leases: c.leases,
        children: c.children,
        rw_layers: c.rw,
    }
}

impl Inner {
    fn verifier_slot(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        self.verifier.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of every published RW layer (the map lock held for the copy only).
    fn ready_rw(&self) -> Vec<Arc<rw::RwEntry>> {
        self.mounts.lock().values().filter_map(RwState::ready).collect()
    }

    fn info_of(&self, chain: &ChainId) -> Result<LayerInfo> {
        let g = self.layers.lock();
        let (meta, c) = g.get(chain).ok_or_else(|| self.not_found(chain))?;
        Ok(layer_info(meta, c))
    }

    /// The error for a layer that is not live: why, if start-up kept it damaged.
    fn not_found(&self, chain: &ChainId) -> LayerStoreError {
        self.damaged.layer_error(chain).unwrap_or_else(|| LayerStoreError::LayerNotFound(chain.to_string()))
    }

    /// Run deferred work (deletions) in the background, on the deletion
    /// runtime (see `release::deleter`), tracked for shutdown; inline in the
    /// coarse baseline.
    async fn defer(&self, fut: impl Future<Output = ()> + Send + 'static) {
        if self.coarse().is_some() {
            fut.await;
        } else if let Some(rt) = release::deleter() {
            self.bg.spawn_on(fut, rt);
        } else {
            self.bg.spawn(fut);
        }
    }

    /// In the coarse baseline, reads wait for the global lock too.
    fn coarse_read(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let m = self.coarse()?;
        Some(tokio::task::block_in_place(|| m.blocking_lock_owned()))
    }

    /// The benchmark baseline's global lock; never there in a real build.
    #[cfg(feature = "coarse-baseline")]
    fn coarse(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.coarse.clone()
    }

    #[cfg(not(feature = "coarse-baseline"))]
    #[inline]
    fn coarse(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        None
    }
}

impl Store {
    /// Open (or create) the store under `root` for `driver`, reconciling what
    /// a crash may have left behind. Fails if another process holds the root.
    pub async fn open(root: impl Into<PathBuf>, driver: Arc<dyn Driver>) -> Result<Store> {
        Self::open_with(root, driver, StoreOptions::default()).await
    }

    pub async fn open_with(root: impl Into<PathBuf>, driver: Arc<dyn Driver>, opts: StoreOptions) -> Result<Store> {
        let root = root.into();
        let lock = blocking(move || crate::rootlock::RootLock::acquire(root)).await?;
        Self::open_locked(lock, driver, opts).await
    }

    /// Open with a root lock taken beforehand — the way to construct the
    /// driver safely: lock, then build the driver, then open.
    pub async fn open_locked(
        lock: crate::rootlock::RootLock,
        driver: Arc<dyn Driver>,
        opts: StoreOptions,
    ) -> Result<Store> {
        #[cfg_attr(not(feature = "coarse-baseline"), allow(unused_mut))]
        let (mut inner, from_index) = open::open(lock, driver, None, &opts.keep).await?;
        #[cfg(feature = "coarse-baseline")]
        if opts.coarse_baseline {
            inner.coarse = Some(Arc::new(tokio::sync::Mutex::new(())));
        }
        Ok(Store::started(inner, from_index))
    }

    /// The store, with the check of the index it started from (if it did)
    /// running behind it.
    fn started(mut inner: Inner, from_index: bool) -> Store {
        inner.from_index = from_index;
        let store = Store { inner: Arc::new(inner) };
        if from_index {
            let inner = store.inner.clone();
            // Tracked, so `settle` waits for it; `shutdown` stops it first.
            let h = store.inner.bg.spawn(async move {
                let _op = inner.ops.begin();
                inner.verify_index().await;
            });
            *store.inner.verifier_slot() = Some(h);
        }
        store
    }

    /// Open with a fault hook on every metadata write, fsync and rename (the
    /// fault-injection tests' seam).
    #[cfg(test)]
    pub(crate) async fn open_with_faults(
        root: impl Into<PathBuf>,
        driver: Arc<dyn Driver>,
        faults: crate::metadata::FaultHook,
    ) -> Result<Store> {
        let root = root.into();
        let lock = blocking(move || crate::rootlock::RootLock::acquire(root)).await?;
        let (inner, from_index) = open::open(lock, driver, Some(faults), &[]).await?;
        Ok(Store::started(inner, from_index))
    }

    /// Run a store operation to completion on its own task (see `detached`),
    /// holding the global lock in the coarse baseline.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let inner = self.inner.clone();
        detached(async move {
            let _op = inner.ops.begin();
            let _global = match inner.coarse() {
                Some(m) => Some(m.lock_owned().await),
                None => None,
            };
            f(inner).await
        })
        .await
    }

    /// Register a tar (plain, gzip or zstd) on top of `opts.parent`. Returns
    /// the layer with one new reference held by the caller.
    pub async fn register(&self, tar: TarReader, opts: RegisterOpts) -> Result<LayerInfo> {
        self.run(move |inner| async move { inner.register(tar, opts).await }).await
    }

    /// Inspect a layer. Takes no reference.
    pub fn get(&self, chain_id: &ChainId) -> Result<LayerInfo> {
        let _global = self.inner.coarse_read();
        self.inner.info_of(chain_id)
    }

    /// The ChainID `layer` names: a full ChainID as is (the operation then
    /// answers whether it exists), a prefix by a scan of the layer map —
    /// no I/O, held as long as a snapshot — naming exactly one live layer.
    pub fn resolve(&self, layer: &crate::LayerRef) -> Result<ChainId> {
        let prefix = match layer {
            crate::LayerRef::Full(c) => return Ok(c.clone()),
            crate::LayerRef::Prefix(p) => p,
        };
        let _global = self.inner.coarse_read();
        let found: Vec<ChainId> = {
            let g = self.inner.layers.lock();
            g.live()
                .filter(|(m, _)| m.chain_id.digest().has_hex_prefix(prefix))
                .map(|(m, _)| m.chain_id.clone())
                .collect()
        };
        layer.choose(found)
    }

    /// Take a new reference on an existing layer.
    pub async fn retain(&self, chain_id: &ChainId) -> Result<LayerInfo> {
        let chain = chain_id.clone();
        self.run(move |inner| async move { inner.retain(&chain).await }).await
    }

    /// A snapshot of every layer, sorted by ChainID. Takes no references.
    pub fn list(&self) -> Vec<LayerInfo> {
        let _global = self.inner.coarse_read();
        let snapshot: Vec<(Arc<LayerMeta>, Counts)> = {
            let g = self.inner.layers.lock();
            g.live().map(|(m, c)| (m.clone(), c)).collect()
        };
        let mut out: Vec<LayerInfo> = snapshot.iter().map(|(m, c)| layer_info(m, *c)).collect();
        out.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        out
    }

    /// Take a lease on a layer: a reference held in memory only — no I/O,
    /// never persisted, dropped by a crash. For a client that re-derives
    /// its holds at start-up (the image store leases each image's top layer
    /// when it opens) or for work in flight that must leave nothing behind
    /// if it dies (a load). Give it back with [`Self::unlease`].
    pub fn lease(&self, chain_id: &ChainId) -> Result<LayerInfo> {
        let _global = self.inner.coarse_read();
        let mut g = self.inner.layers.lock();
        g.lease(chain_id)?;
        let (m, c) = g.get(chain_id).ok_or_else(|| self.inner.not_found(chain_id))?;
        Ok(layer_info(m, c))
    }

    /// Give back a lease; frees the layer (and ancestors) if nothing else
    /// holds it, as [`Self::release`] does. Returns the deleted layers.
    pub async fn unlease(&self, chain_id: &ChainId) -> Result<Vec<ChainId>> {
        let chain = chain_id.clone();
        self.run(move |inner| async move { inner.unlease(&chain).await }).await
    }

    /// Drop one reference. A layer left with no references, children or RW
    /// layers is deleted, and its parent loses the child's reference, so one
    /// release can free a whole chain. Returns the deleted layers.
    pub async fn release(&self, chain_id: &ChainId) -> Result<Vec<ChainId>> {
        let chain = chain_id.clone();
        self.run(move |inner| async move { inner.release(&chain).await }).await
    }

    /// The layer's exact original tar bytes, verified against its DiffID.
    pub async fn tar_stream(&self, chain_id: &ChainId) -> Result<TarReader> {
        let chain = chain_id.clone();
        self.run(move |inner| async move { inner.tar_stream(&chain).await }).await
    }

    /// The length of the layer's tar ([`Self::tar_stream`]'s bytes) when the
    /// store recorded it at registration (its SHA-256 checkpoints); `None`
    /// for a layer Docker wrote. Reads one small file; takes no reference.
    pub async fn tar_length(&self, chain_id: &ChainId) -> Result<Option<u64>> {
        if self.inner.layers.lock().get(chain_id).is_none() {
            return Err(self.inner.not_found(chain_id));
        }
        let (db, chain) = (self.inner.db.clone(), chain_id.clone());
        blocking(move || Ok(db.read_checkpoints(&chain).map(|c| c.length()))).await
    }

    pub async fn create_rw(&self, name: &RwName, parent: Option<&ChainId>, opts: RwOpts) -> Result<RwInfo> {
        let (name, parent) = (name.clone(), parent.cloned());
        self.run(move |inner| async move { inner.create_rw(&name, parent.as_ref(), opts).await }).await
    }

    pub fn get_rw(&self, name: &RwName) -> Result<RwInfo> {
        let _global = self.inner.coarse_read();
        self.inner.rw_entry(name).map(|e| e.info())
    }

    /// Every RW layer, sorted by name.
    pub fn list_rw(&self) -> Vec<RwInfo> {
        let _global = self.inner.coarse_read();
        let entries = self.inner.ready_rw();
        let mut out: Vec<RwInfo> = entries.iter().map(|e| e.info()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Mount the RW layer (counted); returns the path of its merged tree.
    pub async fn mount(&self, name: &RwName) -> Result<PathBuf> {
        let name = name.clone();
        self.run(move |inner| async move { inner.mount(&name).await }).await
    }

    pub async fn unmount(&self, name: &RwName) -> Result<()> {
        let name = name.clone();
        self.run(move |inner| async move { inner.unmount(&name).await }).await
    }

    pub async fn changes(&self, name: &RwName) -> Result<Vec<Change>> {
        self.inner.changes(name).await
    }

    /// Tar of the RW layer's changes (init layer changes excluded).
    pub async fn diff(&self, name: &RwName) -> Result<TarReader> {
        self.inner.diff(name).await
    }

    /// Register the RW layer's diff as a new layer on top of its parent.
    pub async fn commit(&self, name: &RwName) -> Result<LayerInfo> {
        let name = name.clone();
        self.run(move |inner| async move { inner.commit(&name).await }).await
    }

    /// Remove the RW layer (unmounting it if needed) and release its parent.
    pub async fn release_rw(&self, name: &RwName) -> Result<()> {
        let name = name.clone();
        self.run(move |inner| async move { inner.release_rw(&name).await }).await
    }

    /// Remove many RW layers at once, one result per name in order: every
    /// one is unpublished (durably) before any deletion starts, so the call
    /// returns as soon as they are all gone from view; the data is deleted
    /// behind it.
    pub async fn release_rw_many(&self, names: Vec<RwName>) -> Result<Vec<Result<()>>> {
        self.run(move |inner| async move { inner.release_rw_many(names).await }).await
    }

    pub async fn info(&self) -> StoreInfo {
        let (layers, layers_size) = {
            let g = self.inner.layers.lock();
            g.live().fold((0u64, 0u64), |(n, s), (m, _)| (n + 1, s + m.size))
        };
        let rw_layers = self.inner.mounts.lock().values().filter(|s| matches!(s, RwState::Ready(_))).count() as u64;
        StoreInfo {
            root: self.inner.root.clone(),
            driver: self.inner.driver.name().to_string(),
            driver_status: self.inner.driver.status().await,
            layers,
            rw_layers,
            layers_size,
        }
    }

    /// Lock wait/hold histograms of the store's maps and key locks.
    pub fn lock_stats(&self) -> StoreLockStats {
        self.inner.stats.clone()
    }

    /// The store's fsck (`layerctl check`, `POST /v1/check`): compare the
    /// metadata with the disk and the driver, and repair what is safe to
    /// repair. Layers and RW layers being created or deleted right now are
    /// skipped.
    pub async fn fsck(&self, opts: crate::types::CheckOpts) -> Result<crate::types::CheckReport> {
        let inner = self.inner.clone();
        detached(async move {
            let _op = inner.ops.begin();
            inner.fsck(opts).await
        })
        .await
    }

    /// Entries held by the key locks and the singleflight map: (chain keys,
    /// name keys, flights). Zero when the store is idle — keys are freed when
    /// their last holder leaves.
    pub fn key_entries(&self) -> (usize, usize, usize) {
        (self.inner.chain_keys.len(), self.inner.name_keys.len(), self.inner.flights.len())
    }

    /// Wait for background deletions (and the check of the index a start
    /// used) to finish (for tests and benchmarks).
    pub async fn settle(&self) {
        self.inner.bg.close();
        self.inner.bg.wait().await;
        self.inner.bg.reopen();
    }

    /// Whether this store started from the layerdb index (one file read)
    /// rather than a scan of every record.
    pub fn started_from_index(&self) -> bool {
        self.inner.from_index
    }

    /// Write the layerdb index from memory, if the store is quiet: no
    /// operation running or pending, nothing damaged (see `indexing`).
    /// Returns whether a current index is on disk (written now, or before
    /// with no change since). [`Store::shutdown`] does it; a long-running
    /// owner calls it now and then, so that a start after a crash finds it
    /// too when the store was quiet before (the first change removes it).
    pub async fn write_index(&self) -> Result<bool> {
        self.inner.write_index().await
    }

    /// Stop the index check, wait for background deletions, write the
    /// index and undo the driver's mounts.
    pub async fn shutdown(&self) -> Result<()> {
        let verifier = self.inner.verifier_slot().take();
        if let Some(h) = verifier {
            h.abort();
            let _ = h.await;
        }
        self.settle().await;
        match self.inner.write_index().await {
            Ok(true) => tracing::debug!("wrote the layerdb index"),
            Ok(false) => tracing::info!("no layerdb index written: the store was not quiet or holds damaged entries"),
            Err(e) => tracing::warn!(error = %e, "writing the layerdb index failed; the next start scans"),
        }
        let mounted = self.inner.ready_rw();
        for e in mounted {
            e.forget_mounts();
        }
        self.inner.driver.cleanup().await?;
        Ok(())
    }

    /// The store's layerdb directory.
    pub fn layerdb(&self) -> &Path {
        self.inner.db.root()
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.inner.driver
    }
}
