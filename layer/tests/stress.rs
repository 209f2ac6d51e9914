//! Stress: many tasks doing random register / retain / release / create_rw /
//! mount / unmount / release_rw / export / check against one store (RW
//! names reused, so a name is released and created anew often), while
//! another task runs `check --repair` in a loop, with a
//! deadlock watchdog on every operation and the invariants checked at the end:
//! reference counts consistent with the chains and with what the tasks hold,
//! every layer exporting to its DiffID, and after releasing everything, no
//! layer, RW layer, driver dir, metadata dir, trash, transaction or key-lock
//! entry left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graphdriver::TarReader;
use layer::{ChainId, DiffId, Digest, RegisterOpts, RwName, RwOpts, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TASKS: u64 = 8;
const OPS: usize = 150;
/// No single store operation may take this long: past it, we call it a deadlock.
const WATCHDOG: Duration = Duration::from_secs(60);

fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
    testkit::tars::files_tar(&files)
}

/// One of a small set of contents, so identical registrations collide often.
fn content(rng: &mut StdRng) -> Vec<u8> {
    let k: u8 = rng.gen_range(0..6);
    let files: Vec<(String, Vec<u8>)> = (0..(k % 3 + 1))
        .map(|i| (format!("d{k}/f{i}"), vec![k.wrapping_mul(17).wrapping_add(i); 3000 * (i as usize + 1)]))
        .collect();
    tar_of(&files)
}

/// What the tasks hold, to compare with the store's counts.
#[derive(Default)]
struct Held {
    layers: HashMap<ChainId, u64>,
    rws: HashMap<RwName, (Option<ChainId>, u64)>,
}

async fn watch<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WATCHDOG, fut).await {
        Ok(v) => v,
        Err(_) => panic!("deadlock suspected: {what} did not finish within {WATCHDOG:?}"),
    }
}

async fn export_verified(store: &Store, chain: &ChainId) -> Vec<u8> {
    let mut r: TarReader = store.tar_stream(chain).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("export must verify against the DiffID");
        out
    })
    .await
    .unwrap()
}

