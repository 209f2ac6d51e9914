//! Docker's own data roots, both ways, against a real dockerd 20.10
//! (Debian's `docker.io`; `.ci/run` installs it), each on a private
//! instance ([`conformance::dockerd`]):
//!
//! - a root dockerd filled, on overlay2 and on vfs (an imported image, a loaded two-layer image with
//!   symlinks, hardlinks, whiteouts and an opaque dir, a committed container,
//!   kept containers) opens in layerd as is: every layer and container with
//!   Docker's ids, each layer exported byte-exactly, each container's
//!   changes as `docker diff` saw them; the same tars registered in a fresh
//!   layerd root get the `size` Docker wrote; and a default dockerd still
//!   runs containers on that root afterwards;
//! - a root layerd filled opens in a default dockerd, which picks overlay2,
//!   runs containers on layerd's layers (its load archive holds no layer
//!   data at all, so it can only use what layerd wrote), and `docker save`
//!   rebuilds every layer exactly.
//!
//! Skipped, saying why, only where dockerd is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use conformance::dockerd::{Dockerd, DockerdOpts, binary_or_skip};
use graphdriver::ChangeKind;
use layer::{ChainId, DiffId, RegisterOpts, RwName, RwOpts, Store};
use sha2::{Digest, Sha256};

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One tar member.
enum M<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn tar_of(members: &[M<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let (path, data): (&str, &[u8]) = match m {
            M::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (p, b"")
            }
            M::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                (p, data)
            }
            M::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_link_name(target).unwrap();
                (p, b"")
            }
            M::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o755);
                h.set_link_name(target).unwrap();
                (p, b"")
            }
        };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A root filesystem that can run `/bin/sh -c` with `cat`, `rm` and `ln`:
/// the host's dash and those (which need only libc), libc and the loader, plus a few files, a symlink and a hardlink.
fn rootfs_tar() -> Vec<u8> {
    let read = |p: &str| fs::read(p).unwrap_or_else(|e| panic!("read {p}: {e}"));
    let (sh, cat, rm, ln) = (read("/bin/dash"), read("/bin/cat"), read("/bin/rm"), read("/bin/ln"));
    let (libc, ld) = (read("/lib/x86_64-linux-gnu/libc.so.6"), read("/lib64/ld-linux-x86-64.so.2"));
    tar_of(&[
        M::Dir("bin"),
        M::File("bin/sh", &sh),
        M::File("bin/cat", &cat),
        M::File("bin/rm", &rm),
        M::File("bin/ln", &ln),
        M::Dir("lib"),
        M::Dir("lib/x86_64-linux-gnu"),
        M::File("lib/x86_64-linux-gnu/libc.so.6", &libc),
        M::Dir("lib64"),
        M::File("lib64/ld-linux-x86-64.so.2", &ld),
        M::Dir("etc"),
        M::File("etc/msg", b"hello\n"),
        M::Symlink("etc/link", "msg"),
        M::Hardlink("etc/hard", "etc/msg"),
        M::Dir("tmp"),
    ])
}

/// A `docker load` archive of one image with `diff_ids`; `layers` are the
/// bytes stored for each layer (they need not be the layers at all).
fn docker_archive(tag: &str, diff_ids: &[String], layers: &[Vec<u8>]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        ids.join(",")
    );
    let config_name = format!("{}.json", sha256(config.as_bytes()).trim_start_matches("sha256:"));
    let layer_names: Vec<String> = (0..layers.len()).map(|i| format!("\"l{i}/layer.tar\"")).collect();
    let manifest =
        format!(r#"[{{"Config":"{config_name}","RepoTags":["{tag}"],"Layers":[{}]}}]"#, layer_names.join(","));
    let mut members = vec![M::File("manifest.json", manifest.as_bytes()), M::File(&config_name, config.as_bytes())];
    let dirs: Vec<String> = (0..layers.len()).map(|i| format!("l{i}")).collect();
    let files: Vec<String> = (0..layers.len()).map(|i| format!("l{i}/layer.tar")).collect();
    for i in 0..layers.len() {
        members.push(M::Dir(&dirs[i]));
        members.push(M::File(&files[i], &layers[i]));
    }
    tar_of(&members)
}

