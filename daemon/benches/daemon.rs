//! Daemon benchmark (issue 15, points 3 and 4): the real `layerd` (overlay
//! driver, on a journaled ext4 loop filesystem) driven by real `layerctl`
//! processes, as a user would. Every figure is a ratio against a baseline
//! measured in the same run:
//!
//! (a) 20 concurrent imports of one 6-layer gzip chain (busybox-like base +
//!     5 × 60 MiB / 1,000 files), each client a chain of `layerctl layer
//!     import --parent P --diff-id D` processes, against one such client on
//!     an empty store. Then, as the floor, the same clients again once every
//!     layer is present: only the 120 client processes and their requests.
//! (b) 100 RW layers of 1,000 × 1 KiB files removed by 100 parallel
//!     `layerctl rw rm` processes, against the same removed one process
//!     after another, and against 100 parallel `layerctl info` (the client
//!     processes and connections alone, no store work); one bulk call of
//!     100 (its return time, deletion running behind it); one `rw rm`.
//!
//! Run: `cargo bench -p daemon --bench daemon` (as root: loop mounts and
//! overlayfs). `LAYERD_BENCH_SCALE=0.1` shrinks the workloads (file counts
//! and layer counts) for a quick look; `LAYERD_BENCH_ONLY=imports` or
//! `=removals` runs one part.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drivers::testing::{LoopFs, LoopKind};
use layer::{ChainId, DiffId, Digest};
use testkit::{DaemonUnderTest, noise};

const LAYERD: &str = env!("CARGO_BIN_EXE_layerd");
const LAYERCTL: &str = env!("CARGO_BIN_EXE_layerctl");

fn scale() -> f64 {
    std::env::var("LAYERD_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(1)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn sync_fs() {
    let _ = Command::new("sync").status();
}

fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(kind);
    h
}

/// A busybox-like base: one 1 MiB binary and 400 applet symlinks to it.
fn base_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let bin = noise(7, 1 << 20);
    b.append_data(&mut header(bin.len() as u64, 0o755, tar::EntryType::Regular), "bin/busybox", &bin[..]).unwrap();
    for i in 0..400 {
        let mut h = header(0, 0o777, tar::EntryType::Symlink);
        b.append_link(&mut h, format!("bin/applet{i}"), "busybox").unwrap();
    }
    b.into_inner().unwrap()
}

/// `files` files of 60 KiB (60 MiB for 1,000), 100 per directory.
fn data_tar(layer: u32, files: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let blob = noise(u64::from(layer) * 7919 + 3, 60 * 1024 + files * 16);
    for i in 0..files {
        let data = &blob[i * 16..i * 16 + 60 * 1024];
        let mut h = header(data.len() as u64, 0o644, tar::EntryType::Regular);
        b.append_data(&mut h, format!("layer{layer}/d{}/f{i}", i / 100), data).unwrap();
    }
    b.into_inner().unwrap()
}

/// One layer of the chain as the client has it: the gzip file, its DiffID,
/// the ChainID it gets and its parent's.
struct ChainLayer {
    file: PathBuf,
    diff_id: String,
    chain_id: String,
    parent: Option<String>,
}

