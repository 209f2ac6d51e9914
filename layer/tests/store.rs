//! The store's integration tests, on the vfs driver: moby's layer tests
//! (release chains, restore, tar-stream stability and verification, existing
//! layers, init layers, sizes, changes) and beyond (hostile input, crash
//! leftovers, duplicate suppression, depth limit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use graphdriver::{CacheId, Change, ChangeKind, CreateOpts, Driver, ErrorKind, TarReader};
use layer::{ChainId, DiffId, Digest, LayerStoreError, RegisterOpts, RwName, RwOpts, Store};

use testkit::tars::files_tar as tar_of;

mod common;
use common::Env;

fn reader(bytes: Vec<u8>) -> TarReader {
    Box::new(Cursor::new(bytes))
}

fn diff_id_of(bytes: &[u8]) -> DiffId {
    DiffId(Digest::of(bytes))
}

impl Env {
    fn entries(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.layerdb().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

async fn register(store: &Store, bytes: &[u8], parent: Option<&ChainId>) -> layer::LayerInfo {
    let opts = RegisterOpts { parent: parent.cloned(), ..RegisterOpts::default() };
    store.register(reader(bytes.to_vec()), opts).await.unwrap()
}

async fn export(store: &Store, chain: &ChainId) -> std::io::Result<Vec<u8>> {
    let mut r = store.tar_stream(chain).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    })
    .await
    .unwrap()
}