fn chains(diff_ids: &[String]) -> Vec<ChainId> {
    let mut out: Vec<ChainId> = Vec::new();
    for d in diff_ids {
        let diff = DiffId::parse(d).unwrap();
        out.push(ChainId::of(out.last(), &diff));
    }
    out
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

fn image_diff_ids(d: &Dockerd, image: &str) -> Result<Vec<String>> {
    Ok(lines(&d.docker(&["image", "inspect", "--format", "{{range .RootFS.Layers}}{{println .}}{{end}}", image])?))
}

fn cp_a(from: &Path, to: &Path) -> Result<()> {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    ensure!(st.success(), "cp -a {} {} failed", from.display(), to.display());
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn read_all(mut r: graphdriver::TarReader) -> Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        r.read_to_end(&mut v).map(|_| v)
    })
    .await?
    .context("read tar stream")
}

/// The directory names at the top of `root`, but layerd's lock file.
fn top_dirs(root: &Path) -> BTreeSet<String> {
    fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "layerd.lock")
        .collect()
}

fn scratch(prefix: &str) -> tempfile::TempDir {
    // On disk: overlay2 cannot use a tmpfs upper dir for everything we do.
    tempfile::Builder::new().prefix(prefix).tempdir_in("/var/tmp").unwrap()
}

#[test]
fn a_docker_overlay2_root_opens_in_layerd_and_still_runs_in_a_default_dockerd() -> Result<()> {
    let test = "a_docker_overlay2_root_opens_in_layerd_and_still_runs_in_a_default_dockerd";
    let Some(bin) = binary_or_skip(test) else { return Ok(()) };
    docker_root_opens_in_layerd(&bin, "overlay2")
}

#[test]
fn a_docker_vfs_root_opens_in_layerd_and_still_runs_in_dockerd() -> Result<()> {
    let Some(bin) = binary_or_skip("a_docker_vfs_root_opens_in_layerd_and_still_runs_in_dockerd") else {
        return Ok(());
    };
    docker_root_opens_in_layerd(&bin, "vfs")
}

