//! Opening a store: take the root's exclusive lock, then reconcile what a
//! crash may have left — transactions in flight, trash, partial or invalid
//! layer dirs, unreferenced layers, orphaned driver dirs — so none of it can
//! block a later registration. Runs before the store is shared, so it takes
//! no map locks for long.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use graphdriver::{CacheId, Driver};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::graph::{Graph, LayerMeta};
use super::rw::{MountSlot, Mounts, RwEntry};
use super::{Inner, StoreLockStats, blocking};
use crate::digest::{ChainId, Digest};
use crate::error::Result;
use crate::flight::Flights;
use crate::keyed::KeyedLocks;
use crate::lockstats::{LockStats, MapLock};
use crate::metadata::{FaultHook, LayerDb, LayerRecord, MountRecord};
use crate::name::RwName;
use crate::rootlock::RootLock;

/// What was on disk, validated.
struct Loaded {
    layers: Vec<(ChainId, LayerRecord)>,
    mounts: Vec<(RwName, MountRecord)>,
}

fn load(db: &LayerDb) -> Result<Loaded> {
    db.ensure_dirs()?;
    let reaped = db.reap()?;
    if reaped > 0 {
        info!(count = reaped, "emptied leftover transactions and trash");
    }
    let mut layers = Vec::new();
    for name in db.layer_names()? {
        let path = db.root().join("sha256").join(&name);
        let Some(chain) = Digest::parse_hex(&name).map(ChainId) else {
            // Docker's `<id>-<rand>-removing` orphans and anything else foreign.
            warn!(path = %path.display(), "removing stray entry in layerdb");
            db.trash(&path)?;
            continue;
        };
        match db.read_layer(&chain) {
            Ok(rec) => layers.push((chain, rec)),
            Err(why) => {
                warn!(chain_id = %chain, why, "removing partial or damaged layer metadata");
                db.trash(&path)?;
            }
        }
    }
    let mut mounts = Vec::new();
    for name in db.mount_names()? {
        let path = db.root().join("mounts").join(&name);
        let rec = RwName::parse(&name).map_err(|e| e.to_string()).and_then(|n| db.read_mount(&n).map(|r| (n, r)));
        match rec {
            Ok(pair) => mounts.push(pair),
            Err(why) => {
                warn!(path = %path.display(), why, "removing partial or damaged rw layer metadata");
                db.trash(&path)?;
            }
        }
    }
    Ok(Loaded { layers, mounts })
}

/// Resolve parents; layers whose chain is broken or whose ChainID does not
/// match their content are returned as invalid.
/// Valid layers with their persisted reference counts.
type Linked = HashMap<ChainId, (Arc<LayerMeta>, u64)>;

fn link(records: Vec<(ChainId, LayerRecord)>) -> (Linked, Vec<ChainId>) {
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
            None => invalid.push(c.clone()),
        }
    }
    (valid, invalid)
}

pub(super) async fn open(root_lock: RootLock, driver: Arc<dyn Driver>, faults: Option<FaultHook>) -> Result<Inner> {
    let root = root_lock.root().to_path_buf();
    let db = LayerDb::new(root.join("image").join(driver.name()).join("layerdb")).with_faults(faults);
    let d = db.clone();
    let loaded = blocking(move || load(&d)).await?;
    let (valid, invalid) = link(loaded.layers);
    for c in &invalid {
        warn!(chain_id = %c, "removing layer with a missing parent or a ChainID that does not match its content");
        let (d, c) = (db.clone(), c.clone());
        blocking(move || d.trash(&d.layer_dir(&c)).map(|_| ())).await?;
    }
    let mut graph = Graph::default();
    for (meta, refs) in valid.values() {
        graph.load(meta.clone(), *refs);
    }
    for (meta, _) in valid.values() {
        if let Some(p) = meta.parent_chain() {
            graph.pin_child(p)?;
        }
    }
    let mut mounts = HashMap::new();
    let mut known: HashSet<CacheId> = HashSet::new();
    for (name, rec) in loaded.mounts {
        let parent = match &rec.parent {
            None => None,
            Some(p) => match graph.pin_rw(p) {
                Ok(m) => Some(m),
                Err(_) => {
                    warn!(name = %name, parent = %p, "removing rw layer whose parent is gone");
                    let (d, n) = (db.clone(), name.clone());
                    blocking(move || d.trash(&d.mount_dir(&n)).map(|_| ())).await?;
                    continue;
                }
            },
        };
        known.insert(rec.mount_id.clone());
        known.extend(rec.init_id.clone());
        let entry = RwEntry::restored(name.clone(), rec.mount_id, rec.init_id, parent);
        mounts.insert(name, MountSlot::Ready(Arc::new(entry)));
    }
    // Layers nothing holds (a crash between a release and its deletion).
    for m in graph.collect_garbage() {
        info!(chain_id = %m.chain_id, "deleting unreferenced layer left by a crash");
        let (d, c) = (db.clone(), m.chain_id.clone());
        blocking(move || d.trash(&d.layer_dir(&c)).map(|_| ())).await?;
        graph.forget(&m);
    }
    known.extend(graph.live().map(|(m, _)| m.cache_id.clone()));
    for id in driver.ids().await? {
        if !known.contains(&id) {
            info!(cache_id = %id, "removing orphaned driver dir");
            if let Err(e) = driver.remove(&id).await {
                warn!(cache_id = %id, error = %e, "removing orphaned driver dir failed");
            }
        }
    }
    let d = db.clone();
    blocking(move || d.reap().map(|_| ())).await?;
    info!(root = %root.display(), driver = driver.name(), layers = graph.len(), rw_layers = mounts.len(), "store open");
    let stats: Vec<Arc<LockStats>> = ["layers_map", "mounts_map", "chain_keys", "name_keys"]
        .into_iter()
        .map(|n| Arc::new(LockStats::new(n)))
        .collect();
    Ok(Inner {
        root,
        db,
        driver,
        layers: MapLock::new(graph, stats[0].clone()),
        mounts: MapLock::new(Mounts { slots: mounts, busy: Default::default() }, stats[1].clone()),
        chain_keys: KeyedLocks::new(stats[2].clone()),
        name_keys: KeyedLocks::new(stats[3].clone()),
        flights: Flights::new(),
        bg: TaskTracker::new(),
        stats: StoreLockStats { all: stats },
        coarse: None,
        _root_lock: root_lock,
    })
}
