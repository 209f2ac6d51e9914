//! Fault injection through the metadata seam ([`crate::metadata::FaultHook`]):
//! a real store on the vfs driver whose metadata writes, fsyncs and renames
//! fail on demand. No part of the store is mocked.
//!
//! The invariant: nothing acknowledged is lost, nothing refused happens, and
//! memory equals disk — what the store shows before a restart is what it
//! loads after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use graphdriver::{CacheId, CreateOpts, Driver, TarReader};

use super::{RwOpts, Store};
use crate::digest::ChainId;
use crate::metadata::{FaultHook, MetaOp};
use crate::name::RwName;
use crate::types::{CheckOpts, RegisterOpts};

use testkit::tars::files_tar as tar_of;

fn driver(root: &Path) -> Arc<dyn Driver> {
    Arc::new(drivers::vfs::Vfs::new(root.join("vfs")).unwrap())
}

async fn register(store: &Store, bytes: &[u8], parent: Option<&ChainId>) -> crate::Result<ChainId> {
    let opts = RegisterOpts { parent: parent.cloned(), ..RegisterOpts::default() };
    Ok(store.register(Box::new(Cursor::new(bytes.to_vec())), opts).await?.chain_id)
}

async fn export(store: &Store, chain: &ChainId) -> Vec<u8> {
    let mut r = store.tar_stream(chain).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("export verifies");
        out
    })
    .await
    .unwrap()
}

/// What the store shows: layers with their references, RW layers with their parents.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct View {
    layers: BTreeMap<ChainId, u64>,
    rws: BTreeMap<RwName, Option<ChainId>>,
}

fn view(store: &Store) -> View {
    View {
        layers: store.list().into_iter().map(|l| (l.chain_id, l.references)).collect(),
        rws: store.list_rw().into_iter().map(|r| (r.name, r.parent)).collect(),
    }
}

/// The ledger of acknowledged operations: references the workload holds
/// (a layer also lives while a child or an RW layer needs it).
#[derive(Debug, Default)]
struct Ledger {
    refs: BTreeMap<ChainId, u64>,
    rws: BTreeMap<RwName, Option<ChainId>>,
    /// Steps the store acknowledged.
    acked: usize,
}

impl Ledger {
    fn add(&mut self, c: &ChainId) {
        self.acked += 1;
        *self.refs.entry(c.clone()).or_default() += 1;
    }
    fn drop_ref(&mut self, c: &ChainId) {
        self.acked += 1;
        let n = self.refs.get_mut(c).unwrap();
        *n -= 1;
        if *n == 0 {
            self.refs.remove(c);
        }
    }
    fn holds(&self, c: &ChainId) -> bool {
        self.refs.contains_key(c)
    }
}

/// Counts every metadata operation and fails the `fail_at`-th (once), or
/// every one from it on (`persistent`: a disk that filled up or broke).
struct Injector {
    seen: AtomicUsize,
    fail_at: Option<usize>,
    persistent: bool,
    fired: Mutex<Option<(MetaOp, PathBuf)>>,
}

impl Injector {
    fn hook(self: &Arc<Self>) -> FaultHook {
        let me = self.clone();
        Arc::new(move |op, path| {
            if op == MetaOp::List {
                // Reads; the workload's writes are what is under test.
                return None;
            }
            let n = me.seen.fetch_add(1, Ordering::SeqCst);
            let fails = match me.fail_at {
                Some(at) if me.persistent => n >= at,
                at => Some(n) == at,
            };
            if !fails {
                return None;
            }
            me.fired.lock().unwrap().get_or_insert_with(|| (op, path.to_path_buf()));
            // Alternate the errors a disk gives.
            let errno = if n.is_multiple_of(2) { libc::EIO } else { libc::ENOSPC };
            Some(std::io::Error::from_raw_os_error(errno))
        })
    }
}

