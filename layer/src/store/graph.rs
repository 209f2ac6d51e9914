//! The reference-count graph: which layers exist, who holds them, and what a
//! release frees. Pure state transitions under the layers map lock — no I/O,
//! no `.await` — so every method runs in microseconds.
//!
//! A layer's count has three parts: `refs` (client references, persisted),
//! `children` (layers on top of it, plus registrations in flight that pinned
//! it as their parent) and `rw` (RW layers on top of it, plus RW creations in
//! flight). A layer whose three parts are all zero is freed: it turns
//! `Removing` (readers see it as absent) and its parent loses the child count,
//! which may free the parent in turn.

use std::collections::HashMap;
use std::sync::Arc;

use graphdriver::CacheId;

use crate::digest::{ChainId, DiffId};
use crate::error::{LayerStoreError, Result};

/// The immutable facts of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerMeta {
    pub chain_id: ChainId,
    pub diff_id: DiffId,
    pub parent: Option<Arc<LayerMeta>>,
    pub cache_id: CacheId,
    pub size: u64,
    pub chain_size: u64,
    pub depth: usize,
}

impl LayerMeta {
    pub fn parent_chain(&self) -> Option<&ChainId> {
        self.parent.as_ref().map(|p| &p.chain_id)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub refs: u64,
    pub children: u64,
    pub rw: u64,
    /// Bumped on every change of `refs` (group commit of the `refs` file).
    pub refs_gen: u64,
    /// The `refs_gen` whose value is known to be on disk.
    pub persisted_gen: u64,
    /// References held in memory only (see `Store::lease`).
    pub leases: u64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        self.refs == 0 && self.children == 0 && self.rw == 0 && self.leases == 0
    }
}

#[derive(Debug)]
enum LayerState {
    Live {
        meta: Arc<LayerMeta>,
        counts: Counts,
    },
    /// Freed: unpublished for readers, waiting for its metadata to move to
    /// the trash under the layer's key lock.
    Removing(Arc<LayerMeta>),
}

/// What `publish` found.
#[derive(Debug)]
pub(crate) enum Published {
    /// No such layer: the caller (holding the key lock) commits its metadata
    /// on disk and then calls [`Graph::insert`].
    Absent,
    /// The layer already existed: it gained a reference (the generation to
    /// persist is given), and the caller must drop its own parent pin and
    /// staged work.
    Existing(Arc<LayerMeta>, u64),
    /// A freed layer with this ChainID is still on disk: the caller (holding
    /// the key lock) must finalize its removal first, then publish again.
    Removing(Arc<LayerMeta>),
}

/// Driver ids whose dirs exist (or may) while no map entry names them: being
/// staged before publish, or being deleted after unpublish. Kept under the same
/// map lock as the entries they bridge, so "publish + unmark" and "mark +
/// unpublish" are each one critical section, and a reader of the map sees
/// every live driver id in one of the two. Counted, so overlapping marks of one
/// id can't unmark each other.
#[derive(Debug, Default)]
pub(crate) struct Busy(HashMap<CacheId, usize>);

