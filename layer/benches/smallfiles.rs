//! Small-file import benchmark (issue 15, point 2). Registering a tar into
//! the store (overlay driver) against GNU `tar -xf` of the same tar into a
//! fresh directory, on the same journaled ext4 loop filesystem, in
//! alternating rounds; every figure is a ratio measured in this run.
//!
//! Shapes (full scale):
//! - `small`: ~1 GB in 50,000 files, lognormal sizes, 100 files per directory;
//! - `large`: ~1 GB in 2,000 files, lognormal sizes, 100 files per directory.
//!
//! Run: `cargo bench -p layer --bench smallfiles` (as root: loop mount and
//! overlay; needs GNU tar and mkfs.ext4). `LAYERD_BENCH_SCALE=0.1` shrinks
//! the file counts (and so the bytes) for a quick look;
//! `LAYERD_BENCH_ROUNDS` sets the rounds (default 5);
//! `LAYERD_BENCH_ONLY=small` (or `large`, `register`) runs one part:
//! `register` does one import of a 5,000-file tar four directories deep
//! and nothing else, for `strace -f -c` (`LAYERD_BENCH_KEEP_TAR=FILE`
//! keeps a copy of that tar, for `strace -c tar -xf FILE`;
//! `LAYERD_BENCH_DRIVER_ONLY=1` then also times the overlay driver's
//! `apply_diff` alone on it: the extraction without hashing, tar-split or
//! metadata).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivers::testing::{LoopFs, LoopKind};
use graphdriver::Driver;
use layer::{RegisterOpts, Store};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;

fn scale() -> f64 {
    std::env::var("LAYERD_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(1)
}

fn rounds() -> usize {
    std::env::var("LAYERD_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).max(1)
}

/// A tar shape: how many files, their mean size, and where they go.
struct Shape {
    name: &'static str,
    files: usize,
    mean: f64,
    /// Directory levels above each file (the last level holds 100 files).
    depth: usize,
}

/// xorshift64*: a fixed, seedable stream, so every run builds the same tar.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Lognormal with the given mean and sigma (Box-Muller).
    fn lognormal(&mut self, mean: f64, sigma: f64) -> f64 {
        let z = (-2.0 * self.unit().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.unit()).cos();
        (mean.ln() - sigma * sigma / 2.0 + sigma * z).exp()
    }
}

/// Write the shape's tar to `path`; returns its size in bytes.
fn make_tar(shape: &Shape, path: &Path) -> u64 {
    let out = BufWriter::with_capacity(1 << 20, File::create(path).expect("create tar"));
    let mut b = tar::Builder::new(out);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut data = vec![0u8; 1 << 20];
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = (i.wrapping_mul(31) % 251) as u8;
    }
    let mut made_dirs = std::collections::HashSet::new();
    for i in 0..shape.files {
        let leaf = i / 100;
        let mut dir = String::new();
        for level in (0..shape.depth).rev() {
            // The deepest level is per 100 files; levels above fan out by 10.
            let n = leaf / 10usize.pow(level as u32);
            dir.push_str(&format!("l{level}-{n}/"));
            if made_dirs.insert(dir.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(1_700_000_000);
                h.set_size(0);
                b.append_data(&mut h, &dir, std::io::empty()).expect("tar dir");
            }
        }
        let size = (rng.lognormal(shape.mean, 1.0) as usize).min(64 << 20);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let off = (i * 4093) % (data.len() / 2);
        let head = size.min(data.len() / 2);
        let body =
            std::io::Read::chain(&data[off..off + head], std::io::Read::take(std::io::repeat(7), (size - head) as u64));
        b.append_data(&mut h, format!("{dir}f{i}"), body).expect("tar file");
    }
    b.into_inner().expect("tar").flush().expect("flush tar");
    std::fs::metadata(path).expect("stat tar").len()
}

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("spawn");
    assert!(st.success(), "{cmd:?} failed");
}

/// Write back this filesystem's dirty data, then the loop image's (it sits
/// in the page cache of the filesystem below), so no run is throttled for
/// the last one's writeback.
fn sync_fs(path: &Path) {
    run(Command::new("sync").arg("-f").arg(path));
    if let Some(below) = path.parent() {
        run(Command::new("sync").arg("-f").arg(below));
    }
}

/// CPU seconds (user + system) used so far by `who` (`RUSAGE_SELF`: this
/// process, all threads; `RUSAGE_CHILDREN`: waited-for children).
fn cpu(who: UsageWho) -> f64 {
    let ru = getrusage(who).expect("getrusage");
    let secs = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(ru.user_time()) + secs(ru.system_time())
}

async fn open_store(root: &Path) -> Store {
    let driver: Arc<dyn Driver> =
        Arc::new(drivers::overlay::Overlay::new(root.join("overlay2")).expect("overlay driver"));
    Store::open(root, driver).await.expect("open store")
}