/// A mixed workload of every metadata-writing operation. Each step applies
/// to the ledger only if the store acknowledged it; a step whose inputs a
/// refused step did not produce is skipped.
async fn workload(store: &Store, ledger: &mut Ledger) {
    let a = tar_of(&[("a", b"alpha")]);
    let b = tar_of(&[("b", b"beta"), ("dir/c", b"gamma")]);
    let r1 = RwName::parse("r1").unwrap();
    let r2 = RwName::parse("r2").unwrap();

    let p = register(store, &a, None).await.ok();
    if let Some(p) = &p {
        ledger.add(p);
    }
    let c = match &p {
        Some(p) => register(store, &b, Some(p)).await.ok(),
        None => None,
    };
    if let Some(c) = &c {
        ledger.add(c);
        if store.retain(c).await.is_ok() {
            ledger.add(c);
        }
    }
    // The same content again: a new reference to the existing layer.
    if let Ok(again) = register(store, &a, None).await {
        ledger.add(&again);
    }
    let opts = RwOpts { init: true, ..RwOpts::default() };
    if store.create_rw(&r1, c.as_ref(), opts).await.is_ok() {
        ledger.rws.insert(r1.clone(), c.clone());
        ledger.acked += 1;
        if let Ok(path) = store.mount(&r1).await {
            std::fs::write(path.join("written"), b"by r1").unwrap();
            store.unmount(&r1).await.unwrap();
        }
    }
    if let Some(p) = &p
        && ledger.holds(p)
        && store.release(p).await.is_ok()
    {
        ledger.drop_ref(p);
    }
    let x = if ledger.rws.contains_key(&r1) { store.commit(&r1).await.ok().map(|l| l.chain_id) } else { None };
    if let Some(x) = &x {
        ledger.add(x);
    }
    if ledger.rws.contains_key(&r1) && store.release_rw(&r1).await.is_ok() {
        ledger.rws.remove(&r1);
        ledger.acked += 1;
    }
    if let Some(c) = &c
        && ledger.holds(c)
        && store.release(c).await.is_ok()
    {
        ledger.drop_ref(c);
    }
    if let Some(x) = &x
        && store.create_rw(&r2, Some(x), RwOpts::default()).await.is_ok()
    {
        ledger.rws.insert(r2.clone(), Some(x.clone()));
        ledger.acked += 1;
    }
    if let Some(x) = &x
        && ledger.holds(x)
        && store.release(x).await.is_ok()
    {
        ledger.drop_ref(x);
    }
    if ledger.rws.contains_key(&r2) && store.release_rw(&r2).await.is_ok() {
        ledger.rws.remove(&r2);
        ledger.acked += 1;
    }
    if let Some(c) = &c
        && ledger.holds(c)
        && store.release(c).await.is_ok()
    {
        ledger.drop_ref(c);
    }
}

/// The store's view agrees with the ledger: every reference acknowledged
/// and not released is there, and every layer shown is held by a reference,
/// a child or an RW layer of the ledger.
fn assert_matches(v: &View, ledger: &Ledger, store: &Store, when: &str) {
    assert_eq!(v.rws, ledger.rws, "{when}: rw layers");
    for (c, n) in &ledger.refs {
        assert_eq!(v.layers.get(c), Some(n), "{when}: references of {c}");
    }
    for (c, n) in &v.layers {
        if !ledger.refs.contains_key(c) {
            assert_eq!(*n, 0, "{when}: {c} has references nobody acknowledged");
            let info = store.get(c).unwrap();
            assert!(info.children + info.rw_layers > 0, "{when}: {c} is held by nothing");
        }
    }
}

/// Steps of [`workload`], all acknowledged when nothing fails.
const STEPS: usize = 13;

async fn run_with_fault(fail_at: Option<usize>, persistent: bool) -> (usize, Option<(MetaOp, PathBuf)>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let inj = Arc::new(Injector { seen: AtomicUsize::new(0), fail_at, persistent, fired: Mutex::new(None) });
    let store = Store::open_with_faults(&root, driver(&root), inj.hook()).await.unwrap();
    let mut ledger = Ledger::default();
    workload(&store, &mut ledger).await;
    store.settle().await;
    let fired = inj.fired.lock().unwrap().clone();
    let when = format!("fault at {fail_at:?}{} ({fired:?})", if persistent { " and on" } else { "" });
    if fail_at.is_none() {
        assert_eq!(ledger.acked, STEPS, "without faults every step succeeds");
        // What the workload leaves: P (one reference left) and nothing else.
        assert_eq!(ledger.refs.len(), 1, "{ledger:?}");
        assert!(ledger.rws.is_empty());
    }
    let before = view(&store);
    assert_matches(&before, &ledger, &store, &when);
    let mut exported = BTreeMap::new();
    for c in before.layers.keys() {
        exported.insert(c.clone(), export(&store, c).await);
    }
    store.shutdown().await.unwrap();
    drop(store);

    let store = Store::open(&root, driver(&root)).await.unwrap();
    let after = view(&store);
    assert_eq!(after, before, "{when}: memory before the restart differs from disk after it");
    for (c, bytes) in &exported {
        assert_eq!(&export(&store, c).await, bytes, "{when}: export of {c}");
    }
    let report = store.fsck(CheckOpts { repair: false, verify_content: true }).await.unwrap();
    assert!(report.problems.is_empty(), "{when}: check after restart: {:?}", report.problems);
    store.shutdown().await.unwrap();
    // The shutdown before the restart wrote the index: its points count too.
    let fired = inj.fired.lock().unwrap().clone();
    (inj.seen.load(Ordering::SeqCst), fired)
}

