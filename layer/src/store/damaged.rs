//! Layerdb entries start-up could not load and did not delete: nothing
//! proved them crash leftovers, and deleting on a read error or a broken
//! chain can destroy images and containers' data. They stay on disk
//! untouched; `check` reports them, and operations that name them say why
//! they fail. Fixed by hand (or restored from backup), they load at the
//! next start.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use graphdriver::CacheId;

use crate::digest::ChainId;
use crate::error::LayerStoreError;
use crate::name::RwName;

#[derive(Debug, Clone)]
pub(crate) struct DamagedEntry {
    /// Why it did not load; names no host path (it reaches clients).
    pub why: String,
    /// Its metadata dir, kept for inspection.
    pub path: PathBuf,
}

#[derive(Debug, Default)]
pub(crate) struct Damaged {
    pub layers: HashMap<ChainId, DamagedEntry>,
    pub rws: HashMap<RwName, DamagedEntry>,
    /// Driver ids the damaged entries name: never orphans.
    pub ids: HashSet<CacheId>,
    /// Every damaged entry's driver ids and parent are known. When not, a
    /// driver dir nothing names may be a damaged entry's, so neither
    /// start-up nor `check --repair` removes orphaned driver dirs, and
    /// start-up collects no unreferenced layer.
    pub complete: bool,
}

impl Damaged {
    pub fn none() -> Self {
        Damaged { complete: true, ..Damaged::default() }
    }

    pub fn layer_error(&self, chain: &ChainId) -> Option<LayerStoreError> {
        self.layers.get(chain).map(|d| LayerStoreError::Corrupt {
            chain_id: chain.to_string(),
            why: format!(
                "{}; start-up kept it without loading it (`layerctl check` shows where); fix or restore it and restart",
                d.why
            ),
        })
    }

    pub fn rw_error(&self, name: &RwName) -> Option<LayerStoreError> {
        self.rws.get(name).map(|d| LayerStoreError::RwCorrupt {
            name: name.to_string(),
            why: format!(
                "{}; start-up kept it and its data without loading it (`layerctl check` shows where); fix or restore it and restart",
                d.why
            ),
        })
    }
}
