//! Load and save over real stores on vfs: round trips in both formats, from
//! a stream, a tar file and a directory; hostile archives fail with
//! InvalidArgument and leave no image and no layer behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::Path;

use graphdriver::ErrorKind;
use images::archive::Format;
use images::{ImageStore, NewImage, names};
use layer::{DiffId, Digest, RegisterOpts, Store};

struct Env {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    layers: Store,
    images: ImageStore,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let driver = drivers::registry::open("vfs", &root.join("vfs")).unwrap();
    let layers = Store::open(&root, driver).await.unwrap();
    let images = ImageStore::open(layers.clone()).await.unwrap();
    Env { dir: tmp.path().to_path_buf(), _tmp: tmp, layers, images }
}

impl Env {
    /// Nothing left: no image, no layer, no spool.
    async fn assert_empty(&self) {
        self.layers.settle().await;
        assert!(self.images.list().is_empty(), "{:?}", self.images.list());
        assert!(self.layers.list().is_empty(), "{:?}", self.layers.list());
        let tmp = self.dir.join("root/image/vfs/layerd-images/tmp");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "spool left behind");
    }
}

fn config_of(diffs: &[DiffId], tag: &str) -> Vec<u8> {
    let ids: Vec<String> = diffs.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["T={tag}"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        ids.join(",")
    )
    .into_bytes()
}

/// Two images sharing a base layer, registered and recorded; the caller's
/// layer references are dropped.
async fn seed(e: &Env) -> (images::ImageInfo, images::ImageInfo) {
    let base = testkit::tars::files_tar(&[("etc/base", b"base"), ("bin/x", &[7u8; 5000])]);
    let a = testkit::tars::files_tar(&[("a", b"a")]);
    let b = testkit::tars::files_tar(&[("b", &[1u8; 3 << 20])]);
    let l0 = e.layers.register(Box::new(Cursor::new(base)), RegisterOpts::default()).await.unwrap();
    let p = Some(l0.chain_id.clone());
    let la = e
        .layers
        .register(Box::new(Cursor::new(a)), RegisterOpts { parent: p.clone(), ..Default::default() })
        .await
        .unwrap();
    let lb =
        e.layers.register(Box::new(Cursor::new(b)), RegisterOpts { parent: p, ..Default::default() }).await.unwrap();
    let ia = e
        .images
        .put(
            NewImage::from_config(config_of(&[l0.diff_id.clone(), la.diff_id.clone()], "a")),
            &[names::parse("app:a").unwrap()],
        )
        .await
        .unwrap();
    let ib = e
        .images
        .put(
            NewImage::from_config(config_of(&[l0.diff_id.clone(), lb.diff_id.clone()], "b")),
            &[names::parse("localhost:5000/app:b").unwrap()],
        )
        .await
        .unwrap();
    for c in [&la.chain_id, &lb.chain_id, &l0.chain_id] {
        e.layers.release(c).await.unwrap();
    }
    (ia, ib)
}

