//! Opening a store: take the root's exclusive lock, then reconcile what a
//! crash may have left — transactions in flight, trash, unreferenced layers,
//! orphaned driver dirs — so none of it can block a later registration. Runs
//! before the store is shared, so it takes no map locks for long.
//!
//! Start-up deletes only what is proven garbage: `tmp/` and `trash/`,
//! Docker's `-removing` leftovers, layers whose persisted count is zero and
//! that nothing depends on, and records that name no data (no `cache-id` /
//! `mount-id` file) with nothing depending on them. Everything else that
//! does not load — a read error, a parse error, a missing tar-split, a
//! broken chain — is kept untouched and reported (see `damaged`); an error
//! a retry may not repeat (EMFILE, ENOMEM) refuses the start instead.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use graphdriver::{CacheId, Driver};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::damaged::{Damaged, DamagedEntry};
use super::graph::{Graph, LayerMeta};
use super::rw::{Mounts, RwEntry, RwState};
use super::{Inner, StoreLockStats, blocking};
use crate::digest::{ChainId, Digest};
use crate::error::{LayerStoreError, Result};
use crate::flight::Flights;
use crate::keyed::KeyedLocks;
use crate::lockstats::{LockStats, MapLock};
use crate::metadata::{Damage, FaultHook, Known, LayerDb, LayerRecord, MountRecord};
use crate::name::RwName;
use crate::rootlock::RootLock;

/// What was on disk: records that read cleanly, and those that did not.
struct Loaded {
    layers: Vec<(ChainId, LayerRecord)>,
    damaged_layers: Vec<(ChainId, Damage)>,
    mounts: Vec<(RwName, MountRecord)>,
    damaged_mounts: Vec<(RwName, Damage)>,
    /// Read from the index: nothing was checked against the disk yet.
    from_index: bool,
}

fn refuse(what: String, d: &Damage) -> LayerStoreError {
    LayerStoreError::Internal(format!(
        "cannot read the metadata of {what}: {}; refusing to start rather than take a passing error for damage",
        d.why
    ))
}

/// Docker's `<chain-hex>-<random>-removing`: a deletion it had begun.
fn is_docker_removing(name: &str) -> bool {
    name.ends_with("-removing") && name.get(..64).and_then(Digest::parse_hex).is_some()
}

/// Read the records: from the index if there is a usable one (then
/// `from_index`), else by a scan of every record's files.
fn load(db: &LayerDb) -> Result<Loaded> {
    db.ensure_dirs()?;
    let reaped = db.reap()?;
    if reaped > 0 {
        info!(count = reaped, "emptied leftover transactions and trash");
    }
    let mut loaded = Loaded {
        layers: Vec::new(),
        damaged_layers: Vec::new(),
        mounts: Vec::new(),
        damaged_mounts: Vec::new(),
        from_index: false,
    };
    match db.read_index() {
        Ok(ix) => {
            info!(layers = ix.layers.len(), rw_layers = ix.mounts.len(), "loading the layerdb from its index");
            loaded.layers = ix.layers;
            loaded.mounts = ix.mounts;
            loaded.from_index = true;
            return Ok(loaded);
        }
        Err(why) => info!(why, "scanning the layerdb"),
    }
    for name in db.layer_names()? {
        let path = db.root().join("sha256").join(&name);
        let Some(chain) = Digest::parse_hex(&name).map(ChainId) else {
            if is_docker_removing(&name) {
                info!(path = %path.display(), "removing a deletion Docker had begun");
                db.trash(&path)?;
            } else {
                warn!(path = %path.display(), "leaving a foreign entry in layerdb alone; `check` reports it");
            }
            continue;
        };
        match db.read_layer(&chain) {
            Ok(rec) => loaded.layers.push((chain, rec)),
            Err(d) if d.transient => return Err(refuse(format!("layer {chain}"), &d)),
            Err(d) => loaded.damaged_layers.push((chain, d)),
        }
    }
    for name in db.mount_names()? {
        let Ok(n) = RwName::parse(&name) else {
            warn!(name, "leaving a foreign entry in layerdb/mounts alone; `check` reports it");
            continue;
        };
        match db.read_mount(&n) {
            Ok(rec) => loaded.mounts.push((n, rec)),
            Err(d) if d.transient => return Err(refuse(format!("rw layer {n}"), &d)),
            Err(d) => loaded.damaged_mounts.push((n, d)),
        }
    }
    Ok(loaded)
}

