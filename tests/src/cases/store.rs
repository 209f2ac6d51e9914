//! The layer store on top of the driver: tars registered on top of each
//! other come back byte for byte from `tar_stream`, at the store's maximum
//! depth; a container's RW layer commits through the driver.

use std::io::{Cursor, Read};

use anyhow::{Context, ensure};
use graphdriver::CacheId;
use layer::{ChainId, DiffId, Digest, RegisterOpts, RwName, RwOpts, Store};

use crate::harness::ops::content;
use crate::harness::tars::TarMaker;
use crate::harness::{CaseResult, Cx, blocking};

async fn open_store(cx: &Cx) -> anyhow::Result<Store> {
    Store::open(cx.work().join("store"), cx.driver_arc()).await.context("open the layer store")
}

async fn export(store: &Store, chain: &ChainId) -> anyhow::Result<Vec<u8>> {
    let mut r = store.tar_stream(chain).await.with_context(|| format!("tar_stream {chain}"))?;
    blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).context("read the tar stream")?;
        Ok(out)
    })
    .await
}

/// Layer `i` of the deep chain: every layer adds a file of an odd size;
/// others add PAX xattrs and long names, links, whiteouts of the layer
/// below's file, opaque dirs, fifos and devices, a ustar-prefix name.
fn chain_tar(i: usize) -> anyhow::Result<Vec<u8>> {
    let mut t = TarMaker::new();
    if i == 0 {
        t.dir("/layers", 0o755)?.dir("/links", 0o755)?.dir("/opq", 0o755)?.dir("/dev", 0o755)?;
    }
    let own = format!("/layers/{i}");
    t.file(&own, &content(i * 37 % 1000 + 1, i as u64), 0o644)?;
    match i % 5 {
        1 => {
            let long = format!("/layers/{}-{i}", "long-name-".repeat(12));
            t.pax_file(&long, b"long", 0o600, &[("SCHILY.xattr.user.layer", i.to_string().as_bytes())])?;
        }
        2 => {
            t.symlink(&format!("/links/l{i}"), &format!("../layers/{i}"))?;
            t.hardlink(&format!("/layers/{i}.hard"), &own)?;
        }
        3 => {
            t.whiteout(&format!("/layers/{}", i - 1))?;
        }
        4 => {
            t.dir("/opq", 0o755)?.opaque("/opq")?.file(&format!("/opq/f{i}"), b"opaque", 0o644)?;
        }
        _ => {
            let deep = format!("/{}/f{i}", ["dir"; 30].join("/"));
            t.file_ustar(&deep, b"prefix", 0o644)?;
        }
    }
    if i.is_multiple_of(7) {
        t.fifo(&format!("/dev/fifo{i}"), 0o600)?.char_dev(&format!("/dev/c{i}"), 1, 3 + i as u32, 0o666)?;
    }
    if i == 50 {
        t.file_owned("/big", &content((1 << 20) + 3, 50), 0o640, 1000, 1000)?;
    }
    Ok(t.finish()?)
}