async fn save(e: &Env, refs: &[&str], format: Format) -> Vec<u8> {
    let (tx, rx) = std::sync::mpsc::channel();
    struct W(std::sync::mpsc::Sender<Vec<u8>>);
    impl std::io::Write for W {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let refs: Vec<String> = refs.iter().map(|s| s.to_string()).collect();
    e.images.save(&refs, format, W(tx)).await.unwrap();
    rx.try_iter().flatten().collect()
}

fn untar(bytes: &[u8], to: &Path) {
    tar::Archive::new(Cursor::new(bytes)).unpack(to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_in_both_formats_from_stream_file_and_dir() {
    let src = env().await;
    let (ia, ib) = seed(&src).await;
    for format in [Format::Docker, Format::Oci] {
        let bytes = save(&src, &["app:a", "localhost:5000/app:b"], format).await;
        // Stream, file and directory, each into a fresh store.
        for how in ["stream", "file", "dir"] {
            let dst = env().await;
            let report = match how {
                "stream" => dst.images.load(Cursor::new(bytes.clone())).await.unwrap(),
                "file" => {
                    let f = dst.dir.join("x.tar");
                    std::fs::write(&f, &bytes).unwrap();
                    dst.images.load_path(&f).await.unwrap()
                }
                _ => {
                    let d = dst.dir.join("x");
                    untar(&bytes, &d);
                    dst.images.load_path(&d).await.unwrap()
                }
            };
            assert_eq!(report.images.len(), 2, "{format:?} {how}");
            assert_eq!(report.layers_registered, 3, "{format:?} {how}: the shared base once");
            assert_eq!(report.bytes_spooled, 0, "{format:?} {how}: saved in load order");
            let a = dst.images.get("app:a").unwrap();
            let b = dst.images.get("localhost:5000/app:b").unwrap();
            assert_eq!((a.id.clone(), b.id.clone()), (ia.id.clone(), ib.id.clone()), "{format:?} {how}");
            assert_eq!(a.chain_id, ia.chain_id);
            // Each image holds its top layer once; the load kept nothing.
            for info in [&a, &b] {
                let l = dst.layers.get(info.chain_id.as_ref().unwrap()).unwrap();
                assert_eq!((l.references, l.leases), (0, 1), "{format:?} {how}");
            }
            // Loading again registers nothing and reads no layer.
            let again = dst.images.load(Cursor::new(bytes.clone())).await.unwrap();
            assert_eq!((again.layers_registered, again.layers_existing), (0, 3), "{format:?} {how}");
            // Save from the copy: byte-identical archive.
            let copy = save(&dst, &["app:a", "localhost:5000/app:b"], format).await;
            assert!(copy == bytes, "{format:?} {how}: save → load → save differs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_order_with_manifest_last_spools_and_loads() {
    let src = env().await;
    let (ia, ib) = seed(&src).await;
    let bytes = save(&src, &["app:a", "localhost:5000/app:b"], Format::Docker).await;
    // Reorder: layers first, manifest.json last (docker save's order).
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ar = tar::Archive::new(Cursor::new(&bytes));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut v).unwrap();
        members.push((name, v));
    }
    members.sort_by_key(|(n, _)| n == "manifest.json");
    let t: Vec<(&str, &[u8])> = members.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    let reordered = testkit::tars::files_tar(&t);
    let dst = env().await;
    let r = dst.images.load(Cursor::new(reordered)).await.unwrap();
    assert_eq!((r.images[0].id.clone(), r.images[1].id.clone()), (ia.id, ib.id));
    assert_eq!(r.layers_registered, 3, "{r:?}");
    // The 3 MiB layer came before manifest.json: spooled (small ones are kept in memory).
    assert!(r.bytes_spooled >= 3 << 20, "{r:?}");
    dst.assert_empty_spool();
}

impl Env {
    fn assert_empty_spool(&self) {
        let tmp = self.dir.join("root/image/vfs/layerd-images/tmp");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "spool left behind");
    }
}

/// A docker-archive of one image from raw parts.
fn docker_archive(manifest: &str, members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut all: Vec<(&str, &[u8])> = vec![("manifest.json", manifest.as_bytes())];
    all.extend_from_slice(members);
    testkit::tars::files_tar(&all)
}

fn layer_tar() -> (Vec<u8>, DiffId) {
    let t = testkit::tars::files_tar(&[("f", b"data")]);
    let d = DiffId(Digest::of(&t));
    (t, d)
}

async fn refused(archive: Vec<u8>, what: &str) {
    let e = env().await;
    let err = e.images.load(Cursor::new(archive)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
    assert!(err.to_string().len() < 600, "{what}: message too long");
    e.assert_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_docker_archives_are_refused_and_leave_nothing() {
    let (t, d) = layer_tar();
    let (t2, d2) = (testkit::tars::files_tar(&[("g", b"more")]), DiffId(Digest::of(b"other")));
    let cfg = config_of(std::slice::from_ref(&d), "x");
    let cfg2 = config_of(&[d.clone(), d2.clone()], "y");
    let m = r#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
    let m2 = r#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar","m/layer.tar"]}]"#;
    // Missing layer member.
    refused(docker_archive(m, &[("c.json", &cfg)]), "missing layer").await;
    // Missing config.
    refused(docker_archive(m, &[("l/layer.tar", &t)]), "missing config").await;
    // DiffID mismatch on the second layer: the first, registered, is released too.
    refused(docker_archive(m2, &[("c.json", &cfg2), ("l/layer.tar", &t), ("m/layer.tar", &t2)]), "diff_id").await;
    // `..` in a member name and in a manifest path.
    refused(raw_names(&[("manifest.json", m.as_bytes()), ("c.json", &cfg), ("../l/layer.tar", &t)]), "dotdot member")
        .await;
    refused(raw_names(&[("manifest.json", m.as_bytes()), ("c.json", &cfg), ("/l/layer.tar", &t)]), "absolute member")
        .await;
    let up = r#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["../../etc/passwd"]}]"#;
    refused(docker_archive(up, &[("c.json", &cfg), ("l/layer.tar", &t)]), "dotdot path").await;
    // A huge manifest.json.
    let huge = format!("[{}]", " ".repeat(5 << 20));
    refused(docker_archive(&huge, &[]), "huge manifest").await;
    // Bad names, bad JSON, not an archive at all.
    let badtag = r#"[{"Config":"c.json","RepoTags":["UPPER:1"],"Layers":["l/layer.tar"]}]"#;
    refused(docker_archive(badtag, &[("c.json", &cfg), ("l/layer.tar", &t)]), "bad tag").await;
    refused(docker_archive("{", &[]), "bad json").await;
    refused(testkit::tars::files_tar(&[("x", b"y")]), "no manifest").await;
    refused(
        b"not a tar at all, just some bytes that are long enough to fill a header block or not".to_vec(),
        "not tar",
    )
    .await;
}

/// A tar with names written as given (the tar crate refuses `..`).
fn raw_names(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_old_mut().name[..n.len()].copy_from_slice(n.as_bytes());
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn with_links(members: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (n, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, n, *data).unwrap();
    }
    for (from, to) in links {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, from, to).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinked_members_resolve_inside_the_archive_only() {
    let (t, d) = layer_tar();
    let cfg = config_of(&[d.clone(), d.clone()], "x");
    // The same layer twice (docker save links duplicates): loads.
    let m = r#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar","k/layer.tar"]}]"#;
    let ok = with_links(
        &[("manifest.json", m.as_bytes()), ("c.json", &cfg), ("l/layer.tar", &t)],
        &[("k/layer.tar", "../l/layer.tar")],
    );
    let e = env().await;
    let r = e.images.load(Cursor::new(ok)).await.unwrap();
    assert_eq!(r.layers_registered, 2, "one member, two positions: {r:?}");
    // Escaping and looping links are refused.
    let esc = with_links(
        &[("manifest.json", m.as_bytes()), ("c.json", &cfg), ("l/layer.tar", &t)],
        &[("k/layer.tar", "../../../etc/passwd")],
    );
    refused(esc, "escaping link").await;
    let lp = with_links(
        &[("manifest.json", m.as_bytes()), ("c.json", &cfg)],
        &[("l/layer.tar", "../k/layer.tar"), ("k/layer.tar", "../l/layer.tar")],
    );
    refused(lp, "link loop").await;
}

fn oci_layout(index: &str, blobs: &[&[u8]], extra: &[(&str, &[u8])]) -> Vec<u8> {
    let names: Vec<String> = blobs.iter().map(|b| format!("blobs/sha256/{}", Digest::of(b).hex())).collect();
    let mut all: Vec<(&str, &[u8])> =
        vec![("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#), ("index.json", index.as_bytes())];
    for (n, b) in names.iter().zip(blobs) {
        all.push((n, b));
    }
    all.extend_from_slice(extra);
    testkit::tars::files_tar(&all)
}

fn desc(media: &str, blob: &[u8]) -> String {
    format!(r#"{{"mediaType":"{media}","digest":"{}","size":{}}}"#, Digest::of(blob), blob.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_oci_layouts_are_refused_and_leave_nothing() {
    let (t, d) = layer_tar();
    let cfg = config_of(std::slice::from_ref(&d), "x");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}]}}"#,
        desc("application/vnd.oci.image.config.v1+json", &cfg),
        desc("application/vnd.oci.image.layer.v1.tar", &t)
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        desc("application/vnd.oci.image.manifest.v1+json", manifest.as_bytes())
    );
    // The good one loads (unnamed: no name annotation).
    let e = env().await;
    let r = e.images.load(Cursor::new(oci_layout(&index, &[manifest.as_bytes(), &cfg, &t], &[]))).await.unwrap();
    assert_eq!(r.images.len(), 1);
    assert!(r.images[0].names.is_empty());
    // Missing layer blob.
    refused(oci_layout(&index, &[manifest.as_bytes(), &cfg], &[]), "missing blob").await;
    // A layer blob whose bytes don't match its digest.
    let name = format!("blobs/sha256/{}", Digest::of(&t).hex());
    let other = testkit::tars::files_tar(&[("f", b"evil")]);
    refused(oci_layout(&index, &[manifest.as_bytes(), &cfg], &[(&name, &other)]), "blob digest").await;
    // Nested indexes: a loop can't be built from sha256 digests, so the
    // guard that stops one is the depth limit; every level's blob is there
    // so only the depth can fail.
    let inner =
        format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, desc("application/vnd.oci.image.index.v1+json", b"{}"));
    // Build the blobs of every level so only the depth can fail.
    let mut levels = vec![inner.clone()];
    let mut cur = inner;
    for _ in 0..6 {
        cur = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            desc("application/vnd.oci.image.index.v1+json", cur.as_bytes())
        );
        levels.push(cur.clone());
    }
    let top = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        desc("application/vnd.oci.image.index.v1+json", cur.as_bytes())
    );
    let blobs: Vec<&[u8]> = levels.iter().map(|l| l.as_bytes()).collect();
    refused(oci_layout(&top, &blobs, &[]), "deep nesting").await;
    // No oci-layout file; sha512 digests.
    refused(testkit::tars::files_tar(&[("index.json", index.as_bytes())]), "no oci-layout").await;
    let sha512 = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha512:{}","size":1}}]}}"#,
        "a".repeat(128)
    );
    refused(oci_layout(&sha512, &[], &[]), "sha512").await;
}

