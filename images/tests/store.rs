//! The image store over a real layer store on vfs: put/get/list/tag/remove,
//! references on layers, persistence across a reopen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::Path;

use graphdriver::ErrorKind;
use images::{ImageStore, ManifestBlob, NewImage, names};
use layer::{ChainId, DiffId, Digest, RegisterOpts, Store};

async fn open_layers(root: &Path) -> Store {
    let driver = drivers::registry::open("vfs", &root.join("vfs")).unwrap();
    Store::open(root, driver).await.unwrap()
}

/// Register `tars` as a chain; returns the DiffIDs and the top ChainID (the
/// caller holds one reference on each layer).
async fn chain(store: &Store, tars: &[Vec<u8>]) -> (Vec<DiffId>, ChainId) {
    let mut parent = None;
    let mut diffs = Vec::new();
    for t in tars {
        let info = store
            .register(Box::new(Cursor::new(t.clone())), RegisterOpts { parent: parent.clone(), ..Default::default() })
            .await
            .unwrap();
        diffs.push(info.diff_id.clone());
        parent = Some(info.chain_id);
    }
    (diffs, parent.unwrap())
}

fn config_of(diffs: &[DiffId]) -> Vec<u8> {
    let ids: Vec<String> = diffs.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        ids.join(",")
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_tag_remove_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let layers = open_layers(&root).await;
    let tars = [testkit::tars::files_tar(&[("a", b"1")]), testkit::tars::files_tar(&[("b", b"2")])];
    let (diffs, top) = chain(&layers, &tars).await;
    let base = ChainId::of(None, &diffs[0]);
    let images = ImageStore::open(layers.clone()).await.unwrap();

    let config = config_of(&diffs);
    let manifest = ManifestBlob {
        media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
        bytes: br#"{"schemaVersion":2}"#.to_vec().into(),
    };
    let new = NewImage { config: config.clone().into(), manifest: Some(manifest.clone()), registry_digest: None };
    let info = images.put(new, &[names::parse("busybox").unwrap()]).await.unwrap();
    assert_eq!(info.id.digest(), &Digest::of(&config));
    assert_eq!(info.names, vec!["docker.io/library/busybox:latest".to_string()]);
    assert_eq!(info.chain_id.as_ref(), Some(&top));
    assert_eq!(info.manifest.as_ref().unwrap().digest, manifest.digest());
    let l = layers.get(&top).unwrap();
    assert_eq!((l.references, l.leases), (1, 1), "the caller's reference, the image's lease");

    // The caller drops its references; the image keeps the chain.
    layers.release(&top).await.unwrap();
    layers.release(&base).await.unwrap();
    assert_eq!(layers.get(&top).unwrap().leases, 1);

    for q in ["busybox", "busybox:latest", "docker.io/library/busybox", &info.id.to_string(), &info.id.hex()[..12]] {
        assert_eq!(images.get(q).unwrap().id, info.id, "{q}");
    }
    assert_eq!(images.get("nope").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(images.get("Bad Name").unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(images.config(&info.id).await.unwrap(), config);
    assert_eq!(images.manifest(&info.id).await.unwrap(), Some(manifest));

    // Putting the same image again takes no new reference.
    images.put(NewImage::from_config(config.clone()), &[]).await.unwrap();
    assert_eq!(layers.get(&top).unwrap().leases, 1);

    images.tag("busybox", &names::parse("localhost:5000/x/y:v1").unwrap()).await.unwrap();
    assert_eq!(images.list().len(), 1);
    assert_eq!(images.get("localhost:5000/x/y:v1").unwrap().names.len(), 2);

    // Docker's format on disk, familiar names.
    let repos = std::fs::read_to_string(root.join("image/vfs/repositories.json")).unwrap();
    assert!(repos.contains("\"busybox:latest\""), "{repos}");
    assert!(root.join("image/vfs/imagedb/content/sha256").join(info.id.hex()).is_file());

    // Reopen: everything is back.
    drop(images);
    layers.shutdown().await.unwrap();
    drop(layers);
    // Nothing on disk holds the layers but the image: opened the right way,
    // the layer store keeps them and the image store leases them again.
    let driver = drivers::registry::open("vfs", &root.join("vfs")).unwrap();
    let (layers, images) = ImageStore::open_with_layers(&root, driver).await.unwrap();
    let again = images.get("busybox").unwrap();
    assert_eq!(again.names.len(), 2);
    assert!(again.manifest.is_some());
    let l = layers.get(&top).unwrap();
    assert_eq!((l.references, l.leases), (0, 1));

    // By id with two names: refused, nothing changed.
    let err = images.remove(&info.id.to_string()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let r = images.remove("busybox").await.unwrap();
    assert_eq!(r.untagged, vec!["docker.io/library/busybox:latest".to_string()]);
    assert!(r.deleted.is_empty());
    let r = images.remove("localhost:5000/x/y:v1").await.unwrap();
    assert_eq!(r.deleted, vec![info.id.clone()]);
    assert_eq!(r.layers_deleted.len(), 2, "the whole chain was freed");
    layers.settle().await;
    assert!(layers.list().is_empty());
    assert!(images.list().is_empty());
    assert!(!root.join("image/vfs/imagedb/content/sha256").join(info.id.hex()).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_refuses_missing_layers_and_bad_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let layers = open_layers(&root).await;
    let images = ImageStore::open(layers.clone()).await.unwrap();
    let missing = config_of(&[DiffId(Digest::of(b"not registered"))]);
    let err = images.put(NewImage::from_config(missing), &[names::parse("x").unwrap()]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let err = images.put(NewImage::from_config(b"{".to_vec()), &[]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(images.list().is_empty());
    assert!(std::fs::read_dir(root.join("image/vfs/imagedb/content/sha256")).unwrap().next().is_none());
}

/// A crash is a store dropped with leases still out (they live in memory
/// only): what a load had registered is collected at the next start; what a
/// committed image holds is kept, and leased again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_drops_leases_and_keeps_committed_images() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let driver = drivers::registry::open("vfs", &root.join("vfs")).unwrap();
    let (layers, images) = ImageStore::open_with_layers(&root, driver).await.unwrap();
    let lease = |parent: Option<ChainId>| RegisterOpts { parent, lease: true, ..Default::default() };
    // A load in flight: two layers leased, no image yet.
    let a =
        layers.register(Box::new(Cursor::new(testkit::tars::files_tar(&[("a", b"1")]))), lease(None)).await.unwrap();
    let b = layers
        .register(Box::new(Cursor::new(testkit::tars::files_tar(&[("b", b"2")]))), lease(Some(a.chain_id.clone())))
        .await
        .unwrap();
    assert_eq!((b.references, b.leases), (0, 1));
    // A committed image on another layer.
    let c =
        layers.register(Box::new(Cursor::new(testkit::tars::files_tar(&[("c", b"3")]))), lease(None)).await.unwrap();
    let img = images
        .put(NewImage::from_config(config_of(std::slice::from_ref(&c.diff_id))), &[names::parse("kept").unwrap()])
        .await
        .unwrap();
    assert_eq!(layers.get(&c.chain_id).unwrap().leases, 2, "the put's and the image's");
    // "Crash": nothing given back.
    drop(images);
    layers.shutdown().await.unwrap();
    drop(layers);
    let driver = drivers::registry::open("vfs", &root.join("vfs")).unwrap();
    let (layers, images) = ImageStore::open_with_layers(&root, driver).await.unwrap();
    let left: Vec<ChainId> = layers.list().into_iter().map(|l| l.chain_id).collect();
    assert_eq!(left, vec![c.chain_id.clone()], "the load's layers were collected, the image's kept");
    assert_eq!(layers.get(&c.chain_id).unwrap().leases, 1, "leased again by the image only");
    assert_eq!(images.get("kept").unwrap().id, img.id);
    // Opened without the keep list, the layer store would collect it; the
    // image store then skips the image, as dockerd skips one without layers.
    drop(images);
    layers.shutdown().await.unwrap();
    drop(layers);
    let layers = open_layers(&root).await;
    assert!(layers.list().is_empty());
    assert!(ImageStore::open(layers.clone()).await.unwrap().list().is_empty());
}
