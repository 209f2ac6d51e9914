//! The per-method contract of the `Driver` trait doc: counted `get`/`put`,
//! idempotency, errors for unknown and duplicate ids, `cleanup`, `ids`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, ensure};
use graphdriver::{CacheId, CreateOpts, ErrorKind};

use crate::harness::chain::{committed_layer, rw_layer};
use crate::harness::ops::{dir, file};
use crate::harness::{CaseResult, Cx, blocking, expect_kind, is_mount_point, mounts_under};

async fn read(path: PathBuf) -> anyhow::Result<String> {
    blocking(move || std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))).await
}

/// `get` twice returns the same absolute path; the tree stays available
/// until the last `put`; an extra `put` is a no-op success; a mounting
/// driver unmounts after the last `put`; the layer can be got again.
pub async fn get_put_counted(cx: Cx) -> CaseResult {
    let base = committed_layer(&cx, "base", None, vec![file("/lower", b"lower", 0o644)]).await?;
    let id = rw_layer(&cx, "layer", Some(&base), vec![file("/upper", b"upper", 0o644)]).await?;
    let d = cx.driver();
    let p1 = d.get(&id, "").await.context("first get")?;
    let p2 = d.get(&id, "").await.context("second get")?;
    ensure!(p1 == p2, "two gets returned {} and {}", p1.display(), p2.display());
    ensure!(p1.is_absolute(), "get returned a relative path {}", p1.display());
    let mounted = is_mount_point(&p1)?;
    d.put(&id).await.context("first put")?;
    ensure!(read(p1.join("upper")).await? == "upper", "the tree went away while a get was outstanding");
    ensure!(read(p1.join("lower")).await? == "lower", "the parent's file went away while a get was outstanding");
    d.put(&id).await.context("second put")?;
    if mounted {
        ensure!(!is_mount_point(&p1)?, "{} is still mounted after the last put", p1.display());
    }
    d.put(&id).await.context("a put without a matching get must be a no-op success")?;
    let p3 = d.get(&id, "").await.context("get after the count dropped to zero")?;
    ensure!(read(p3.join("upper")).await? == "upper", "the layer lost its file after being put back");
    d.put(&id).await.context("last put")?;
    Ok(())
}

/// `remove` of a removed layer is `NotFound`.
pub async fn remove_twice(cx: Cx) -> CaseResult {
    let id = cx.create("layer", None).await?;
    cx.driver().remove(&id).await.context("first remove")?;
    expect_kind(cx.driver().remove(&id).await, ErrorKind::NotFound, "second remove")?;
    ensure!(!cx.driver().exists(&id).await, "exists() after remove");
    Ok(())
}

/// Every per-id method on an id that was never created: `NotFound`
/// (`exists` is false). The diff methods too: they work on an existing
/// layer or not at all.
pub async fn unknown_ids(cx: Cx) -> CaseResult {
    let id = cx.id("never-created");
    let real = cx.create("real", None).await?;
    let d = cx.driver();
    ensure!(!d.exists(&id).await, "exists() of an unknown id is true");
    expect_kind(d.get(&id, "").await, ErrorKind::NotFound, "get(unknown)")?;
    expect_kind(d.put(&id).await, ErrorKind::NotFound, "put(unknown)")?;
    expect_kind(d.remove(&id).await, ErrorKind::NotFound, "remove(unknown)")?;
    expect_kind(d.metadata(&id).await, ErrorKind::NotFound, "metadata(unknown)")?;
    expect_kind(d.changes(&id, None).await, ErrorKind::NotFound, "changes(unknown, None)")?;
    expect_kind(d.changes(&real, Some(&id)).await, ErrorKind::NotFound, "changes(real, unknown parent)")?;
    expect_kind(d.diff_size(&id, None).await, ErrorKind::NotFound, "diff_size(unknown, None)")?;
    expect_kind(d.diff(&id, None).await.map(drop), ErrorKind::NotFound, "diff(unknown, None)")?;
    let empty = crate::harness::tars::TarMaker::new().finish()?;
    let res = d.apply_diff(&id, None, Box::new(std::io::Cursor::new(empty))).await;
    expect_kind(res, ErrorKind::NotFound, "apply_diff(unknown)")?;
    ensure!(!d.exists(&id).await, "a failed call on an unknown id created it");
    // The real layer still works after all that.
    ensure!(cx.manifest(&real).await?.is_empty(), "the real layer changed");
    Ok(())
}