async fn worker(store: Store, held: Arc<Mutex<Held>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mine: Vec<ChainId> = Vec::new();
    let mut my_rws: Vec<RwName> = Vec::new();
    for op in 0..OPS {
        match rng.gen_range(0..100) {
            0..=29 => {
                let bytes = content(&mut rng);
                let parent = if !mine.is_empty() && rng.gen_bool(0.5) {
                    Some(mine[rng.gen_range(0..mine.len())].clone())
                } else {
                    None
                };
                let diff_id = rng.gen_bool(0.5).then(|| DiffId(Digest::of(&bytes)));
                let opts = RegisterOpts { parent, diff_id, ..RegisterOpts::default() };
                let l = watch("register", store.register(Box::new(Cursor::new(bytes)), opts)).await.unwrap();
                *held.lock().unwrap().layers.entry(l.chain_id.clone()).or_default() += 1;
                mine.push(l.chain_id);
            }
            30..=44 if !mine.is_empty() => {
                let c = mine.swap_remove(rng.gen_range(0..mine.len()));
                // Drop our count first: once released, another task's view must not include it.
                {
                    let mut h = held.lock().unwrap();
                    let n = h.layers.get_mut(&c).unwrap();
                    *n -= 1;
                    if *n == 0 {
                        h.layers.remove(&c);
                    }
                }
                watch("release", store.release(&c)).await.unwrap();
            }
            45..=52 if !mine.is_empty() => {
                let c = mine[rng.gen_range(0..mine.len())].clone();
                watch("retain", store.retain(&c)).await.unwrap();
                *held.lock().unwrap().layers.entry(c.clone()).or_default() += 1;
                mine.push(c);
            }
            53..=64 => {
                // A small pool of names per task: released names come back.
                let name = RwName::parse(&format!("t{seed}-{}", op % 4)).unwrap();
                if my_rws.contains(&name) {
                    continue;
                }
                let parent = if !mine.is_empty() && rng.gen_bool(0.7) {
                    Some(mine[rng.gen_range(0..mine.len())].clone())
                } else {
                    None
                };
                let opts = RwOpts { init: rng.gen_bool(0.3), ..RwOpts::default() };
                watch("create_rw", store.create_rw(&name, parent.as_ref(), opts)).await.unwrap();
                held.lock().unwrap().rws.insert(name.clone(), (parent, 0));
                my_rws.push(name);
            }
            65..=72 if !my_rws.is_empty() => {
                let name = my_rws[rng.gen_range(0..my_rws.len())].clone();
                let p = watch("mount", store.mount(&name)).await.unwrap();
                std::fs::write(p.join(format!("w{op}")), b"x").unwrap();
                held.lock().unwrap().rws.get_mut(&name).unwrap().1 += 1;
                if rng.gen_bool(0.7) {
                    watch("unmount", store.unmount(&name)).await.unwrap();
                    held.lock().unwrap().rws.get_mut(&name).unwrap().1 -= 1;
                }
            }
            73..=80 if !my_rws.is_empty() => {
                let name = my_rws.swap_remove(rng.gen_range(0..my_rws.len()));
                held.lock().unwrap().rws.remove(&name);
                watch("release_rw", store.release_rw(&name)).await.unwrap();
            }
            81..=88 if !mine.is_empty() => {
                let c = mine[rng.gen_range(0..mine.len())].clone();
                watch("export", export_verified(&store, &c)).await;
            }
            89..=92 => {
                let r = watch("check", store.fsck(layer::CheckOpts::default())).await.unwrap();
                assert!(r.problems.is_empty(), "check during stress: {:?}", r.problems);
            }
            _ => {
                let _ = store.list();
                let _ = store.list_rw();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_concurrent_operations_keep_every_invariant_on_vfs() {
    let tmp = tempfile::Builder::new().prefix("layerd-stress").tempdir_in("/var/tmp").unwrap();
    stress(tmp.path().join("root"), "vfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_concurrent_operations_keep_every_invariant_on_overlay() {
    let tmp = tempfile::Builder::new().prefix("layerd-stress").tempdir_in("/var/tmp").unwrap();
    stress(tmp.path().join("root"), "overlay2").await;
    assert_no_mounts_under(tmp.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_concurrent_operations_keep_every_invariant_on_btrfs() {
    let fs = drivers::testing::BtrfsLoop::new(1024).expect("a loop-mounted btrfs (root and btrfs-progs needed)");
    stress(fs.path().join("root"), "btrfs").await;
    fs.close().unwrap();
}

fn assert_no_mounts_under(dir: &std::path::Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = dir.display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&prefix)).collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

async fn stress(root: std::path::PathBuf, driver_name: &str) {
    let lock = layer::RootLock::acquire(&root).unwrap();
    let driver = drivers::registry::open(driver_name, &root).unwrap();
    let store = Store::open_locked(lock, driver, layer::StoreOptions::default()).await.unwrap();
    let held = Arc::new(Mutex::new(Held::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for seed in 0..TASKS {
        tasks.spawn(worker(store.clone(), held.clone(), seed));
    }
    // `check --repair` beside the random work: it must neither report nor
    // "repair" anything (the end state below would show a wrong repair).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let mut runs = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let opts = layer::CheckOpts { repair: true, verify_content: false };
                let r = watch("check --repair", store.fsck(opts)).await.unwrap();
                assert!(r.problems.is_empty(), "check --repair during stress: {:?}", r.problems);
                runs += 1;
            }
            runs
        }
    });
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = checker.await.unwrap();
    assert!(runs > 0, "check --repair never ran beside the work");
    eprintln!("{driver_name}: check --repair ran {runs} times beside the random work");
    store.settle().await;

    // Counts agree with the chains and with what the tasks hold.
    let layers = store.list();
    let rws = store.list_rw();
    let held = Arc::try_unwrap(held).ok().unwrap().into_inner().unwrap();
    for l in &layers {
        let children = layers.iter().filter(|c| c.parent.as_ref() == Some(&l.chain_id)).count() as u64;
        let rw = rws.iter().filter(|r| r.parent.as_ref() == Some(&l.chain_id)).count() as u64;
        assert_eq!(l.children, children, "children of {}", l.chain_id);
        assert_eq!(l.rw_layers, rw, "rw layers of {}", l.chain_id);
        assert_eq!(l.references, held.layers.get(&l.chain_id).copied().unwrap_or(0), "references of {}", l.chain_id);
        assert!(l.references + l.children + l.rw_layers > 0, "{} is held by nothing", l.chain_id);
        export_verified(&store, &l.chain_id).await;
    }
    assert_eq!(rws.len(), held.rws.len());
    for r in &rws {
        let (parent, mounts) = &held.rws[&r.name];
        assert_eq!(&r.parent, parent);
        assert_eq!(r.mount_count, *mounts, "mount count of {}", r.name);
    }
    let report = store.fsck(layer::CheckOpts { repair: false, verify_content: true }).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // Every acknowledged reference is on disk: reopen and compare.
    store.shutdown().await.unwrap();
    drop(store);
    let lock = layer::RootLock::acquire(&root).unwrap();
    let driver = drivers::registry::open(driver_name, &root).unwrap();
    let store = Store::open_locked(lock, driver, layer::StoreOptions::default()).await.unwrap();
    for l in store.list() {
        assert_eq!(l.references, held.layers.get(&l.chain_id).copied().unwrap_or(0), "after reopen: {}", l.chain_id);
    }
    assert_eq!(store.list().len(), layers.len());
    assert_eq!(store.list_rw().len(), rws.len());

    // Release everything: nothing may be left anywhere.
    for r in rws {
        store.release_rw(&r.name).await.unwrap();
    }
    for (chain, n) in held.layers {
        for _ in 0..n {
            store.release(&chain).await.unwrap();
        }
    }
    store.settle().await;
    assert!(store.list().is_empty(), "{:?}", store.list());
    assert_eq!(store.driver().ids().await.unwrap().len(), 0, "driver dirs left");
    let db = root.join("image").join(driver_name).join("layerdb");
    for sub in ["sha256", "mounts", "tmp", "trash"] {
        let left: Vec<_> = std::fs::read_dir(db.join(sub)).unwrap().collect();
        assert!(left.is_empty(), "{sub}/ not empty: {left:?}");
    }
    assert_eq!(store.key_entries(), (0, 0, 0));
    store.shutdown().await.unwrap();
    let left = files_under(&root.join(driver_name));
    assert!(left.is_empty(), "files left in the driver's home: {left:?}");
}

/// Everything under `dir` that is not a directory (files, links, devices).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => out.extend(files_under(&p)),
                _ => out.push(p),
            }
        }
    }
    out
}
