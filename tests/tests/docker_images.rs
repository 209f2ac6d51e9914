//! Images between layerd's image store and a real dockerd 20.10 (Debian's
//! `docker.io`, private instances, [`conformance::dockerd`]), each test a
//! busybox-static image of two layers:
//!
//! - `docker save` → `ImageStore::load_path` and `load` (a stream): same
//!   image id as dockerd's, every layer's DiffID checked;
//! - `ImageStore::save` (docker-archive) → `docker load` → `docker run
//!   --network none` prints the file of the top layer;
//! - one overlay2 root, both ways: images layerd loaded are in dockerd's
//!   `docker images` and run; images dockerd loaded open in layerd's store.
//!
//! Skipped, saying why, only where dockerd is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result};
use conformance::dockerd::{Dockerd, DockerdOpts, binary_or_skip};
use images::ImageStore;
use images::archive::Format;
use layer::Store;
use sha2::{Digest, Sha256};

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn tar_of(files: &[(&str, &[u8], u32)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    for (path, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, path, target).unwrap();
    }
    b.into_inner().unwrap()
}

/// A docker-archive (in `docker save`'s member order: manifest.json last) of
/// a busybox image: `bin/` in the base layer, `etc/msg` on top.
fn busybox_archive(tag: &str) -> (Vec<u8>, String) {
    let bb = fs::read("/bin/busybox").expect("busybox-static (/bin/busybox)");
    let l1 = tar_of(&[("bin/busybox", &bb, 0o755)], &[("bin/sh", "busybox"), ("bin/cat", "busybox")]);
    let l2 = tar_of(&[("etc/msg", b"hello from layerd\n", 0o644)], &[]);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/cat","/etc/msg"],"Labels":{{"tag":"{tag}"}}}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        sha256(&l1),
        sha256(&l2)
    );
    let id = sha256(config.as_bytes());
    let cfg = format!("{}.json", &id[7..]);
    let manifest = format!(r#"[{{"Config":"{cfg}","RepoTags":["{tag}"],"Layers":["a/layer.tar","b/layer.tar"]}}]"#);
    let members: [(&str, &[u8], u32); 4] = [
        ("a/layer.tar", &l1, 0o644),
        ("b/layer.tar", &l2, 0o644),
        (&cfg, config.as_bytes(), 0o644),
        ("manifest.json", manifest.as_bytes(), 0o644),
    ];
    (tar_of(&members, &[]), id)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir_in("/var/tmp").unwrap()
}

async fn open(root: &Path, driver: &str) -> Result<(Store, ImageStore)> {
    let d = drivers::registry::open(driver, &root.join(driver))?;
    let layers = Store::open(root, d).await?;
    let images = ImageStore::open(layers.clone()).await?;
    Ok((layers, images))
}

fn docker_id(d: &Dockerd, image: &str) -> Result<String> {
    Ok(d.docker(&["image", "inspect", "--format", "{{.Id}}", image])?.trim().to_owned())
}

#[test]
fn docker_save_loads_into_layerd_and_layerd_save_runs_in_docker() -> Result<()> {
    let Some(bin) = binary_or_skip("docker_save_loads_into_layerd_and_layerd_save_runs_in_docker") else {
        return Ok(());
    };
    let tmp = scratch("dk-img-");
    let work = tmp.path().join("work");
    fs::create_dir(&work)?;
    let mut d = Dockerd::start(DockerdOpts::new(&bin, tmp.path().join("docker")).arg("--storage-driver=vfs"))?;
    let (archive, id) = busybox_archive("bb:1");
    let input = work.join("in.tar");
    fs::write(&input, &archive)?;
    d.docker(&["load", "-i", input.to_str().unwrap()])?;
    assert_eq!(docker_id(&d, "bb:1")?, id);

    // 1. docker save → layerd, from the file (in place) and as a stream.
    let saved = work.join("docker-saved.tar");
    d.docker(&["save", "-o", saved.to_str().unwrap(), "bb:1"])?;
    let rt = runtime();
    let ours = work.join("layerd-saved.tar");
    rt.block_on(async {
        let (layers, images) = open(&tmp.path().join("l1"), "vfs").await?;
        let r = images.load_path(&saved).await?;
        assert_eq!(r.images[0].id.to_string(), id);
        assert_eq!(r.images[0].names, vec!["docker.io/library/bb:1".to_string()]);
        assert_eq!(r.bytes_spooled, 0, "read in place");
        let (layers2, images2) = open(&tmp.path().join("l2"), "vfs").await?;
        let r = images2.load(Cursor::new(fs::read(&saved)?)).await?;
        assert_eq!(r.images[0].id.to_string(), id, "as a stream, in docker's order");
        layers2.shutdown().await?;
        // 2. layerd save → docker load → docker run.
        let out = fs::File::create(&ours)?;
        images.save(&["bb:1".to_string()], Format::Docker, out).await?;
        layers.shutdown().await?;
        anyhow::Ok(())
    })?;
    d.docker(&["rmi", "bb:1"])?;
    d.docker(&["load", "-i", ours.to_str().unwrap()]).context("docker load of layerd's save")?;
    assert_eq!(docker_id(&d, "bb:1")?, id);
    let out = d.docker(&["run", "--rm", "--network", "none", "bb:1"])?;
    assert_eq!(out, "hello from layerd\n");
    d.stop()?;
    Ok(())
}

#[test]
fn one_overlay2_root_images_go_both_ways_between_layerd_and_dockerd() -> Result<()> {
    let Some(bin) = binary_or_skip("one_overlay2_root_images_go_both_ways_between_layerd_and_dockerd") else {
        return Ok(());
    };
    let tmp = scratch("dk-img2-");
    let root = tmp.path().join("root");
    let rt = runtime();
    let (archive, id) = busybox_archive("fromlayerd:1");
    rt.block_on(async {
        let (name, driver, _) = drivers::registry::select(&root)?;
        assert_eq!(name, "overlay2");
        let layers = Store::open(&root, driver).await?;
        let images = ImageStore::open(layers.clone()).await?;
        images.load(Cursor::new(archive)).await?;
        layers.shutdown().await?;
        anyhow::Ok(())
    })?;
    // dockerd sees the image layerd loaded, and runs it.
    let mut d = Dockerd::start(DockerdOpts::new(&bin, &root))?;
    assert_eq!(docker_id(&d, "fromlayerd:1")?, id);
    assert_eq!(d.docker(&["run", "--rm", "--network", "none", "fromlayerd:1"])?, "hello from layerd\n");
    // dockerd names it again and loads one of its own.
    d.docker(&["tag", "fromlayerd:1", "bydocker:2"])?;
    let (other, other_id) = busybox_archive("other:3");
    let f = tmp.path().join("other.tar");
    fs::write(&f, &other)?;
    d.docker(&["load", "-i", f.to_str().unwrap()])?;
    assert_ne!(other_id, id, "another image on the same layers");
    d.stop()?;
    rt.block_on(async {
        let (_, driver, _) = drivers::registry::select(&root)?;
        let (layers, images) = ImageStore::open_with_layers(&root, driver).await?;
        assert_eq!(images.get("bydocker:2")?.id.to_string(), id);
        assert_eq!(images.get("other:3")?.id.to_string(), other_id);
        assert_eq!(images.get("fromlayerd:1")?.id.to_string(), id);
        layers.shutdown().await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
