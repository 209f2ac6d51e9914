//! `fsck` (the store side of `layerctl check`): compare the store's view with the disk and the driver, and
//! optionally repair what is safe to repair.
//!
//! It runs with no store-wide lock held across I/O. To stay honest while
//! other requests run, every listing of the disk is taken *before* the
//! in-memory snapshot it is compared with, ids being created or deleted are
//! tracked as busy, and a finding is re-checked before it is reported: what
//! changed meanwhile is skipped, never reported or "repaired".

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use graphdriver::CacheId;
use tracing::warn;

use super::graph::LayerMeta;
use super::rw::{RwEntry, RwState};
use super::{Inner, blocking, blocking_shared};
use crate::digest::{ChainId, Digest};
use crate::error::Result;
use crate::metadata::{TAR_SPLIT, remove_any};
use crate::name::RwName;
use crate::types::{CheckOpts, CheckReport, Problem};

fn problem(kind: &str, subject: impl ToString, detail: impl Into<String>) -> Problem {
    Problem { kind: kind.to_string(), subject: subject.to_string(), detail: detail.into(), repaired: false }
}

impl Inner {
    pub(super) async fn fsck(self: &Arc<Self>, opts: CheckOpts) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        // Disk listings first, then the in-memory snapshot.
        let driver_ids = self.driver.ids().await?;
        let db = self.db.clone();
        let (layer_names, mount_names) = blocking(move || Ok((db.layer_names()?, db.mount_names()?))).await?;
        // One critical section per family: a driver id is always either
        // named by an entry or marked busy under the same lock.
        let (layers, known_chains, mut known_ids) = {
            let g = self.layers.lock();
            let layers: Vec<Arc<LayerMeta>> = g.live().map(|(m, _)| m.clone()).collect();
            // Damaged layers are known too: kept on purpose, never strays.
            let chains: HashSet<ChainId> = g.all_chains().chain(self.damaged.layers.keys()).cloned().collect();
            let ids: HashSet<CacheId> =
                g.all_metas().map(|m| m.cache_id.clone()).chain(g.busy.ids().cloned()).collect();
            (layers, chains, ids)
        };
        let (rws, known_names) = {
            let m = self.mounts.lock();
            let rws: Vec<Arc<RwEntry>> = m.values().filter_map(RwState::ready).collect();
            for e in &rws {
                known_ids.insert(e.mount_id.clone());
                known_ids.extend(e.init_id.clone());
            }
            known_ids.extend(m.busy.ids().cloned());
            let names: HashSet<RwName> = m.keys().chain(self.damaged.rws.keys()).cloned().collect();
            (rws, names)
        };
        known_ids.extend(self.damaged.ids.iter().cloned());
        report_damaged(&self.damaged, &mut report);