fn make_chain(dir: &Path) -> (Vec<ChainLayer>, u64) {
    let files = scaled(1000);
    let mut out = Vec::new();
    let mut parent: Option<ChainId> = None;
    let mut total = 0;
    for i in 0..6u32 {
        let tar = if i == 0 { base_tar() } else { data_tar(i, files) };
        let diff = DiffId(Digest::of(&tar));
        let chain = ChainId::of(parent.as_ref(), &diff);
        let file = dir.join(format!("layer{i}.tar.gz"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        total += gz.len() as u64;
        std::fs::write(&file, gz).unwrap();
        out.push(ChainLayer {
            file,
            diff_id: diff.to_string(),
            chain_id: chain.to_string(),
            parent: parent.as_ref().map(ToString::to_string),
        });
        parent = Some(chain);
    }
    (out, total)
}

fn ctl(host: &str, args: &[&str]) -> std::process::Output {
    Command::new(LAYERCTL)
        .arg("--host")
        .arg(host)
        .args(args)
        .env_remove("LAYERD_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ctl_ok(host: &str, args: &[&str]) -> String {
    let out = ctl(host, args);
    assert!(out.status.success(), "layerctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A daemon with the overlay driver on a fresh root under `work`.
fn daemon(work: &Path, name: &str) -> DaemonUnderTest {
    let root = work.join(name);
    DaemonUnderTest::start(LAYERD.as_ref(), &root, &work.join(format!("{name}.sock")), &["--driver", "overlay"])
}

/// One client: the chain imported layer by layer, as a pull does.
fn import_chain(host: &str, chain: &[ChainLayer]) {
    for l in chain {
        let mut args = vec!["layer", "import", "--diff-id", &l.diff_id];
        if let Some(p) = &l.parent {
            args.extend(["--parent", p]);
        }
        args.push(l.file.to_str().unwrap());
        let got = ctl_ok(host, &args);
        assert_eq!(got.trim(), l.chain_id, "layerctl printed another ChainID");
    }
}

/// One API client in this process: the chain imported layer by layer with
/// layerctl's client library (`Expect: 100-continue`, the file streamed).
async fn import_chain_api(host: &str, chain: &[ChainLayer]) {
    let client = daemon::cli::Client::from_host(host, None).unwrap();
    for l in chain {
        let path = daemon::cli::layer::import_path(l.parent.as_deref(), Some(&l.diff_id));
        let file = tokio::fs::File::open(&l.file).await.unwrap();
        let info: layer::LayerInfo = client.upload(&path, file).await.unwrap();
        assert_eq!(info.chain_id.to_string(), l.chain_id, "the daemon answered another ChainID");
    }
}

/// How the clients run: each a chain of `layerctl` processes, or each a
/// task of one process using the client library.
#[derive(Clone, Copy)]
enum Clients {
    Processes,
    Api,
}

/// `clients` clients importing the chain at once; the wall time until the
/// last is done.
fn run_clients(how: Clients, host: &str, chain: &[ChainLayer], clients: usize) -> Duration {
    let t = Instant::now();
    match how {
        Clients::Processes => std::thread::scope(|s| {
            for _ in 0..clients {
                s.spawn(|| import_chain(host, chain));
            }
        }),
        Clients::Api => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(futures_util::future::join_all((0..clients).map(|_| import_chain_api(host, chain))));
        }
    }
    t.elapsed()
}

/// `clients` clients at once into a fresh store; then, as a floor, the same
/// again into that store, which now has every layer (each request only
/// takes a reference: the clients and their requests alone). The store is
/// removed afterwards.
fn timed_imports(work: &Path, how: Clients, chain: &[ChainLayer], clients: usize) -> (Duration, Duration) {
    let name = format!("imports-{clients}");
    let d = daemon(work, &name);
    sync_fs();
    let host = d.host();
    let took = run_clients(how, &host, chain, clients);
    let top = &chain[chain.len() - 1].chain_id;
    let refs = || {
        let v: serde_json::Value = serde_json::from_str(&ctl_ok(&host, &["layer", "inspect", top])).unwrap();
        v["references"].as_u64()
    };
    assert_eq!(refs(), Some(clients as u64), "every client holds a reference");
    sync_fs();
    let present = run_clients(how, &host, chain, clients);
    assert_eq!(refs(), Some(2 * clients as u64), "every client holds a second reference");
    drop(d);
    std::fs::remove_dir_all(work.join(&name)).unwrap();
    (took, present)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rounds() -> usize {
    std::env::var("LAYERD_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

/// Rounds of one client then 20 (alternating which goes first), each on a
/// fresh store; medians and each round's ratio printed.
fn compare_imports(work: &Path, how: Clients, chain: &[ChainLayer]) {
    let (mut ones, mut twenties, mut ratios, mut floors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds() {
        let ((one, _), (twenty, present)) = if round % 2 == 0 {
            let one = timed_imports(work, how, chain, 1);
            (one, timed_imports(work, how, chain, 20))
        } else {
            let twenty = timed_imports(work, how, chain, 20);
            (timed_imports(work, how, chain, 1), twenty)
        };
        println!(
            "  round {round}: one {:.3} s, 20 at once {:.3} s: {:.2}x; 20 on the present chain {:.3} s",
            secs(one),
            secs(twenty),
            secs(twenty) / secs(one),
            secs(present)
        );
        ones.push(secs(one));
        twenties.push(secs(twenty));
        ratios.push(secs(twenty) / secs(one));
        floors.push(secs(present) / secs(one));
    }
    println!("  one client on an empty store (median)   {:>8.3} s", median(ones));
    println!("  20 clients at once (median)             {:>8.3} s", median(twenties));
    println!("  ratio: 20 concurrent vs one, median of rounds: {:.2}x (goal <= 1.05x)", median(ratios));
    println!(
        "  floor: 20 clients on the present chain, the clients and requests alone: {:.1}% of one import",
        100.0 * median(floors)
    );
}

fn bench_imports(work: &Path) {
    let files = scaled(1000);
    println!("\n## a. 20 concurrent imports of a 6-layer gzip chain (busybox-like + 5 x {files} files of 60 KiB)");
    let dir = tempfile::tempdir_in(work).unwrap();
    let (chain, bytes) = make_chain(dir.path());
    println!("  chain: {:.0} MB gzip; {} rounds", bytes as f64 / 1e6, rounds());
    println!("  each client a chain of `layerctl layer import` processes (120 processes for 20):");
    compare_imports(work, Clients::Processes, &chain);
    println!("  each client a task of one process, layerctl's client library over the socket:");
    compare_imports(work, Clients::Api, &chain);
}

/// Layer dirs (64-hex cache ids) in the driver's home, and entries of its
/// trash: both none once every deletion ran (the removal store holds no
/// read-only layer).
fn pending_deletions(home: &Path) -> usize {
    let layers = std::fs::read_dir(home)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().len() >= 32).count())
        .unwrap_or(0);
    layers + std::fs::read_dir(home.join("trash")).map(|d| d.count()).unwrap_or(0)
}

fn wait_deleted(home: &Path) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while pending_deletions(home) > 0 {
        assert!(Instant::now() < deadline, "deletions did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` RW layers named `{prefix}{i}` with `files` files of 1 KiB written in
/// each (through the mount), then unmounted and synced.
fn make_rw(d: &DaemonUnderTest, prefix: &str, n: usize, files: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let data = noise(11, 1024);
    std::thread::scope(|s| {
        for chunk in names.chunks(n.div_ceil(4)) {
            let data = &data;
            s.spawn(move || {
                for name in chunk {
                    let body = format!(r#"{{"name":"{name}"}}"#);
                    let r = d.request("POST", "/v1/rw", &[("Content-Type", "application/json")], body.as_bytes());
                    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
                    let r = d.request("POST", &format!("/v1/rw/{name}/mount"), &[], b"");
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    let path = PathBuf::from(v["path"].as_str().unwrap());
                    for f in 0..files {
                        std::fs::write(path.join(format!("f{f}")), data).unwrap();
                    }
                    let r = d.request("POST", &format!("/v1/rw/{name}/unmount"), &[], b"");
                    assert_eq!(r.status, 204);
                }
            });
        }
    });
    // A container's files reach the disk long before `docker rm`.
    sync_fs();
    names
}

fn rm_parallel(host: &str, names: &[String]) -> Duration {
    let t = Instant::now();
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            Command::new(LAYERCTL)
                .args(["--host", host, "rw", "rm", n])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    t.elapsed()
}

fn bench_removals(work: &Path) {
    let (n, files) = (scaled(100), scaled(1000));
    println!("\n## b. {n} RW layers with {files} files of 1 KiB each, removed through the daemon");
    let d = daemon(work, "removals");
    let host = d.host();
    let home = d.root().join("overlay2");

    // The floor: n client processes and connections, no store work.
    let t = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|_| Command::new(LAYERCTL).args(["--host", &host, "info"]).stdout(Stdio::null()).spawn().unwrap())
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let info = t.elapsed();

    let names = make_rw(&d, "seq", n, files);
    let t = Instant::now();
    for name in &names {
        ctl_ok(&host, &["rw", "rm", name]);
    }
    let seq = t.elapsed();
    wait_deleted(&home);

    let names = make_rw(&d, "par", n, files);
    let t = Instant::now();
    let par = rm_parallel(&host, &names);
    wait_deleted(&home);
    let par_all = t.elapsed();

    let names = make_rw(&d, "bulk", n, files);
    let mut args = vec!["rw", "rm"];
    args.extend(names.iter().map(String::as_str));
    let t = Instant::now();
    ctl_ok(&host, &args);
    let bulk = t.elapsed();
    wait_deleted(&home);
    let bulk_all = t.elapsed();

    let names = make_rw(&d, "one", 1, files);
    let t = Instant::now();
    ctl_ok(&host, &["rw", "rm", &names[0]]);
    let one = t.elapsed();
    wait_deleted(&home);

    println!("  {n} x layerctl info in parallel (floor)     returned {:>8.3} s", secs(info));
    println!("  {n} x layerctl rw rm one after another       returned {:>8.3} s", secs(seq));
    println!(
        "  {n} x layerctl rw rm in parallel             returned {:>8.3} s, all data deleted {:>8.3} s",
        secs(par),
        secs(par_all)
    );
    println!(
        "  one bulk layerctl rw rm of {n}               returned {:>8.3} s, all data deleted {:>8.3} s",
        secs(bulk),
        secs(bulk_all)
    );
    println!("  one layerctl rw rm                          returned {:>8.3} s", secs(one));
    println!("  ratio: parallel vs one after another: {:.2}x faster to return", secs(seq) / secs(par));
    println!(
        "  ratio: parallel rw rm vs parallel info: {:.2}x (1.00x: the daemon's share is nil)",
        secs(par) / secs(info)
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("daemon bench skipped: needs root (loop mounts, overlayfs)");
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Room for the chain twice over (two stores) and the RW layers.
    let size_mb = (6000.0 * scale()).max(1024.0) as u64;
    let fs = LoopFs::with_fs(LoopKind::Ext4, size_mb).expect("journaled ext4 loop filesystem");
    println!("# daemon bench (scale {}), on ext4 at {}", scale(), fs.path().display());
    let only = std::env::var("LAYERD_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "imports" {
        bench_imports(fs.path());
    }
    if only.is_empty() || only == "removals" {
        bench_removals(fs.path());
    }
    fs.close().expect("tear down the loop filesystem");
}
