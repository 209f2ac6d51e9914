//! With a private dockerd 20.10 (the `conformance::dockerd` harness) and a
//! private docker-registry: dockerd pulls and runs what layerd pushed, and
//! layerd pulls what dockerd pushed.

use bytes::Bytes;
use conformance::dockerd::{Dockerd, DockerdOpts, binary_or_skip};
use registry::{PushImage, Reporter, reference};
use testkit::registry::{DistributionRegistry, unavailable};

use crate::support::*;

fn busybox_layer() -> Option<Vec<u8>> {
    let bin = std::fs::read("/bin/busybox").ok()?;
    Some(testkit::tars::files_tar(&[("bin/busybox", &bin[..])]).to_vec())
}

fn tar_with_exec(tar: Vec<u8>) -> Vec<u8> {
    // files_tar writes 0644; busybox must be executable.
    let mut a = tar::Archive::new(&tar[..]);
    let mut b = tar::Builder::new(Vec::new());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        h.set_mode(0o755);
        let path = e.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dockerd_runs_what_layerd_pushed_and_layerd_pulls_what_dockerd_pushed() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let Some(bin) = binary_or_skip("dockerd_runs_what_layerd_pushed") else { return };
    let Some(busybox) = busybox_layer() else {
        eprintln!("skipped: /bin/busybox is missing (apt-get install busybox-static)");
        return;
    };
    let reg = DistributionRegistry::start(None);
    let scratch = tempfile::Builder::new().prefix("l12b").tempdir_in("/var/tmp").unwrap();
    let d = Dockerd::start(DockerdOpts::new(bin, scratch.path().join("docker"))).unwrap();

    // layerd → registry → dockerd, which runs it.
    let src = TestStore::new().await;
    let tars = vec![tar_with_exec(busybox), testkit::tars::files_tar(&[("etc/msg", b"hello from layerd\n")])];
    let top = register_chain(&src.store, &tars).await;
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "cat", "/etc/msg"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let name = format!("{}/interop/fromlayerd:v1", reg.host());
    let r = reference::parse(&name).unwrap();
    let image = PushImage { config: Bytes::from(config), top_layer: top };
    src.registry("{}").push(&r, &image, &Reporter::none()).await.unwrap();
    let docker = |args: &[&str]| d.docker(args).unwrap_or_else(|e| panic!("{e:#}\n{}", d.log()));
    docker(&["pull", "-q", &name]);
    let out = docker(&["run", "--rm", "--network", "none", &name]);
    assert_eq!(out, "hello from layerd\n");
    let layers = docker(&["image", "inspect", "--format", "{{range .RootFS.Layers}}{{println .}}{{end}}", &name]);
    assert_eq!(non_empty(&layers), diff_ids, "dockerd sees the same DiffIDs");

    // dockerd → registry → layerd.
    let theirs = format!("{}/interop/fromdocker:v2", reg.host());
    let ctr = docker(&["create", "--network", "none", &name, "/bin/busybox", "sh", "-c", "echo x > /new"]);
    docker(&["start", "-a", ctr.trim()]);
    docker(&["commit", ctr.trim(), &theirs]);
    docker(&["push", &theirs]);
    let want = docker(&["image", "inspect", "--format", "{{range .RootFS.Layers}}{{println .}}{{end}}", &theirs]);
    let dst = TestStore::new().await;
    let pulled = dst.registry("{}").pull(&reference::parse(&theirs).unwrap(), None, &Reporter::none()).await.unwrap();
    let got: Vec<String> = pulled.resolved.diff_ids.iter().map(ToString::to_string).collect();
    assert_eq!(got, non_empty(&want));
    assert_eq!(pulled.chain_ids.len(), 3);
    assert!(dst.store.get(pulled.top_layer.as_ref().unwrap()).is_ok());
    drop(d);
}

fn non_empty(s: &str) -> Vec<String> {
    s.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}
