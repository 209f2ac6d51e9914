//! containerd's `checkSnapshots`, in driver terms: each layer of a chain is
//! made the way the layer store commits a container —
//! `create_rw(rw, parent)` → `get` → edit → `put` → `diff(rw, parent)` →
//! `create(layer, parent)` → `apply_diff(layer, parent, diff)` — and every
//! step is compared with a flat directory that had the same edits applied.

use std::path::PathBuf;

use anyhow::Context;
use graphdriver::CacheId;

use super::manifest::{Manifest, ScanOpts, ensure_same, scan};
use super::ops::{Op, apply};
use super::{Cx, blocking, next_tick};

/// Read a plain directory.
pub async fn scan_dir(dir: PathBuf) -> anyhow::Result<Manifest> {
    blocking(move || scan(&dir, ScanOpts::default())).await
}

/// Apply `ops` to a plain directory.
pub async fn apply_dir(dir: PathBuf, ops: Vec<Op>) -> anyhow::Result<()> {
    blocking(move || apply(&dir, &ops)).await
}

/// A read-write layer on `parent` with `ops` applied through `get`/`put`.
pub async fn rw_layer(cx: &Cx, label: &str, parent: Option<&CacheId>, ops: Vec<Op>) -> anyhow::Result<CacheId> {
    let id = cx.create_rw(label, parent).await?;
    cx.write(&id, ops).await.with_context(|| format!("write into {label}"))?;
    Ok(id)
}

/// Commit `rw` as the layer store does: a new `create`d layer on `parent`
/// filled with `apply_diff(diff(rw, parent))`. Returns the new id and the
/// byte count `apply_diff` reported.
pub async fn commit(cx: &Cx, label: &str, rw: &CacheId, parent: Option<&CacheId>) -> anyhow::Result<(CacheId, u64)> {
    let tar = cx.diff_bytes(rw, parent).await?;
    let id = cx.create(label, parent).await?;
    let n = cx.apply(&id, parent, tar).await?;
    Ok((id, n))
}

/// A committed layer on `parent` holding `ops` (made through a temporary
/// read-write layer, which is removed).
pub async fn committed_layer(cx: &Cx, label: &str, parent: Option<&CacheId>, ops: Vec<Op>) -> anyhow::Result<CacheId> {
    let rw = rw_layer(cx, &format!("{label}-rw"), parent, ops).await?;
    let (id, _) = commit(cx, label, &rw, parent).await?;
    cx.driver().remove(&rw).await.with_context(|| format!("remove {label}-rw"))?;
    Ok(id)
}

/// Build a chain with one layer per entry of `layers`, checking each step
/// against a flat directory. Returns the committed layer ids, bottom first.
pub async fn check_chain(cx: &Cx, name: &str, layers: &[Vec<Op>]) -> anyhow::Result<Vec<CacheId>> {
    let flat = cx.flat(&format!("{name}-flat"))?;
    let mut parent: Option<CacheId> = None;
    let mut out = Vec::new();
    for (i, ops) in layers.iter().enumerate() {
        let n = i + 1;
        if parent.is_some() {
            next_tick().await;
        }
        let rw = cx.create_rw(&format!("{name}-rw-{n}"), parent.as_ref()).await?;
        let edits = ops.clone();
        let (before, after) = cx
            .with_mounted(&rw, move |p| {
                let before = scan(&p, ScanOpts::default())?;
                apply(&p, &edits)?;
                Ok((before, scan(&p, ScanOpts::default())?))
            })
            .await
            .with_context(|| format!("layer {n}: edit the read-write layer"))?;
        ensure_same(&scan_dir(flat.clone()).await?, &before, &format!("layer {n}: fresh read-write layer vs flat"))?;
        apply_dir(flat.clone(), ops.clone()).await?;
        let want = scan_dir(flat.clone()).await?;
        ensure_same(&want, &after, &format!("layer {n}: read-write layer after the edits vs flat"))?;

        let (layer, _) = commit(cx, &format!("{name}-{n}"), &rw, parent.as_ref())
            .await
            .with_context(|| format!("layer {n}: commit"))?;
        let got = cx.manifest(&layer).await?;
        ensure_same(&want, &got, &format!("layer {n}: committed layer (apply_diff of the rw diff) vs flat"))?;
        cx.driver().remove(&rw).await.with_context(|| format!("layer {n}: remove the read-write layer"))?;
        parent = Some(layer.clone());
        out.push(layer);
    }
    let view = cx.create_rw(&format!("{name}-view"), parent.as_ref()).await?;
    ensure_same(&scan_dir(flat).await?, &cx.manifest(&view).await?, "read-write view on top of the chain vs flat")?;
    cx.driver().remove(&view).await.context("remove the view")?;
    Ok(out)
}
