//! Deferred deletion: a release only unpublishes (map update, then a rename
//! of the metadata dir into `trash/` under the layer's key lock); the driver
//! dirs and the trash are deleted in the background, off the request path.
//!
//! Everything one operation frees is deleted by one background task, in
//! order — an RW layer's dirs first, then the freed layers child before
//! parent — so a driver never sees a parent removed while its child's removal
//! is still running. Independent releases run in parallel.
//!
//! Those tasks run on a runtime of their own ([`deleter`]): a few blocking
//! threads at a low CPU priority. A burst of removals (a hundred `docker rm`
//! at once) then neither starves the requests still arriving of CPU — the
//! unlinks of a hundred trees at once would take both cores of a small host
//! and queue every rename behind them in the filesystem's journal — nor
//! deletes any slower: unlinks on one filesystem do not scale past a few
//! threads.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use graphdriver::CacheId;
use tracing::{debug, info, warn};

use super::graph::LayerMeta;
use super::{Inner, blocking};
use crate::digest::ChainId;
use crate::error::Result;
use crate::metadata::remove_any;

/// Blocking threads that delete at once.
const DELETE_THREADS: usize = 4;

/// The CPU priority (nice value) of the deleting threads.
const DELETE_NICE: i32 = 10;

/// The runtime deferred deletions run on: one worker, [`DELETE_THREADS`]
/// blocking threads (a driver's deletion runs on the blocking pool of the
/// runtime it is called from), every thread at nice [`DELETE_NICE`]. Built
/// once per process, never dropped; `None` if it cannot be built (deletions
/// then run on the caller's runtime).
pub(super) fn deleter() -> Option<&'static tokio::runtime::Handle> {
    static POOL: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(DELETE_THREADS)
            .thread_name("layer-store-delete")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .map_err(|e| warn!(error = %e, "no dedicated deletion runtime; deleting on the caller's"))
            .ok()
    })
    .as_ref()
    .map(tokio::runtime::Runtime::handle)
}

fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), DELETE_NICE) {
        debug!(error = %e, "could not lower a deletion thread's priority");
    }
}

/// Run `f` on the blocking pool of the runtime this is called from (the
/// deleter's, for background deletions).
async fn deleting(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::error::LayerStoreError::Internal(format!("blocking task failed: {e}")))?
}

/// An unpublished RW layer's driver dirs (ids marked busy in the mounts map)
/// and its trashed metadata.
#[derive(Default)]
pub(super) struct RwDirs {
    ids: Vec<CacheId>,
    trashed: Option<PathBuf>,
}

/// What one removal left to delete: everything it unpublished.
pub(super) struct Deletion {
    rw: RwDirs,
    layers: Vec<Unpublished>,
}

/// What a change of counts freed: layers unpublished already, and
/// ancestors still to unpublish under their own keys.
#[derive(Default)]
pub(super) struct Freed {
    done: Vec<Unpublished>,
    rest: Vec<Arc<LayerMeta>>,
}

/// An unpublished layer whose driver dir and trashed metadata remain to delete.
pub(super) struct Unpublished {
    meta: Arc<LayerMeta>,
    trashed: Option<PathBuf>,
}

impl Inner {
    pub(super) async fn release(self: &Arc<Self>, chain: &ChainId) -> Result<Vec<ChainId>> {
        let key = self.chain_keys.lock(chain).await;
        let (refs, gen0) = self.layers.lock().refs_after_release(chain)?;
        // Persist first: a crash after this leaves a layer that start-up
        // collects if nothing else holds it. `write_refs` fails only if the
        // old count is still the one on disk, so memory stays as it is.
        self.persist_refs(chain, refs).await?;
        let freed = self.layers.lock().release_persisted(chain, gen0);
        let deleted: Vec<ChainId> = freed.iter().map(|m| m.chain_id.clone()).collect();
        let freed = self.unpublish_own(chain, freed).await;
        drop(key);
        self.finish_freeing(freed).await;
        Ok(deleted)
    }

    pub(super) async fn unlease(self: &Arc<Self>, chain: &ChainId) -> Result<Vec<ChainId>> {
        let key = self.chain_keys.lock(chain).await;
        let freed = self.layers.lock().unlease(chain)?;
        let deleted: Vec<ChainId> = freed.iter().map(|m| m.chain_id.clone()).collect();
        let freed = self.unpublish_own(chain, freed).await;
        drop(key);
        self.finish_freeing(freed).await;
        Ok(deleted)
    }

    /// Unpublish what a change of `chain`'s counts freed (the layer itself
    /// and possibly ancestors, child first): the layer itself now, under
    /// its key, which the caller holds. Only the holder of a chain's key
    /// unpublishes that chain, so the ancestors are left to
    /// [`Self::finish_freeing`], which the caller runs once it has dropped
    /// the key.
    pub(super) async fn unpublish_own(self: &Arc<Self>, chain: &ChainId, freed: Vec<Arc<LayerMeta>>) -> Freed {
        let mut out = Freed::default();
        for m in freed {
            if &m.chain_id == chain {
                out.done.extend(self.unpublish_or_keep(m).await);
            } else {
                out.rest.push(m);
            }
        }
        out
    }

