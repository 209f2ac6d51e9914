//! RW layers (a container's writable layer): name reservation with a
//! placeholder before any driver work, per-name serialisation, counted mounts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use graphdriver::{CacheId, Change, CreateOpts, TarReader};
use tracing::{info, warn};

use super::graph::{Busy, LayerMeta};
use super::{Inner, RwOpts, blocking, blocking_shared};
use crate::digest::ChainId;
use crate::error::{LayerStoreError, Result};
use crate::metadata::{MountRecord, remove_any};
use crate::name::RwName;
use crate::types::{LayerInfo, RegisterOpts, RwInfo};

/// The RW layers map: states by name, plus the RW driver ids being created or
/// deleted (see [`Busy`]), under one lock.
#[derive(Default)]
pub(crate) struct Mounts {
    pub by_name: HashMap<RwName, RwState>,
    pub busy: Busy,
}

impl std::ops::Deref for Mounts {
    type Target = HashMap<RwName, RwState>;
    fn deref(&self) -> &Self::Target {
        &self.by_name
    }
}

impl std::ops::DerefMut for Mounts {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.by_name
    }
}

pub(crate) enum RwState {
    /// Taken by a creation or removal in progress; readers treat it as absent.
    Reserved,
    Ready(Arc<RwEntry>),
}

impl RwState {
    /// The entry, if published (a reservation is absent to readers).
    pub fn ready(&self) -> Option<Arc<RwEntry>> {
        match self {
            RwState::Ready(e) => Some(e.clone()),
            RwState::Reserved => None,
        }
    }
}

pub(crate) struct RwEntry {
    pub name: RwName,
    pub mount_id: CacheId,
    pub init_id: Option<CacheId>,
    pub parent: Option<Arc<LayerMeta>>,
    pub mount_label: String,
    /// Changed only under the name's key lock; read freely.
    mounts: AtomicU64,
    path: Mutex<Option<PathBuf>>,
}

impl RwEntry {
    /// An RW layer loaded at start-up: nothing is mounted.
    pub fn restored(name: RwName, mount_id: CacheId, init_id: Option<CacheId>, parent: Option<Arc<LayerMeta>>) -> Self {
        RwEntry {
            name,
            mount_id,
            init_id,
            parent,
            mount_label: String::new(),
            mounts: AtomicU64::new(0),
            path: Mutex::new(None),
        }
    }

