//! Parents and children: a child never changes its parent, removal order,
//! removal next to mounted layers, and read-only committed layers.
//!
//! Contract defined here (the trait doc is silent on it; see
//! `docs/conformance.md`): `remove(parent)` while children exist either
//! succeeds and every child keeps reading exactly as before, or fails with
//! `Conflict` and changes nothing. A child is never left broken. Removing
//! top-down always succeeds.

use std::io;

use anyhow::{Context, bail, ensure};
use graphdriver::{CacheId, ErrorKind};

use crate::harness::chain::{commit, committed_layer, rw_layer};
use crate::harness::manifest::{Manifest, ScanOpts, ensure_same, scan};
use crate::harness::ops::{Op, chmod, chown, dir, file, mv, rm, symlink, xattr};
use crate::harness::tars::TarMaker;
use crate::harness::{CaseResult, Cx, blocking, is_mount_point};

fn parent_ops() -> Vec<Op> {
    vec![
        dir("/etc", 0o755),
        file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644),
        file("/etc/shadow", b"root:*:19000::::::\n", 0o600),
        dir("/usr/lib", 0o755),
        file("/usr/lib/libc.so", vec![0x7f; 4096], 0o755),
        symlink("usr/lib", "/lib"),
        dir("/var/cache", 0o755),
        file("/var/cache/big", vec![1; 70_000], 0o644),
        xattr("/etc/passwd", "user.origin", b"parent"),
    ]
}

/// Every edit a child can make leaves its parent — and a sibling made
/// before the edits — exactly as they were (times included).
pub async fn child_isolation(cx: Cx) -> CaseResult {
    let parent = committed_layer(&cx, "parent", None, parent_ops()).await?;
    let with_times = ScanOpts { mtimes: true };
    let before = cx.scan(&parent, with_times).await?;
    let sibling = cx.create("sibling", Some(&parent)).await?;
    let child = rw_layer(
        &cx,
        "child",
        Some(&parent),
        vec![
            file("/etc/passwd", b"changed", 0o644),
            rm("/etc/shadow"),
            chmod("/usr/lib/libc.so", 0o700),
            chown("/usr/lib", 5, 5),
            rm("/var/cache"),
            mv("/lib", "/lib-moved"),
            file("/new", b"new", 0o644),
            xattr("/etc/passwd", "user.origin", b"child"),
            Op::Times("usr/lib/libc.so".into(), 1, 1),
        ],
    )
    .await?;
    ensure_same(&before, &cx.scan(&parent, with_times).await?, "the parent after its child was edited")?;
    ensure_same(&before, &cx.scan(&sibling, with_times).await?, "a sibling after the child was edited")?;
    let m = cx.manifest(&child).await?;
    ensure!(m.get("/etc/shadow").is_none() && m.get("/new").is_some(), "the child lost its edits:\n{}", m.render(30));
    Ok(())
}

/// Applies the contract above to `remove(target)`: returns whether the
/// target was removed. `watch` are the layers that must keep reading the same.
async fn remove_with_children(cx: &Cx, target: &CacheId, watch: &[(&str, CacheId, Manifest)]) -> anyhow::Result<bool> {
    let before = cx.manifest(target).await?;
    let removed = match cx.driver().remove(target).await {
        Ok(()) => {
            ensure!(!cx.driver().exists(target).await, "remove succeeded but the layer exists");
            true
        }
        Err(e) if e.kind() == ErrorKind::Conflict => {
            ensure_same(&before, &cx.manifest(target).await?, "the layer whose removal was refused")?;
            false
        }
        Err(e) => bail!("remove of a layer with children: want success or a conflict error, got {e}"),
    };
    for (label, id, want) in watch {
        ensure_same(want, &cx.manifest(id).await?, &format!("{label} after removing its ancestor"))?;
    }
    Ok(removed)
}

/// Removing a parent whose children exist never breaks a child (see the
/// module doc); the children still diff, and a new child can be made.
pub async fn remove_parent_with_child(cx: Cx) -> CaseResult {
    let parent = committed_layer(&cx, "parent", None, parent_ops()).await?;
    let child = committed_layer(&cx, "child", Some(&parent), vec![file("/etc/passwd", b"child", 0o644)]).await?;
    let grandchild =
        rw_layer(&cx, "grandchild", Some(&child), vec![rm("/etc/shadow"), file("/g", b"g", 0o644)]).await?;
    let watch = [
        ("child", child.clone(), cx.manifest(&child).await?),
        ("grandchild", grandchild.clone(), cx.manifest(&grandchild).await?),
    ];
    let removed = remove_with_children(&cx, &parent, &watch).await?;
    let mut changes = cx.driver().changes(&grandchild, Some(&child)).await.context("changes(grandchild, child)")?;
    changes.sort();
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    ensure!(paths == ["/etc", "/etc/shadow", "/g"], "changes(grandchild, child) = {changes:?}");
    let (again, _) = commit(&cx, "grandchild-committed", &grandchild, Some(&child)).await?;
    ensure_same(&watch[1].2, &cx.manifest(&again).await?, "the grandchild committed after the removal")?;
    for id in [&again, &grandchild, &child] {
        cx.driver().remove(id).await.with_context(|| format!("top-down remove of {id}"))?;
    }
    if !removed {
        cx.driver().remove(&parent).await.context("remove the parent once its children are gone")?;
    }
    Ok(())
}