impl Busy {
    pub fn mark<'a>(&mut self, ids: impl IntoIterator<Item = &'a CacheId>) {
        for id in ids {
            *self.0.entry(id.clone()).or_default() += 1;
        }
    }

    pub fn unmark<'a>(&mut self, ids: impl IntoIterator<Item = &'a CacheId>) {
        for id in ids {
            if let Some(n) = self.0.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    self.0.remove(id);
                }
            }
        }
    }

    pub fn ids(&self) -> impl Iterator<Item = &CacheId> {
        self.0.keys()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Graph {
    states: HashMap<ChainId, LayerState>,
    /// Layer driver ids being staged or deleted (see [`Busy`]).
    pub busy: Busy,
}

impl Graph {
    /// A live layer and its counts.
    pub fn get(&self, chain: &ChainId) -> Option<(&Arc<LayerMeta>, Counts)> {
        match self.states.get(chain)? {
            LayerState::Live { meta, counts } => Some((meta, *counts)),
            LayerState::Removing(_) => None,
        }
    }

    pub fn live(&self) -> impl Iterator<Item = (&Arc<LayerMeta>, Counts)> {
        self.states.values().filter_map(|s| match s {
            LayerState::Live { meta, counts } => Some((meta, *counts)),
            LayerState::Removing(_) => None,
        })
    }

    /// Every layer the graph knows, including layers being removed.
    pub fn all_metas(&self) -> impl Iterator<Item = &Arc<LayerMeta>> {
        self.states.values().map(|s| match s {
            LayerState::Live { meta, .. } | LayerState::Removing(meta) => meta,
        })
    }

    /// Every ChainID the graph knows, including layers being removed.
    pub fn all_chains(&self) -> impl Iterator<Item = &ChainId> {
        self.states.keys()
    }

    /// Every layer with its client references, if the graph is settled —
    /// nothing being staged or removed, every `refs` count known to be on
    /// disk — so that it is what the layerdb holds; `None` otherwise.
    pub fn settled(&self) -> Option<Vec<(Arc<LayerMeta>, u64)>> {
        if !self.busy.0.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(self.states.len());
        for s in self.states.values() {
            match s {
                LayerState::Live { meta, counts } if counts.refs_gen == counts.persisted_gen => {
                    out.push((meta.clone(), counts.refs));
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// Insert a layer loaded from disk (start-up), with its persisted refs.
    /// Children and RW counts are added by `pin_child`/`pin_rw` of the loaded
    /// children and mounts.
    pub fn load(&mut self, meta: Arc<LayerMeta>, refs: u64) {
        let counts = Counts { refs, ..Counts::default() };
        self.states.insert(meta.chain_id.clone(), LayerState::Live { meta, counts });
    }

    fn live_mut(&mut self, chain: &ChainId) -> Option<(&Arc<LayerMeta>, &mut Counts)> {
        match self.states.get_mut(chain)? {
            LayerState::Live { meta, counts } => Some((meta, counts)),
            LayerState::Removing(_) => None,
        }
    }

    /// Pin `parent` for a child registration in flight.
    pub fn pin_child(&mut self, parent: &ChainId) -> Result<Arc<LayerMeta>> {
        let (meta, counts) =
            self.live_mut(parent).ok_or_else(|| LayerStoreError::ParentNotFound(parent.to_string()))?;
        counts.children += 1;
        Ok(meta.clone())
    }

    /// Pin `parent` for an RW layer.
    pub fn pin_rw(&mut self, parent: &ChainId) -> Result<Arc<LayerMeta>> {
        let (meta, counts) =
            self.live_mut(parent).ok_or_else(|| LayerStoreError::ParentNotFound(parent.to_string()))?;
        counts.rw += 1;
        Ok(meta.clone())
    }

    /// Drop a child pin; returns the layers this frees (now `Removing`).
    pub fn unpin_child(&mut self, parent: &ChainId) -> Vec<Arc<LayerMeta>> {
        self.unpin(parent, |c| &mut c.children)
    }

    pub fn unpin_rw(&mut self, parent: &ChainId) -> Vec<Arc<LayerMeta>> {
        self.unpin(parent, |c| &mut c.rw)
    }

    fn unpin(&mut self, chain: &ChainId, field: fn(&mut Counts) -> &mut u64) -> Vec<Arc<LayerMeta>> {
        let Some((_, counts)) = self.live_mut(chain) else {
            debug_assert!(false, "unpin of a layer that is not live: {chain}");
            return Vec::new();
        };
        let f = field(counts);
        debug_assert!(*f > 0, "count underflow on {chain}");
        *f = f.saturating_sub(1);
        self.cascade(chain.clone())
    }

    /// The `refs` a release of `chain` would leave and the generation it was
    /// read at, or why it can't be released.
    pub fn refs_after_release(&self, chain: &ChainId) -> Result<(u64, u64)> {
        let (_, c) = self.get(chain).ok_or_else(|| LayerStoreError::LayerNotFound(chain.to_string()))?;
        if c.refs == 0 {
            return Err(LayerStoreError::NotRetained {
                chain_id: chain.to_string(),
                why: format!(
                    "it holds no references of its own; it is in use by {} child layer(s) and {} rw layer(s)",
                    c.children, c.rw
                ),
            });
        }
        Ok((c.refs - 1, c.refs_gen))
    }

    /// Free `chain` and then its ancestors while their counts are zero.
    fn cascade(&mut self, start: ChainId) -> Vec<Arc<LayerMeta>> {
        let mut freed = Vec::new();
        let mut cur = Some(start);
        while let Some(chain) = cur.take() {
            let Some(LayerState::Live { meta, counts }) = self.states.get(&chain) else { break };
            if !counts.is_zero() {
                break;
            }
            let meta = meta.clone();
            self.states.insert(chain, LayerState::Removing(meta.clone()));
            if let Some(parent) = meta.parent_chain()
                && let Some((_, pc)) = self.live_mut(parent)
            {
                pc.children = pc.children.saturating_sub(1);
                cur = Some(parent.clone());
            }
            freed.push(meta);
        }
        freed
    }

    /// Publish a registered layer: add a reference (or a lease) if it
    /// exists already.
    pub fn publish(&mut self, chain: &ChainId, lease: bool) -> Published {
        match self.states.get_mut(chain) {
            Some(LayerState::Live { meta, counts }) if lease => {
                counts.leases += 1;
                Published::Existing(meta.clone(), 0)
            }
            Some(LayerState::Live { meta, counts }) => {
                counts.refs += 1;
                counts.refs_gen += 1;
                Published::Existing(meta.clone(), counts.refs_gen)
            }
            Some(LayerState::Removing(old)) => Published::Removing(old.clone()),
            None => Published::Absent,
        }
    }

    /// Insert a new layer with one reference (after `publish` said `Absent`
    /// and its metadata was committed); the parent pin moves to it.
    pub fn insert(&mut self, meta: Arc<LayerMeta>, lease: bool) {
        // refs=1 (refs=0 for a lease) was committed with the metadata.
        let counts = if lease {
            Counts { leases: 1, ..Counts::default() }
        } else {
            Counts { refs: 1, refs_gen: 1, persisted_gen: 1, ..Counts::default() }
        };
        self.states.insert(meta.chain_id.clone(), LayerState::Live { meta, counts });
    }

    /// Add a reference to a live layer (in memory); returns the generation
    /// the `refs` file must reach for the reference to be durable.
    pub fn retain(&mut self, chain: &ChainId) -> Result<(Arc<LayerMeta>, u64)> {
        let (meta, counts) = self.live_mut(chain).ok_or_else(|| LayerStoreError::LayerNotFound(chain.to_string()))?;
        counts.refs += 1;
        counts.refs_gen += 1;
        Ok((meta.clone(), counts.refs_gen))
    }

    /// Add a lease to a live layer (memory only).
    pub fn lease(&mut self, chain: &ChainId) -> Result<()> {
        let (_, counts) = self.live_mut(chain).ok_or_else(|| LayerStoreError::LayerNotFound(chain.to_string()))?;
        counts.leases += 1;
        Ok(())
    }

    /// Drop a lease; frees the layer if nothing else holds it.
    pub fn unlease(&mut self, chain: &ChainId) -> Result<Vec<Arc<LayerMeta>>> {
        let (_, counts) = self.live_mut(chain).ok_or_else(|| LayerStoreError::LayerNotFound(chain.to_string()))?;
        if counts.leases == 0 {
            return Err(LayerStoreError::NotRetained { chain_id: chain.to_string(), why: "it holds no lease".into() });
        }
        counts.leases -= 1;
        Ok(self.cascade(chain.clone()))
    }

    /// What to write to make `refs` durable: `None` if generation `want`
    /// is already on disk (someone else's write covered it).
    pub fn refs_to_persist(&self, chain: &ChainId, want: u64) -> Option<(u64, u64)> {
        let (_, c) = self.get(chain)?;
        (c.persisted_gen < want).then_some((c.refs, c.refs_gen))
    }

    /// The `refs` of generation `generation` are on disk.
    pub fn mark_persisted(&mut self, chain: &ChainId, generation: u64) {
        if let Some((_, c)) = self.live_mut(chain) {
            c.persisted_gen = c.persisted_gen.max(generation);
        }
    }

    /// Take back a reference whose persisting failed; may free the layer.
    pub fn undo_retain(&mut self, chain: &ChainId) -> Vec<Arc<LayerMeta>> {
        match self.live_mut(chain) {
            Some((_, c)) => {
                c.refs = c.refs.saturating_sub(1);
                c.refs_gen += 1;
                self.cascade(chain.clone())
            }
            None => Vec::new(),
        }
    }

    /// Drop one reference after `refs - 1` (read at generation `gen0` by
    /// `refs_after_release`) was persisted; frees the layer if nothing holds it.
    pub fn release_persisted(&mut self, chain: &ChainId, gen0: u64) -> Vec<Arc<LayerMeta>> {
        match self.live_mut(chain) {
            Some((_, c)) => {
                c.refs = c.refs.saturating_sub(1);
                c.refs_gen += 1;
                // No retain slipped in between: the file holds this value.
                if c.refs_gen == gen0 + 1 {
                    c.persisted_gen = c.refs_gen;
                }
                self.cascade(chain.clone())
            }
            None => Vec::new(),
        }
    }

    /// Whether `meta` (that exact instance) is waiting for finalization.
    pub fn is_removing(&self, meta: &Arc<LayerMeta>) -> bool {
        matches!(self.states.get(&meta.chain_id), Some(LayerState::Removing(m)) if Arc::ptr_eq(m, meta))
    }

    /// Forget a finalized layer.
    pub fn forget(&mut self, meta: &Arc<LayerMeta>) {
        if self.is_removing(meta) {
            self.states.remove(&meta.chain_id);
        }
    }

    /// Layers freed at start-up (loaded with every count zero).
    pub fn collect_garbage(&mut self, keep: &std::collections::HashSet<ChainId>) -> Vec<Arc<LayerMeta>> {
        let zero: Vec<ChainId> = self
            .states
            .iter()
            .filter(|&(k, s)| !keep.contains(k) && matches!(s, LayerState::Live { counts, .. } if counts.is_zero()))
            .map(|(k, _s)| k.clone())
            .collect();
        zero.into_iter().flat_map(|c| self.cascade(c)).collect()
    }

    pub fn len(&self) -> usize {
        self.live().count()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::digest::Digest;
    use proptest::prelude::*;

    pub fn meta(parent: Option<&Arc<LayerMeta>>, tag: &[u8]) -> Arc<LayerMeta> {
        let diff_id = DiffId(Digest::of(tag));
        let chain_id = ChainId::of(parent.map(|p| &p.chain_id), &diff_id);
        Arc::new(LayerMeta {
            chain_id,
            diff_id,
            parent: parent.cloned(),
            cache_id: CacheId::random(),
            size: tag.len() as u64,
            chain_size: tag.len() as u64 + parent.map_or(0, |p| p.chain_size),
            depth: parent.map_or(1, |p| p.depth + 1),
        })
    }

    /// Register `tag` on `parent` the way the store does: pin, publish.
    fn register(g: &mut Graph, parent: Option<&Arc<LayerMeta>>, tag: &[u8]) -> Arc<LayerMeta> {
        if let Some(p) = parent {
            g.pin_child(&p.chain_id).unwrap();
        }
        let m = meta(parent, tag);
        match g.publish(&m.chain_id, false) {
            Published::Absent => {
                g.insert(m.clone(), false);
                m
            }
            Published::Existing(e, _) => {
                if let Some(p) = parent {
                    assert!(g.unpin_child(&p.chain_id).is_empty());
                }
                e
            }
            Published::Removing(_) => panic!("unexpected removing"),
        }
    }

    fn release(g: &mut Graph, m: &Arc<LayerMeta>) -> Result<Vec<ChainId>> {
        let (_, gen0) = g.refs_after_release(&m.chain_id)?;
        let freed = g.release_persisted(&m.chain_id, gen0);
        for f in &freed {
            g.forget(f);
        }
        Ok(freed.iter().map(|f| f.chain_id.clone()).collect())
    }

    // moby's TestLayerRelease: L1 -> L2 -> {L3a, L3b}.
    #[test]
    fn release_frees_whole_chain_only_when_last_child_goes() {
        let mut g = Graph::default();
        let l1 = register(&mut g, None, b"1");
        let l2 = register(&mut g, Some(&l1), b"2");
        let l3a = register(&mut g, Some(&l2), b"3a");
        let l3b = register(&mut g, Some(&l2), b"3b");
        assert!(release(&mut g, &l1).unwrap().is_empty());
        assert!(release(&mut g, &l2).unwrap().is_empty());
        assert_eq!(g.len(), 4);
        assert_eq!(release(&mut g, &l3b).unwrap(), vec![l3b.chain_id.clone()]);
        let freed = release(&mut g, &l3a).unwrap();
        assert_eq!(freed, vec![l3a.chain_id.clone(), l2.chain_id.clone(), l1.chain_id.clone()]);
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn registering_existing_content_adds_a_reference() {
        let mut g = Graph::default();
        let base = register(&mut g, None, b"base");
        let a = register(&mut g, Some(&base), b"x");
        let b = register(&mut g, Some(&base), b"x");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(g.get(&a.chain_id).unwrap().1.refs, 2);
        assert_eq!(g.get(&base.chain_id).unwrap().1.children, 1);
    }

    #[test]
    fn release_without_own_reference_is_a_conflict() {
        let mut g = Graph::default();
        let base = register(&mut g, None, b"base");
        let _child = register(&mut g, Some(&base), b"c");
        release(&mut g, &base).unwrap();
        let err = release(&mut g, &base).unwrap_err();
        assert!(matches!(err, LayerStoreError::NotRetained { .. }), "{err}");
        assert!(err.to_string().contains("1 child"));
    }

    #[test]
    fn one_write_covers_every_retain_before_it() {
        let mut g = Graph::default();
        let m = register(&mut g, None, b"m");
        let (_, a) = g.retain(&m.chain_id).unwrap();
        let (_, b) = g.retain(&m.chain_id).unwrap();
        // The first to write persists both increments.
        let (refs, generation) = g.refs_to_persist(&m.chain_id, a).unwrap();
        assert_eq!((refs, generation), (3, b));
        g.mark_persisted(&m.chain_id, generation);
        assert_eq!(g.refs_to_persist(&m.chain_id, b), None, "b's increment is on disk already");
        // A release whose write raced with a retain leaves that retain to write.
        let (target, gen0) = g.refs_after_release(&m.chain_id).unwrap();
        assert_eq!(target, 2);
        let (_, c) = g.retain(&m.chain_id).unwrap();
        g.release_persisted(&m.chain_id, gen0);
        assert!(g.refs_to_persist(&m.chain_id, c).is_some());
        assert_eq!(g.get(&m.chain_id).unwrap().1.refs, 3);
    }

    #[test]
    fn rw_pin_keeps_layer_alive() {
        let mut g = Graph::default();
        let base = register(&mut g, None, b"base");
        g.pin_rw(&base.chain_id).unwrap();
        assert!(release(&mut g, &base).unwrap().is_empty());
        let freed = g.unpin_rw(&base.chain_id);
        assert_eq!(freed.len(), 1);
        assert!(g.is_removing(&freed[0]));
        assert!(g.get(&base.chain_id).is_none(), "readers must not see a removing layer");
    }

    #[test]
    fn publish_over_removing_layer_asks_for_finalization() {
        let mut g = Graph::default();
        let base = register(&mut g, None, b"base");
        let (_, gen0) = g.refs_after_release(&base.chain_id).unwrap();
        let freed = g.release_persisted(&base.chain_id, gen0);
        assert_eq!(freed.len(), 1);
        let again = meta(None, b"base");
        assert!(matches!(g.publish(&again.chain_id, false), Published::Removing(_)));
        g.forget(&freed[0]);
        assert!(matches!(g.publish(&again.chain_id, false), Published::Absent));
    }

    /// A graph as start-up loads it: `a` and its child `b`, no references.
    fn loaded_chain() -> (Graph, Arc<LayerMeta>, Arc<LayerMeta>) {
        let mut g = Graph::default();
        let a = meta(None, b"a");
        let b = meta(Some(&a), b"b");
        g.load(a.clone(), 0);
        g.load(b.clone(), 0);
        g.pin_child(&a.chain_id).unwrap();
        (g, a, b)
    }

    #[test]
    fn garbage_at_start_up_is_collected_with_its_ancestors() {
        let (mut g, _, _) = loaded_chain();
        let freed = g.collect_garbage(&Default::default());
        assert_eq!(freed.len(), 2);
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn kept_layers_survive_start_up_and_leases_free_like_references() {
        let (mut g, a, b) = loaded_chain();
        let keep = [b.chain_id.clone()].into_iter().collect();
        assert!(g.collect_garbage(&keep).is_empty(), "b kept, a held by b");
        g.lease(&b.chain_id).unwrap();
        g.lease(&b.chain_id).unwrap();
        assert!(g.unlease(&b.chain_id).unwrap().is_empty());
        assert_eq!(g.unlease(&b.chain_id).unwrap().len(), 2, "the last lease frees the chain");
        assert!(g.unlease(&a.chain_id).is_err(), "no lease to give back");
        // A lease is no reference: a release can't take it.
        let c = meta(None, b"c");
        assert!(matches!(g.publish(&c.chain_id, true), Published::Absent));
        g.insert(c.clone(), true);
        assert!(g.refs_after_release(&c.chain_id).is_err());
        assert_eq!(g.get(&c.chain_id).unwrap().1.leases, 1);
    }

    proptest! {
        // Random register/release sequences keep the invariant that every
        // live layer's `children` equals its live children, and freeing
        // happens exactly when nothing holds a layer.
        #[test]
        fn counts_stay_consistent(ops in proptest::collection::vec((0u8..3, 0usize..8, 0u8..4), 1..200)) {
            let mut g = Graph::default();
            let mut held: Vec<Arc<LayerMeta>> = Vec::new();
            for (op, pick, tag) in ops {
                match op {
                    0 => {
                        let parent = if held.is_empty() { None } else { Some(held[pick % held.len()].clone()) };
                        let parent = parent.filter(|p| g.get(&p.chain_id).is_some());
                        let m = register(&mut g, parent.as_ref(), &[tag]);
                        held.push(m);
                    }
                    _ if !held.is_empty() => {
                        let m = held.remove(pick % held.len());
                        release(&mut g, &m).unwrap();
                    }
                    _ => {}
                }
                for (m, c) in g.live() {
                    let kids = g.live().filter(|(k, _)| k.parent_chain() == Some(&m.chain_id)).count() as u64;
                    prop_assert_eq!(c.children, kids);
                    let held_refs = held.iter().filter(|h| h.chain_id == m.chain_id).count() as u64;
                    prop_assert_eq!(c.refs, held_refs);
                    prop_assert!(c.refs + c.children > 0);
                }
            }
        }
    }
}
