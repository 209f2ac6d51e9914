//! Keeping the layerdb index (`crate::index`) and trusting it no further
//! than it has earned.
//!
//! - **Written from memory when the store is quiet**: at shutdown, and by
//!   [`Store::write_index`](super::Store::write_index), which `layerd` calls
//!   every few seconds (a no-op while the file on disk is current). The snapshot is taken
//!   only when no store operation is running and none began while it was
//!   taken, no deletion is pending and the graph is settled, so memory is
//!   what the disk holds; [`LayerDb::write_index`](crate::metadata::LayerDb)
//!   then publishes it only if no change of the layerdb began since.
//! - **Gone before the first change it does not hold**: every commit,
//!   `refs` replacement and move to the trash removes it first
//!   (`LayerDb::changing`), so a crash at any point leaves either an index
//!   equal to the records, or none.
//! - **Checked behind the first answers**: a start from the index skips the
//!   per-layer reads and the driver's orphan listing; a background task then
//!   runs `check` (no repair) against the disk. If the disk agrees, it removes
//!   orphaned driver dirs as a full start would; if not, it says what differs
//!   and removes the index, so the next start scans.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tracing::{debug, info, warn};

use super::rw::RwState;
use super::{Inner, blocking};
use crate::error::Result;
use crate::metadata::{LayerRecord, MountRecord};
use crate::types::CheckOpts;

/// Store operations begun and running (the quiet test of the index writer).
#[derive(Debug, Default)]
pub(crate) struct Ops {
    started: AtomicU64,
    running: AtomicUsize,
}

/// One operation running; counted until dropped.
pub(crate) struct OpGuard(Arc<Ops>);

impl Ops {
    pub fn begin(self: &Arc<Self>) -> OpGuard {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
        OpGuard(self.clone())
    }

    /// Operations begun so far, if none is running.
    fn quiet(&self) -> Option<u64> {
        let started = self.started.load(Ordering::SeqCst);
        (self.running.load(Ordering::SeqCst) == 0).then_some(started)
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    /// Write the index from memory if the store is quiet (see the module
    /// doc). Returns whether a current index is on disk (written now or
    /// before, with no change since); `Ok(false)` when something was
    /// running, or start-up kept damaged entries (which the index cannot
    /// hold: they are found again by the full scan).
    pub(super) async fn write_index(&self) -> Result<bool> {
        if !self.damaged.layers.is_empty() || !self.damaged.rws.is_empty() {
            debug!("not writing the index: start-up kept damaged entries");
            return Ok(false);
        }
        if self.db.index_current() {
            return Ok(true);
        }
        let since = self.db.changes();
        let Some(began) = self.ops.quiet() else { return Ok(false) };
        if !self.bg.is_empty() {
            return Ok(false);
        }
        let Some(layers) = self.layers.lock().settled() else { return Ok(false) };
        let mounts: Option<Vec<_>> = self
            .mounts
            .lock()
            .values()
            .map(|s| match s {
                RwState::Ready(e) => Some(e.clone()),
                RwState::Reserved => None,
            })
            .collect();
        let Some(mounts) = mounts else { return Ok(false) };
        // No operation began while the snapshot was taken: what it holds
        // is what completed operations left, which is on disk.
        if self.ops.quiet() != Some(began) || !self.bg.is_empty() {
            return Ok(false);
        }
        let layers = layers
            .into_iter()
            .map(|(m, refs)| {
                let rec = LayerRecord {
                    diff_id: m.diff_id.clone(),
                    size: m.size,
                    cache_id: m.cache_id.clone(),
                    parent: m.parent_chain().cloned(),
                    refs: Some(refs),
                };
                (m.chain_id.clone(), rec)
            })
            .collect();
        let mounts = mounts
            .into_iter()
            .map(|e| {
                let rec = MountRecord {
                    mount_id: e.mount_id.clone(),
                    init_id: e.init_id.clone(),
                    parent: e.parent.as_ref().map(|p| p.chain_id.clone()),
                };
                (e.name.clone(), rec)
            })
            .collect();
        let db = self.db.clone();
        blocking(move || db.write_index(since, layers, mounts)).await
    }

    /// After a start from the index: compare it with the disk, then remove
    /// orphaned driver dirs if they agree (see the module doc).
    pub(super) async fn verify_index(self: Arc<Self>) {
        let report = match self.fsck(CheckOpts { repair: false, verify_content: false }).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "could not check the store against the index it started from");
                return;
            }
        };
        let (orphans, others): (Vec<_>, Vec<_>) =
            report.problems.into_iter().partition(|p| p.kind == "orphaned_driver_dir");
        if !others.is_empty() {
            for p in &others {
                warn!(kind = p.kind, subject = p.subject, detail = p.detail, "the disk differs from the index");
            }
            warn!(
                problems = others.len(),
                "the store started from an index that differs from the disk; `check` reports what differs, and the next start scans the layerdb"
            );
            let db = self.db.clone();
            if let Err(e) = blocking(move || db.changing()).await {
                warn!(error = %e, "could not remove the index");
            }
            return;
        }
        for p in orphans {
            let Ok(id) = graphdriver::CacheId::parse(&p.subject) else { continue };
            info!(cache_id = %id, "removing orphaned driver dir");
            if let Err(e) = self.driver.remove(&id).await {
                warn!(cache_id = %id, error = %e, "removing orphaned driver dir failed");
            }
        }
        debug!(layers = report.layers_checked, rw_layers = report.rw_layers_checked, "the index agrees with the disk");
    }
}
