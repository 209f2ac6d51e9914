//! Cold start of a big store: the real `layerd` binary on an overlay2 store
//! of 0 (the baseline), 10,000 and 100,000 small layers (chains of 10, one
//! RW layer per 100 layers) on a journaled ext4 loop filesystem. Each start
//! follows `sync; echo 3 > /proc/sys/vm/drop_caches` and is timed from the
//! spawn to the first answered `GET /v1/layers` carrying the full list (the
//! daemon listens only once the store is open, so this is open + serve).
//! Peak RSS is the daemon's `VmHWM` at that answer.
//!
//! Two starts per store: from the layerdb index (written by the clean
//! shutdown before), and with the index removed (the full scan, as before the
//! index existed). `LAYERD_COLDSTART_BASELINE=/path/to/layerd` also times
//! that binary on the same store (e.g. a build of an older commit).
//!
//! Root only (loop devices, `drop_caches`, overlayfs). Sizes scale with
//! `LAYERD_BENCH_SCALE` (default 1; `0.1` builds 1,000 and 10,000 layers);
//! `LAYERD_COLDSTART_SIZES=0,10000` sets them outright;
//! `LAYERD_COLDSTART_TRACE=1` prints the daemon's log lines with their times.
//!
//! `cargo bench -p daemon --bench coldstart`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drivers::testing::{LoopFs, LoopKind};
use layer::{ChainId, RegisterOpts, RwName, RwOpts, Store};

const CHAIN: usize = 10;
const RW_EVERY: usize = 100;
const PARALLEL_CHAINS: usize = 32;

fn sizes() -> Vec<usize> {
    if let Ok(s) = std::env::var("LAYERD_COLDSTART_SIZES") {
        return s.split(',').filter_map(|n| n.trim().parse().ok()).collect();
    }
    let scale: f64 = std::env::var("LAYERD_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    [0usize, 10_000, 100_000].iter().map(|n| ((*n as f64) * scale).round() as usize).collect()
}

/// Fill `root` with `n` layers in chains of [`CHAIN`] and an RW layer on
/// every [`RW_EVERY`]th; shut down cleanly (which writes the index).
async fn populate(root: &Path, n: usize) -> Duration {
    let t = Instant::now();
    let lock = layer::RootLock::acquire(root).unwrap();
    let driver = drivers::registry::open("overlay2", root).unwrap();
    let store = Store::open_locked(lock, driver, layer::StoreOptions::default()).await.unwrap();
    let chains = n.div_ceil(CHAIN);
    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_CHAINS));
    let mut tasks = Vec::new();
    for c in 0..chains {
        let (store, sem) = (store.clone(), sem.clone());
        let len = CHAIN.min(n - c * CHAIN);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let mut parent: Option<ChainId> = None;
            for i in 0..len {
                let k = c * CHAIN + i;
                let body = format!("layer {k}\n");
                let tar = testkit::tars::files_tar(&[(&format!("l{i}/f"), body.as_bytes())]);
                let opts = RegisterOpts { parent: parent.clone(), ..RegisterOpts::default() };
                let info = store.register(Box::new(std::io::Cursor::new(tar)), opts).await.unwrap();
                if k % RW_EVERY == RW_EVERY - 1 {
                    let name = RwName::parse(&format!("rw{k}")).unwrap();
                    store.create_rw(&name, Some(&info.chain_id), RwOpts::default()).await.unwrap();
                }
                parent = Some(info.chain_id);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.list().len(), n);
    store.shutdown().await.unwrap();
    t.elapsed()
}

fn remount(mnt: &Path, opt: &str) {
    let ok = Command::new("mount").arg("-o").arg(format!("remount,{opt}")).arg(mnt).status();
    assert!(ok.map(|s| s.success()).unwrap_or(false), "remount {} {opt}", mnt.display());
}

fn drop_caches() {
    let ok = Command::new("sync").status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "sync failed");
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").expect("drop caches (root only)");
}

/// `GET path` over the unix socket: the body of a 200 answer, or `None`
/// if the daemon does not answer (yet).
fn get(sock: &Path, path: &str) -> Option<String> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: layerd\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    text.starts_with("HTTP/1.1 200").then_some(text)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A daemon stopped (SIGTERM, then waited for) even if the bench panics.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Start {
    /// The first `_ping` answered: the store is open (it opens before the
    /// daemon listens).
    ping: Duration,
    /// The first `GET /v1/layers` (asked right after) answered in full.
    first_answer: Duration,
    rss_mib: f64,
    from_index: bool,
    /// When the background check of the index ended (after the start).
    checked: Option<Duration>,
}