async fn driver_ids(store: &Store) -> usize {
    store.settle().await;
    store.driver().ids().await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_computes_docker_ids_and_exports_exact_bytes() {
    let env = Env::new();
    let store = env.open().await;
    let base_tar = tar_of(&[("etc/hostname", b"box\n"), ("bin/sh", &[0x7f; 3000])]);
    let base = register(&store, &base_tar, None).await;
    assert_eq!(base.diff_id, diff_id_of(&base_tar));
    assert_eq!(base.chain_id, ChainId::of(None, &base.diff_id));
    assert_eq!(base.size, 3004);
    assert_eq!(base.depth, 1);
    let child_tar = tar_of(&[("etc/motd", b"hi\n")]);
    let child = register(&store, &child_tar, Some(&base.chain_id)).await;
    assert_eq!(child.chain_id, ChainId::of(Some(&base.chain_id), &diff_id_of(&child_tar)));
    assert_eq!(child.parent.as_ref(), Some(&base.chain_id));
    assert_eq!(child.chain_size, 3007);
    assert_eq!(export(&store, &base.chain_id).await.unwrap(), base_tar);
    assert_eq!(export(&store, &child.chain_id).await.unwrap(), child_tar);
    // Docker's layout.
    let dir = env.layerdb().join("sha256").join(child.chain_id.hex());
    for f in ["diff", "size", "cache-id", "parent", "tar-split.json.gz"] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    assert_eq!(std::fs::read_to_string(dir.join("parent")).unwrap(), base.chain_id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_input_has_the_uncompressed_diff_id() {
    let env = Env::new();
    let store = env.open().await;
    let plain = tar_of(&[("a", b"aaaa")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let a = store.register(reader(gz), RegisterOpts::default()).await.unwrap();
    let b = store.register(reader(zst), RegisterOpts::default()).await.unwrap();
    assert_eq!(a.diff_id, diff_id_of(&plain));
    assert_eq!(a.chain_id, b.chain_id);
    assert_eq!(store.get(&a.chain_id).unwrap().references, 2);
    assert_eq!(export(&store, &a.chain_id).await.unwrap(), plain);
}

// moby's TestLayerRelease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_frees_whole_chains() {
    let env = Env::new();
    let store = env.open().await;
    let l1 = register(&store, &tar_of(&[("1", b"1")]), None).await.chain_id;
    let l2 = register(&store, &tar_of(&[("2", b"2")]), Some(&l1)).await.chain_id;
    let l3a = register(&store, &tar_of(&[("3a", b"3a")]), Some(&l2)).await.chain_id;
    let l3b = register(&store, &tar_of(&[("3b", b"3b")]), Some(&l2)).await.chain_id;
    assert!(store.release(&l1).await.unwrap().is_empty());
    assert!(store.release(&l2).await.unwrap().is_empty());
    assert_eq!(store.list().len(), 4);
    let err = store.release(&l2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(store.release(&l3b).await.unwrap(), vec![l3b]);
    assert_eq!(store.release(&l3a).await.unwrap(), vec![l3a, l2.clone(), l1]);
    assert!(store.list().is_empty());
    assert_eq!(driver_ids(&store).await, 0, "driver dirs must be deleted");
    assert!(env.entries("sha256").is_empty());
    assert!(env.entries("trash").is_empty());
    assert_eq!(store.release(&l2).await.unwrap_err().kind(), ErrorKind::NotFound);
}

// moby's TestRegisterExistingLayer, plus: the duplicate work is cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_existing_content_returns_a_new_reference() {
    let env = Env::new();
    let store = env.open().await;
    let t = tar_of(&[("x", b"same")]);
    let a = register(&store, &t, None).await;
    let b = register(&store, &t, None).await;
    assert_eq!(a.chain_id, b.chain_id);
    assert_eq!(a.cache_id, b.cache_id);
    assert_eq!(b.references, 2);
    assert_eq!(driver_ids(&store).await, 1);
    assert!(env.entries("tmp").is_empty());
    assert!(store.release(&a.chain_id).await.unwrap().is_empty());
    assert_eq!(store.release(&a.chain_id).await.unwrap().len(), 1);
}

// moby's TestStoreRestore: references, chains and RW layers survive a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_and_rw_layers_survive_a_restart() {
    let env = Env::new();
    let (base, child, name) = {
        let store = env.open().await;
        let base = register(&store, &tar_of(&[("b", b"b")]), None).await.chain_id;
        let child = register(&store, &tar_of(&[("c", b"c")]), Some(&base)).await.chain_id;
        store.retain(&child).await.unwrap();
        let name = RwName::parse("web-1").unwrap();
        store.create_rw(&name, Some(&child), RwOpts::default()).await.unwrap();
        let p = store.mount(&name).await.unwrap();
        std::fs::write(p.join("new"), b"n").unwrap();
        store.unmount(&name).await.unwrap();
        store.shutdown().await.unwrap();
        (base, child, name)
    };
    let store = env.open().await;
    let c = store.get(&child).unwrap();
    assert_eq!((c.references, c.rw_layers), (2, 1));
    assert_eq!(store.get(&base).unwrap().children, 1);
    let err = store.create_rw(&name, None, RwOpts::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let p = store.mount(&name).await.unwrap();
    assert_eq!(std::fs::read(p.join("new")).unwrap(), b"n");
    assert_eq!(store.mount(&name).await.unwrap(), p, "a second mount returns the same path");
    store.release_rw(&name).await.unwrap();
    assert!(store.release(&base).await.unwrap() == vec![base.clone()] || store.get(&base).is_ok());
    store.release(&child).await.unwrap();
    assert_eq!(store.release(&child).await.unwrap(), vec![child, base]);
    assert_eq!(driver_ids(&store).await, 0);
}

// moby's TestTarStreamVerification: swapped tar-split files fail verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_detects_tampering_instead_of_returning_wrong_bytes() {
    let env = Env::new();
    let store = env.open().await;
    let a = register(&store, &tar_of(&[("f", b"aaaa")]), None).await;
    let b = register(&store, &tar_of(&[("f", b"bbbb")]), None).await;
    // Tamper with a's content on disk.
    let dir = env.root.join("vfs/dir").join(&a.cache_id);
    std::fs::write(dir.join("f"), b"AAAA").unwrap();
    let err = export(&store, &a.chain_id).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    std::fs::write(dir.join("f"), b"aaaa").unwrap();
    assert!(export(&store, &a.chain_id).await.is_ok());
    // Swap b's tar-split for a's: b's files give a's bytes, which must not pass as b.
    let ts = |c: &ChainId| env.layerdb().join("sha256").join(c.hex()).join("tar-split.json.gz");
    std::fs::copy(ts(&a.chain_id), ts(&b.chain_id)).unwrap();
    let err = export(&store, &b.chain_id).await.unwrap_err();
    assert!(err.to_string().contains("could not verify") || err.kind() == std::io::ErrorKind::InvalidData, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_stated_diff_id_publishes_nothing() {
    let env = Env::new();
    let store = env.open().await;
    let t = tar_of(&[("a", b"a")]);
    let opts = RegisterOpts { diff_id: Some(diff_id_of(b"something else")), ..RegisterOpts::default() };
    let err = store.register(reader(t.clone()), opts).await.unwrap_err();
    assert!(matches!(err, LayerStoreError::DiffIdMismatch { .. }), "{err}");
    assert!(store.list().is_empty());
    assert_eq!(driver_ids(&store).await, 0);
    assert!(env.entries("sha256").is_empty());
    assert!(env.entries("tmp").is_empty());
    let opts = RegisterOpts { diff_id: Some(diff_id_of(&t)), ..RegisterOpts::default() };
    store.register(reader(t), opts).await.unwrap();
}

/// Hand-made hostile tars: nothing is published, nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tars_are_rejected_and_leave_nothing() {
    let env = Env::new();
    let store = env.open().await;
    let base = register(&store, &tar_of(&[("ok", b"ok")]), None).await.chain_id;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let raw = |name: &[u8], kind: u8, link: &[u8], data: &[u8]| {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    };
    let end = vec![0u8; 1024];
    cases.push(("dotdot", [raw(b"../escape", b'0', b"", b"x"), end.clone()].concat()));
    // An absolute name is extracted beneath the root, as Docker does
    // (conformance's hostile.rs); `/tmp/escape` is checked below.
    cases.push((
        "symlink escape",
        [raw(b"link", b'2', b"/tmp", b""), raw(b"link/escape", b'0', b"", b"x"), end.clone()].concat(),
    ));
    cases.push(("hardlink escape", [raw(b"hl", b'1', b"../../etc/passwd", b""), end.clone()].concat()));
    let mut bad_sum = [raw(b"f", b'0', b"", b"x"), end.clone()].concat();
    bad_sum[148] ^= 0x11;
    cases.push(("bad checksum", bad_sum));
    let full = tar_of(&[("big", &[1u8; 5000])]);
    cases.push(("truncated", full[..2000].to_vec()));
    cases.push(("garbage", vec![0x42; 4096]));
    for (what, bytes) in cases {
        let opts = RegisterOpts { parent: Some(base.clone()), ..RegisterOpts::default() };
        let err = store.register(reader(bytes), opts).await.expect_err(what);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
        assert_eq!(store.list().len(), 1, "{what}");
        assert_eq!(store.get(&base).unwrap().children, 0, "{what}: parent pin leaked");
    }
    assert_eq!(driver_ids(&store).await, 1);
    assert!(env.entries("tmp").is_empty());
    assert!(!Path::new("/tmp/escape").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_parent_and_max_depth_are_clear_errors() {
    let env = Env::new();
    let store = env.open().await;
    let ghost = ChainId(Digest::of(b"ghost"));
    let opts = RegisterOpts { parent: Some(ghost), ..RegisterOpts::default() };
    let err = store.register(reader(tar_of(&[])), opts).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("no such parent"), "{err}");
    let mut parent: Option<ChainId> = None;
    for i in 0..layer::MAX_DEPTH {
        let name = format!("f{i}");
        let l = register(&store, &tar_of(&[(&name, b"")]), parent.as_ref()).await;
        assert_eq!(l.depth, i + 1);
        parent = Some(l.chain_id);
    }
    let opts = RegisterOpts { parent: parent.clone(), ..RegisterOpts::default() };
    let err = store.register(reader(tar_of(&[("one-too-many", b"")])), opts).await.unwrap_err();
    assert!(matches!(err, LayerStoreError::MaxDepthExceeded { .. }), "{err}");
    assert_eq!(store.list().len(), layer::MAX_DEPTH);
}

// moby's TestMountInit, TestMountSize, TestMountChanges and commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_layers_with_init_changes_diff_and_commit() {
    let env = Env::new();
    let store = env.open().await;
    let base_tar = tar_of(&[("etc/a", b"a"), ("etc/b", b"b"), ("etc/c", b"c")]);
    let base = register(&store, &base_tar, None).await.chain_id;
    let name = RwName::parse("c1").unwrap();
    let opts = RwOpts {
        init: true,
        init_fn: Some(Box::new(|root: &Path| std::fs::write(root.join("init-file"), b"from init"))),
        ..RwOpts::default()
    };
    let info = store.create_rw(&name, Some(&base), opts).await.unwrap();
    assert!(info.init_id.as_deref().unwrap().ends_with("-init"));
    let p = store.mount(&name).await.unwrap();
    assert_eq!(std::fs::read(p.join("init-file")).unwrap(), b"from init");
    std::fs::write(p.join("etc/a"), b"changed").unwrap();
    std::fs::remove_file(p.join("etc/b")).unwrap();
    std::fs::write(p.join("etc/new"), b"new").unwrap();
    let changes = store.changes(&name).await.unwrap();
    let want = vec![
        Change { path: "/etc".into(), kind: ChangeKind::Modify },
        Change { path: "/etc/a".into(), kind: ChangeKind::Modify },
        Change { path: "/etc/b".into(), kind: ChangeKind::Delete },
        Change { path: "/etc/new".into(), kind: ChangeKind::Add },
    ];
    assert_eq!(changes, want, "init-layer files must not show up as changes");
    let committed = store.commit(&name).await.unwrap();
    assert_eq!(committed.parent.as_ref(), Some(&base));
    let c2 = RwName::parse("c2").unwrap();
    store.create_rw(&c2, Some(&committed.chain_id), RwOpts::default()).await.unwrap();
    let p2 = store.mount(&c2).await.unwrap();
    assert_eq!(std::fs::read(p2.join("etc/a")).unwrap(), b"changed");
    assert!(!p2.join("etc/b").exists());
    assert!(!p2.join("init-file").exists());
    assert!(store.unmount(&c2).await.is_ok());
    assert_eq!(store.unmount(&c2).await.unwrap_err().kind(), ErrorKind::Conflict);
    // Removing a mounted RW layer unmounts it.
    store.release_rw(&name).await.unwrap();
    assert_eq!(store.get_rw(&name).unwrap_err().kind(), ErrorKind::NotFound);
    store.release_rw(&c2).await.unwrap();
    assert_eq!(store.list_rw().len(), 0);
    store.release(&committed.chain_id).await.unwrap();
    store.release(&base).await.unwrap();
    assert_eq!(driver_ids(&store).await, 0);
    assert!(env.entries("mounts").is_empty());
}

/// A diff being read holds the RW layer's name key: a racing `release_rw`
/// waits for it instead of removing the dirs under the stream and leaving
/// a silently short tar (issue 11, point 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_rw_waits_for_a_diff_being_read() {
    let env = Env::new();
    let store = env.open().await;
    let name = RwName::parse("d").unwrap();
    store.create_rw(&name, None, RwOpts::default()).await.unwrap();
    let p = store.mount(&name).await.unwrap();
    let files: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    for f in &files {
        std::fs::write(p.join(f), vec![7u8; 64 * 1024]).unwrap();
    }
    store.unmount(&name).await.unwrap();
    let mut tar = store.diff(&name).await.unwrap();
    let mut release = tokio::spawn({
        let (s, n) = (store.clone(), name.clone());
        async move { s.release_rw(&n).await }
    });
    // Not a timing claim: the release can't finish while the stream holds the key.
    assert!(tokio::time::timeout(std::time::Duration::from_millis(300), &mut release).await.is_err());
    let bytes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        tar.read_to_end(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    let mut names: Vec<String> = tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want = files.clone();
    want.sort();
    assert_eq!(names, want, "the diff must be whole");
    release.await.unwrap().unwrap();
    assert_eq!(store.changes(&name).await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_names_are_reserved_and_failures_release_them() {
    let env = Env::new();
    let store = env.open().await;
    let name = RwName::parse("dup").unwrap();
    let ghost = ChainId(Digest::of(b"ghost"));
    assert!(store.create_rw(&name, Some(&ghost), RwOpts::default()).await.is_err());
    // The failed creation must not keep the name.
    let (a, b) =
        tokio::join!(store.create_rw(&name, None, RwOpts::default()), store.create_rw(&name, None, RwOpts::default()));
    assert!(a.is_ok() ^ b.is_ok(), "exactly one creator of a name wins");
    let loser = a.err().or(b.err()).unwrap();
    assert_eq!(loser.kind(), ErrorKind::AlreadyExists);
    assert_eq!(driver_ids(&store).await, 1);
}

/// Start-up reconciles crash leftovers instead of skipping them or letting
/// them block a later registration (moby #44909).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_reconciles_crash_leftovers() {
    let env = Env::new();
    let t = tar_of(&[("keep", b"keep")]);
    let t2 = tar_of(&[("again", b"again")]);
    let kept = {
        let store = env.open().await;
        let kept = register(&store, &t, None).await.chain_id;
        // An unreferenced driver dir, as a crash between create and publish leaves.
        store.driver().create(&CacheId::random(), None, &CreateOpts::default()).await.unwrap();
        store.shutdown().await.unwrap();
        kept
    };
    let db = env.layerdb();
    std::fs::create_dir_all(db.join("tmp/tx-deadbeef")).unwrap();
    std::fs::write(db.join("trash/junk"), b"x").unwrap();
    // A partial layer dir for the content we will register next.
    let partial = ChainId::of(None, &diff_id_of(&t2));
    std::fs::create_dir_all(db.join("sha256").join(partial.hex())).unwrap();
    std::fs::write(db.join("sha256").join(partial.hex()).join("diff"), diff_id_of(&t2).to_string()).unwrap();
    std::fs::create_dir_all(db.join("sha256").join(format!("{}-1234-removing", kept.hex()))).unwrap();
    std::fs::create_dir_all(db.join("mounts/half")).unwrap();
    let store = env.open().await;
    assert_eq!(store.list().len(), 1);
    assert_eq!(driver_ids(&store).await, 1, "orphaned driver dir must be removed");
    assert!(env.entries("tmp").is_empty());
    assert!(env.entries("trash").is_empty());
    assert_eq!(env.entries("sha256"), vec![kept.hex()]);
    assert!(env.entries("mounts").is_empty());
    let again = register(&store, &t2, None).await;
    assert_eq!(again.chain_id, partial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_left_unreferenced_by_a_crash_is_collected() {
    let env = Env::new();
    let chain = {
        let store = env.open().await;
        let c = register(&store, &tar_of(&[("x", b"x")]), None).await.chain_id;
        store.shutdown().await.unwrap();
        c
    };
    // As if the daemon died right after persisting refs=0: that change
    // removed the index the clean shutdown had written, before its rename.
    std::fs::write(env.layerdb().join("sha256").join(chain.hex()).join("refs"), "0").unwrap();
    std::fs::remove_file(env.layerdb().join("layerd-index")).unwrap();
    let store = env.open().await;
    assert!(!store.started_from_index());
    assert!(store.list().is_empty());
    assert_eq!(driver_ids(&store).await, 0);
}

/// Start-up never deletes on an error that is not proof of a crash
/// leftover (issue 11, point 3): a layer whose metadata can't be read, its
/// descendants and the RW layers on them — with the containers' data — are
/// kept untouched, reported by `check` (even with `--repair`), and named in
/// errors; fixed by hand, everything loads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_keeps_damaged_layers_and_rw_data() {
    let env = Env::new();
    let (a, b, c) = {
        let store = env.open().await;
        let a = register(&store, &tar_of(&[("a", b"a")]), None).await.chain_id;
        let b = register(&store, &tar_of(&[("b", b"b")]), Some(&a)).await.chain_id;
        let c = register(&store, &tar_of(&[("c", b"c")]), Some(&b)).await.chain_id;
        // Only the RW layers hold B and C.
        let r = RwName::parse("on-c").unwrap();
        store.create_rw(&r, Some(&c), RwOpts { init: true, ..RwOpts::default() }).await.unwrap();
        let p = store.mount(&r).await.unwrap();
        std::fs::write(p.join("container-data"), b"precious").unwrap();
        store.unmount(&r).await.unwrap();
        store.release(&c).await.unwrap();
        store.release(&b).await.unwrap();
        store.create_rw(&RwName::parse("on-a").unwrap(), Some(&a), RwOpts::default()).await.unwrap();
        store.shutdown().await.unwrap();
        (a, b, c)
    };
    let ids_before = env.driver().ids().await.unwrap().len();
    let size = env.layerdb().join("sha256").join(b.hex()).join("size");
    let saved = std::fs::read(&size).unwrap();
    // A read error that is not ENOENT (EISDIR here; EIO on a failing disk).
    std::fs::remove_file(&size).unwrap();
    std::fs::create_dir(&size).unwrap();

    // The clean shutdown left an index, which a fault inside a record does
    // not make stale to the eye: the start reads it, and the check behind
    // the first answers finds the damage, keeps everything and drops the
    // index, so the next start scans and keeps the damaged layers.
    let store = env.open().await;
    assert!(store.started_from_index());
    store.settle().await;
    assert_eq!(driver_ids(&store).await, ids_before, "the check deletes nothing");
    assert!(!env.layerdb().join("layerd-index").exists());
    drop(store);

    let store = env.open().await;
    assert!(!store.started_from_index());
    let listed: Vec<ChainId> = store.list().into_iter().map(|l| l.chain_id).collect();
    assert_eq!(listed, vec![a.clone()]);
    assert_eq!(store.get(&a).unwrap().children, 1, "the damaged child still holds its parent");
    assert_eq!(driver_ids(&store).await, ids_before, "no driver dir may be deleted");
    for chain in [&b, &c] {
        assert!(env.layerdb().join("sha256").join(chain.hex()).is_dir(), "{chain}'s metadata must be kept");
    }
    let err = store.get(&b).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataLoss);
    assert!(err.to_string().contains("read size"), "{err}");
    let err = match store.tar_stream(&c).await {
        Err(e) => e,
        Ok(_) => panic!("export of a layer on a damaged parent succeeded"),
    };
    assert!(err.to_string().contains(&format!("parent {b} is damaged")), "export says why: {err}");
    let on_c = RwName::parse("on-c").unwrap();
    let err = store.get_rw(&on_c).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataLoss, "{err}");
    assert_eq!(
        store.create_rw(&on_c, Some(&a), RwOpts::default()).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists,
        "a kept rw layer's name stays taken"
    );
    assert!(store.get_rw(&RwName::parse("on-a").unwrap()).is_ok());
    let report = store.fsck(layer::CheckOpts { repair: true, verify_content: true }).await.unwrap();
    let mut kinds: Vec<(String, String)> =
        report.problems.iter().map(|p| (p.kind.clone(), p.subject.clone())).collect();
    kinds.sort();
    let mut want = vec![
        ("damaged_layer".to_string(), b.to_string()),
        ("damaged_layer".to_string(), c.to_string()),
        ("damaged_rw_layer".to_string(), "on-c".to_string()),
    ];
    want.sort();
    assert_eq!(kinds, want, "{:?}", report.problems);
    assert!(report.problems.iter().all(|p| !p.repaired));
    store.shutdown().await.unwrap();
    drop(store);

    // Fixed by hand: everything is back, the container's data included.
    std::fs::remove_dir(&size).unwrap();
    std::fs::write(&size, saved).unwrap();
    let store = env.open().await;
    assert_eq!(store.list().len(), 3);
    let p = store.mount(&on_c).await.unwrap();
    assert_eq!(std::fs::read(p.join("container-data")).unwrap(), b"precious");
    store.unmount(&on_c).await.unwrap();
    let report = store.fsck(layer::CheckOpts { repair: false, verify_content: true }).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_the_same_root_is_refused() {
    let env = Env::new();
    let _first = env.open().await;
    let err = match Store::open(&env.root, env.driver()).await {
        Ok(_) => panic!("second open succeeded"),
        Err(e) => e,
    };
    assert!(matches!(err, LayerStoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains(&std::process::id().to_string()), "{err}");
}

/// Counts unpacks, delegating everything to vfs.
struct Counting {
    inner: drivers::vfs::Vfs,
    applies: AtomicUsize,
}

#[async_trait]
impl Driver for Counting {
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
        self.applies.fetch_add(1, Ordering::SeqCst);
        // Slow enough that the registrations really overlap.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        self.inner.apply_diff(id, parent, tar).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_registrations_unpack_once() {
    let env = Env::new();
    let driver = Arc::new(Counting { inner: drivers::vfs::Vfs::new(env.root.join("vfs")).unwrap(), applies: 0.into() });
    let store = Store::open(&env.root, driver.clone()).await.unwrap();
    let t = tar_of(&[("big", &vec![9u8; 1 << 20])]);
    let diff_id = diff_id_of(&t);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (store, t, d) = (store.clone(), t.clone(), diff_id.clone());
        tasks.push(tokio::spawn(async move {
            let opts = RegisterOpts { diff_id: Some(d), ..RegisterOpts::default() };
            store.register(reader(t), opts).await.unwrap().chain_id
        }));
    }
    let mut chains = Vec::new();
    for t in tasks {
        chains.push(t.await.unwrap());
    }
    assert!(chains.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(driver.applies.load(Ordering::SeqCst), 1, "the unpack must happen once");
    assert_eq!(store.get(&chains[0]).unwrap().references, 20);
    // Same by blob digest, for a caller that does not know the DiffID.
    let t2 = tar_of(&[("other", b"o")]);
    let blob = Digest::of(&t2);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (store, t, b) = (store.clone(), t2.clone(), blob.clone());
        tasks.push(tokio::spawn(async move {
            let opts = RegisterOpts { blob_digest: Some(b), ..RegisterOpts::default() };
            store.register(reader(t), opts).await.unwrap().chain_id
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(driver.applies.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_layer_matches_docker() {
    let env = Env::new();
    let store = env.open().await;
    let l = register(&store, &[0u8; 1024], None).await;
    assert_eq!(l.chain_id.to_string(), "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef");
    assert_eq!(l.size, 0);
    assert_eq!(export(&store, &l.chain_id).await.unwrap(), vec![0u8; 1024]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_and_repairs_damage() {
    let env = Env::new();
    let store = env.open().await;
    let a = register(&store, &tar_of(&[("f", b"aaaa")]), None).await;
    let b = register(&store, &tar_of(&[("g", b"bbbb")]), Some(&a.chain_id)).await;
    store.create_rw(&RwName::parse("c").unwrap(), Some(&b.chain_id), RwOpts::default()).await.unwrap();
    let full = layer::CheckOpts { repair: false, verify_content: true };
    let clean = store.fsck(full).await.unwrap();
    assert_eq!((clean.layers_checked, clean.rw_layers_checked), (2, 1));
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    // Damage: an orphaned driver dir, a stray layerdb entry, tampered content.
    let orphan = CacheId::random();
    store.driver().create(&orphan, None, &CreateOpts::default()).await.unwrap();
    let stray = env.layerdb().join("sha256").join("ab".repeat(32));
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(env.root.join("vfs/dir").join(&a.cache_id).join("f"), b"AAAA").unwrap();
    let found = store.fsck(full).await.unwrap();
    let mut kinds: Vec<&str> = found.problems.iter().map(|p| p.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, vec!["content_mismatch", "orphaned_driver_dir", "stray_layerdb_entry"], "{:?}", found.problems);
    let repaired = store.fsck(layer::CheckOpts { repair: true, verify_content: false }).await.unwrap();
    assert!(repaired.problems.iter().all(|p| p.repaired), "{:?}", repaired.problems);
    assert!(!stray.exists());
    assert!(!store.driver().exists(&orphan).await);
    // Damaged content is reported, never "repaired" by deleting the layer.
    let again = store.fsck(full).await.unwrap();
    assert_eq!(again.problems.len(), 1);
    assert_eq!(again.problems[0].kind, "content_mismatch");
    assert!(store.get(&a.chain_id).is_ok());
    // A driver dir that vanished.
    store.driver().remove(&CacheId::parse(&b.cache_id).unwrap()).await.unwrap();
    let gone = store.fsck(layer::CheckOpts::default()).await.unwrap();
    assert!(gone.problems.iter().any(|p| p.kind == "missing_driver_dir" && p.subject == b.chain_id.to_string()));
}

/// `check --repair` running beside registrations and deletions must neither
/// report nor "repair" their work in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_during_concurrent_work_reports_nothing() {
    let env = Env::new();
    let store = env.open().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(Ordering::SeqCst) {
                let r = store.fsck(layer::CheckOpts { repair: true, verify_content: false }).await.unwrap();
                assert!(r.problems.is_empty(), "false positive during concurrent work: {:?}", r.problems);
                runs += 1;
            }
            runs
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40u32 {
        let store = store.clone();
        tasks.spawn(async move {
            let t = tar_of(&[(&format!("f{i}"), &vec![i as u8; 20_000][..])]);
            let l = store.register(reader(t.clone()), RegisterOpts::default()).await.unwrap();
            let name = RwName::parse(&format!("rw{i}")).unwrap();
            store.create_rw(&name, Some(&l.chain_id), RwOpts::default()).await.unwrap();
            if i % 2 == 0 {
                store.release_rw(&name).await.unwrap();
                store.release(&l.chain_id).await.unwrap();
            } else {
                assert_eq!(export(&store, &l.chain_id).await.unwrap(), t);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    assert!(checker.await.unwrap() > 0);
    store.settle().await;
    let end = store.fsck(layer::CheckOpts { repair: false, verify_content: true }).await.unwrap();
    assert!(end.problems.is_empty(), "{:?}", end.problems);
    assert_eq!(store.list().len(), 20);
    assert_eq!(store.key_entries(), (0, 0, 0), "key locks must be freed when idle");
}

// moby's TestTarStreamStability: metadata changes and extra files in a layer's
// dir don't change its export (headers come from the tar-split record), and a
// child built through an RW layer and commit exports stably too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_streams_are_stable_across_unrelated_changes() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let store = env.open().await;
    let t = tar_of(&[("etc/a", b"aaa"), ("etc/b", b"bbb")]);
    let base = register(&store, &t, None).await;
    let dir = env.root.join("vfs/dir").join(&base.cache_id);
    std::fs::set_permissions(dir.join("etc/a"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("stray-file"), b"not in the tar").unwrap();
    assert_eq!(export(&store, &base.chain_id).await.unwrap(), t);
    let name = RwName::parse("builder").unwrap();
    store.create_rw(&name, Some(&base.chain_id), RwOpts::default()).await.unwrap();
    let p = store.mount(&name).await.unwrap();
    std::fs::write(p.join("etc/c"), b"ccc").unwrap();
    store.unmount(&name).await.unwrap();
    let mut diff = Vec::new();
    store.diff(&name).await.unwrap().read_to_end(&mut diff).unwrap();
    let child = store.commit(&name).await.unwrap();
    assert_eq!(child.diff_id, diff_id_of(&diff), "commit registers exactly the RW diff");
    let first = export(&store, &child.chain_id).await.unwrap();
    assert_eq!(diff_id_of(&first), child.diff_id);
    assert_eq!(export(&store, &child.chain_id).await.unwrap(), first);
    assert_eq!(export(&store, &base.chain_id).await.unwrap(), t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_wait_and_hold_times_are_recorded_for_every_lock() {
    let env = Env::new();
    let store = env.open().await;
    let l = register(&store, &tar_of(&[("a", b"a")]), None).await;
    let name = RwName::parse("m").unwrap();
    store.create_rw(&name, Some(&l.chain_id), RwOpts::default()).await.unwrap();
    store.mount(&name).await.unwrap();
    store.release_rw(&name).await.unwrap();
    store.release(&l.chain_id).await.unwrap();
    for s in store.lock_stats().all {
        let (_, _, waits) = s.wait.snapshot();
        let (_, _, holds) = s.hold.snapshot();
        assert!(waits > 0 && waits == holds, "{}: {waits} waits, {holds} holds", s.name);
    }
}

/// Go's reader (and so Docker) reads PAX records by length; a binary xattr
/// such as `security.capability` may hold a 0x0a byte. Such a layer must
/// import, land at its PAX path with the exact xattr, and export exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pax_records_with_newlines_in_values_import_and_export_exactly() {
    let env = Env::new();
    let store = env.open().await;
    let cap = b"\x01\x00\x00\x02\x0a\x20\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    let mut b = tar::Builder::new(Vec::new());
    let recs: Vec<(&str, &[u8])> = vec![
        ("SCHILY.xattr.security.capability", &cap),
        ("SCHILY.xattr.user.note", b"two\nlines\n"),
        ("path", b"usr/bin/ping"),
    ];
    b.append_pax_extensions(recs).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("placeholder").unwrap();
    h.set_size(4);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, &b"ping"[..]).unwrap();
    let t = b.into_inner().unwrap();
    let l = register(&store, &t, None).await;
    let f = env.root.join("vfs/dir").join(&l.cache_id).join("usr/bin/ping");
    assert_eq!(std::fs::read(&f).unwrap(), b"ping");
    let mut buf = vec![0u8; 64];
    let n = rustix::fs::getxattr(&f, "security.capability", &mut buf).unwrap();
    assert_eq!(&buf[..n], &cap[..]);
    assert!(!env.root.join("vfs/dir").join(&l.cache_id).join("placeholder").exists());
    assert_eq!(export(&store, &l.chain_id).await.unwrap(), t);
}

/// Exports verify in parallel from the SHA-256 checkpoints recorded at
/// registration; a layer without them (as Docker writes layers) falls back
/// to one sequential check. Both catch damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_verifies_with_and_without_checkpoints() {
    let env = Env::new();
    let store = env.open().await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let t = tar_of(&[("big", &big), ("small", b"s")]);
    let l = register(&store, &t, None).await;
    let cp = env.layerdb().join("sha256").join(l.chain_id.hex()).join(layer::checkpoint::FILE);
    assert!(cp.is_file(), "registration records checkpoints");
    assert_eq!(export(&store, &l.chain_id).await.unwrap(), t);
    let f = env.root.join("vfs/dir").join(&l.cache_id).join("big");
    let mut damaged = big.clone();
    damaged[2_500_000] ^= 1;
    std::fs::write(&f, &damaged).unwrap();
    assert_eq!(export(&store, &l.chain_id).await.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    std::fs::remove_file(&cp).unwrap();
    assert_eq!(export(&store, &l.chain_id).await.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    std::fs::write(&f, &big).unwrap();
    assert_eq!(export(&store, &l.chain_id).await.unwrap(), t, "no checkpoints: sequential check");
    std::fs::write(&cp, b"{not json").unwrap();
    assert_eq!(export(&store, &l.chain_id).await.unwrap(), t, "unusable checkpoints: sequential check");
}

/// A batch removal: every RW layer is gone from view (and its metadata
/// from `mounts/`) when the call returns, each name has its own result in
/// order, and once the deletions ran the parent — pinned only by the batch's
/// RW layers — and every driver dir are gone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_rw_many_unpublishes_the_batch_then_deletes_it() {
    let env = Env::new();
    let store = env.open().await;
    let base = register(&store, &tar_of(&[("etc/a", b"base")]), None).await.chain_id;
    let mut names = Vec::new();
    for i in 0..8 {
        let name = RwName::parse(&format!("c{i}")).unwrap();
        store.create_rw(&name, Some(&base), RwOpts { init: i % 2 == 0, ..RwOpts::default() }).await.unwrap();
        let p = store.mount(&name).await.unwrap();
        std::fs::write(p.join(format!("file{i}")), b"data").unwrap();
        names.push(name);
    }
    store.unmount(&names[1]).await.unwrap();
    store.release(&base).await.unwrap();
    let mut batch = names.clone();
    batch.insert(3, RwName::parse("missing").unwrap());
    let results = store.release_rw_many(batch).await.unwrap();
    assert_eq!(results.len(), 9);
    for (i, r) in results.iter().enumerate() {
        if i == 3 {
            assert_eq!(r.as_ref().unwrap_err().kind(), ErrorKind::NotFound);
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    assert!(store.list_rw().is_empty());
    assert!(env.entries("mounts").is_empty());
    store.settle().await;
    assert!(store.list().is_empty(), "the parent, pinned only by the batch, is freed");
    assert_eq!(driver_ids(&store).await, 0);
    assert!(env.entries("trash").is_empty());
}