/// moby's "tar-stream stability", at depth: [`layer::MAX_DEPTH`] tars
/// registered on top of each other each export to exactly their input
/// bytes, and the top layer's tree shows every whiteout and opaque dir.
pub async fn store_deep_chain_export(cx: Cx) -> CaseResult {
    let store = open_store(&cx).await?;
    let mut chain: Vec<(ChainId, Vec<u8>, String)> = Vec::new();
    for i in 0..layer::MAX_DEPTH {
        let tar = chain_tar(i)?;
        let parent = chain.last().map(|(c, _, _)| c.clone());
        let opts = RegisterOpts { parent, ..RegisterOpts::default() };
        let info = store
            .register(Box::new(Cursor::new(tar.clone())), opts)
            .await
            .with_context(|| format!("register layer {i}"))?;
        ensure!(info.diff_id == DiffId(Digest::of(&tar)), "layer {i}: DiffID is not the tar's sha256");
        ensure!(info.depth == i + 1, "layer {i}: depth {}", info.depth);
        cx.track_layer(&format!("layer-{i}"), CacheId::parse(&info.cache_id)?);
        chain.push((info.chain_id, tar, info.cache_id));
    }
    for (i, (c, tar, _)) in chain.iter().enumerate() {
        let got = export(&store, c).await?;
        ensure!(got.len() == tar.len(), "layer {i}: tar_stream gave {} bytes, registered {}", got.len(), tar.len());
        ensure!(got == *tar, "layer {i}: tar_stream differs from the registered bytes");
    }
    let top = CacheId::parse(&chain[chain.len() - 1].2)?;
    let m = cx.manifest(&top).await?;
    let n = layer::MAX_DEPTH - 1;
    for i in 0..=n {
        let whited_out = i < n && (i + 1) % 5 == 3;
        ensure!(
            m.get(&format!("/layers/{i}")).is_some() != whited_out,
            "top layer: /layers/{i} present = {}",
            !whited_out
        );
    }
    let opq: Vec<&String> = m.0.keys().filter(|k| k.starts_with("/opq/")).collect();
    let last_opq = (0..=n).rev().find(|i| i % 5 == 4).context("no opaque layer")?;
    ensure!(opq == [&format!("/opq/f{last_opq}")], "top layer: /opq holds {opq:?}, want only f{last_opq}");
    ensure!(m.get("/big").map(|e| (e.size, e.uid)) == Some((Some((1 << 20) + 3), 1000)), "top layer: /big is wrong");
    store.shutdown().await.context("shut the store down")?;
    Ok(())
}

/// A container's RW layer (with an init layer) on a registered layer:
/// mount, edit, `changes`, commit; the committed layer exports the bytes
/// its DiffID names and holds the edits; releasing everything removes
/// every driver layer.
pub async fn store_rw_commit(cx: Cx) -> CaseResult {
    let store = open_store(&cx).await?;
    let mut t = TarMaker::new();
    t.dir("/etc", 0o755)?.file("/etc/hostname", b"base\n", 0o644)?.file("/etc/gone", b"x", 0o644)?;
    let base = store.register(Box::new(Cursor::new(t.finish()?)), RegisterOpts::default()).await?;
    let name = RwName::parse("conformance-rw")?;
    let opts = RwOpts { init: true, ..RwOpts::default() };
    store.create_rw(&name, Some(&base.chain_id), opts).await.context("create_rw")?;
    let path = store.mount(&name).await.context("mount")?;
    blocking(move || {
        std::fs::write(path.join("etc/hostname"), b"container\n")?;
        std::fs::remove_file(path.join("etc/gone"))?;
        std::fs::create_dir(path.join("data"))?;
        std::fs::write(path.join("data/new"), content(5000, 1))?;
        Ok(())
    })
    .await?;
    store.unmount(&name).await.context("unmount")?;
    let mut changes: Vec<String> = store.changes(&name).await?.into_iter().map(|c| c.path).collect();
    changes.sort();
    ensure!(changes == ["/data", "/data/new", "/etc", "/etc/gone", "/etc/hostname"], "changes = {changes:?}");
    let committed = store.commit(&name).await.context("commit")?;
    ensure!(committed.parent.as_ref() == Some(&base.chain_id), "the committed layer's parent is wrong");
    let bytes = export(&store, &committed.chain_id).await?;
    ensure!(DiffId(Digest::of(&bytes)) == committed.diff_id, "tar_stream of the commit does not match its DiffID");
    let id = CacheId::parse(&committed.cache_id)?;
    cx.track_layer("committed", id.clone());
    let m = cx.manifest(&id).await?;
    ensure!(
        m.get("/etc/gone").is_none() && m.get("/data/new").and_then(|e| e.size) == Some(5000),
        "the committed layer:\n{}",
        m.render(20)
    );
    store.release_rw(&name).await.context("release_rw")?;
    store.release(&committed.chain_id).await?;
    store.release(&base.chain_id).await?;
    store.settle().await;
    let left = cx.driver().ids().await?;
    ensure!(left.is_empty(), "driver layers left after releasing everything: {left:?}");
    store.shutdown().await.context("shut the store down")?;
    Ok(())
}
