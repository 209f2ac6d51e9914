//! Pull benchmark (issue 12). Every figure is a ratio of runs made side by
//! side in this process, on this machine, against the same private
//! registry (Debian's docker-registry on 127.0.0.1), into stores on the
//! same journaled ext4 loop filesystem (overlay2 driver):
//!
//! - 20 concurrent pulls of one image vs one pull (goal ≤ 1.05×), and the
//!   same for `docker pull` on a private dockerd 20.10 when one is installed;
//! - one pull of an image of one 1 GB layer vs `curl blob | tar -xz` of the
//!   same blob (goal ≥ 0.8× of its throughput).
//!
//! Image shape as the issue's: a busybox layer + 5 layers of 60 MiB in
//! 1,000 files each, gzip. Run: `cargo bench -p registry --bench pull` (as
//! root). `LAYERD_BENCH_SCALE=0.1` shrinks every size; `LAYERD_BENCH_DOCKER=0`
//! leaves dockerd out; `LAYERD_BENCH_ROUNDS` sets the rounds of one pull
//! against twenty (default 3; medians printed).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivers::testing::{LoopFs, LoopKind};
use layer::Store;
use registry::{Client, ClientOptions, Registry, Reporter, reference};
use sha2::{Digest as _, Sha256};
use testkit::registry::DistributionRegistry;