/// Every metadata write, fsync and rename of a mixed workload fails in
/// turn (once, EIO or ENOSPC); after each run the store agrees with the
/// ledger of acknowledged operations, and with itself after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metadata_fault_point_loses_nothing_acknowledged() {
    let (total, _) = run_with_fault(None, false).await;
    assert!(total > 30, "the workload should reach many injection points, saw {total}");
    let mut kinds = BTreeMap::new();
    for n in 0..total {
        let (_, fired) = run_with_fault(Some(n), false).await;
        let (op, _) = fired.unwrap_or_else(|| panic!("injection point {n} of {total} was not reached"));
        *kinds.entry(format!("{op:?}")).or_insert(0) += 1;
    }
    // Each kind of operation was exercised.
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    eprintln!("fault points exercised: {total} ({kinds:?})");
}

/// The disk breaks (or fills up) at each point of the workload and stays
/// so: every later metadata operation fails too. Whatever was acknowledged
/// before is kept, nothing refused happens, and memory equals disk once the
/// disk is healed and the store reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_stays_broken_from_any_point_loses_nothing_acknowledged() {
    let (total, _) = run_with_fault(None, false).await;
    for n in 0..total {
        let (_, fired) = run_with_fault(Some(n), true).await;
        assert!(fired.is_some(), "injection point {n} of {total} was not reached");
    }
}

/// Point 1 of issue 11. B's retain of C bumps memory while A's release of C
/// holds C's key; B's `refs` write fails and its undo frees C and C's parent
/// P. The undo may unpublish P only under P's key: otherwise a concurrent
/// registration D of P's content commits P′ under P's key while B's
/// delayed rename moves P′'s metadata to the trash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_retain_frees_ancestors_only_under_their_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let base = tar_of(&[("p", b"parent")]);
    let child = tar_of(&[("c", b"child")]);

    #[derive(Default)]
    struct Plan {
        c_refs_prefix: Option<PathBuf>,
        p_dir: Option<PathBuf>,
        c_writes: usize,
        p_renames: usize,
    }
    let plan = Arc::new(Mutex::new(Plan::default()));
    let (a_in_tx, a_in_rx) = std::sync::mpsc::channel::<()>();
    let (a_go_tx, a_go_rx) = std::sync::mpsc::channel::<()>();
    let (p_in_tx, p_in_rx) = std::sync::mpsc::channel::<()>();
    let (p_go_tx, p_go_rx) = std::sync::mpsc::channel::<()>();
    let gates = Arc::new(Mutex::new((Some(a_in_tx), a_go_rx, Some(p_in_tx), p_go_rx)));
    let hook: FaultHook = {
        let (plan, gates) = (plan.clone(), gates.clone());
        Arc::new(move |op, path| {
            let mut pl = plan.lock().unwrap();
            if op == MetaOp::Write
                && let Some(prefix) = &pl.c_refs_prefix
                && path.starts_with(prefix)
                && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".refs-"))
            {
                pl.c_writes += 1;
                // write_synced asks twice (create, write): A's write is 1-2, B's 3-4.
                match pl.c_writes {
                    1 => {
                        drop(pl);
                        let g = gates.lock().unwrap();
                        if let Some(tx) = &g.0 {
                            tx.send(()).unwrap();
                        }
                        g.1.recv_timeout(Duration::from_secs(30)).unwrap();
                    }
                    3 => return Some(std::io::Error::from_raw_os_error(libc::EIO)),
                    _ => {}
                }
                return None;
            }
            if op == MetaOp::Rename && pl.p_dir.as_deref() == Some(path) {
                pl.p_renames += 1;
                if pl.p_renames == 1 {
                    drop(pl);
                    let g = gates.lock().unwrap();
                    if let Some(tx) = &g.2 {
                        tx.send(()).unwrap();
                    }
                    // Hold the rename until D is done (or evidently waiting for P's key).
                    let _ = g.3.recv_timeout(Duration::from_secs(30));
                }
            }
            None
        })
    };
    let store = Store::open_with_faults(&root, driver(&root), hook).await.unwrap();
    let p = register(&store, &base, None).await.unwrap();
    let c = register(&store, &child, Some(&p)).await.unwrap();
    store.release(&p).await.unwrap();
    {
        let mut pl = plan.lock().unwrap();
        pl.c_refs_prefix = Some(store.layerdb().join("sha256").join(c.hex()));
        pl.p_dir = Some(store.layerdb().join("sha256").join(p.hex()));
    }

    // A releases C and stops in its refs write, holding C's key.
    let a = tokio::spawn({
        let (s, c) = (store.clone(), c.clone());
        async move { s.release(&c).await }
    });
    tokio::task::spawn_blocking(move || a_in_rx.recv_timeout(Duration::from_secs(30))).await.unwrap().unwrap();
    // B retains C: the reference is taken in memory, then B waits for C's key.
    let b = tokio::spawn({
        let (s, c) = (store.clone(), c.clone());
        async move { s.retain(&c).await }
    });
    while store.get(&c).unwrap().references != 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a_go_tx.send(()).unwrap();
    a.await.unwrap().unwrap();
    // B's write fails; its undo frees C and then P, whose move to the trash stops.
    tokio::task::spawn_blocking(move || p_in_rx.recv_timeout(Duration::from_secs(30))).await.unwrap().unwrap();
    // D registers P's content again meanwhile.
    let mut d = tokio::spawn({
        let (s, base) = (store.clone(), base.clone());
        async move { register(&s, &base, None).await }
    });
    let early = tokio::time::timeout(Duration::from_secs(1), &mut d).await;
    p_go_tx.send(()).unwrap();
    let d = match early {
        Ok(r) => r.unwrap().unwrap(),
        Err(_) => d.await.unwrap().unwrap(),
    };
    assert_eq!(d, p);
    assert!(b.await.unwrap().is_err(), "B's retain must fail: its refs write failed");
    store.settle().await;

    let info = store.get(&p).unwrap();
    assert_eq!(info.references, 1);
    assert!(store.layerdb().join("sha256").join(p.hex()).join("diff").is_file(), "P′'s metadata was trashed");
    assert!(store.get(&c).is_err());
    let bytes = export(&store, &p).await;
    assert_eq!(bytes, base);
    store.shutdown().await.unwrap();
    drop(store);
    let store = Store::open(&root, driver(&root)).await.unwrap();
    assert_eq!(store.get(&p).unwrap().references, 1, "P′ must survive a restart");
    assert_eq!(export(&store, &p).await, base);
    store.shutdown().await.unwrap();
}