    /// Unpublish the freed ancestors, each under its own key in turn, then
    /// delete everything in one ordered background task. The caller holds
    /// no chain key.
    pub(super) async fn finish_freeing(self: &Arc<Self>, freed: Freed) {
        let mut done = freed.done;
        done.extend(self.unpublish_all(freed.rest).await);
        self.delete_in_background(RwDirs::default(), done).await;
    }

    pub(super) async fn unpin_child(self: &Arc<Self>, parent: Option<&Arc<LayerMeta>>) {
        if let Some(p) = parent {
            let freed = self.layers.lock().unpin_child(&p.chain_id);
            let done = self.unpublish_all(freed).await;
            self.delete_in_background(RwDirs::default(), done).await;
        }
    }

    /// Drop an RW layer's pin on its parent, then delete the RW layer's
    /// driver dirs (`rw_ids`, already unpublished) and whatever that freed.
    pub(super) async fn unpin_rw(
        self: &Arc<Self>,
        parent: Option<&Arc<LayerMeta>>,
        rw_ids: Vec<CacheId>,
        rw_trash: Option<PathBuf>,
    ) {
        let d = self.unpin_rw_deferred(parent, rw_ids, rw_trash).await;
        self.delete_later(d).await;
    }

    /// [`Self::unpin_rw`] up to the deletion, which is returned for
    /// [`Self::delete_later`].
    pub(super) async fn unpin_rw_deferred(
        self: &Arc<Self>,
        parent: Option<&Arc<LayerMeta>>,
        rw_ids: Vec<CacheId>,
        rw_trash: Option<PathBuf>,
    ) -> Deletion {
        let freed = match parent {
            Some(p) => self.layers.lock().unpin_rw(&p.chain_id),
            None => Vec::new(),
        };
        let layers = self.unpublish_all(freed).await;
        Deletion { rw: RwDirs { ids: rw_ids, trashed: rw_trash }, layers }
    }

    /// Start a deletion in the background.
    pub(super) async fn delete_later(self: &Arc<Self>, d: Deletion) {
        self.delete_in_background(d.rw, d.layers).await;
    }

    pub(super) async fn unpublish_all(self: &Arc<Self>, freed: Vec<Arc<LayerMeta>>) -> Vec<Unpublished> {
        let mut out = Vec::with_capacity(freed.len());
        for m in freed {
            let _key = self.chain_keys.lock(&m.chain_id).await;
            out.extend(self.unpublish_or_keep(m).await);
        }
        out
    }

    /// [`Self::unpublish_locked`], keeping a layer whose metadata could not
    /// move to the trash as `Removing` (invisible to readers, its driver dir
    /// kept): its `refs` on disk is 0, so start-up collects it, and a new
    /// registration of the same ChainID retries the move first.
    async fn unpublish_or_keep(self: &Arc<Self>, meta: Arc<LayerMeta>) -> Option<Unpublished> {
        let chain = meta.chain_id.clone();
        self.unpublish_locked(meta).await.unwrap_or_else(|e| {
            warn!(chain_id = %chain, error = %e, "moving deleted layer to trash failed; kept until the next start-up");
            None
        })
    }

    /// Move a freed layer's metadata to the trash and forget it. Caller holds
    /// the chain key. `None` if someone else unpublished it already; an
    /// error (the metadata did not move) leaves the layer `Removing`.
    pub(super) async fn unpublish_locked(self: &Arc<Self>, meta: Arc<LayerMeta>) -> Result<Option<Unpublished>> {
        if !self.layers.lock().is_removing(&meta) {
            return Ok(None);
        }
        let (db, chain) = (self.db.clone(), meta.chain_id.clone());
        let trashed = blocking(move || db.trash(&db.layer_dir(&chain))).await?;
        {
            let mut g = self.layers.lock();
            g.busy.mark([&meta.cache_id]);
            g.forget(&meta);
        }
        info!(chain_id = %meta.chain_id, "deleted layer");
        Ok(Some(Unpublished { meta, trashed: Some(trashed) }))
    }

    /// Delete an RW layer's dirs and unpublished layers, in that order, in
    /// one background task.
    pub(super) async fn delete_in_background(self: &Arc<Self>, rw: RwDirs, layers: Vec<Unpublished>) {
        if rw.ids.is_empty() && rw.trashed.is_none() && layers.is_empty() {
            return;
        }
        let inner = self.clone();
        self.defer(async move {
            for id in &rw.ids {
                if let Err(err) = inner.driver.remove(id).await {
                    warn!(id = %id, error = %err, "removing rw layer's driver dir failed");
                }
            }
            if !rw.ids.is_empty() {
                inner.mounts.lock().busy.unmark(&rw.ids);
            }
            if let Some(t) = rw.trashed
                && let Err(e) = deleting(move || remove_any(&t)).await
            {
                warn!(error = %e, "emptying trash failed");
            }
            for u in layers {
                if let Err(e) = inner.driver.remove(&u.meta.cache_id).await {
                    warn!(cache_id = %u.meta.cache_id, error = %e, "removing deleted layer's driver dir failed");
                }
                inner.layers.lock().busy.unmark([&u.meta.cache_id]);
                if let Some(t) = u.trashed
                    && let Err(e) = deleting(move || remove_any(&t)).await
                {
                    warn!(error = %e, "emptying trash failed");
                }
            }
        })
        .await;
    }
}
