//! Deferred deletion: a release only unpublishes (map update, then a rename
//! of the metadata dir into `trash/` under the layer's key lock); the driver
//! dirs and the trash are deleted in the background, off the request path.
//!
//! Everything one operation frees is deleted by one background task, in
//! order — an RW layer's dirs first, then the freed layers child before
//! parent — so a driver never sees a parent removed while its child's removal
//! is still running. Independent releases run in parallel.

use std::path::PathBuf;
use std::sync::Arc;

use graphdriver::CacheId;
use tracing::{info, warn};

use super::graph::LayerMeta;
use super::{Inner, blocking};
use crate::digest::ChainId;
use crate::error::Result;
use crate::metadata::remove_any;

/// An unpublished RW layer's driver dirs (ids marked busy in the mounts map)
/// and its trashed metadata.
#[derive(Default)]
pub(super) struct RwDirs {
    ids: Vec<CacheId>,
    trashed: Option<PathBuf>,
}

/// An unpublished layer whose driver dir and trashed metadata remain to delete.
pub(super) struct Unpublished {
    meta: Arc<LayerMeta>,
    trashed: Option<PathBuf>,
}

impl Inner {
    pub(super) async fn release(self: &Arc<Self>, chain: &ChainId) -> Result<Vec<ChainId>> {
        let key = self.chain_keys.lock(chain).await;
        let (refs, gen0) = self.layers.lock().check_release(chain)?;
        // Persist first: a crash after this leaves a layer that start-up
        // collects if nothing else holds it.
        self.persist_refs(chain, refs).await?;
        let freed = self.layers.lock().release_persisted(chain, gen0);
        let deleted: Vec<ChainId> = freed.iter().map(|m| m.chain_id.clone()).collect();
        let mut done = Vec::with_capacity(freed.len());
        let mut rest = Vec::with_capacity(freed.len());
        for m in freed {
            if &m.chain_id == chain {
                done.extend(self.unpublish_locked(m).await);
            } else {
                rest.push(m);
            }
        }
        drop(key);
        done.extend(self.unpublish_all(rest).await);
        self.delete_in_background(RwDirs::default(), done).await;
        Ok(deleted)
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
        let freed = match parent {
            Some(p) => self.layers.lock().unpin_rw(&p.chain_id),
            None => Vec::new(),
        };
        let done = self.unpublish_all(freed).await;
        self.delete_in_background(RwDirs { ids: rw_ids, trashed: rw_trash }, done).await;
    }

    pub(super) async fn unpublish_all(self: &Arc<Self>, freed: Vec<Arc<LayerMeta>>) -> Vec<Unpublished> {
        let mut out = Vec::with_capacity(freed.len());
        for m in freed {
            let _key = self.chain_keys.lock(&m.chain_id).await;
            out.extend(self.unpublish_locked(m).await);
        }
        out
    }

    /// Move a freed layer's metadata to the trash and forget it. Caller holds
    /// the chain key. `None` if someone else unpublished it already.
    pub(super) async fn unpublish_locked(self: &Arc<Self>, meta: Arc<LayerMeta>) -> Option<Unpublished> {
        if !self.layers.lock().is_removing(&meta) {
            return None;
        }
        let (db, chain) = (self.db.clone(), meta.chain_id.clone());
        let trashed = blocking(move || db.trash(&db.layer_dir(&chain))).await;
        {
            let mut g = self.layers.lock();
            g.busy.mark([&meta.cache_id]);
            g.forget(&meta);
        }
        let trashed = match trashed {
            Ok(t) => Some(t),
            Err(e) => {
                // Left on disk with refs 0: start-up collects it.
                warn!(chain_id = %meta.chain_id, error = %e, "moving deleted layer to trash failed");
                None
            }
        };
        info!(chain_id = %meta.chain_id, "deleted layer");
        Some(Unpublished { meta, trashed })
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
                && let Err(e) = blocking(move || remove_any(&t)).await
            {
                warn!(error = %e, "emptying trash failed");
            }
            for u in layers {
                if let Err(e) = inner.driver.remove(&u.meta.cache_id).await {
                    warn!(cache_id = %u.meta.cache_id, error = %e, "removing deleted layer's driver dir failed");
                }
                inner.layers.lock().busy.unmark([&u.meta.cache_id]);
                if let Some(t) = u.trashed
                    && let Err(e) = blocking(move || remove_any(&t)).await
                {
                    warn!(error = %e, "emptying trash failed");
                }
            }
        })
        .await;
    }
}
