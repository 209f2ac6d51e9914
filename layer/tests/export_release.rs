//! An export cut off by a release of its layer says "layer released", not
//! that the stored layer is damaged (issue 14, point 6).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Read};

use graphdriver::ErrorKind;
use layer::{LayerStoreError, RegisterOpts, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_of_a_released_layer_fails_with_layer_released() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let driver = drivers::registry::open("vfs", &root.join("vfs")).unwrap();
    let store = Store::open(&root, driver).await.unwrap();
    // Many files: the export opens them one after the other, most of them
    // after the release has deleted the layer's files.
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..300 {
        let data = vec![(i % 251) as u8; 64 * 1024];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("f{i:03}"), &data[..]).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let info = store.register(Box::new(Cursor::new(tar.clone())), RegisterOpts::default()).await.unwrap();
    let mut r = store.tar_stream(&info.chain_id).await.unwrap();
    let mut first = vec![0u8; 4096];
    let r = tokio::task::spawn_blocking(move || {
        r.read_exact(&mut first).unwrap();
        r
    })
    .await
    .unwrap();
    store.release(&info.chain_id).await.unwrap();
    store.settle().await;
    let res = tokio::task::spawn_blocking(move || {
        let mut r = r;
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).map(|_| rest.len())
    })
    .await
    .unwrap();
    let err = res.expect_err("the files were deleted under the export");
    let msg = err.to_string();
    assert!(msg.contains("layer released"), "{msg}");
    assert!(!msg.contains("damaged"), "{msg}");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<LayerStoreError>()).expect("a store error");
    assert_eq!(inner.kind(), ErrorKind::NotFound);
    store.shutdown().await.unwrap();
}
