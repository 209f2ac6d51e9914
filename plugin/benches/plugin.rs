//! What the plugin socket costs: the same driver (vfs) used in process and
//! through `PluginDriver` → unix socket → `PluginServer`, side by side in
//! one run, on a journaled ext4 loop filesystem made for the run (or
//! `$LAYERD_BENCH_DIR`). Prints ratios, not absolute times.
//!
//! 1. ApplyDiff throughput: one tar (`LAYERD_BENCH_SCALE` × 256 MiB in 2,000
//!    files), best of 3, runs alternated.
//! 2. 100 layers (300 files each) removed by 100 concurrent `remove` calls.
//!
//! Run: `cargo bench -p plugin --bench plugin` (root: it mounts a loop fs).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graphdriver::{CacheId, CreateOpts, Driver};
use plugin::{Addr, ClientOptions, PluginDriver, PluginServer};

fn scale() -> f64 {
    std::env::var("LAYERD_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

/// A journaled ext4 on a loop device, unmounted and deleted on drop.
struct LoopFs {
    dir: tempfile::TempDir,
}

impl LoopFs {
    fn new(gib: u64) -> Option<LoopFs> {
        let dir = tempfile::Builder::new().prefix("plugin-bench").tempdir_in("/var/tmp").ok()?;
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).ok()?;
        std::fs::File::create(&img).ok()?.set_len(gib << 30).ok()?;
        let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F", "-O", "has_journal"]).arg(&img))
            || !ok(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt))
        {
            return None;
        }
        Some(LoopFs { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn make_tar(total: usize, files: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let per = total / files;
    let data: Vec<u8> = (0..per).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(per as u64);
        b.append_data(&mut h, format!("d{}/f{i}", i % 20), &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// A vfs driver in process, and one behind a plugin socket.
async fn drivers(base: &Path) -> (Arc<dyn Driver>, Arc<dyn Driver>) {
    let direct = drivers::registry::open_in("vfs", &base.join("direct")).unwrap();
    let opener: plugin::Opener = Arc::new(|home: &Path, _: &[String]| drivers::registry::open_in("vfs", home));
    let server = PluginServer::new(opener, None);
    let sock = base.join("p.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move { axum::serve(listener, plugin::router(server)).await.unwrap() });
    let remote = PluginDriver::connect_addr("bench", Addr::Unix(sock), &base.join("plugin"), ClientOptions::default())
        .await
        .unwrap();
    (direct, remote)
}

async fn apply_once(d: &Arc<dyn Driver>, tar: &Arc<Vec<u8>>) -> Duration {
    let id = CacheId::random();
    d.create(&id, None, &CreateOpts::default()).await.unwrap();
    let reader = std::io::Cursor::new(tar.as_ref().clone());
    sync();
    let start = Instant::now();
    d.apply_diff(&id, None, Box::new(reader)).await.unwrap();
    let t = start.elapsed();
    d.remove(&id).await.unwrap();
    t
}

async fn removals(d: &Arc<dyn Driver>, layer_tar: &Arc<Vec<u8>>, n: usize) -> Duration {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = CacheId::random();
        d.create(&id, None, &CreateOpts::default()).await.unwrap();
        d.apply_diff(&id, None, Box::new(std::io::Cursor::new(layer_tar.as_ref().clone()))).await.unwrap();
        ids.push(id);
    }
    sync();
    let start = Instant::now();
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let d = d.clone();
            tokio::spawn(async move { d.remove(&id).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn sync() {
    let _ = Command::new("sync").status();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _loop;
    let base = match std::env::var_os("LAYERD_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => match LoopFs::new(4) {
            Some(l) => {
                let p = l.path();
                _loop = l;
                p
            }
            None => {
                eprintln!("note: no loop ext4 (not root?); running in the temp dir");
                std::env::temp_dir().join(format!("plugin-bench-{}", std::process::id()))
            }
        },
    };
    std::fs::create_dir_all(&base).unwrap();
    let (direct, remote) = drivers(&base).await;

    let size = (256.0 * scale() * (1 << 20) as f64) as usize;
    let tar = Arc::new(make_tar(size, 2000));
    let (mut best_d, mut best_p) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        best_d = best_d.min(apply_once(&direct, &tar).await);
        best_p = best_p.min(apply_once(&remote, &tar).await);
    }
    let mb = tar.len() as f64 / (1 << 20) as f64;
    println!(
        "apply_diff {:.0} MiB / 2000 files: in process {:.0} MiB/s, through the plugin {:.0} MiB/s: {:.2}x of in-process",
        mb,
        mb / best_d.as_secs_f64(),
        mb / best_p.as_secs_f64(),
        best_d.as_secs_f64() / best_p.as_secs_f64()
    );

    let n = ((100.0 * scale()).round() as usize).max(10);
    let small = Arc::new(make_tar(300 * 1024, 300));
    let rd = removals(&direct, &small, n).await;
    let rp = removals(&remote, &small, n).await;
    println!(
        "{n} concurrent removes of 300-file layers: in process {:.1} ms, through the plugin {:.1} ms: {:.2}x of in-process time",
        rd.as_secs_f64() * 1e3,
        rp.as_secs_f64() * 1e3,
        rp.as_secs_f64() / rd.as_secs_f64()
    );
    let _ = direct.cleanup().await;
    let _ = remote.cleanup().await;
}
