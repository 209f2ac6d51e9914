//! Against Debian's docker-registry (distribution 2.8): push and pull round
//! trips, re-push, cross-repository mount, concurrent pulls, basic auth.

use std::io::Read;

use bytes::Bytes;
use registry::{PushImage, Reporter, reference};
use testkit::registry::{DistributionRegistry, unavailable};

use crate::support::*;

macro_rules! need_registry {
    () => {
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn statuses(events: &[registry::Progress]) -> Vec<String> {
    events.iter().map(|p| p.status.clone()).collect()
}

async fn tar_bytes(store: &layer::Store, chain: &layer::ChainId) -> Vec<u8> {
    let r = store.tar_stream(chain).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut r = r;
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    })
    .await
    .unwrap()
}

/// A store holding an image of `n` layers: its tars, top layer and push source.
async fn local_image(n: usize, tag: &str) -> (TestStore, Vec<Vec<u8>>, Option<layer::ChainId>, PushImage) {
    let src = TestStore::new().await;
    let tars = layer_tars(n, tag);
    let top = register_chain(&src.store, &tars).await;
    let image = PushImage { config: Bytes::from(config_for(&tars, "amd64")), top_layer: top.clone() };
    (src, tars, top, image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_then_pull_round_trips_and_a_repush_uploads_nothing() {
    need_registry!();
    let reg = DistributionRegistry::start(None);
    let (src, tars, top, image) = local_image(3, "rt").await;
    let client = src.registry("{}");
    let target = reference::parse(&format!("{}/test/app:v1", reg.host())).unwrap();

    let (rep, mut rx) = reporter();
    let pushed = client.push(&target, &image, &rep).await.unwrap();
    let first = statuses(&drain(&mut rx));
    assert_eq!(first.iter().filter(|s| *s == "Pushed").count(), 3, "{first:?}");

    // A re-push finds every blob there and uploads nothing.
    let again = client.push(&target, &image, &rep).await.unwrap();
    assert_eq!(again.digest, pushed.digest, "the same image pushes to the same manifest");
    let second = statuses(&drain(&mut rx));
    assert_eq!(second.iter().filter(|s| *s == "Layer already exists").count(), 3, "{second:?}");
    assert!(!second.iter().any(|s| s == "Pushing"), "{second:?}");

    // Another repository of the same registry: mounted, not uploaded.
    let other = reference::parse(&format!("{}/test/copy:v1", reg.host())).unwrap();
    client.push(&other, &image, &rep).await.unwrap();
    let third = statuses(&drain(&mut rx));
    assert_eq!(third.iter().filter(|s| *s == "Mounted from test/app").count(), 3, "{third:?}");

    // A fresh store pulls it back: same chain, same bytes.
    let dst = TestStore::new().await;
    let puller = dst.registry("{}");
    let (rep2, mut rx2) = reporter();
    let pulled = puller.pull(&target, None, &rep2).await.unwrap();
    assert_eq!(pulled.top_layer, top);
    assert_eq!(pulled.resolved.manifest_digest, pushed.digest);
    assert_eq!(pulled.chain_ids, chain_of(&tars));
    for (chain, tar) in pulled.chain_ids.iter().zip(&tars) {
        assert_eq!(&tar_bytes(&dst.store, chain).await, tar, "layer {chain} differs");
    }
    let top = pulled.top_layer.clone().unwrap();
    assert_eq!(dst.store.get(&top).unwrap().leases, 1, "the pull holds one lease on its top layer");
    for c in &pulled.chain_ids[..2] {
        let info = dst.store.get(c).unwrap();
        assert_eq!((info.references, info.leases), (0, 0), "lower layers are held by their children only");
    }
    assert!(statuses(&drain(&mut rx2)).iter().any(|s| s == "Pull complete"));

    // Pulling again: every layer already there.
    let again = puller.pull(&target, None, &rep2).await.unwrap();
    assert_eq!(again.top_layer, pulled.top_layer);
    let st = statuses(&drain(&mut rx2));
    assert_eq!(st.iter().filter(|s| *s == "Already exists").count(), 3, "{st:?}");
    // And pull by digest.
    let by_digest = reference::parse(&format!("{}/test/copy@{}", reg.host(), pushed.digest)).unwrap();
    puller.pull(&by_digest, None, &Reporter::none()).await.unwrap();
    assert_eq!(dst.store.get(&top).unwrap().leases, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_pulls_download_and_unpack_each_layer_once() {
    need_registry!();
    let reg = DistributionRegistry::start(None);
    let (src, _, top, image) = local_image(4, "many").await;
    let target = reference::parse(&format!("{}/test/many:latest", reg.host())).unwrap();
    src.registry("{}").push(&target, &image, &Reporter::none()).await.unwrap();

    let dst = TestStore::new().await;
    let puller = std::sync::Arc::new(dst.registry("{}"));
    let (rep, mut rx) = reporter();
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let (p, t, r) = (puller.clone(), target.clone(), rep.clone());
            tokio::spawn(async move { p.pull(&t, None, &r).await })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap().unwrap().top_layer, top);
    }
    let events = drain(&mut rx);
    let extracted = events.iter().filter(|p| p.status == "Extracting").count();
    assert_eq!(extracted, 4, "each layer unpacked once across 20 pulls: {:?}", statuses(&events));
    assert_eq!(dst.store.list().len(), 4);
    assert_eq!(dst.store.get(top.as_ref().unwrap()).unwrap().leases, 20);
    assert_eq!(puller.downloads_in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_uses_the_docker_config_and_says_so_without_it() {
    need_registry!();
    let reg = DistributionRegistry::start(Some(("alice", "s3cret")));
    let (src, _, top, image) = local_image(1, "auth").await;
    let target = reference::parse(&format!("{}/private/app:v1", reg.host())).unwrap();

    let anonymous = src.registry("{}");
    let e = anonymous.push(&target, &image, &Reporter::none()).await.unwrap_err();
    assert!(e.to_string().contains("needs a login"), "{e}");

    let auth = base64_of("alice:s3cret");
    let creds = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.host());
    src.registry(&creds).push(&target, &image, &Reporter::none()).await.unwrap();
    let dst = TestStore::new().await;
    let pulled = dst.registry(&creds).pull(&target, None, &Reporter::none()).await.unwrap();
    assert_eq!(pulled.top_layer, top);

    let wrong = format!(r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#, reg.host(), base64_of("alice:nope"));
    let e = TestStore::new().await.registry(&wrong).pull(&target, None, &Reporter::none()).await.unwrap_err();
    assert!(e.to_string().contains("refused our credentials"), "{e}");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