/// vfs, except that `exists` stops once, when armed, until released: a
/// point where `check` has taken its snapshot and not yet looked at strays.
struct GatedExists {
    inner: drivers::vfs::Vfs,
    gate: tokio::sync::Mutex<Option<(tokio::sync::oneshot::Sender<()>, tokio::sync::oneshot::Receiver<()>)>>,
}

#[async_trait]
impl Driver for GatedExists {
    fn name(&self) -> &str {
        "vfs"
    }
    async fn create(&self, id: &CacheId, parent: Option<&CacheId>, o: &CreateOpts) -> graphdriver::Result<()> {
        self.inner.create(id, parent, o).await
    }
    async fn create_rw(&self, id: &CacheId, parent: Option<&CacheId>, o: &CreateOpts) -> graphdriver::Result<()> {
        self.inner.create_rw(id, parent, o).await
    }
    async fn remove(&self, id: &CacheId) -> graphdriver::Result<()> {
        self.inner.remove(id).await
    }
    async fn get(&self, id: &CacheId, label: &str) -> graphdriver::Result<PathBuf> {
        self.inner.get(id, label).await
    }
    async fn put(&self, id: &CacheId) -> graphdriver::Result<()> {
        self.inner.put(id).await
    }
    async fn exists(&self, id: &CacheId) -> bool {
        let armed = self.gate.lock().await.take();
        if let Some((entered, go)) = armed {
            let _ = entered.send(());
            let _ = go.await;
        }
        self.inner.exists(id).await
    }
    async fn status(&self) -> Vec<(String, String)> {
        self.inner.status().await
    }
    async fn metadata(&self, id: &CacheId) -> graphdriver::Result<BTreeMap<String, String>> {
        self.inner.metadata(id).await
    }
    async fn cleanup(&self) -> graphdriver::Result<()> {
        self.inner.cleanup().await
    }
    async fn ids(&self) -> graphdriver::Result<Vec<CacheId>> {
        self.inner.ids().await
    }
    async fn diff_getter(&self, id: &CacheId) -> graphdriver::Result<Option<PathBuf>> {
        self.inner.diff_getter(id).await
    }
    async fn apply_diff(&self, id: &CacheId, parent: Option<&CacheId>, tar: TarReader) -> graphdriver::Result<u64> {
        self.inner.apply_diff(id, parent, tar).await
    }
}