/// `create`/`create_rw` of an existing id: `AlreadyExists`, and the
/// existing layer is untouched.
pub async fn create_existing(cx: Cx) -> CaseResult {
    let other = cx.create("other", None).await?;
    let id = rw_layer(&cx, "layer", None, vec![file("/keep", b"keep me", 0o600)]).await?;
    let before = cx.manifest(&id).await?;
    let d = cx.driver();
    let o = CreateOpts::default();
    expect_kind(d.create(&id, None, &o).await, ErrorKind::AlreadyExists, "create(existing)")?;
    expect_kind(d.create_rw(&id, None, &o).await, ErrorKind::AlreadyExists, "create_rw(existing)")?;
    expect_kind(d.create(&id, Some(&other), &o).await, ErrorKind::AlreadyExists, "create(existing, parent)")?;
    expect_kind(d.create_rw(&id, Some(&other), &o).await, ErrorKind::AlreadyExists, "create_rw(existing, parent)")?;
    crate::harness::manifest::ensure_same(&before, &cx.manifest(&id).await?, "the existing layer")
}

/// `create`/`create_rw` on a missing parent: `NotFound`, and nothing is
/// left behind: the id does not exist and can be created afterwards.
pub async fn create_missing_parent(cx: Cx) -> CaseResult {
    let (id, missing) = (cx.id("layer"), CacheId::random());
    let d = cx.driver();
    let o = CreateOpts::default();
    expect_kind(d.create(&id, Some(&missing), &o).await, ErrorKind::NotFound, "create(id, missing parent)")?;
    expect_kind(d.create_rw(&id, Some(&missing), &o).await, ErrorKind::NotFound, "create_rw(id, missing parent)")?;
    ensure!(!d.exists(&id).await, "a failed create left the id behind");
    ensure!(!d.ids().await?.contains(&id), "a failed create left the id in ids()");
    d.create(&id, None, &o).await.context("create after the failed creates")?;
    ensure!(cx.manifest(&id).await?.is_empty(), "the layer holds leftovers of a failed create");
    Ok(())
}

/// Once `remove` returns the id may be created anew: fresh contents, fresh
/// `get` count.
pub async fn recreate_after_remove(cx: Cx) -> CaseResult {
    let parent = committed_layer(&cx, "parent", None, vec![file("/from-parent", b"p", 0o644)]).await?;
    let id = rw_layer(&cx, "layer", Some(&parent), vec![file("/old", b"old", 0o644)]).await?;
    let d = cx.driver();
    d.get(&id, "").await?;
    d.get(&id, "").await?;
    d.remove(&id).await.context("remove")?;
    d.create_rw(&id, None, &CreateOpts::default()).await.context("create_rw of the removed id")?;
    let m = cx.manifest(&id).await?;
    ensure!(m.is_empty(), "the recreated layer is not empty:\n{}", m.render(20));
    let p = d.get(&id, "").await?;
    d.put(&id).await?;
    ensure!(!is_mount_point(&p)?, "still mounted after its only put: a get count survived the remove");
    d.remove(&id).await?;
    d.create(&id, Some(&parent), &CreateOpts::default()).await.context("create of the removed id on a parent")?;
    let m = cx.manifest(&id).await?;
    ensure!(m.get("/from-parent").is_some() && m.get("/old").is_none(), "wrong tree:\n{}", m.render(20));
    Ok(())
}