/// Resolve parents; layers whose chain is broken or whose ChainID does not
/// match their content are returned as invalid.
/// Valid layers with their persisted reference counts.
type Linked = HashMap<ChainId, (Arc<LayerMeta>, u64)>;

fn link(records: Vec<(ChainId, LayerRecord)>) -> (Linked, Vec<(ChainId, LayerRecord)>) {
    let recs: HashMap<ChainId, LayerRecord> = records.into_iter().collect();
    let mut done: HashMap<ChainId, Option<Arc<LayerMeta>>> = HashMap::new();
    fn resolve(
        c: &ChainId,
        recs: &HashMap<ChainId, LayerRecord>,
        done: &mut HashMap<ChainId, Option<Arc<LayerMeta>>>,
        depth_guard: usize,
    ) -> Option<Arc<LayerMeta>> {
        if let Some(r) = done.get(c) {
            return r.clone();
        }
        let rec = recs.get(c)?;
        let parent = match &rec.parent {
            None => None,
            // A cycle or an absurd chain cannot be valid.
            Some(_) if depth_guard > 4 * crate::MAX_DEPTH => None,
            Some(p) => match resolve(p, recs, done, depth_guard + 1) {
                Some(m) => Some(m),
                None => {
                    done.insert(c.clone(), None);
                    return None;
                }
            },
        };
        let ok = ChainId::of(parent.as_ref().map(|p| &p.chain_id), &rec.diff_id) == *c;
        let meta = ok.then(|| {
            Arc::new(LayerMeta {
                chain_id: c.clone(),
                diff_id: rec.diff_id.clone(),
                cache_id: rec.cache_id.clone(),
                size: rec.size,
                chain_size: rec.size + parent.as_ref().map_or(0, |p| p.chain_size),
                depth: parent.as_ref().map_or(1, |p| p.depth + 1),
                parent,
            })
        });
        done.insert(c.clone(), meta.clone());
        meta
    }
    let mut valid = HashMap::new();
    let mut invalid = Vec::new();
    for (c, rec) in &recs {
        match resolve(c, &recs, &mut done, 0) {
            // A layer Docker wrote has no refs file: assume its image store
            // holds one reference, so opening a Docker root deletes nothing.
            Some(m) => {
                valid.insert(c.clone(), (m, rec.refs.unwrap_or(1)));
            }
            None => invalid.push((c.clone(), rec.clone())),
        }
    }
    (valid, invalid)
}

/// Why a record that read cleanly did not link.
fn link_failure(rec: &LayerRecord, valid: &Linked, damaged: &HashSet<ChainId>, all: &HashSet<ChainId>) -> String {
    match &rec.parent {
        Some(p) if damaged.contains(p) => format!("its parent {p} is damaged"),
        Some(p) if !all.contains(p) => format!("its parent {p} is missing"),
        Some(p) if !valid.contains_key(p) => format!("its parent {p} did not load"),
        _ => "its ChainID does not match its diff and parent".to_string(),
    }
}

/// Every known driver id and parent of a kept damaged entry?
fn fully_known(d: &Damage) -> bool {
    d.ids.iter().all(|i| matches!(i, Known::Is(_))) && !d.parent.is_unknown()
}

fn ids_of(d: &Damage) -> impl Iterator<Item = &CacheId> {
    d.ids.iter().filter_map(|i| match i {
        Known::Is(id) => Some(id),
        _ => None,
    })
}

