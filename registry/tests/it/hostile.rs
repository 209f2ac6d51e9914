//! Odd and hostile registry answers, from an in-test server: each fails the
//! pull with a clear error and leaves no layer and no staged data behind.
//! Also the protocol paths distribution 2.8's basic setup can't show:
//! bearer tokens, indexes, zstd layers, redirects to another host.

use registry::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX};
use registry::{Platform, RegistryError, Reporter, reference};

use crate::support::*;

async fn pull_err(fake: &Fake, store: &TestStore, image: &str) -> RegistryError {
    let r = reference::parse(&format!("{}/{image}", fake.host())).unwrap();
    let e = store.registry("{}").pull(&r, None, &Reporter::none()).await.unwrap_err();
    store.assert_empty().await;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_match_its_digest_fails_and_leaves_nothing() {
    let fake = Fake::start().await;
    let img = FakeImage::new(layer_tars(3, "bad"), "amd64");
    fake.serve_image("x/bad", "v1", &img);
    // Swap the second layer's bytes for other valid gzip-tar bytes of the same size.
    let (blob, _) = &img.blobs[1];
    let mut other = blob.clone();
    let last = other.len() - 9;
    other[last] ^= 0xff;
    fake.route(&format!("/v2/x/bad/blobs/{}", sha(blob)), Canned::ok("application/octet-stream", other));
    let store = TestStore::new().await;
    let e = pull_err(&fake, &store, "x/bad:v1").await;
    assert!(matches!(e, RegistryError::Digest(_)), "{e:?}");
    assert!(e.to_string().contains("does not match its digest"), "{e}");
    assert_eq!(e.kind(), graphdriver::ErrorKind::DataLoss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_blob_fails_and_leaves_nothing() {
    let fake = Fake::start().await;
    let img = FakeImage::new(layer_tars(2, "trunc"), "amd64");
    fake.serve_image("x/t", "v1", &img);
    let (blob, _) = &img.blobs[1];
    fake.route(
        &format!("/v2/x/t/blobs/{}", sha(blob)),
        Canned::ok("application/octet-stream", blob[..blob.len() / 2].to_vec()),
    );
    let store = TestStore::new().await;
    let e = pull_err(&fake, &store, "x/t:v1").await;
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_that_is_not_the_configs_diff_id_fails() {
    let fake = Fake::start().await;
    let mut img = FakeImage::new(layer_tars(2, "diff"), "amd64");
    // The config names another layer's DiffID for layer 0.
    let wrong = layer_tars(1, "else");
    let mut cfg: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
    cfg["rootfs"]["diff_ids"][0] = serde_json::Value::String(sha(&wrong[0]));
    img.config = serde_json::to_vec(&cfg).unwrap();
    fake.serve_image("x/d", "v1", &img);
    let store = TestStore::new().await;
    let e = pull_err(&fake, &store, "x/d:v1").await;
    assert!(e.to_string().contains("diff_id"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_huge_and_looping_manifests_are_refused() {
    let fake = Fake::start().await;
    let store = TestStore::new().await;
    fake.route(
        "/v2/x/garbage/manifests/v1",
        Canned::ok(DOCKER_MANIFEST, b"{\"schemaVersion\": 2, \"config\": [".to_vec()),
    );
    let e = pull_err(&fake, &store, "x/garbage:v1").await;
    assert!(e.to_string().contains("malformed manifest"), "{e}");
    assert_eq!(e.kind(), graphdriver::ErrorKind::InvalidArgument);

    let mut huge = b"{\"schemaVersion\": 2, \"layers\": [".to_vec();
    huge.resize(5 << 20, b' ');
    fake.route("/v2/x/huge/manifests/v1", Canned::ok(DOCKER_MANIFEST, huge));
    let e = pull_err(&fake, &store, "x/huge:v1").await;
    assert!(e.to_string().contains("larger than the 4194304-byte limit"), "{e}");

    // An index whose entry is itself (by digest): one step, then refused.
    let index = |d: &str| {
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_INDEX, "digest": d, "size": 10, "platform": {"os": "linux", "architecture": "amd64"}}]}))
        .unwrap()
    };
    let inner = index(&format!("sha256:{}", "0".repeat(64)));
    fake.route(&format!("/v2/x/loop/manifests/{}", sha(&inner)), Canned::ok(OCI_INDEX, inner.clone()));
    fake.route("/v2/x/loop/manifests/v1", Canned::ok(OCI_INDEX, index(&sha(&inner))));
    let r = reference::parse(&format!("{}/x/loop:v1", fake.host())).unwrap();
    let e = store.registry("{}").pull(&r, Some(&Platform::parse("linux/amd64").unwrap()), &Reporter::none()).await;
    let e = e.unwrap_err();
    assert!(e.to_string().contains("nested indexes are not pulled"), "{e}");

    let e = pull_err(&fake, &store, "x/missing:v1").await;
    assert!(matches!(e, RegistryError::NotFound(_)), "{e:?}");
    fake.route(
        "/v2/x/v1/manifests/v1",
        Canned::ok("application/vnd.docker.distribution.manifest.v1+prettyjws", b"{\"schemaVersion\":1}".to_vec()),
    );
    let e = pull_err(&fake, &store, "x/v1:v1").await;
    assert!(matches!(e, RegistryError::Unsupported(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_gives_the_asked_platform_and_zstd_layers_unpack() {
    let fake = Fake::start().await;
    let amd = FakeImage::new(layer_tars(1, "amd"), "amd64");
    let mut arm = FakeImage::new(layer_tars(2, "arm"), "arm64");
    // The arm64 image's top layer is zstd, with the OCI media type.
    let (_, t) = arm.blobs[1].clone();
    arm.blobs[1] = (zstd::encode_all(&t[..], 3).unwrap(), t);
    let amd_d = fake.serve_image("x/multi", "amd", &amd);
    for (b, _) in &arm.blobs {
        fake.route(&format!("/v2/x/multi/blobs/{}", sha(b)), Canned::ok("application/octet-stream", b.clone()));
    }
    fake.route(
        &format!("/v2/x/multi/blobs/{}", sha(&arm.config)),
        Canned::ok("application/octet-stream", arm.config.clone()),
    );
    let arm_m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": arm.config.len(), "digest": sha(&arm.config)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": arm.blobs[0].0.len(), "digest": sha(&arm.blobs[0].0)},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "size": arm.blobs[1].0.len(), "digest": sha(&arm.blobs[1].0)},
        ]}))
    .unwrap();
    fake.route(
        &format!("/v2/x/multi/manifests/{}", sha(&arm_m)),
        Canned::ok("application/vnd.oci.image.manifest.v1+json", arm_m.clone()),
    );
    let list = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": amd_d, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&arm_m), "size": arm_m.len(),
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}))
    .unwrap();
    fake.route("/v2/x/multi/manifests/latest", Canned::ok(DOCKER_LIST, list));

    let store = TestStore::new().await;
    let reg = store.registry("{}");
    let r = reference::parse(&format!("{}/x/multi", fake.host())).unwrap();
    let arm64 = Platform::parse("linux/arm64").unwrap();
    let pulled = reg.pull(&r, Some(&arm64), &Reporter::none()).await.unwrap();
    assert_eq!(pulled.chain_ids, chain_of(&arm.tars()));
    assert_eq!(pulled.resolved.manifest_digest, sha(&arm_m));
    let amd64 = Platform::parse("linux/amd64").unwrap();
    let pulled = reg.pull(&r, Some(&amd64), &Reporter::none()).await.unwrap();
    assert_eq!(pulled.chain_ids, chain_of(&amd.tars()));
    let e = reg.pull(&r, Some(&Platform::parse("linux/s390x").unwrap()), &Reporter::none()).await.unwrap_err();
    assert!(e.to_string().contains("no manifest for platform linux/s390x"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_with_the_scope_and_the_login() {
    let fake = Fake::start().await;
    let img = FakeImage::new(layer_tars(1, "tok"), "amd64");
    fake.serve_image("team/app", "v1", &img);
    fake.route("/token", Canned::ok("application/json", br#"{"token": "tok-123", "expires_in": 300}"#.to_vec()));
    {
        let mut st = fake.state.lock().unwrap();
        let realm = format!("http://{}/token", fake.host());
        st.require = Some((
            "Bearer tok-123".into(),
            format!(r#"Bearer realm="{realm}",service="fake",scope="repository:team/app:pull""#),
        ));
        st.open_paths = vec!["/token".into()];
    }
    let store = TestStore::new().await;
    let creds = format!(r#"{{"auths": {{"{}": {{"username": "bob", "password": "pw"}}}}}}"#, fake.host());
    let r = reference::parse(&format!("{}/team/app:v1", fake.host())).unwrap();
    let pulled = store.registry(&creds).pull(&r, None, &Reporter::none()).await.unwrap();
    assert_eq!(pulled.chain_ids, chain_of(&img.tars()));
    let seen = fake.seen();
    let tokens: Vec<_> = seen.iter().filter(|(p, _)| p.starts_with("/token")).collect();
    assert_eq!(tokens.len(), 1, "one token serves the whole pull: {seen:?}");
    let (q, auth) = tokens[0];
    assert!(q.contains("service=fake") && q.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{q}");
    assert_eq!(auth.as_deref(), Some("Basic Ym9iOnB3"), "the login goes to the token endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_redirected_to_another_host_is_fetched_without_our_credentials() {
    let fake = Fake::start().await;
    let storage = Fake::start().await;
    let img = FakeImage::new(layer_tars(1, "redir"), "amd64");
    fake.serve_image("r/app", "v1", &img);
    let (blob, _) = &img.blobs[0];
    let path = format!("/v2/r/app/blobs/{}", sha(blob));
    storage.route("/store/blob", Canned::ok("application/octet-stream", blob.clone()));
    fake.route(
        &path,
        Canned {
            status: 307,
            headers: vec![("location".into(), format!("http://{}/store/blob", storage.host()))],
            body: vec![],
        },
    );
    fake.state.lock().unwrap().require = Some(("Basic Ym9iOnB3".into(), r#"Basic realm="fake""#.into()));
    let store = TestStore::new().await;
    let creds = format!(r#"{{"auths": {{"{}": {{"auth": "Ym9iOnB3"}}}}}}"#, fake.host());
    let r = reference::parse(&format!("{}/r/app:v1", fake.host())).unwrap();
    store.registry(&creds).pull(&r, None, &Reporter::none()).await.unwrap();
    let at_storage = storage.seen();
    assert_eq!(at_storage.len(), 1, "{at_storage:?}");
    assert_eq!(at_storage[0].1, None, "credentials leaked to another host");

    // A redirect loop ends with an error, nothing left.
    let loop_path = format!("http://{}{path}", fake.host());
    fake.route(&path, Canned { status: 302, headers: vec![("location".into(), loop_path)], body: vec![] });
    let other = TestStore::new().await;
    let e = other.registry(&creds).pull(&r, None, &Reporter::none()).await.unwrap_err();
    other.assert_empty().await;
    assert!(e.to_string().contains("redirect"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_fetch_the_manifest_the_config_and_each_blob_once() {
    let fake = Fake::start().await;
    let img = FakeImage::new(layer_tars(3, "once"), "amd64");
    fake.serve_image("o/app", "v1", &img);
    // Slow answers, so all ten pulls surely overlap the first one's resolve.
    fake.state.lock().unwrap().delay = std::time::Duration::from_millis(150);
    let store = TestStore::new().await;
    let reg = std::sync::Arc::new(store.registry("{}"));
    let r = reference::parse(&format!("{}/o/app:v1", fake.host())).unwrap();
    let pulls: Vec<_> = (0..10)
        .map(|_| {
            let (reg, r) = (reg.clone(), r.clone());
            tokio::spawn(async move { reg.pull(&r, None, &Reporter::none()).await })
        })
        .collect();
    for p in pulls {
        p.await.unwrap().unwrap();
    }
    let seen = fake.seen();
    let count = |path: &str| seen.iter().filter(|(p, _)| p == path).count();
    assert_eq!(count("/v2/o/app/manifests/v1"), 1, "{seen:?}");
    assert_eq!(count(&format!("/v2/o/app/blobs/{}", sha(&img.config))), 1, "{seen:?}");
    for (b, _) in &img.blobs {
        assert_eq!(count(&format!("/v2/o/app/blobs/{}", sha(b))), 1, "{seen:?}");
    }
    assert_eq!(reg.downloads_in_flight(), 0);
    let top = chain_of(&img.tars()).pop().unwrap();
    assert_eq!(store.store.get(&top).unwrap().leases, 10);
}