/// Removing a layer while it is mounted (two gets outstanding) unmounts it
/// first; afterwards nothing of it is mounted and `put` is `NotFound`.
pub async fn remove_mounted(cx: Cx) -> CaseResult {
    let parent = committed_layer(&cx, "parent", None, vec![file("/p", b"p", 0o644)]).await?;
    let id = rw_layer(&cx, "layer", Some(&parent), vec![file("/mine", b"mine", 0o644)]).await?;
    let d = cx.driver();
    let path = d.get(&id, "").await?;
    d.get(&id, "").await?;
    d.remove(&id).await.context("remove while mounted")?;
    ensure!(!d.exists(&id).await, "exists() after remove");
    ensure!(!is_mount_point(&path)?, "{} is still mounted after remove", path.display());
    let leftover = blocking(move || Ok(path.join("mine").exists())).await?;
    ensure!(!leftover, "the removed layer's files are still visible at its old path");
    expect_kind(d.put(&id).await, ErrorKind::NotFound, "put after remove")?;
    ensure!(cx.manifest(&parent).await?.get("/p").is_some(), "the parent lost its file");
    Ok(())
}

/// `cleanup()` undoes every mount, twice in a row is fine, and keeps the
/// layers: stale `put`s succeed and `get` works again with the same trees.
pub async fn cleanup_keeps_layers(cx: Cx) -> CaseResult {
    let base = committed_layer(&cx, "base", None, vec![dir("/etc", 0o755), file("/etc/a", b"a", 0o644)]).await?;
    let rw = rw_layer(&cx, "rw", Some(&base), vec![file("/etc/b", b"b", 0o644)]).await?;
    let (want_base, want_rw) = (cx.manifest(&base).await?, cx.manifest(&rw).await?);
    let d = cx.driver();
    d.get(&rw, "").await?;
    d.get(&base, "").await?;
    d.cleanup().await.context("first cleanup")?;
    d.cleanup().await.context("second cleanup")?;
    let left = mounts_under(cx.root())?;
    ensure!(left.is_empty(), "mounts left after cleanup(): {left:?}");
    ensure!(d.exists(&base).await && d.exists(&rw).await, "cleanup() removed a layer");
    d.put(&rw).await.context("a put of a get from before cleanup()")?;
    d.put(&base).await.context("a put of a get from before cleanup()")?;
    crate::harness::manifest::ensure_same(&want_base, &cx.manifest(&base).await?, "base after cleanup")?;
    crate::harness::manifest::ensure_same(&want_rw, &cx.manifest(&rw).await?, "rw after cleanup")
}

/// An unknown `storage_opt` key is `InvalidArgument` and creates nothing.
pub async fn storage_opts(cx: Cx) -> CaseResult {
    let mut o = CreateOpts::default();
    o.storage_opt.insert("conformance-no-such-option".into(), "1".into());
    let id = cx.id("layer");
    expect_kind(cx.driver().create(&id, None, &o).await, ErrorKind::InvalidArgument, "create with an unknown option")?;
    expect_kind(
        cx.driver().create_rw(&id, None, &o).await,
        ErrorKind::InvalidArgument,
        "create_rw with an unknown option",
    )?;
    ensure!(!cx.driver().exists(&id).await, "a refused create left the layer behind");
    Ok(())
}

/// `ids()` lists exactly the layers that exist; `metadata` answers for
/// each; `status` and `name` answer.
pub async fn ids_and_metadata(cx: Cx) -> CaseResult {
    let d = cx.driver();
    ensure!(!d.name().is_empty(), "name() is empty");
    let _ = d.status().await;
    ensure!(d.ids().await?.is_empty(), "a fresh driver has layers: {:?}", d.ids().await?);
    let a = cx.create("a", None).await?;
    let b = cx.create("b", Some(&a)).await?;
    let c = cx.create_rw("c", Some(&b)).await?;
    let init = c.init();
    d.create_rw(&init, Some(&b), &CreateOpts::default()).await.context("create_rw of an -init id")?;
    let want: BTreeSet<CacheId> = [&a, &b, &c, &init].into_iter().cloned().collect();
    let got: BTreeSet<CacheId> = d.ids().await?.into_iter().collect();
    ensure!(got == want, "ids() = {got:?}, want {want:?}");
    for id in &want {
        d.metadata(id).await.with_context(|| format!("metadata({id})"))?;
    }
    d.remove(&c).await?;
    let got: BTreeSet<CacheId> = d.ids().await?.into_iter().collect();
    ensure!(!got.contains(&c) && got.len() == 3, "ids() after removing one = {got:?}");
    Ok(())
}
