//! Deferred deletion: a release only unpublishes (map update, then a rename
//! of the metadata dir into `trash/` under the layer's key lock); the driver
//! dir and the trash are deleted in the background, off the request path.

use std::sync::Arc;

use tracing::{info, warn};

use super::graph::LayerMeta;
use super::{Inner, blocking};
use crate::digest::ChainId;
use crate::error::Result;
use crate::metadata::remove_any;

impl Inner {
    pub(super) async fn release(self: &Arc<Self>, chain: &ChainId) -> Result<Vec<ChainId>> {
        let key = self.chain_keys.lock(chain).await;
        let refs = self.layers.lock().check_release(chain)?;
        // Persist first: a crash after this leaves a layer that start-up
        // collects if nothing else holds it.
        self.persist_refs(chain, refs).await?;
        let freed = self.layers.lock().set_refs(chain, refs);
        let deleted: Vec<ChainId> = freed.iter().map(|m| m.chain_id.clone()).collect();
        let mut rest = Vec::with_capacity(freed.len());
        for m in freed {
            if &m.chain_id == chain {
                self.finalize_locked(m).await;
            } else {
                rest.push(m);
            }
        }
        drop(key);
        self.finalize_all(rest).await;
        Ok(deleted)
    }

    pub(super) async fn unpin_child(self: &Arc<Self>, parent: Option<&Arc<LayerMeta>>) {
        if let Some(p) = parent {
            let freed = self.layers.lock().unpin_child(&p.chain_id);
            self.finalize_all(freed).await;
        }
    }

    pub(super) async fn unpin_rw(self: &Arc<Self>, parent: Option<&Arc<LayerMeta>>) {
        if let Some(p) = parent {
            let freed = self.layers.lock().unpin_rw(&p.chain_id);
            self.finalize_all(freed).await;
        }
    }

    pub(super) async fn finalize_all(self: &Arc<Self>, freed: Vec<Arc<LayerMeta>>) {
        for m in freed {
            let _key = self.chain_keys.lock(&m.chain_id).await;
            self.finalize_locked(m).await;
        }
    }

    /// Move a freed layer's metadata to the trash and forget it; its driver
    /// dir and the trash go in the background. Caller holds the chain key.
    /// A no-op if someone else finalized this layer already.
    pub(super) async fn finalize_locked(self: &Arc<Self>, meta: Arc<LayerMeta>) {
        if !self.layers.lock().is_removing(&meta) {
            return;
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
        let inner = self.clone();
        self.defer(async move {
            if let Err(e) = inner.driver.remove(&meta.cache_id).await {
                warn!(cache_id = %meta.cache_id, error = %e, "removing deleted layer's driver dir failed");
            }
            inner.layers.lock().busy.unmark([&meta.cache_id]);
            if let Some(t) = trashed
                && let Err(e) = blocking(move || remove_any(&t)).await
            {
                warn!(error = %e, "emptying trash failed");
            }
        })
        .await;
    }
}