/// Open the store. The flag says it started from the index, whose check
/// against the disk (and the orphaned driver dirs' removal) is left to
/// `Inner::verify_index`, behind the first answers. Layers in `keep` are
/// not collected even if nothing on disk holds them.
pub(super) async fn open(
    root_lock: RootLock,
    driver: Arc<dyn Driver>,
    faults: Option<FaultHook>,
    keep: &[ChainId],
) -> Result<(Inner, bool)> {
    let root = root_lock.root().to_path_buf();
    let db = LayerDb::new(root.join("image").join(driver.name()).join("layerdb")).with_faults(faults);
    let d = db.clone();
    let loaded = blocking(move || load(&d)).await?;
    let from_index = loaded.from_index;
    let all_chains: HashSet<ChainId> =
        loaded.layers.iter().map(|(c, _)| c).chain(loaded.damaged_layers.iter().map(|(c, _)| c)).cloned().collect();
    let unreadable: HashSet<ChainId> = loaded.damaged_layers.iter().map(|(c, _)| c.clone()).collect();
    let (valid, invalid) = link(loaded.layers);
    let mut damaged_layers = loaded.damaged_layers;
    for (c, rec) in invalid {
        let why = link_failure(&rec, &valid, &unreadable, &all_chains);
        let parent = rec.parent.map_or(Known::Absent, Known::Is);
        let d = Damage { why, transient: false, ids: vec![Known::Is(rec.cache_id)], parent, refs: rec.refs };
        damaged_layers.push((c, d));
    }
    // Layers something on disk depends on (as a parent of a layer or an RW layer).
    let parents = |d: &Damage| match &d.parent {
        Known::Is(p) => Some(p.clone()),
        _ => None,
    };
    let mut depended: HashSet<ChainId> = valid.values().filter_map(|(m, _)| m.parent_chain().cloned()).collect();
    depended.extend(damaged_layers.iter().filter_map(|(_, d)| parents(d)));
    depended.extend(loaded.mounts.iter().filter_map(|(_, r)| r.parent.clone()));
    depended.extend(loaded.damaged_mounts.iter().filter_map(|(_, d)| parents(d)));

    let mut graph = Graph::default();
    for (meta, refs) in valid.values() {
        graph.load(meta.clone(), *refs);
    }
    for (meta, _) in valid.values() {
        if let Some(p) = meta.parent_chain() {
            graph.pin_child(p)?;
        }
    }
    let mut damaged = Damaged::none();
    for (chain, d) in damaged_layers {
        let path = db.layer_dir(&chain);
        // Proven garbage: released by every client (refs 0), or naming no
        // data (no cache-id file); and nothing depends on it.
        let garbage = !depended.contains(&chain) && (d.refs == Some(0) || d.ids.iter().all(|i| *i == Known::Absent));
        if garbage {
            info!(chain_id = %chain, why = d.why, "removing an unloadable layer nothing holds or depends on");
            let db2 = db.clone();
            blocking(move || db2.trash(&path).map(|_| ())).await?;
            for id in ids_of(&d) {
                if let Err(e) = driver.remove(id).await {
                    warn!(cache_id = %id, error = %e, "removing its driver dir failed");
                }
            }
            continue;
        }
        warn!(chain_id = %chain, why = d.why, "keeping a layer that did not load; `check` reports it");
        if let Known::Is(p) = &d.parent
            && graph.get(p).is_some()
        {
            // Keep its ancestors, as a child would.
            graph.pin_child(p)?;
        }
        damaged.complete &= fully_known(&d);
        damaged.ids.extend(ids_of(&d).cloned());
        damaged.layers.insert(chain, DamagedEntry { why: d.why, path });
    }
    let mut mounts = HashMap::new();
    let mut known: HashSet<CacheId> = HashSet::new();
    let mut damaged_mounts = loaded.damaged_mounts;
    for (name, rec) in loaded.mounts {
        let parent = match &rec.parent {
            None => None,
            Some(p) => match graph.pin_rw(p) {
                Ok(m) => Some(m),
                Err(_) => {
                    let why = format!("its parent {p} is missing or did not load");
                    let ids = std::iter::once(Known::Is(rec.mount_id)).chain(rec.init_id.map(Known::Is)).collect();
                    damaged_mounts
                        .push((name, Damage { why, transient: false, ids, parent: Known::Is(p.clone()), refs: None }));
                    continue;
                }
            },
        };
        known.insert(rec.mount_id.clone());
        known.extend(rec.init_id.clone());
        let entry = RwEntry::restored(name.clone(), rec.mount_id, rec.init_id, parent);
        mounts.insert(name, RwState::Ready(Arc::new(entry)));
    }
    for (name, d) in damaged_mounts {
        let path = db.mount_dir(&name);
        if d.ids.first() == Some(&Known::Absent) {
            // No mount-id: the record names no data.
            info!(name = %name, why = d.why, "removing an rw layer record that names no data");
            let db2 = db.clone();
            blocking(move || db2.trash(&path).map(|_| ())).await?;
            continue;
        }
        warn!(name = %name, why = d.why, "keeping an rw layer that did not load, and its data; `check` reports it");
        if let Known::Is(p) = &d.parent
            && graph.get(p).is_some()
        {
            graph.pin_rw(p)?;
        }
        damaged.complete &= fully_known(&d);
        damaged.ids.extend(ids_of(&d).cloned());
        damaged.rws.insert(name, DamagedEntry { why: d.why, path });
    }
    if damaged.complete {
        // Layers nothing holds (a crash between a release and its deletion).
        let keep: HashSet<ChainId> = keep.iter().cloned().collect();
        for m in graph.collect_garbage(&keep) {
            info!(chain_id = %m.chain_id, "deleting unreferenced layer left by a crash");
            let (d, c) = (db.clone(), m.chain_id.clone());
            blocking(move || d.trash(&d.layer_dir(&c)).map(|_| ())).await?;
            graph.forget(&m);
        }
    } else {
        warn!(
            "a damaged entry's links or driver dirs are unknown: collecting no unreferenced layer and no orphaned driver dir"
        );
    }
    known.extend(graph.live().map(|(m, _)| m.cache_id.clone()));
    known.extend(damaged.ids.iter().cloned());
    // From the index, the orphan listing (per-layer work in some drivers)
    // waits until the index is checked, after the first answers.
    if damaged.complete && !from_index {
        for id in driver.ids().await? {
            if !known.contains(&id) {
                info!(cache_id = %id, "removing orphaned driver dir");
                if let Err(e) = driver.remove(&id).await {
                    warn!(cache_id = %id, error = %e, "removing orphaned driver dir failed");
                }
            }
        }
    }
    let d = db.clone();
    blocking(move || d.reap().map(|_| ())).await?;
    info!(
        root = %root.display(),
        driver = driver.name(),
        layers = graph.len(),
        rw_layers = mounts.len(),
        damaged_layers = damaged.layers.len(),
        damaged_rw_layers = damaged.rws.len(),
        from_index,
        "store open"
    );
    let stats: Vec<Arc<LockStats>> = ["layers_map", "mounts_map", "chain_keys", "name_keys"]
        .into_iter()
        .map(|n| Arc::new(LockStats::new(n)))
        .collect();
    let inner = Inner {
        root,
        db,
        driver,
        layers: MapLock::new(graph, stats[0].clone()),
        mounts: MapLock::new(Mounts { by_name: mounts, busy: Default::default() }, stats[1].clone()),
        chain_keys: KeyedLocks::new(stats[2].clone()),
        name_keys: KeyedLocks::new(stats[3].clone()),
        flights: Flights::new(),
        bg: TaskTracker::new(),
        stats: StoreLockStats { all: stats },
        damaged,
        #[cfg(feature = "coarse-baseline")]
        coarse: None,
        ops: Default::default(),
        verifier: Default::default(),
        from_index,
        _root_lock: root_lock,
    };
    Ok((inner, from_index))
}