/// A ← B ← C with C mounted: removing B follows the same contract, C's
/// mount keeps working; then C, B, A go top-down.
pub async fn remove_intermediate(cx: Cx) -> CaseResult {
    let a = committed_layer(&cx, "a", None, vec![file("/a", b"a", 0o644)]).await?;
    let b = committed_layer(&cx, "b", Some(&a), vec![file("/b", b"b", 0o644)]).await?;
    let c = rw_layer(&cx, "c", Some(&b), vec![file("/c", b"c", 0o644)]).await?;
    let want_c = cx.manifest(&c).await?;
    let path = cx.driver().get(&c, "").await?;
    let removed = remove_with_children(&cx, &b, &[("c", c.clone(), want_c.clone())]).await?;
    let p = path.clone();
    let through_mount = blocking(move || scan(&p, ScanOpts::default())).await?;
    ensure_same(&want_c, &through_mount, "c through the mount taken before b's removal")?;
    cx.driver().put(&c).await?;
    cx.driver().remove(&c).await.context("remove c")?;
    if !removed {
        cx.driver().remove(&b).await.context("remove b once c is gone")?;
    }
    cx.driver().remove(&a).await.context("remove a")?;
    Ok(())
}

/// Removing layers while another layer on the same parent is mounted:
/// the mounted one keeps its tree through its mount, and afterwards.
pub async fn remove_while_other_mounted(cx: Cx) -> CaseResult {
    let parent = committed_layer(&cx, "parent", None, parent_ops()).await?;
    let mounted = rw_layer(&cx, "mounted", Some(&parent), vec![file("/mine", b"mine", 0o644)]).await?;
    let sibling = rw_layer(&cx, "sibling", Some(&parent), vec![file("/theirs", b"theirs", 0o644)]).await?;
    let nephew = cx.create("nephew", Some(&sibling)).await?;
    let stranger = committed_layer(&cx, "stranger", None, vec![file("/x", b"x", 0o644)]).await?;
    let want = cx.manifest(&mounted).await?;
    let path = cx.driver().get(&mounted, "").await?;
    for (label, id) in [("nephew", &nephew), ("sibling", &sibling), ("stranger", &stranger)] {
        cx.driver().remove(id).await.with_context(|| format!("remove {label} while another layer is mounted"))?;
    }
    let p = path.clone();
    ensure_same(
        &want,
        &blocking(move || scan(&p, ScanOpts::default())).await?,
        "the mounted layer, through its mount",
    )?;
    cx.driver().put(&mounted).await?;
    ensure_same(&want, &cx.manifest(&mounted).await?, "the mounted layer, after put")
}

enum Probe {
    Refused,
    Written,
}

fn probe_write(dir: &std::path::Path) -> anyhow::Result<Probe> {
    match std::fs::write(dir.join("conformance-probe"), b"x") {
        Ok(()) => Ok(Probe::Written),
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(Probe::Refused),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(Probe::Refused),
        Err(e) => bail!("writing into a committed layer failed with {e}; want EROFS (read-only) or success"),
    }
}

/// A committed layer (`create` + `apply_diff`) with a child. Contract
/// defined here: where the driver mounts a committed layer (its `get` path
/// is a mount point), the mount is read-only (`EROFS`). Where `get` hands
/// out the storage itself (copy and snapshot drivers), writes may land, but
/// never reach any other layer.
pub async fn readonly_view(cx: Cx) -> CaseResult {
    let mut t = TarMaker::new();
    t.dir("/etc", 0o755)?.file("/etc/os-release", b"ID=conformance\n", 0o644)?;
    let base = cx.create("base", None).await?;
    cx.apply(&base, None, t.finish()?).await?;
    let mut t = TarMaker::new();
    t.file("/top", b"top", 0o644)?;
    let top = cx.create("top", Some(&base)).await?;
    cx.apply(&top, Some(&base), t.finish()?).await?;
    let grandchild = cx.create_rw("rw-on-top", Some(&top)).await?;
    let want: Vec<(CacheId, Manifest)> =
        vec![(base.clone(), cx.manifest(&base).await?), (top.clone(), cx.manifest(&top).await?)];
    let want_gc = cx.manifest(&grandchild).await?;
    let mut problems = Vec::new();
    for (id, _) in &want {
        let path = cx.driver().get(id, "").await?;
        let mounted = is_mount_point(&path)?;
        let p = path.clone();
        let probe = blocking(move || probe_write(&p)).await;
        let verdict = match probe {
            Ok(Probe::Refused) => Ok(()),
            Ok(Probe::Written) if mounted => {
                let p = path.clone();
                blocking(move || Ok(std::fs::remove_file(p.join("conformance-probe"))?)).await?;
                Err(anyhow::anyhow!("committed layer {id} is mounted read-write at {}", path.display()))
            }
            Ok(Probe::Written) => {
                let m = cx.manifest(&grandchild).await;
                let leaked = m.as_ref().map(|m| m.get("/conformance-probe").is_some()).unwrap_or(false);
                let p = path.clone();
                blocking(move || Ok(std::fs::remove_file(p.join("conformance-probe"))?)).await?;
                match leaked {
                    true => Err(anyhow::anyhow!(
                        "a write into committed layer {id} (through its get path {}, not a mount point) showed up \
                         in a layer above it",
                        path.display()
                    )),
                    false => m.map(drop),
                }
            }
            Err(e) => Err(e),
        };
        cx.driver().put(id).await?;
        if let Err(e) = verdict {
            problems.push(format!("{e:#}"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    for (id, m) in &want {
        ensure_same(m, &cx.manifest(id).await?, "a committed layer after the write attempt")?;
    }
    ensure_same(&want_gc, &cx.manifest(&grandchild).await?, "the layer on top after the write attempts")
}