        for meta in &layers {
            report.layers_checked += 1;
            for p in self.fsck_layer(meta, opts).await {
                // Still this very layer (not deleted, nor deleted and registered anew)?
                if self.layers.lock().get(&meta.chain_id).is_some_and(|(m, _)| Arc::ptr_eq(m, meta)) {
                    report.problems.push(p);
                }
            }
        }
        for e in &rws {
            report.rw_layers_checked += 1;
            for p in self.fsck_rw(e).await {
                if self.rw_entry(&e.name).is_ok_and(|now| Arc::ptr_eq(&now, e)) {
                    report.problems.push(p);
                }
            }
        }
        for id in driver_ids {
            if known_ids.contains(&id) || !self.driver.exists(&id).await {
                continue;
            }
            let mut p = problem("orphaned_driver_dir", &id, "a driver dir no layer or rw layer refers to");
            if opts.repair && !self.damaged.complete {
                p.detail.push_str("; not removed: it may belong to a damaged entry whose driver ids are unknown");
            } else if opts.repair {
                match self.driver.remove(&id).await {
                    Ok(()) => p.repaired = true,
                    Err(e) => p.detail.push_str(&format!("; removing it failed: {e}")),
                }
            }
            report.problems.push(p);
        }
        for name in layer_names {
            let path = self.db.root().join("sha256").join(&name);
            match Digest::parse_hex(&name).map(ChainId) {
                Some(c) if known_chains.contains(&c) => {}
                Some(c) => {
                    // `publish` renames the metadata into place and then
                    // inserts into the map, both under this key: look again
                    // holding it, or a layer being published looks stray.
                    let _key = self.chain_keys.lock(&c).await;
                    let known_now = self.layers.lock().all_chains().any(|k| *k == c);
                    if !known_now {
                        self.fsck_stray(&path, opts, &mut report).await;
                    }
                }
                None => self.fsck_stray(&path, opts, &mut report).await,
            }
        }
        for name in mount_names {
            let path = self.db.root().join("mounts").join(&name);
            match RwName::parse(&name) {
                Ok(n) if known_names.contains(&n) => {}
                Ok(n) => {
                    // The RW layer may have been released and created anew
                    // since the listing: `create_rw` commits the record and
                    // publishes it holding the name's key, and `release_rw`
                    // unpublishes holding it. Look again holding it.
                    let _key = self.name_keys.lock(&n).await;
                    if !self.mounts.lock().contains_key(&n) {
                        self.fsck_stray(&path, opts, &mut report).await;
                    }
                }
                // No RW layer can have this name.
                Err(_) => self.fsck_stray(&path, opts, &mut report).await,
            }
        }
        Ok(report)
    }

    /// A layerdb entry the maps don't know: report (and remove) it if it is
    /// still there — a layer finalized meanwhile has moved to the trash.
    async fn fsck_stray(&self, path: &std::path::Path, opts: CheckOpts, report: &mut CheckReport) {
        let p2 = path.to_path_buf();
        if !blocking(move || Ok(p2.exists())).await.unwrap_or(false) {
            return;
        }
        let mut p = problem("stray_layerdb_entry", path.display(), "an entry the store did not load");
        if opts.repair {
            let (db, p2) = (self.db.clone(), path.to_path_buf());
            match blocking(move || db.trash(&p2).and_then(|t| remove_any(&t))).await {
                Ok(()) => p.repaired = true,
                Err(e) => p.detail.push_str(&format!("; removing it failed: {e}")),
            }
        }
        report.problems.push(p);
    }

    async fn fsck_layer(self: &Arc<Self>, meta: &Arc<LayerMeta>, opts: CheckOpts) -> Vec<Problem> {
        let mut out = Vec::new();
        let chain = &meta.chain_id;
        if !self.driver.exists(&meta.cache_id).await {
            out.push(problem("missing_driver_dir", chain, format!("driver layer {} does not exist", meta.cache_id)));
            return out;
        }
        let (db, c) = (self.db.clone(), chain.clone());
        let disk = blocking(move || Ok((db.read_layer(&c), db.layer_dir(&c).join(TAR_SPLIT).is_file()))).await;
        match disk {
            Ok((Ok(rec), has_ts)) => {
                let parent = meta.parent_chain().cloned();
                if rec.diff_id != meta.diff_id || rec.cache_id != meta.cache_id || rec.parent != parent {
                    out.push(problem(
                        "metadata_mismatch",
                        chain,
                        "the layer's files on disk differ from what was loaded",
                    ));
                }
                if !has_ts {
                    out.push(problem("missing_tar_split", chain, format!("{TAR_SPLIT} is missing")));
                }
            }
            Ok((Err(d), _)) => out.push(problem("metadata_mismatch", chain, d.why)),
            Err(e) => out.push(problem("metadata_mismatch", chain, e.to_string())),
        }
        if opts.verify_content && out.is_empty() {
            let verified = match self.tar_stream(chain).await {
                Ok(mut r) => blocking_shared(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        match r.read(&mut buf) {
                            Ok(0) => return Ok(Ok(())),
                            Ok(_) => {}
                            Err(e) => return Ok(Err(e.to_string())),
                        }
                    }
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string())),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = verified {
                warn!(chain_id = %chain, why, "layer content does not verify");
                out.push(problem("content_mismatch", chain, why));
            }
        }
        out
    }

    async fn fsck_rw(&self, e: &RwEntry) -> Vec<Problem> {
        let mut out = Vec::new();
        for id in std::iter::once(&e.mount_id).chain(e.init_id.as_ref()) {
            if !self.driver.exists(id).await {
                out.push(problem("missing_driver_dir", &e.name, format!("driver layer {id} does not exist")));
            }
        }
        let (db, n) = (self.db.clone(), e.name.clone());
        match blocking(move || Ok(db.read_mount(&n))).await {
            Ok(Ok(rec)) => {
                let parent = e.parent.as_ref().map(|p| p.chain_id.clone());
                if rec.mount_id != e.mount_id || rec.init_id != e.init_id || rec.parent != parent {
                    out.push(problem(
                        "metadata_mismatch",
                        &e.name,
                        "the rw layer's files on disk differ from what was loaded",
                    ));
                }
            }
            Ok(Err(d)) => out.push(problem("metadata_mismatch", &e.name, d.why)),
            Err(err) => out.push(problem("metadata_mismatch", &e.name, err.to_string())),
        }
        out
    }
}

/// Entries start-up kept without loading them: reported, never "repaired".
fn report_damaged(damaged: &super::damaged::Damaged, report: &mut CheckReport) {
    const KEPT: &str = "kept untouched (start-up and check delete nothing they cannot prove is garbage); fix or restore it and restart";
    for (chain, d) in &damaged.layers {
        report.problems.push(problem("damaged_layer", chain, format!("{}; {} ({KEPT})", d.why, d.path.display())));
    }
    for (name, d) in &damaged.rws {
        report.problems.push(problem("damaged_rw_layer", name, format!("{}; {} ({KEPT})", d.why, d.path.display())));
    }
}