/// dockerd with `driver` fills a root; layerd opens a copy as is (every
/// layer and container, exact exports, `docker diff`'s changes); the same
/// tars registered by layerd on that driver get the `size` Docker wrote;
/// dockerd still runs containers on the copy afterwards.
fn docker_root_opens_in_layerd(bin: &Path, driver: &str) -> Result<()> {
    let tmp = scratch(&format!("dk-{driver}-"));
    let (data, work) = (tmp.path().join("docker"), tmp.path().join("work"));
    fs::create_dir(&work)?;

    // 1. dockerd fills its root.
    let mut d = Dockerd::start(DockerdOpts::new(bin, &data).arg(format!("--storage-driver={driver}")))?;
    let rootfs = work.join("rootfs.tar");
    fs::write(&rootfs, rootfs_tar())?;
    d.docker(&["import", rootfs.to_str().unwrap(), "base:1"])?;
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let l1 = tar_of(&[
        M::Dir("data"),
        M::File("data/a", &big),
        M::Symlink("data/s", "a"),
        M::Symlink("data/long", "/a/much/longer/symlink/target"),
        M::Hardlink("data/h", "data/a"),
        M::File("data/gone", b"soon gone"),
        M::Dir("data/sub"),
        M::File("data/sub/old", b"old"),
    ]);
    let l2 = tar_of(&[
        M::Dir("data"),
        M::File("data/.wh.gone", b""),
        M::File("data/new", b"new!\n"),
        M::Dir("data/sub"),
        M::File("data/sub/.wh..wh..opq", b""),
        M::File("data/sub/fresh", b"fresh"),
    ]);
    let archive = work.join("loaded.tar");
    let loaded_ids = vec![sha256(&l1), sha256(&l2)];
    fs::write(&archive, docker_archive("loaded:1", &loaded_ids, &[l1.clone(), l2.clone()]))?;
    d.docker(&["load", "-i", archive.to_str().unwrap()])?;
    let script = "echo changed > /etc/msg; rm /etc/link; echo new > /new; ln -s /etc /tmp/etc";
    d.docker(&["run", "--network", "none", "--name", "c1", "base:1", "/bin/sh", "-c", script])?;
    d.docker(&["commit", "c1", "committed:1"])?;
    d.docker(&["create", "--network", "none", "--name", "keep", "loaded:1", "/bin/sh"])?;

    let mut images = BTreeMap::new();
    for image in ["base:1", "loaded:1", "committed:1"] {
        images.insert(image, image_diff_ids(&d, image)?);
    }
    assert_eq!(images["loaded:1"], loaded_ids);
    let mut containers = BTreeMap::new();
    for name in ["c1", "keep"] {
        let id = d.docker(&["inspect", "--format", "{{.Id}}", name])?.trim().to_owned();
        let image = d.docker(&["inspect", "--format", "{{.Config.Image}}", name])?.trim().to_owned();
        containers.insert(name, (id, image));
    }
    let docker_diff: BTreeSet<String> = lines(&d.docker(&["diff", "c1"])?).into_iter().collect();
    d.stop()?;

    // Docker's own numbers, from its layerdb.
    let layerdb = data.join("image").join(driver).join("layerdb/sha256");
    let mut want: BTreeMap<ChainId, (String, u64)> = BTreeMap::new();
    for ids in images.values() {
        for (chain, diff) in chains(ids).into_iter().zip(ids) {
            let size: u64 = fs::read_to_string(layerdb.join(chain.hex()).join("size"))?.trim().parse()?;
            want.insert(chain, (diff.clone(), size));
        }
    }

    // 2. layerd opens a copy, as is.
    let copy = tmp.path().join("copy");
    cp_a(&data, &copy)?;
    let before = top_dirs(&copy);
    let rt = runtime();
    let mut exported = BTreeMap::new();
    rt.block_on(async {
        let (name, opened, _) = drivers::registry::select(&copy)?;
        assert_eq!(name, driver, "auto recognises Docker's {driver} root");
        let store = Store::open(&copy, opened).await?;
        let listed: BTreeSet<ChainId> = store.list().into_iter().map(|l| l.chain_id).collect();
        assert_eq!(listed, want.keys().cloned().collect(), "every layer, with Docker's ids");
        for (chain, (diff, size)) in &want {
            let info = store.get(chain)?;
            assert_eq!((&info.diff_id.to_string(), info.size), (diff, *size), "{chain}");
            let tar = read_all(store.tar_stream(chain).await?).await?;
            assert_eq!(&sha256(&tar), diff, "export of {chain} is byte-exact");
            exported.insert(chain.clone(), tar);
        }
        let rw: BTreeMap<String, Option<ChainId>> =
            store.list_rw().into_iter().map(|r| (r.name.to_string(), r.parent)).collect();
        for (name, (id, image)) in &containers {
            let top = chains(&images[image.as_str()]).pop();
            assert_eq!(rw.get(id), Some(&top), "container {name} ({id}) on its image's top layer");
        }
        assert_eq!(rw.len(), containers.len(), "{rw:?}");
        let c1 = RwName::parse(&containers["c1"].0)?;
        let changes: BTreeSet<String> = store
            .changes(&c1)
            .await?
            .into_iter()
            .map(|c| {
                let k = match c.kind {
                    ChangeKind::Add => "A",
                    ChangeKind::Modify => "C",
                    ChangeKind::Delete => "D",
                };
                format!("{k} {}", c.path)
            })
            .collect();
        assert_eq!(changes, docker_diff, "the container's changes, as `docker diff` saw them");
        store.shutdown().await?;
        anyhow::Ok(())
    })?;
    let added: Vec<String> = top_dirs(&copy).difference(&before).cloned().collect();
    assert!(added.is_empty(), "layerd added {added:?} to a Docker root");

    // 3. The same tars registered by layerd get the size Docker wrote.
    let fresh = tmp.path().join("fresh");
    rt.block_on(async {
        let store = Store::open(&fresh, drivers::registry::open(driver, &fresh)?).await?;
        for ids in images.values() {
            let mut parent: Option<ChainId> = None;
            for chain in chains(ids) {
                let tar = exported[&chain].clone();
                let opts = RegisterOpts { parent: parent.clone(), ..RegisterOpts::default() };
                let info = store.register(Box::new(std::io::Cursor::new(tar)), opts).await?;
                assert_eq!(info.chain_id, chain);
                assert_eq!(info.size, want[&chain].1, "size of {chain}: layerd vs Docker's size file");
                parent = Some(chain);
            }
        }
        store.shutdown().await?;
        anyhow::Ok(())
    })?;

    // 4. dockerd still starts and runs containers on the copy: a default
    // one on overlay2 (dockerd never picks vfs by itself, so that is named).
    let mut opts = DockerdOpts::new(bin, &copy);
    if driver != "overlay2" {
        opts = opts.arg(format!("--storage-driver={driver}"));
    }
    let mut d = Dockerd::start(opts)?;
    assert_eq!(d.docker(&["info", "--format", "{{.Driver}}"])?.trim(), driver);
    assert_eq!(
        d.docker(&["run", "--rm", "--network", "none", "committed:1", "/bin/cat", "/new", "/etc/msg"])?,
        "new\nchanged\n"
    );
    assert_eq!(d.docker(&["start", "-a", "c1"])?, "");
    d.stop()?;
    Ok(())
}