fn scale() -> f64 {
    std::env::var("LAYERD_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(1)
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A tar of `files` files making `bytes` in all: half pseudo-random, half
/// zeros per file, so gzip has work to do both ways.
fn make_tar(files: usize, bytes: usize, seed: u64) -> Vec<u8> {
    let size = (bytes / files).max(1);
    let mut b = tar::Builder::new(Vec::with_capacity(bytes + files * 1024));
    let mut x = seed | 1;
    let mut data = vec![0u8; size];
    for i in 0..files {
        for chunk in data[..size / 2].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = chunk.len();
            chunk.copy_from_slice(&x.to_le_bytes()[..n]);
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("d{}/f{i}", i % 20), &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn busybox_tar() -> Vec<u8> {
    let bin = std::fs::read("/bin/busybox").unwrap_or_else(|_| vec![7u8; 1 << 20]);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(bin.len() as u64);
    h.set_mode(0o755);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "bin/busybox", &bin[..]).unwrap();
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

async fn put_blob(http: &reqwest::Client, host: &str, repo: &str, data: Vec<u8>) -> String {
    let digest = sha(&data);
    let r = http.post(format!("http://{host}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202, "start upload");
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let mut url = reqwest::Url::parse(&format!("http://{host}")).unwrap().join(&loc).unwrap();
    url.query_pairs_mut().append_pair("digest", &digest);
    let r = http.put(url).body(data).send().await.unwrap();
    assert_eq!(r.status(), 201, "finish upload");
    digest
}

/// Upload an image of these layer tars to `host/repo:v1`, as a client
/// would; returns the layer blobs' digests.
async fn upload(host: &str, repo: &str, tars: &[Vec<u8>]) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut layers = Vec::new();
    let mut blob_digests = Vec::new();
    for t in tars {
        let gz = gzip(t);
        let size = gz.len();
        let d = put_blob(&http, host, repo, gz).await;
        layers.push(serde_json::json!({"mediaType": registry::manifest::DOCKER_LAYER_GZIP, "size": size, "digest": d}));
        blob_digests.push(d);
    }
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/busybox", "true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let clen = config.len();
    let cd = put_blob(&http, host, repo, config).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": registry::manifest::DOCKER_MANIFEST,
        "config": {"mediaType": registry::manifest::DOCKER_CONFIG, "size": clen, "digest": cd},
        "layers": layers,
    }))
    .unwrap();
    let r = http
        .put(format!("http://{host}/v2/{repo}/manifests/v1"))
        .header("content-type", registry::manifest::DOCKER_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "put manifest");
    blob_digests
}

struct Stores {
    base: PathBuf,
    n: usize,
}

impl Stores {
    async fn fresh(&mut self) -> Registry {
        self.n += 1;
        let root = self.base.join(format!("store{}", self.n));
        let driver = Arc::new(drivers::overlay::Overlay::new(root.join("overlay2")).expect("overlay driver"));
        let store = Store::open(&root, driver).await.expect("open store");
        Registry::new(Client::new(ClientOptions::default()).unwrap(), store, None)
    }

    /// Remove the last store made (its pull has finished and shut it down).
    fn remove_last(&self) {
        let root = self.base.join(format!("store{}", self.n));
        std::fs::remove_dir_all(&root).expect("remove a bench store");
    }
}

fn rounds() -> usize {
    std::env::var("LAYERD_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn pull_n(reg: Arc<Registry>, image: &str, n: usize) -> Duration {
    let r = reference::parse(image).unwrap();
    let t = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (reg, r) = (reg.clone(), r.clone());
            tokio::spawn(async move { reg.pull(&r, None, &Reporter::none()).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("pull");
    }
    // Every side is timed to durable data (tar -x and dockerd do not fsync either).
    sync_fs();
    let el = t.elapsed();
    reg.store().shutdown().await.unwrap();
    el
}

fn sync_fs() {
    let _ = Command::new("sync").status();
}

fn docker_pulls(dir: &Path, image: &str) -> Option<(Duration, Duration)> {
    if std::env::var("LAYERD_BENCH_DOCKER").as_deref() == Ok("0") {
        return None;
    }
    let bin = conformance::dockerd::binary_or_skip("bench pull: docker")?;
    let opts = conformance::dockerd::DockerdOpts::new(bin, dir.join("docker")).arg("--storage-driver=overlay2");
    let d = match conformance::dockerd::Dockerd::start(opts) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench pull: docker: skipped: dockerd did not start: {e:#}");
            return None;
        }
    };
    let run = |n: usize| {
        let t = Instant::now();
        let children: Vec<_> = (0..n)
            .map(|_| {
                let mut c = Command::new(conformance::dockerd::DOCKER);
                c.args(["-H", &d.host(), "pull", "-q", image]).stdout(Stdio::null()).stderr(Stdio::piped());
                c.spawn().unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "docker pull: {}", String::from_utf8_lossy(&out.stderr));
        }
        sync_fs();
        let el = t.elapsed();
        d.docker(&["rmi", image]).unwrap();
        sync_fs();
        el
    };
    let one = run(1);
    let twenty = run(20);
    Some((one, twenty))
}

fn curl_tar(dir: &Path, url: &str) -> Duration {
    std::fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("curl -sf '{url}' | tar -xz -C '{}'", dir.display()))
        .status()
        .unwrap();
    assert!(st.success(), "curl | tar");
    sync_fs();
    t.elapsed()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let fs = LoopFs::with_fs(LoopKind::Ext4, 10 * 1024).expect("ext4 loop fs (run as root)");
    let registry = DistributionRegistry::start(None);
    let host = registry.host();
    let layers = 5;
    let layer_bytes = scaled(60 << 20);
    let files = scaled(1000);
    println!("image: busybox + {layers} layers × {} MiB / {files} files, gzip", layer_bytes >> 20);
    let mut tars = vec![busybox_tar()];
    for i in 0..layers {
        tars.push(make_tar(files, layer_bytes, 0x9e37_79b9 + i as u64));
    }
    upload(&host, "bench/img", &tars).await;
    drop(tars);
    let big_bytes = scaled(1 << 30);
    let big_files = scaled(10_000);
    let big = vec![make_tar(big_files, big_bytes, 42)];
    let big_blob = upload(&host, "bench/big", &big).await.remove(0);
    drop(big);
    let image = format!("{host}/bench/img:v1");
    let mut stores = Stores { base: fs.path().to_path_buf(), n: 0 };

    // Warm the registry's page cache and the connection path once.
    pull_n(Arc::new(stores.fresh().await), &image, 1).await;
    sync_fs();
    // Rounds of one pull and twenty (alternating which goes first), each
    // into a fresh store: single runs on a small VM swing by ±10%.
    let (mut ones, mut twenties, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    println!();
    for round in 0..rounds() {
        let mut timed = Vec::new();
        for n in if round % 2 == 0 { [1, 20] } else { [20, 1] } {
            let took = pull_n(Arc::new(stores.fresh().await), &image, n).await;
            sync_fs();
            stores.remove_last();
            timed.push((n, took));
        }
        let at = |n| timed.iter().find(|(k, _)| *k == n).map(|(_, d)| d.as_secs_f64()).unwrap_or_default();
        let (one, twenty) = (at(1), at(20));
        println!("round {round}: layerd pull ×1 {one:.3} s, ×20 {twenty:.3} s: {:.2}×", twenty / one);
        ones.push(one);
        twenties.push(twenty);
        ratios.push(twenty / one);
    }
    let (one, twenty, ratio) = (median(ones), median(twenties), median(ratios));
    println!("layerd pull  ×1 {one:.3} s  ×20 {twenty:.3} s  (medians)  ratio {ratio:.2}× (goal ≤ 1.05×)");
    let twenty = Duration::from_secs_f64(twenty);
    if let Some((d1, d20)) = docker_pulls(fs.path(), &image) {
        let dr = d20.as_secs_f64() / d1.as_secs_f64();
        println!("docker pull  ×1 {d1:>9.2?}  ×20 {d20:>9.2?}  ratio {dr:.2}×");
        println!("layerd ×20 vs docker ×20: {:.2}× faster", d20.as_secs_f64() / twenty.as_secs_f64());
    }

    let big_image = format!("{host}/bench/big:v1");
    let curl = curl_tar(&fs.path().join("curl-tar"), &format!("http://{host}/v2/bench/big/blobs/{big_blob}"));
    let ours = pull_n(Arc::new(stores.fresh().await), &big_image, 1).await;
    sync_fs();
    let mb = big_bytes as f64 / (1 << 20) as f64;
    println!(
        "\none layer of {mb:.0} MiB / {big_files} files: layerd pull {ours:>9.2?} ({:.0} MiB/s), curl | tar -xz {curl:>9.2?} ({:.0} MiB/s)",
        mb / ours.as_secs_f64(),
        mb / curl.as_secs_f64()
    );
    println!("pull throughput vs curl | tar -xz: {:.2}× (goal ≥ 0.8×)", curl.as_secs_f64() / ours.as_secs_f64());
    drop(registry);
    fs.close().expect("tear down the loop fs");
}