/// Point 2 of issue 11. `check` lists `mounts/` (X is there), X is
/// released, `check` snapshots the map (X is absent), X is created anew;
/// `check --repair` must not take the new X's metadata for a stray.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_repair_spares_an_rw_name_reused_during_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let (listed_tx, listed_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let armed = Arc::new(Mutex::new(None::<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>));
    let hook: FaultHook = {
        let armed = armed.clone();
        Arc::new(move |op, path| {
            if op == MetaOp::List
                && path.ends_with("mounts")
                && let Some((listed, go)) = armed.lock().unwrap().take()
            {
                listed.send(()).unwrap();
                go.recv_timeout(Duration::from_secs(30)).unwrap();
            }
            None
        })
    };
    let gated =
        Arc::new(GatedExists { inner: drivers::vfs::Vfs::new(root.join("vfs")).unwrap(), gate: Default::default() });
    let store = Store::open_with_faults(&root, gated.clone(), hook).await.unwrap();
    let l = register(&store, &tar_of(&[("l", b"l")]), None).await.unwrap();
    let x = RwName::parse("x").unwrap();
    store.create_rw(&x, Some(&l), RwOpts::default()).await.unwrap();

    *armed.lock().unwrap() = Some((listed_tx, go_rx));
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    *gated.gate.lock().await = Some((entered_tx, release_rx));
    let check = tokio::spawn({
        let s = store.clone();
        async move { s.fsck(CheckOpts { repair: true, verify_content: false }).await }
    });
    // The check has listed mounts/ with X in it: release X.
    tokio::task::spawn_blocking(move || listed_rx.recv_timeout(Duration::from_secs(30))).await.unwrap().unwrap();
    store.release_rw(&x).await.unwrap();
    go_tx.send(()).unwrap();
    // The check has its snapshot (no X): create X anew.
    entered_rx.await.unwrap();
    store.create_rw(&x, Some(&l), RwOpts::default()).await.unwrap();
    release_tx.send(()).unwrap();
    let report = check.await.unwrap().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(store.layerdb().join("mounts/x/mount-id").is_file(), "the live rw layer's metadata was removed");
    store.shutdown().await.unwrap();
    drop(store);
    let store = Store::open(&root, driver(&root)).await.unwrap();
    assert!(store.get_rw(&x).is_ok(), "x must survive a restart");
    store.shutdown().await.unwrap();
}

/// The index's own fault points on the change side: the first change after
/// a start from the index removes it, then fsyncs the layerdb. If either
/// fails, the change is refused and nothing happened — the store shows what
/// it did and a retry succeeds. (Its write side runs in every case of
/// `every_metadata_fault_point_loses_nothing_acknowledged`: the shutdown
/// there writes it, and the restart reads it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_remove_the_index_is_refused_and_changes_nothing() {
    for failing in [MetaOp::Remove, MetaOp::Fsync] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let store = Store::open(&root, driver(&root)).await.unwrap();
        let a = register(&store, &tar_of(&[("a", b"alpha")]), None).await.unwrap();
        store.shutdown().await.unwrap();
        drop(store);
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let a2 = armed.clone();
        let hook: FaultHook = Arc::new(move |op, path| {
            let index_op = match op {
                MetaOp::Remove => path.ends_with("layerd-index"),
                MetaOp::Fsync => path.ends_with("layerdb"),
                _ => false,
            };
            (op == failing && index_op && a2.load(Ordering::SeqCst))
                .then(|| std::io::Error::from_raw_os_error(libc::EIO))
        });
        let store = Store::open_with_faults(&root, driver(&root), hook).await.unwrap();
        assert!(store.started_from_index(), "{failing:?}");
        store.settle().await;
        let before = view(&store);
        let b = tar_of(&[("b", b"beta")]);
        assert!(register(&store, &b, None).await.is_err(), "{failing:?}: the change is refused");
        assert!(store.release(&a).await.is_err(), "{failing:?}: the change is refused");
        store.settle().await;
        assert_eq!(view(&store), before, "{failing:?}");
        armed.store(false, Ordering::SeqCst);
        let b = register(&store, &b, None).await.unwrap();
        let index = store.layerdb().join("layerd-index");
        assert!(!index.exists(), "{failing:?}");
        let after = view(&store);
        assert!(after.layers.contains_key(&b));
        // A crash now: no index, and the scan finds the change.
        store.settle().await;
        drop(store);
        let store = Store::open(&root, driver(&root)).await.unwrap();
        assert!(!store.started_from_index());
        assert_eq!(view(&store), after, "{failing:?}");
        store.shutdown().await.unwrap();
    }
}