#[test]
fn a_layerd_root_opens_in_a_default_dockerd_which_saves_every_layer_exactly() -> Result<()> {
    let test = "a_layerd_root_opens_in_a_default_dockerd_which_saves_every_layer_exactly";
    let Some(bin) = binary_or_skip(test) else { return Ok(()) };
    let tmp = scratch("dk-b");
    let (root, work) = (tmp.path().join("root"), tmp.path().join("work"));
    fs::create_dir(&work)?;

    // 1. layerd fills a fresh root, driver chosen as `layerd --driver auto` does.
    let l1 = rootfs_tar();
    let l2 = tar_of(&[
        M::Dir("etc"),
        M::File("etc/.wh.link", b""),
        M::File("etc/new", b"from layerd\n"),
        M::Symlink("etc/new-link", "new"),
        M::Dir("tmp"),
        M::File("tmp/.wh..wh..opq", b""),
    ]);
    let l3 = tar_of(&[M::Dir("srv"), M::File("srv/top", b"top\n"), M::Hardlink("srv/top2", "srv/top")]);
    let diff_ids = vec![sha256(&l1), sha256(&l2), sha256(&l3)];
    let want = chains(&diff_ids);
    let rw = RwName::parse("layerd-rw")?;
    let rt = runtime();
    rt.block_on(async {
        let (name, driver, _) = drivers::registry::select(&root)?;
        assert_eq!(name, "overlay2");
        let store = Store::open(&root, driver).await?;
        let mut parent = None;
        for (tar, chain) in [&l1, &l2, &l3].into_iter().zip(&want) {
            let opts = RegisterOpts { parent, ..RegisterOpts::default() };
            let info = store.register(Box::new(std::io::Cursor::new(tar.clone())), opts).await?;
            assert_eq!(&info.chain_id, chain);
            parent = Some(info.chain_id);
        }
        store.create_rw(&rw, want.last(), RwOpts { init: true, ..RwOpts::default() }).await?;
        let merged = store.mount(&rw).await?;
        fs::write(merged.join("srv/written"), "by layerd\n")?;
        store.unmount(&rw).await?;
        store.shutdown().await?;
        anyhow::Ok(())
    })?;
    assert_eq!(top_dirs(&root), ["image", "overlay2"].map(String::from).into(), "one driver's dirs only");

    // 2. A default dockerd (no --storage-driver) on that root.
    let mut d = Dockerd::start(DockerdOpts::new(&bin, &root))?;
    assert_eq!(d.docker(&["info", "--format", "{{.Driver}}"])?.trim(), "overlay2");
    // The archive carries no layer data: dockerd finds every layer by
    // ChainID in layerd's layerdb, or the load fails.
    let garbage = vec![b"not a tar: dockerd must use layerd's layer".to_vec(); 3];
    let archive = work.join("image.tar");
    fs::write(&archive, docker_archive("fromlayerd:1", &diff_ids, &garbage))?;
    d.docker(&["load", "-i", archive.to_str().unwrap()])?;
    let out = d.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "fromlayerd:1",
        "/bin/sh",
        "-c",
        "cat /etc/msg /etc/hard /etc/new-link /srv/top2; test -e /etc/link || echo link-gone",
    ])?;
    assert_eq!(out, "hello\nhello\nfrom layerd\ntop\nlink-gone\n");
    let saved = work.join("saved.tar");
    d.docker(&["save", "-o", saved.to_str().unwrap(), "fromlayerd:1"])?;
    d.stop()?;

    // 3. `docker save` rebuilt every layerd-written layer exactly.
    let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(fs::File::open(&saved)?);
    for e in ar.entries()? {
        let mut e = e?;
        let mut v = Vec::new();
        e.read_to_end(&mut v)?;
        files.insert(e.path()?.into_owned(), v);
    }
    let manifest = String::from_utf8(files[Path::new("manifest.json")].clone())?;
    let layers: Vec<&str> =
        manifest.split("\"Layers\":[").nth(1).unwrap().split(']').next().unwrap().split(',').collect();
    let saved_ids: Vec<String> = layers.iter().map(|l| sha256(&files[Path::new(l.trim_matches('"'))])).collect();
    assert_eq!(saved_ids, diff_ids, "docker save rebuilt each layer byte for byte");

    // 4. And layerd still has everything, its RW layer included.
    rt.block_on(async {
        let store = Store::open(&root, drivers::registry::open("overlay2", &root)?).await?;
        for (chain, diff) in want.iter().zip(&diff_ids) {
            assert_eq!(&sha256(&read_all(store.tar_stream(chain).await?).await?), diff);
        }
        let changes = store.changes(&rw).await?;
        assert!(changes.iter().any(|c| c.path == "/srv/written" && c.kind == ChangeKind::Add), "{changes:?}");
        store.shutdown().await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
