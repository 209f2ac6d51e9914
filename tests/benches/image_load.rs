//! `image load` of a docker-archive against `docker load` of the same file,
//! in one run, on one journaled ext4 loop filesystem (both on overlay2).
//!
//! The archive: one layer of 50,000 files with lognormal sizes, ~1 GiB
//! (`LAYERD_BENCH_SCALE=0.1` for a tenth), members in `docker save`'s order
//! (`manifest.json` last). layerd loads it with `ImageStore::load_path`
//! (indexed, then read in place: nothing spooled) and, beside it, as a
//! stream in that order (the layer spooled once, as stdin would be);
//! dockerd 20.10 (a private instance) with `docker load -i`. Each time
//! includes a `sync` of the filesystem. Prints the times and the ratios.
//! Skipped, saying why, when not root or when dockerd is not installed.

// A benchmark harness: it panics on any unexpected failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use conformance::dockerd::{DOCKERD, Dockerd, DockerdOpts};
use drivers::testing::{LoopFs, LoopKind};
use images::ImageStore;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

fn scale() -> f64 {
    std::env::var("LAYERD_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

/// Write the layer tar to `out`: `files` files, lognormal sizes (median
/// ~7 KiB, mean ~20 KiB: most small, a few large), in 500 dirs. Returns
/// the tar's sha256 (its DiffID).
fn write_layer(out: &Path, files: usize, total: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    // Lognormal(mu, sigma) with sigma 1.4, mu set so the mean is total/files.
    let sigma: f64 = 1.4;
    let mean = total as f64 / files as f64;
    let mu = mean.ln() - sigma * sigma / 2.0;
    let f = fs::File::create(out).unwrap();
    let mut hasher = HashingWriter { inner: std::io::BufWriter::with_capacity(1 << 20, f), h: Sha256::new() };
    {
        let mut b = tar::Builder::new(&mut hasher);
        let dirs = 500.min(files.max(1));
        for d in 0..dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            b.append_data(&mut h, format!("d{d:03}/"), std::io::empty()).unwrap();
        }
        let chunk: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for i in 0..files {
            // Box-Muller.
            let (u1, u2): (f64, f64) = (rng.r#gen::<f64>().max(1e-12), rng.r#gen());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let size = ((mu + sigma * z).exp() as u64).min(64 << 20);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_size(size);
            let off = (i * 4099) % chunk.len();
            let data = std::io::Read::take(std::io::Read::chain(&chunk[off..], std::io::repeat(7)), size);
            b.append_data(&mut h, format!("d{:03}/f{i:06}", i % dirs), data).unwrap();
        }
        b.finish().unwrap();
    }
    hasher.inner.flush().unwrap();
    format!("sha256:{}", hex::encode(hasher.h.finalize()))
}

struct HashingWriter<W> {
    inner: W,
    h: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.h.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A docker-archive of one image on `layer`, manifest.json last.
fn write_archive(out: &Path, layer: &Path, diff_id: &str) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    );
    let cfg_name = format!("{}.json", hex::encode(Sha256::digest(config.as_bytes())));
    let manifest = format!(r#"[{{"Config":"{cfg_name}","RepoTags":["bench:1"],"Layers":["l/layer.tar"]}}]"#);
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, fs::File::create(out).unwrap()));
    b.append_path_with_name(layer, "l/layer.tar").unwrap();
    for (name, data) in [(cfg_name.as_str(), config.as_bytes()), ("manifest.json", manifest.as_bytes())] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap().flush().unwrap();
}

fn sync_fs() {
    let _ = Command::new("sync").status();
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    sync_fs();
    (r, t.elapsed())
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        println!("image_load: skipped: needs root (loop mounts, dockerd)");
        return;
    }
    let have_docker = Path::new(DOCKERD).exists();
    let s = scale();
    let files = ((50_000.0 * s) as usize).max(100);
    let total = (1024.0 * 1024.0 * 1024.0 * s) as u64;
    // Archive + layer tar + layerd's copy + dockerd's (which extracts to a
    // temp dir first), with room to spare.
    let mb = ((total >> 20) * 7).max(1024) + 512;
    let lo = LoopFs::with_fs(LoopKind::Ext4, mb).expect("a journaled ext4 loop filesystem");
    let base: PathBuf = lo.path().to_path_buf();
    println!("# image load benchmark: {files} files, {} MiB layer, ext4 loop fs, scale {s}", total >> 20);
    let layer = base.join("layer.tar");
    let diff_id = write_layer(&layer, files, total);
    let archive = base.join("image.tar");
    write_archive(&archive, &layer, &diff_id);
    fs::remove_file(&layer).unwrap();
    let size = fs::metadata(&archive).unwrap().len();
    println!("  archive: {} MiB", size >> 20);
    sync_fs();

    // tar -x of the layer straight from the archive: the floor.
    let x = base.join("x");
    fs::create_dir(&x).unwrap();
    let (_, t_tar) = timed(|| {
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("tar -xOf {} l/layer.tar | tar -x -C {}", archive.display(), x.display()))
            .status()
            .unwrap();
        assert!(st.success());
    });
    fs::remove_dir_all(&x).unwrap();
    sync_fs();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let run_layerd = |root: PathBuf, stream: bool| {
        rt.block_on(async {
            let driver = drivers::registry::open("overlay2", &root.join("overlay2")).unwrap();
            let (layers, images) = ImageStore::open_with_layers(&root, driver).await.unwrap();
            let ((), t) = {
                let t = Instant::now();
                let r = if stream {
                    images.load(fs::File::open(&archive).unwrap()).await.unwrap()
                } else {
                    images.load_path(&archive).await.unwrap()
                };
                assert_eq!(r.layers_registered, 1);
                sync_fs();
                ((), t.elapsed())
            };
            layers.shutdown().await.unwrap();
            t
        })
    };
    let t_ours = run_layerd(base.join("layerd"), false);
    let _ = fs::remove_dir_all(base.join("layerd"));
    sync_fs();
    let t_stream = run_layerd(base.join("layerd-stream"), true);
    let _ = fs::remove_dir_all(base.join("layerd-stream"));
    sync_fs();
    std::thread::sleep(Duration::from_secs(1));

    let secs = |d: Duration| d.as_secs_f64();
    println!("  tar -x (floor)                      {:>8.2} s", secs(t_tar));
    println!(
        "  ImageStore::load_path (FILE)        {:>8.2} s   {:.2}x of tar -x",
        secs(t_ours),
        secs(t_tar) / secs(t_ours)
    );
    println!(
        "  image load from a stream (spooled)  {:>8.2} s   {:.2}x of tar -x",
        secs(t_stream),
        secs(t_tar) / secs(t_stream)
    );
    if !have_docker {
        println!("  docker load: skipped: {DOCKERD} not found (install Debian's docker.io)");
        return;
    }
    let mut d = Dockerd::start(DockerdOpts::new(DOCKERD, base.join("docker")).arg("--storage-driver=overlay2"))
        .expect("a private dockerd");
    let (out, t_docker) = timed(|| d.docker(&["load", "-i", archive.to_str().unwrap()]));
    out.expect("docker load");
    d.stop().expect("stop dockerd");
    println!(
        "  docker load -i FILE (dockerd 20.10) {:>8.2} s   {:.2}x of tar -x",
        secs(t_docker),
        secs(t_tar) / secs(t_docker)
    );
    println!("  image load is {:.2}x as fast as docker load (goal >= 2x)", secs(t_docker) / secs(t_ours));
    println!("  from a stream: {:.2}x as fast as docker load", secs(t_docker) / secs(t_stream));
    drop(d);
    lo.close().expect("unmount the loop filesystem");
}
