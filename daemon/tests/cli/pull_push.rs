//! `layerctl image pull` / `image push` through the daemon, against a
//! private docker-registry (distribution 2.8).

use bytes::Bytes;
use registry::{PushImage, Reporter, reference};
use testkit::registry::{DistributionRegistry, unavailable};

use crate::support::Daemon;

/// Seed the registry with a 2-layer image pushed by the library.
fn seed(host: &str, repo: &str) -> String {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = layer::Store::open(
            dir.path(),
            std::sync::Arc::new(drivers::vfs::Vfs::new(dir.path().join("vfs")).unwrap()),
        )
        .await
        .unwrap();
        let tars = [
            testkit::tars::files_tar(&[("etc/a", b"first layer\n")]),
            testkit::tars::files_tar(&[("etc/b", b"second layer\n")]),
        ];
        let mut parent = None;
        let mut diff_ids = Vec::new();
        for t in &tars {
            let opts = layer::RegisterOpts { parent: parent.clone(), ..Default::default() };
            let info = store.register(Box::new(std::io::Cursor::new(t.clone())), opts).await.unwrap();
            diff_ids.push(info.diff_id.to_string());
            parent = Some(info.chain_id);
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap();
        let client = registry::Client::new(registry::ClientOptions::default()).unwrap();
        let reg = registry::Registry::new(client, store.clone(), None);
        let r = reference::parse(&format!("{host}/{repo}")).unwrap();
        let pushed = reg
            .push(&r, &PushImage { config: Bytes::from(config), top_layer: parent }, &Reporter::none())
            .await
            .unwrap();
        store.shutdown().await.unwrap();
        pushed.digest
    })
}

fn daemon() -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("no-docker-config.json");
    let d = Daemon::start_with(
        &dir.path().join("root"),
        &dir.path().join("run/layerd.sock"),
        &["--registry-config", none.to_str().unwrap()],
    );
    (d, dir)
}

#[test]
fn image_pull_and_push_through_a_registry_with_progress_and_clear_errors() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let reg = DistributionRegistry::start(None);
    let name = format!("{}/e2e/app:v1", reg.host());
    let digest = seed(&reg.host(), "e2e/app:v1");
    let (d, _dir) = daemon();

    let out = d.ctl(&["image", "pull", &name]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("Digest: {digest}")), "{stdout}");
    assert!(stdout.contains(&format!("Pulled {name}")), "{stdout}");
    assert_eq!(stderr.matches(": Pull complete").count(), 2, "plain progress lines off a tty: {stderr}");

    // Again, as JSON: every layer already there, the same image.
    let v = d.json(&["image", "pull", "--format", "json", &name]);
    assert_eq!(v["digest"], digest);
    assert!(v["image"]["names"].to_string().contains("e2e/app:v1"), "{v}");
    let layers = d.json(&["layer", "ls", "--format", "json"]);
    assert_eq!(layers.as_array().unwrap().len(), 2);

    // Push it back: nothing to upload, same manifest.
    let out = d.ctl(&["image", "push", &name]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("digest: {digest}")), "{stdout}");
    assert_eq!(stderr.matches("Layer already exists").count(), 2, "{stderr}");

    // Under another name in the same registry: mounted, not uploaded.
    let copy = format!("{}/e2e/copy:v1", reg.host());
    d.ok(&["image", "tag", &name, &copy]);
    let out = d.ctl(&["image", "push", &copy]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("Mounted from e2e/app").count(), 2, "{stderr}");
    let v = d.json(&["image", "inspect", &copy]);
    assert!(v.to_string().contains("e2e/copy:v1"), "{v}");

    // Clear errors, with their status before any progress.
    let missing = format!("{}/e2e/app:nope", reg.host());
    let err = d.fails(1, &["image", "pull", &missing]);
    assert!(err.contains("not found"), "{err}");
    let body = serde_json::to_vec(&serde_json::json!({"reference": missing})).unwrap();
    d.rejects(404, "POST", "/v1/images/pull", Some("application/json"), &body);
    let err = d.fails(1, &["image", "pull", "Not/A:Valid:Ref"]);
    assert!(err.contains("invalid image reference"), "{err}");
    let err = d.fails(1, &["image", "pull", "--platform", "linux", &name]);
    assert!(err.contains("invalid platform"), "{err}");
    let err = d.fails(1, &["image", "push", &format!("{}/e2e/unknown:v1", reg.host())]);
    assert!(err.to_lowercase().contains("no such image") || err.contains("not found"), "{err}");
}