/// A layer whose stored data fails verification breaks the save as a read
/// error, never as a clean (truncated) end of the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_that_fails_part_way_ends_with_an_error() {
    let e = env().await;
    let (_, ib) = seed(&e).await;
    let chain = ib.chain_id.clone().unwrap();
    let cache = e.layers.get(&chain).unwrap().cache_id;
    let file = e.dir.join("root/vfs/vfs/dir").join(&cache).join("b");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let mut r = e.images.save_reader(&["localhost:5000/app:b".to_string()], Format::Docker).await.unwrap();
    let res = tokio::task::spawn_blocking(move || std::io::Read::read_to_end(&mut r, &mut Vec::new())).await.unwrap();
    let err = res.unwrap_err();
    assert!(err.to_string().contains("image save failed"), "{err}");
    // Unknown names fail before anything is streamed.
    assert!(e.images.save_reader(&["nope".to_string()], Format::Oci).await.is_err());
}

/// An OCI layout with a gzip layer blob: the blob digest is over the
/// compressed bytes, the DiffID over the tar; the store decompresses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_gzip_layers_load() {
    use std::io::Write;
    let (t, d) = layer_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&t).unwrap();
    let blob = gz.finish().unwrap();
    let cfg = config_of(std::slice::from_ref(&d), "gz");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}]}}"#,
        desc("application/vnd.oci.image.config.v1+json", &cfg),
        desc("application/vnd.oci.image.layer.v1.tar+gzip", &blob)
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"io.containerd.image.name":"docker.io/library/gz:1","org.opencontainers.image.ref.name":"1"}}}}]}}"#,
        Digest::of(manifest.as_bytes()),
        manifest.len()
    );
    let e = env().await;
    let r = e.images.load(Cursor::new(oci_layout(&index, &[manifest.as_bytes(), &cfg, &blob], &[]))).await.unwrap();
    assert_eq!(r.images[0].names, vec!["docker.io/library/gz:1".to_string()]);
    let info = e.images.get("gz:1").unwrap();
    assert_eq!(info.diff_ids, vec![d]);
    assert!(info.manifest.is_some(), "the manifest it came with is kept");
    assert_eq!(e.images.manifest(&info.id).await.unwrap().unwrap().bytes, manifest.as_bytes());
}