/// Start `bin` on `root` with a cold cache; time the first full answer.
fn cold_start(bin: &Path, root: &Path, n: usize) -> Start {
    let sock = root.parent().unwrap().join("layerd.sock");
    drop_caches();
    let t = Instant::now();
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["--driver", "overlay2", "--log-level", "info,layer::store::indexing=debug", "--socket"])
        .arg(&sock)
        .env_remove("LAYERD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn layerd");
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let daemon = Daemon(child);
    let (tx, rx) = mpsc::channel();
    let trace = std::env::var_os("LAYERD_COLDSTART_TRACE").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if trace {
                eprintln!("{:>12.1} ms  {line}", t.elapsed().as_secs_f64() * 1e3);
            }
            if line.contains("loading the layerdb from its index") {
                let _ = tx.send(("index", t.elapsed()));
            }
            if line.contains("the index agrees with the disk") || line.contains("differs from the disk") {
                let _ = tx.send(("checked", t.elapsed()));
            }
        }
    });
    while get(&sock, "/v1/_ping").is_none() {
        assert!(t.elapsed() < Duration::from_secs(600), "layerd did not answer in 10 minutes");
        std::thread::sleep(Duration::from_millis(1));
    }
    let ping = t.elapsed();
    let listed = get(&sock, "/v1/layers").expect("GET /v1/layers").matches("\"chain_id\"").count();
    let first_answer = t.elapsed();
    let rss_mib = vm_hwm_kib(pid) as f64 / 1024.0;
    assert_eq!(listed, n, "the first list names every layer");
    // The daemon logs where it loads from before it listens.
    let mut from_index = false;
    let mut checked = None;
    if let Ok((what, _)) = rx.recv_timeout(Duration::from_millis(500)) {
        from_index = what == "index";
    }
    if from_index {
        checked = rx.recv_timeout(Duration::from_secs(600)).ok().map(|(_, at)| at);
    }
    drop(daemon);
    let _ = std::fs::remove_file(&sock);
    Start { ping, first_answer, rss_mib, from_index, checked }
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("coldstart: skipped: needs root (loop devices, drop_caches, overlayfs)");
        return;
    }
    if let Err(why) = drivers::testing::available_fs(LoopKind::Ext4) {
        eprintln!("coldstart: skipped: {why}");
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_layerd"));
    let baseline = std::env::var_os("LAYERD_COLDSTART_BASELINE").map(PathBuf::from);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("coldstart: layerd {} (baseline binary: {:?})", bin.display(), baseline);
    println!(
        "{:>7} {:>7} | {:>26} | {:>26} | {:>7} | {:>9}",
        "", "", "from the index", "scanning (no index)", "", "baseline"
    );
    println!(
        "{:>7} {:>7} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>7} | {:>9}",
        "layers", "build s", "ping ms", "list ms", "RSS MiB", "ping ms", "list ms", "RSS MiB", "check s", "list ms"
    );
    let mut rows = Vec::new();
    for n in sizes() {
        // ~14 inodes a layer (both layouts), and mkfs.ext4 gives one per
        // 16 KiB: sized for the inodes (sparse: ~60 KiB a layer is written).
        let mb = 1024 + (n as u64 * 300) / 1024;
        let fs = LoopFs::with_fs(LoopKind::Ext4, mb).expect("make a journaled ext4 loop fs");
        let root = fs.path().join("root");
        // Building is not what is measured: no write barriers meanwhile
        // (fsync still orders the journal), back on for the starts.
        remount(fs.path(), "nobarrier");
        let built = rt.block_on(populate(&root, n));
        remount(fs.path(), "barrier");
        let index_file = root.join("image/overlay2/layerdb/layerd-index");
        let ix = cold_start(&bin, &root, n);
        assert!(ix.from_index, "the clean shutdown left an index");
        std::fs::remove_file(&index_file).unwrap();
        let scan = cold_start(&bin, &root, n);
        assert!(!scan.from_index);
        let base = baseline.as_ref().map(|b| {
            let _ = std::fs::remove_file(&index_file);
            cold_start(b, &root, n).first_answer
        });
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:>7} {:>7.1} | {:>8.1} {:>8.1} {:>8.1} | {:>8.1} {:>8.1} {:>8.1} | {:>7} | {:>9}",
            n,
            built.as_secs_f64(),
            ms(ix.ping),
            ms(ix.first_answer),
            ix.rss_mib,
            ms(scan.ping),
            ms(scan.first_answer),
            scan.rss_mib,
            ix.checked.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64())),
            base.map_or("-".into(), |d| format!("{:.1}", ms(d))),
        );
        rows.push((n, ix, scan, base));
        drop(fs);
    }
    let Some((_, ix0, scan0, base0)) = rows.first() else { return };
    println!(
        "\nagainst the empty store (from the index: ping {:.1} ms, list {:.1} ms; scanning: list {:.1} ms):",
        ix0.ping.as_secs_f64() * 1e3,
        ix0.first_answer.as_secs_f64() * 1e3,
        scan0.first_answer.as_secs_f64() * 1e3
    );
    for (n, ix, scan, base) in rows.iter().skip(1) {
        let k = *n as f64 / 1000.0;
        let slope = |d: Duration, d0: Duration| (d.as_secs_f64() - d0.as_secs_f64()) * 1e3 / k;
        let ratio = |d: Duration, d0: Duration| d.as_secs_f64() / d0.as_secs_f64();
        let base = match (base, base0) {
            (Some(b), Some(b0)) => format!(
                "; baseline binary: list {:.2}x of empty ({:+.1} ms per 1,000 layers)",
                ratio(*b, *b0),
                slope(*b, *b0)
            ),
            _ => String::new(),
        };
        println!(
            "{n:>7} layers: from the index: ping {:.2}x, list {:.2}x of empty ({:+.1} ms per 1,000 layers); \
             scanning: list {:.2}x of empty ({:+.1} ms per 1,000 layers); scan / index {:.1}x{base}",
            ratio(ix.ping, ix0.ping),
            ratio(ix.first_answer, ix0.first_answer),
            slope(ix.first_answer, ix0.first_answer),
            ratio(scan.first_answer, scan0.first_answer),
            slope(scan.first_answer, scan0.first_answer),
            ratio(scan.first_answer, ix.first_answer),
        );
    }
}
