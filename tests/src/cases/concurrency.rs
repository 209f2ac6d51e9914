//! Concurrency the trait doc allows: `get`/`put` of one layer from many
//! tasks, and every method at once on different ids (creates, removes,
//! diffs of siblings sharing one parent).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use graphdriver::CacheId;

use crate::harness::chain::{commit, committed_layer, rw_layer};
use crate::harness::manifest::{ScanOpts, ensure_same, scan};
use crate::harness::ops::{dir, file, rm};
use crate::harness::tars::TarMaker;
use crate::harness::{CaseResult, Cx, blocking, is_mount_point, next_tick};

/// Join every task, failing with the first error.
async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<T>>>) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("task panicked: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// 16 tasks × 25 rounds of `get` → read → `put` on one layer, while other
/// tasks do the same on its parent: every `get` returns the same path with
/// the whole tree; after the last `put` nothing is mounted.
pub async fn concurrent_get_put(cx: Cx) -> CaseResult {
    let parent = committed_layer(&cx, "parent", None, vec![file("/lower", b"lower", 0o644)]).await?;
    let layer = rw_layer(&cx, "layer", Some(&parent), vec![file("/upper", b"upper", 0o644)]).await?;
    let mut tasks = Vec::new();
    for t in 0..20u64 {
        let (cx, id) = (cx.clone(), if t < 16 { layer.clone() } else { parent.clone() });
        tasks.push(tokio::spawn(async move {
            let mut paths = BTreeSet::new();
            for round in 0..25u64 {
                let p = cx.driver().get(&id, "").await.with_context(|| format!("task {t} round {round}: get"))?;
                let q = p.clone();
                let ok = blocking(move || Ok(std::fs::read(q.join("lower"))? == b"lower")).await;
                if (t + round) % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                cx.driver().put(&id).await.with_context(|| format!("task {t} round {round}: put"))?;
                ensure!(ok.with_context(|| format!("task {t} round {round}: read through get"))?, "wrong content");
                paths.insert(p);
            }
            Ok((id, paths))
        }));
    }
    let results = join_all(tasks).await?;
    for id in [&layer, &parent] {
        let paths: BTreeSet<_> = results.iter().filter(|(i, _)| i == id).flat_map(|(_, p)| p.iter().cloned()).collect();
        ensure!(paths.len() == 1, "get({id}) returned different paths: {paths:?}");
        let path = paths.into_iter().next().context("no paths")?;
        ensure!(!is_mount_point(&path)?, "{} is still mounted after every get was put", path.display());
    }
    let m = cx.manifest(&layer).await?;
    ensure!(m.get("/upper").is_some() && m.get("/lower").is_some(), "the layer lost files:\n{}", m.render(20));
    Ok(())
}

/// 24 layers created at once (bases filled by `apply_diff`, read-write and
/// committed children of one parent), each with its own tree; then all
/// removed at once while the parent is mounted.
pub async fn concurrent_create(cx: Cx) -> CaseResult {
    let parent =
        committed_layer(&cx, "parent", None, vec![dir("/shared", 0o755), file("/shared/p", b"p", 0o644)]).await?;
    let mut tasks = Vec::new();
    for i in 0..24usize {
        let (cx, parent) = (cx.clone(), parent.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("/mine-{i}");
            let id = match i % 3 {
                0 => {
                    let id = cx.create(&format!("base-{i}"), None).await?;
                    let mut t = TarMaker::new();
                    t.file(&name, name.as_bytes(), 0o644)?;
                    cx.apply(&id, None, t.finish()?).await?;
                    id
                }
                1 => {
                    rw_layer(&cx, &format!("rw-{i}"), Some(&parent), vec![file(&name, name.as_bytes(), 0o644)]).await?
                }
                _ => {
                    let id = cx.create(&format!("child-{i}"), Some(&parent)).await?;
                    let mut t = TarMaker::new();
                    t.file(&name, name.as_bytes(), 0o644)?;
                    cx.apply(&id, Some(&parent), t.finish()?).await?;
                    id
                }
            };
            Ok((i, id))
        }));
    }
    let made = join_all(tasks).await?;
    for (i, id) in &made {
        let m = cx.manifest(id).await?;
        let own = m.get(&format!("/mine-{i}")).is_some();
        let inherited = m.get("/shared/p").is_some() == (i % 3 != 0);
        ensure!(own && inherited && m.len() == if i % 3 == 0 { 1 } else { 3 }, "layer {i}:\n{}", m.render(20));
    }
    let mut want: BTreeSet<CacheId> = made.iter().map(|(_, id)| id.clone()).collect();
    want.insert(parent.clone());
    let got: BTreeSet<CacheId> = cx.driver().ids().await?.into_iter().collect();
    ensure!(got == want, "ids() after concurrent creates: {} layers, want {}", got.len(), want.len());

    let parent_path = cx.driver().get(&parent, "").await?;
    let removals = made
        .into_iter()
        .map(|(i, id)| {
            let cx = cx.clone();
            tokio::spawn(async move { cx.driver().remove(&id).await.with_context(|| format!("remove layer {i}")) })
        })
        .collect();
    join_all(removals).await?;
    let p = parent_path.clone();
    let m = blocking(move || scan(&p, ScanOpts::default())).await?;
    ensure!(m.get("/shared/p").is_some(), "the mounted parent lost its file while its children were removed");
    cx.driver().put(&parent).await?;
    let left = cx.driver().ids().await?;
    ensure!(left == vec![parent.clone()], "ids() after removing every child: {left:?}");
    Ok(())
}

/// Eight children of one parent diffed at once (`diff`, `changes`,
/// `diff_size` in parallel, so the parent is shared by many naive diffs);
/// each diff commits to a copy of its child.
pub async fn concurrent_diff(cx: Cx) -> CaseResult {
    let mut ops = vec![dir("/data", 0o755)];
    ops.extend((0..200).map(|i| file(&format!("/data/f{i}"), format!("file {i}"), 0o644)));
    let parent = committed_layer(&cx, "parent", None, ops).await?;
    next_tick().await;
    let mut children = Vec::new();
    for c in 0..8 {
        let edits = vec![
            file(&format!("/data/f{c}"), format!("child {c}"), 0o644),
            rm(&format!("/data/f{}", 100 + c)),
            file(&format!("/child-{c}"), vec![c as u8; 1000 * (c + 1)], 0o600),
        ];
        children.push(rw_layer(&cx, &format!("child-{c}"), Some(&parent), edits).await?);
    }
    let mut tasks = Vec::new();
    for (c, child) in children.iter().enumerate() {
        let (cx, parent, child) = (cx.clone(), parent.clone(), child.clone());
        tasks.push(tokio::spawn(async move {
            let d = cx.driver();
            let label = format!("committed-{c}");
            let (changes, size, committed) = tokio::join!(
                d.changes(&child, Some(&parent)),
                d.diff_size(&child, Some(&parent)),
                commit(&cx, &label, &child, Some(&parent)),
            );
            let changes = changes.with_context(|| format!("changes of child {c}"))?;
            ensure!(changes.len() == 4, "child {c}: changes = {changes:?}");
            let want = (1000 * (c + 1) + format!("child {c}").len()) as u64;
            ensure!(size? == want, "child {c}: diff_size is not {want}");
            let (copy, applied) = committed?;
            ensure!(applied == want, "child {c}: apply_diff applied {applied} bytes, want {want}");
            ensure_same(&cx.manifest(&child).await?, &cx.manifest(&copy).await?, &format!("child {c} committed"))
        }));
    }
    join_all(tasks).await.map(drop)
}
