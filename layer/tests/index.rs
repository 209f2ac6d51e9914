//! The layerdb index (`layerd-index`): written at shutdown, read alone at the
//! next start, removed by the first change, rebuilt whenever it is missing,
//! torn, damaged, from another version or stale — and always the same state
//! as a full scan of the records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::PathBuf;

use graphdriver::{CacheId, CreateOpts};
use layer::{ChainId, RegisterOpts, RwName, RwOpts, Store};
use testkit::tars::files_tar;

mod common;
use common::Env;

/// What a store shows: layers (all their fields) and RW layers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    layers: Vec<layer::LayerInfo>,
    rws: Vec<layer::RwInfo>,
}

impl Env {
    fn index(&self) -> PathBuf {
        self.layerdb().join("layerd-index")
    }
}

fn view(store: &Store) -> View {
    View { layers: store.list(), rws: store.list_rw() }
}

async fn register(store: &Store, files: &[(&str, &[u8])], parent: Option<&ChainId>) -> ChainId {
    let opts = RegisterOpts { parent: parent.cloned(), ..RegisterOpts::default() };
    store.register(Box::new(Cursor::new(files_tar(files))), opts).await.unwrap().chain_id
}

async fn export(store: &Store, chain: &ChainId) -> Vec<u8> {
    let mut r = store.tar_stream(chain).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    })
    .await
    .unwrap()
}

/// A store with a chain, a second reference, a layer released to one
/// reference and two RW layers (one with an init layer); shut down cleanly.
async fn populated(env: &Env) -> (View, BTreeMap<ChainId, Vec<u8>>) {
    let store = env.open().await;
    let base = register(&store, &[("a", b"alpha")], None).await;
    let mid = register(&store, &[("b", b"beta")], Some(&base)).await;
    let top = register(&store, &[("c", b"gamma")], Some(&mid)).await;
    store.retain(&top).await.unwrap();
    let other = register(&store, &[("x", b"other")], None).await;
    store.retain(&other).await.unwrap();
    store.release(&other).await.unwrap();
    let init = RwOpts { init: true, ..RwOpts::default() };
    store.create_rw(&RwName::parse("with-init").unwrap(), Some(&top), init).await.unwrap();
    store.create_rw(&RwName::parse("bare").unwrap(), None, RwOpts::default()).await.unwrap();
    let v = view(&store);
    let mut exports = BTreeMap::new();
    for l in &v.layers {
        exports.insert(l.chain_id.clone(), export(&store, &l.chain_id).await);
    }
    store.shutdown().await.unwrap();
    (v, exports)
}

/// Open, check the view and the exports, shut down.
/// Start from the index, let the check behind the start find the disk
/// differs and remove the file, then start again: that start scans.
async fn reopen_once_the_check_distrusts_the_index(env: &Env) -> Store {
    let store = env.open().await;
    assert!(store.started_from_index());
    store.settle().await;
    assert!(!env.index().exists(), "the check removed the index it distrusts");
    drop(store);
    let store = env.open().await;
    assert!(!store.started_from_index());
    store
}