    pub fn info(&self) -> RwInfo {
        RwInfo {
            name: self.name.clone(),
            parent: self.parent.as_ref().map(|p| p.chain_id.clone()),
            mount_id: self.mount_id.to_string(),
            init_id: self.init_id.as_ref().map(|i| i.to_string()),
            mount_count: self.mounts.load(Ordering::SeqCst),
            mount_path: self.path.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    /// The driver id the RW layer's diff is taken against.
    fn diff_base(&self) -> Option<&CacheId> {
        self.init_id.as_ref().or(self.parent.as_ref().map(|p| &p.cache_id))
    }

    /// After the driver's cleanup undid every mount.
    pub fn forget_mounts(&self) {
        self.mounts.store(0, Ordering::SeqCst);
        *self.path.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Inner {
    pub(super) fn rw_entry(&self, name: &RwName) -> Result<Arc<RwEntry>> {
        match self.mounts.lock().get(name) {
            Some(RwState::Ready(e)) => Ok(e.clone()),
            _ => Err(self.damaged.rw_error(name).unwrap_or_else(|| LayerStoreError::RwNotFound(name.to_string()))),
        }
    }

    fn unreserve(&self, name: &RwName, ids: &[CacheId]) {
        let mut m = self.mounts.lock();
        if matches!(m.get(name), Some(RwState::Reserved)) {
            m.remove(name);
        }
        m.busy.unmark(ids);
    }

    pub(super) async fn create_rw(
        self: &Arc<Self>,
        name: &RwName,
        parent: Option<&ChainId>,
        opts: RwOpts,
    ) -> Result<RwInfo> {
        let mount_id = CacheId::random();
        let ids = [mount_id.clone(), mount_id.init()];
        {
            let mut m = self.mounts.lock();
            if m.contains_key(name) || self.damaged.rws.contains_key(name) {
                return Err(LayerStoreError::NameInUse(name.to_string()));
            }
            m.insert(name.clone(), RwState::Reserved);
            m.busy.mark(&ids);
        }
        // Held until the RW layer is published (or its reservation dropped):
        // `check` looks at a name's metadata holding this key.
        let _key = self.name_keys.lock(name).await;
        let parent = match parent.map(|p| self.layers.lock().pin_rw(p)).transpose() {
            Ok(p) => p,
            Err(e) => {
                self.unreserve(name, &ids);
                return Err(e);
            }
        };
        match self.create_rw_pinned(name, mount_id, parent.clone(), opts).await {
            Ok(entry) => {
                let info = entry.info();
                {
                    // Publish and unmark in one critical section.
                    let mut m = self.mounts.lock();
                    m.insert(name.clone(), RwState::Ready(entry));
                    m.busy.unmark(&ids);
                }
                info!(name = %name, "created rw layer");
                Ok(info)
            }
            Err(e) => {
                self.unpin_rw(parent.as_ref(), Vec::new(), None).await;
                self.unreserve(name, &ids);
                Err(e)
            }
        }
    }

    async fn create_rw_pinned(
        &self,
        name: &RwName,
        mount_id: CacheId,
        parent: Option<Arc<LayerMeta>>,
        opts: RwOpts,
    ) -> Result<Arc<RwEntry>> {
        let copts = CreateOpts { mount_label: opts.mount_label.clone(), ..CreateOpts::default() };
        let mut created: Vec<CacheId> = Vec::new();
        let res: Result<Option<CacheId>> = async {
            let mut below = parent.as_ref().map(|p| p.cache_id.clone());
            let init_id = if opts.init {
                let id = mount_id.init();
                self.driver.create_rw(&id, below.as_ref(), &copts).await?;
                created.push(id.clone());
                if let Some(f) = opts.init_fn {
                    let root = self.driver.get(&id, &opts.mount_label).await?;
                    let res = blocking_shared(move || {
                        f(&root).map_err(|e| LayerStoreError::Internal(format!("init layer: {e}")))
                    })
                    .await;
                    self.driver.put(&id).await?;
                    res?;
                }
                below = Some(id.clone());
                Some(id)
            } else {
                None
            };
            self.driver.create_rw(&mount_id, below.as_ref(), &copts).await?;
            created.push(mount_id.clone());
            let rec = MountRecord {
                mount_id: mount_id.clone(),
                init_id: init_id.clone(),
                parent: parent.as_ref().map(|p| p.chain_id.clone()),
            };
            let (db, n) = (self.db.clone(), name.clone());
            blocking(move || {
                let tx = db.begin_tx()?;
                let res = db.write_mount_record(&tx, &rec).and_then(|_| db.commit_mount(&tx, &n));
                if res.is_err() {
                    let _ = remove_any(&tx);
                }
                res
            })
            .await?;
            Ok(init_id)
        }
        .await;
        match res {
            Ok(init_id) => Ok(Arc::new(RwEntry {
                name: name.clone(),
                mount_id: mount_id.clone(),
                init_id,
                parent,
                mount_label: opts.mount_label,
                mounts: AtomicU64::new(0),
                path: Mutex::new(None),
            })),
            Err(e) => {
                for id in created.iter().rev() {
                    if let Err(re) = self.driver.remove(id).await {
                        warn!(id = %id, error = %re, "removing half-created rw layer failed");
                    }
                }
                Err(e)
            }
        }
    }

    pub(super) async fn mount(&self, name: &RwName) -> Result<PathBuf> {
        let _key = self.name_keys.lock(name).await;
        let e = self.rw_entry(name)?;
        let path = self.driver.get(&e.mount_id, &e.mount_label).await?;
        e.mounts.fetch_add(1, Ordering::SeqCst);
        *e.path.lock().unwrap_or_else(PoisonError::into_inner) = Some(path.clone());
        Ok(path)
    }

    pub(super) async fn unmount(&self, name: &RwName) -> Result<()> {
        let _key = self.name_keys.lock(name).await;
        let e = self.rw_entry(name)?;
        if e.mounts.load(Ordering::SeqCst) == 0 {
            return Err(LayerStoreError::NotMounted { name: name.to_string() });
        }
        self.driver.put(&e.mount_id).await?;
        if e.mounts.fetch_sub(1, Ordering::SeqCst) == 1 {
            *e.path.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        Ok(())
    }

    /// Under the name's key, so a racing `release_rw` can't remove the
    /// dirs being compared.
    pub(super) async fn changes(&self, name: &RwName) -> Result<Vec<Change>> {
        let _key = self.name_keys.lock(name).await;
        let e = self.rw_entry(name)?;
        Ok(self.driver.changes(&e.mount_id, e.diff_base()).await?)
    }

    /// The stream holds the name's key until it is dropped: a `release_rw`
    /// (or `commit`, `mount`...) of this name waits for it, instead of
    /// removing the dirs under it and leaving a silently short tar.
    pub(super) async fn diff(&self, name: &RwName) -> Result<TarReader> {
        let key = self.name_keys.lock(name).await;
        let e = self.rw_entry(name)?;
        let tar = self.driver.diff(&e.mount_id, e.diff_base()).await?;
        Ok(Box::new(KeyedReader { inner: tar, _key: key }))
    }

    pub(super) async fn commit(self: &Arc<Self>, name: &RwName) -> Result<LayerInfo> {
        let _key = self.name_keys.lock(name).await;
        let e = self.rw_entry(name)?;
        let tar = self.driver.diff(&e.mount_id, e.diff_base()).await?;
        let opts = RegisterOpts { parent: e.parent.as_ref().map(|p| p.chain_id.clone()), ..RegisterOpts::default() };
        self.register(tar, opts).await
    }

    pub(super) async fn release_rw(self: &Arc<Self>, name: &RwName) -> Result<()> {
        let d = self.unpublish_rw(name).await?;
        self.delete_later(d).await;
        Ok(())
    }

    /// Remove many RW layers: every one unpublished first, all at once,
    /// then every deletion started, so the renames of the batch don't
    /// queue behind its own unlinks in the filesystem's journal.
    pub(super) async fn release_rw_many(self: &Arc<Self>, names: Vec<RwName>) -> Result<Vec<Result<()>>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, name) in names.into_iter().enumerate() {
            let inner = self.clone();
            set.spawn(async move { (i, inner.unpublish_rw(&name).await) });
        }
        let mut unpublished = Vec::new();
        while let Some(joined) = set.join_next().await {
            unpublished.push(joined.map_err(|e| LayerStoreError::Internal(format!("removal task failed: {e}")))?);
        }
        unpublished.sort_by_key(|(i, _)| *i);
        let mut out = Vec::with_capacity(unpublished.len());
        for (_, r) in unpublished {
            out.push(match r {
                Ok(d) => {
                    self.delete_later(d).await;
                    Ok(())
                }
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    /// [`Self::release_rw`] up to the deletion, which is returned.
    async fn unpublish_rw(self: &Arc<Self>, name: &RwName) -> Result<super::release::Deletion> {
        let key = self.name_keys.lock(name).await;
        let e = self.rw_entry(name)?;
        let ids: Vec<CacheId> = std::iter::once(e.mount_id.clone()).chain(e.init_id.clone()).collect();
        {
            let mut m = self.mounts.lock();
            m.busy.mark(&ids);
            m.insert(name.clone(), RwState::Reserved);
        }
        let restore = |inner: &Inner| {
            let mut m = inner.mounts.lock();
            m.insert(name.clone(), RwState::Ready(e.clone()));
            m.busy.unmark(&ids);
        };
        while e.mounts.load(Ordering::SeqCst) > 0 {
            if let Err(err) = self.driver.put(&e.mount_id).await {
                restore(self);
                return Err(err.into());
            }
            e.mounts.fetch_sub(1, Ordering::SeqCst);
        }
        e.forget_mounts();
        let (db, n) = (self.db.clone(), name.clone());
        let trashed = match blocking(move || db.trash(&db.mount_dir(&n))).await {
            Ok(t) => t,
            Err(err) => {
                restore(self);
                return Err(err);
            }
        };
        self.mounts.lock().remove(name);
        drop(key);
        info!(name = %name, "removed rw layer");
        // The RW layer's dirs, then whatever its parent's release frees, in
        // one background task in that order.
        Ok(self.unpin_rw_deferred(e.parent.as_ref(), ids, Some(trashed)).await)
    }
}

/// A reader that holds a key lock for as long as it lives.
struct KeyedReader {
    inner: TarReader,
    _key: crate::keyed::KeyGuard<RwName>,
}

impl std::io::Read for KeyedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}