/// Wall time and CPU seconds of one registration (then released).
async fn register_file(store: &Store, tar: &Path) -> (Duration, f64) {
    let file = File::open(tar).expect("open tar");
    let (t, c) = (Instant::now(), cpu(UsageWho::RUSAGE_SELF));
    let info = store.register(Box::new(file), RegisterOpts::default()).await.expect("register");
    let took = (t.elapsed(), cpu(UsageWho::RUSAGE_SELF) - c);
    store.release(&info.chain_id).await.expect("release");
    store.settle().await;
    took
}

async fn bench_shape(fs: &Path, shape: &Shape) {
    let tar = fs.join(format!("{}.tar", shape.name));
    let bytes = make_tar(shape, &tar);
    println!(
        "\n## {}: {} files, {:.0} MB, 100 per directory, {} levels deep ({} rounds, alternated)",
        shape.name,
        shape.files,
        bytes as f64 / 1e6,
        shape.depth,
        rounds()
    );
    let store = open_store(&fs.join(format!("store-{}", shape.name))).await;
    // Warm-up: page cache for the tar, the store's directories.
    register_file(&store, &tar).await;
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds() {
        let x_dir = fs.join(format!("tarx-{}-{round}", shape.name));
        std::fs::create_dir(&x_dir).expect("mkdir");
        sync_fs(fs);
        let (t, c) = (Instant::now(), cpu(UsageWho::RUSAGE_CHILDREN));
        run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&x_dir));
        let (tar_x, tar_cpu) = (t.elapsed(), cpu(UsageWho::RUSAGE_CHILDREN) - c);
        std::fs::remove_dir_all(&x_dir).expect("remove tar -x output");
        sync_fs(fs);
        let (reg, reg_cpu) = register_file(&store, &tar).await;
        sync_fs(fs);
        let ratio = tar_x.as_secs_f64() / reg.as_secs_f64();
        println!(
            "  round {round}: tar -x {:>7.3} s ({tar_cpu:.2} s CPU)   register {:>7.3} s ({reg_cpu:.2} s CPU)   {ratio:.2}x of tar",
            tar_x.as_secs_f64(),
            reg.as_secs_f64()
        );
        ratios.push(ratio);
        cpu_ratios.push(tar_cpu / reg_cpu);
    }
    let summary = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!("median {:.2}x of tar -x (range {:.2}x to {:.2}x)", v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!("  register throughput (wall): {}", summary(&mut ratios));
    // On a shared machine the wall ratio moves with the load; CPU time is
    // what the work costs (register hashes and records tar-split on a
    // second thread, which `tar -x` does not do at all).
    println!("  register CPU efficiency:    {}", summary(&mut cpu_ratios));
    store.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_file(&tar);
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes; nothing to list.
    }
    let only = std::env::var("LAYERD_BENCH_ONLY").unwrap_or_default();
    let wanted = |n: &str| only.is_empty() || only.split(',').any(|o| o.trim() == n);
    // Room for the tar, one imported copy and one `tar -x` copy.
    let lo = LoopFs::with_fs(LoopKind::Ext4, ((6000.0 * scale()) as u64).max(600)).expect("ext4 loop filesystem");
    let fs: PathBuf = lo.path().to_path_buf();
    println!(
        "# layerd small-file import benchmark (overlay driver on journaled ext4, {} cores, scale {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        scale()
    );
    if only == "register" {
        let shape = Shape { name: "strace", files: scaled(5_000), mean: 20_000.0, depth: 4 };
        let tar = fs.join("strace.tar");
        make_tar(&shape, &tar);
        if let Some(keep) = std::env::var_os("LAYERD_BENCH_KEEP_TAR") {
            // For `strace -c tar -xf` on the same input.
            std::fs::copy(&tar, &keep).expect("copy the tar");
        }
        let store = open_store(&fs.join("store")).await;
        eprintln!("registering {} (pid {})", tar.display(), std::process::id());
        let file = File::open(&tar).expect("open tar");
        let t = Instant::now();
        store.register(Box::new(file), RegisterOpts::default()).await.expect("register");
        let took = t.elapsed();
        println!("one import of {} files, 4 levels deep: {:.3} s", shape.files, took.as_secs_f64());
        if std::env::var_os("LAYERD_BENCH_DRIVER_ONLY").is_some() {
            // The extraction alone (no hashing, tar-split or metadata).
            let driver = drivers::overlay::Overlay::new(fs.join("driver-only")).expect("overlay driver");
            let id = graphdriver::CacheId::random();
            driver.create(&id, None, &Default::default()).await.expect("create");
            let file = File::open(&tar).expect("open tar");
            let t = Instant::now();
            driver.apply_diff(&id, None, Box::new(file)).await.expect("apply");
            println!("driver apply_diff alone: {:.3} s", t.elapsed().as_secs_f64());
        }
        store.shutdown().await.expect("shutdown");
    }
    if wanted("small") {
        bench_shape(&fs, &Shape { name: "small", files: scaled(50_000), mean: 21_000.0, depth: 2 }).await;
    }
    if wanted("large") {
        bench_shape(&fs, &Shape { name: "large", files: scaled(2_000), mean: 512_000.0, depth: 2 }).await;
    }
    lo.close().expect("unmount the loop filesystem");
}