async fn reopen_and_compare(env: &Env, want: &View, exports: &BTreeMap<ChainId, Vec<u8>>, from_index: bool) {
    let store = env.open().await;
    assert_eq!(store.started_from_index(), from_index);
    assert_eq!(&view(&store), want);
    for (c, bytes) in exports {
        assert_eq!(&export(&store, c).await, bytes, "export of {c}");
    }
    store.settle().await;
    let report = store.fsck(layer::CheckOpts::default()).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_writes_the_index_and_the_next_start_reads_it_as_a_scan_would() {
    let env = Env::new();
    let (want, exports) = populated(&env).await;
    assert!(env.index().is_file(), "shutdown writes the index");
    // From the index: the same layers (every field, references included),
    // RW layers and exports as before.
    reopen_and_compare(&env, &want, &exports, true).await;
    // And as a full scan of the records finds them.
    std::fs::remove_file(env.index()).unwrap();
    reopen_and_compare(&env, &want, &exports, false).await;
    // That shutdown rebuilt it.
    reopen_and_compare(&env, &want, &exports, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_change_removes_the_index_so_a_crash_after_it_scans() {
    let env = Env::new();
    populated(&env).await;
    let store = env.open().await;
    assert!(store.started_from_index());
    store.settle().await;
    assert!(env.index().is_file(), "reads and the check leave it");
    let new = register(&store, &[("n", b"new")], None).await;
    assert!(!env.index().exists(), "the register removed it before committing");
    // A crash: no shutdown, so no new index.
    store.settle().await;
    let now = view(&store);
    drop(store);
    let store = env.open().await;
    assert!(!store.started_from_index());
    assert_eq!(view(&store), now);
    // Every kind of change removes it: a retain, a release, an RW removal.
    store.shutdown().await.unwrap();
    drop(store);
    type Change = fn(Store, ChainId) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    let changes: [(&str, Change); 3] = [
        ("retain", |s, c| Box::pin(async move { s.retain(&c).await.map(drop).unwrap() })),
        ("release", |s, c| Box::pin(async move { s.release(&c).await.map(drop).unwrap() })),
        ("rw removal", |s, _| Box::pin(async move { s.release_rw(&RwName::parse("bare").unwrap()).await.unwrap() })),
    ];
    for (what, change) in changes {
        let store = env.open().await;
        assert!(store.started_from_index(), "{what}");
        change(store.clone(), new.clone()).await;
        assert!(!env.index().exists(), "{what} removed the index");
        store.settle().await;
        let want = view(&store);
        drop(store);
        let store = env.open().await;
        assert!(!store.started_from_index(), "{what}");
        assert_eq!(view(&store), want, "{what}");
        store.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_torn_damaged_foreign_or_stale_index_is_rebuilt() {
    let env = Env::new();
    let (want, exports) = populated(&env).await;
    let good = std::fs::read(env.index()).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    let mut version = good.clone();
    version[8] = version[8].wrapping_add(1);
    let cases: [(&str, Option<Vec<u8>>); 6] = [
        ("missing", None),
        ("empty", Some(Vec::new())),
        ("truncated", Some(good[..good.len() - 40].to_vec())),
        ("a flipped bit", Some(flipped)),
        ("another version", Some(version)),
        ("not an index", Some(b"{\"layers\": []}".to_vec())),
    ];
    for (what, bytes) in cases {
        match bytes {
            Some(b) => std::fs::write(env.index(), b).unwrap(),
            None => std::fs::remove_file(env.index()).unwrap(),
        }
        eprintln!("index {what}");
        reopen_and_compare(&env, &want, &exports, false).await;
        reopen_and_compare(&env, &want, &exports, true).await;
    }

    // Stale: a layer added since (as dockerd would add one while layerd is
    // stopped), then the old index put back.
    let old = std::fs::read(env.index()).unwrap();
    let store = env.open().await;
    let added = register(&store, &[("d", b"delta")], None).await;
    let want = view(&store);
    store.shutdown().await.unwrap();
    drop(store);
    std::fs::write(env.index(), &old).unwrap();
    let store = env.open().await;
    assert!(!store.started_from_index(), "sha256/ changed since the old index");
    assert_eq!(view(&store), want);
    assert!(store.get(&added).is_ok());
    store.shutdown().await.unwrap();
    drop(store);

    // Stale the other way: a layer dockerd removed (its dir renamed away).
    let index_with_it = std::fs::read(env.index()).unwrap();
    let dir = env.root.join("image/vfs/layerdb/sha256").join(added.hex());
    std::fs::rename(&dir, env.root.join("image/vfs/layerdb/aside")).unwrap();
    let store = env.open().await;
    assert!(!store.started_from_index());
    assert!(store.get(&added).is_err());
    store.shutdown().await.unwrap();
    drop(store);
    assert_ne!(std::fs::read(env.index()).unwrap(), index_with_it);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_behind_a_start_from_the_index_removes_orphans_or_distrusts_the_index() {
    let env = Env::new();
    let (want, _) = populated(&env).await;
    // An orphaned driver dir (a crash between a driver create and its
    // metadata, or a removal that failed): a full start removes it; a start
    // from the index leaves it to the check behind the first answers.
    let orphan = CacheId::random();
    env.driver().create(&orphan, None, &CreateOpts::default()).await.unwrap();
    let store = env.open().await;
    assert!(store.started_from_index());
    assert_eq!(view(&store), want);
    store.settle().await;
    assert!(!store.driver().exists(&orphan).await, "the check removed the orphan");
    assert!(env.index().is_file(), "and kept the index, which agrees with the disk");
    store.shutdown().await.unwrap();
    drop(store);

    // A disk that no longer matches the index (a layer's driver dir gone
    // behind the store's back): the check says so and drops the index, so
    // the next start scans.
    let victim = &want.layers[0];
    env.driver().remove(&CacheId::parse(&victim.cache_id).unwrap()).await.unwrap();
    let store = reopen_once_the_check_distrusts_the_index(&env).await;
    let report = store.fsck(layer::CheckOpts::default()).await.unwrap();
    assert!(report.problems.iter().any(|p| p.kind == "missing_driver_dir"), "{:?}", report.problems);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_edited_by_hand_is_caught_behind_the_start_and_a_damaged_store_gets_no_index() {
    let env = Env::new();
    let (want, _) = populated(&env).await;
    let victim = want.layers[0].chain_id.clone();
    let diff = env.layerdb().join("sha256").join(victim.hex()).join("diff");
    let saved = std::fs::read(&diff).unwrap();
    std::fs::write(&diff, "sha256:nothex").unwrap();
    // An edit inside a record leaves sha256/ as it was: the start reads the
    // index, and the check behind it finds the record differs and drops it.
    // The scan then keeps the damaged layer and reports it; the index cannot
    // hold it, so none is written.
    let store = reopen_once_the_check_distrusts_the_index(&env).await;
    assert!(store.get(&victim).is_err());
    assert!(!store.write_index().await.unwrap());
    store.shutdown().await.unwrap();
    drop(store);
    assert!(!env.index().exists());
    // Mended by hand: loads, and the index comes back.
    std::fs::write(&diff, saved).unwrap();
    let store = env.open().await;
    assert_eq!(view(&store), want);
    assert!(store.write_index().await.unwrap());
    assert!(env.index().is_file());
    store.shutdown().await.unwrap();
}

/// A reader that yields `bytes` only once told to.
struct Gated {
    go: std::sync::mpsc::Receiver<()>,
    bytes: Cursor<Vec<u8>>,
    waited: bool,
}

impl Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.waited {
            let _ = self.go.recv();
            self.waited = true;
        }
        self.bytes.read(buf)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_index_waits_for_a_quiet_store_and_then_a_crash_starts_from_it() {
    let env = Env::new();
    let store = env.open().await;
    let a = register(&store, &[("a", b"alpha")], None).await;
    // A registration in flight: not quiet, nothing written.
    let (tx, rx) = std::sync::mpsc::channel();
    let gated = Gated { go: rx, bytes: Cursor::new(files_tar(&[("b", b"beta")])), waited: false };
    let s2 = store.clone();
    let opts = RegisterOpts { parent: Some(a.clone()), ..RegisterOpts::default() };
    let pending = tokio::spawn(async move { s2.register(Box::new(gated), opts).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!store.write_index().await.unwrap(), "an operation is running");
    assert!(!env.index().exists());
    tx.send(()).unwrap();
    pending.await.unwrap().unwrap();
    // Quiet: written; asked again, nothing to do.
    assert!(store.write_index().await.unwrap());
    let written = std::fs::metadata(env.index()).unwrap().modified().unwrap();
    assert!(store.write_index().await.unwrap());
    assert_eq!(std::fs::metadata(env.index()).unwrap().modified().unwrap(), written, "not rewritten");
    let want = view(&store);
    // A crash (no shutdown) after a quiet spell: the next start reads it.
    drop(store);
    let store = env.open().await;
    assert!(store.started_from_index());
    assert_eq!(view(&store), want);
    store.shutdown().await.unwrap();
}
