//! Concurrency benchmark (issue 6). Every figure is a ratio of two runs made
//! side by side in this process, on this machine, on the same filesystem:
//! the fine-grained store against a sequential run, an idle store, a single
//! registration, GNU tar, and a deliberately coarse baseline (one global lock
//! held across driver I/O with inline deletion — moby's layer store).
//!
//! Run: `cargo bench -p layer --bench concurrency` (as root; needs GNU tar).
//! `LAYERD_BENCH_SCALE=0.2` shrinks every workload for a quick look.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use graphdriver::{Driver, TarReader};
use layer::{ChainId, DiffId, Digest, RegisterOpts, RwName, RwOpts, Store, StoreOptions};

fn scale() -> f64 {
    std::env::var("LAYERD_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(1)
}

struct Bench {
    dir: tempfile::TempDir,
    n: usize,
}

impl Bench {
    async fn store(&mut self, coarse: bool) -> Store {
        self.n += 1;
        let root = self.dir.path().join(format!("root{}", self.n));
        let driver: Arc<dyn Driver> = Arc::new(drivers::vfs::Vfs::new(root.join("vfs")).expect("vfs"));
        Store::open_with(&root, driver, StoreOptions { coarse_baseline: coarse, ..StoreOptions::default() })
            .await
            .expect("open store")
    }
}

/// A tar of `files` files of `size` bytes each, in `dirs` directories.
fn make_tar(files: usize, size: usize, dirs: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut data = vec![0u8; size];
    for i in 0..files {
        for (j, byte) in data.iter_mut().enumerate() {
            *byte = (i.wrapping_mul(31).wrapping_add(j.wrapping_mul(7)) % 251) as u8;
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("d{}/f{i}", i % dirs.max(1)), &data[..]).expect("tar");
    }
    b.into_inner().expect("tar")
}

fn reader(bytes: &Arc<Vec<u8>>) -> TarReader {
    struct ArcCursor(Cursor<ArcBytes>);
    struct ArcBytes(Arc<Vec<u8>>);
    impl AsRef<[u8]> for ArcBytes {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Read for ArcCursor {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    Box::new(ArcCursor(Cursor::new(ArcBytes(bytes.clone()))))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Make `n` RW layers with `files` files written into each.
async fn make_rw_layers(store: &Store, n: usize, files: usize) -> Vec<RwName> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = RwName::parse(&format!("c{i}")).expect("name");
        store.create_rw(&name, None, RwOpts::default()).await.expect("create rw");
        let path = store.mount(&name).await.expect("mount");
        tokio::task::spawn_blocking(move || {
            for f in 0..files {
                std::fs::write(path.join(format!("file{f}")), b"some container data").expect("write");
            }
        })
        .await
        .expect("join");
        store.unmount(&name).await.expect("unmount");
        names.push(name);
    }
    names
}

/// (time until every removal returned, time until every deletion finished).
/// One at a time means what it does for `docker rm a; docker rm b`: each
/// removal, deletion included, finishes before the next starts.
async fn remove_all(store: &Store, names: Vec<RwName>, concurrent: bool) -> (Duration, Duration) {
    let t = Instant::now();
    if concurrent {
        let mut set = tokio::task::JoinSet::new();
        for n in names {
            let s = store.clone();
            set.spawn(async move { s.release_rw(&n).await.expect("release_rw") });
        }
        while let Some(r) = set.join_next().await {
            r.expect("join");
        }
    } else {
        for n in names {
            store.release_rw(&n).await.expect("release_rw");
            store.settle().await;
        }
    }
    let returned = t.elapsed();
    store.settle().await;
    (returned, t.elapsed())
}

async fn bench_removals(b: &mut Bench) {
    let (n, files) = (scaled(100), scaled(300));
    println!("\n## 1. {n} RW layers with {files} files each, removed");
    let mut rows = Vec::new();
    for (label, coarse, concurrent) in
        [("one at a time", false, false), ("concurrently", false, true), ("concurrently, coarse baseline", true, true)]
    {
        let store = b.store(coarse).await;
        let names = make_rw_layers(&store, n, files).await;
        // A container's files reach the disk long before `docker rm`: delete
        // written-back files, not ones still only in the page cache.
        sync_fs();
        let (returned, done) = remove_all(&store, names, concurrent).await;
        println!("  {label:32} all calls returned {:>8.3} s, all data deleted {:>8.3} s", secs(returned), secs(done));
        rows.push((returned, done));
    }
    // The filesystem's own limit: the same tree shape deleted by `rm -rf`,
    // one process per directory, all at once.
    let rm_dir = b.dir.path().join("rm-baseline");
    for i in 0..n {
        let d = rm_dir.join(format!("c{i}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        for f in 0..files {
            std::fs::write(d.join(format!("file{f}")), b"some container data").expect("write");
        }
    }
    sync_fs();
    let t = Instant::now();
    run(Command::new("sh").arg("-c").arg(format!("ls -d {}/c* | xargs -P {n} -n 1 rm -rf", rm_dir.display())));
    let rm_par = t.elapsed();
    println!("  {n} x rm -rf in parallel (the filesystem's limit)    all data deleted {:>8.3} s", secs(rm_par));
    println!(
        "  ratio: concurrent vs one at a time: {:.2}x faster to delete everything",
        secs(rows[0].1) / secs(rows[1].1)
    );
    println!("  ratio: concurrent removal vs parallel rm -rf: {:.2}x of its speed", secs(rm_par) / secs(rows[1].1));
    println!(
        "  ratio: fine-grained vs coarse baseline (both concurrent): {:.2}x faster to delete, {:.1}x faster to return",
        secs(rows[2].1) / secs(rows[1].1),
        secs(rows[2].0) / secs(rows[1].0)
    );
}

/// Sample `list()` latency until `stop` is set.
async fn sample_list(store: Store, stop: Arc<AtomicBool>) -> Vec<Duration> {
    tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let n = store.list().len();
            v.push(t.elapsed());
            std::hint::black_box(n);
            std::thread::sleep(Duration::from_micros(500));
        }
        v
    })
    .await
    .expect("join")
}

async fn bench_list_during_delete(b: &mut Bench) {
    let files = scaled(40_000);
    println!("\n## 2. list latency while a {files}-file layer is deleted");
    let tar = Arc::new(make_tar(files, 64, 200));
    let mut results = Vec::new();
    for (label, coarse) in [("fine-grained", false), ("coarse baseline", true)] {
        let store = b.store(coarse).await;
        // A few other layers so list has something to copy.
        for i in 0..20 {
            store.register(reader(&Arc::new(make_tar(1, 10 + i, 1))), RegisterOpts::default()).await.expect("reg");
        }
        let big = store.register(reader(&tar), RegisterOpts::default()).await.expect("register big").chain_id;
        sync_fs();
        // Idle: same sampler, same duration as the deletion window below.
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(sample_list(store.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let mut idle = sampler.await.expect("join");
        // During the delete: from the release call until the data is gone.
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(sample_list(store.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        store.release(&big).await.expect("release");
        let returned = t.elapsed();
        store.settle().await;
        let window = t.elapsed();
        stop.store(true, Ordering::SeqCst);
        let mut busy = sampler.await.expect("join");
        idle.sort();
        busy.sort();
        let (ip99, imax) = (percentile(&idle, 0.99), *idle.last().unwrap_or(&Duration::ZERO));
        let (bp99, bmax) = (percentile(&busy, 0.99), *busy.last().unwrap_or(&Duration::ZERO));
        println!(
            "  {label:16} release returned in {}, deletion took {}; list p99 idle {} / during {}, max idle {} / during {} ({} samples)",
            ms(returned),
            ms(window),
            ms(ip99),
            ms(bp99),
            ms(imax),
            ms(bmax),
            busy.len()
        );
        results.push((bp99, bmax, ip99));
    }
    println!(
        "  fine-grained: list p99 during delete is {} above idle; coarse baseline: max list stall {} ({:.0}x the fine-grained max)",
        ms(results[0].0.saturating_sub(results[0].2)),
        ms(results[1].1),
        secs(results[1].1) / secs(results[0].1).max(1e-9)
    );
}

async fn timed_registrations(store: &Store, tar: &Arc<Vec<u8>>, n: usize, state_diff_id: bool) -> (Duration, ChainId) {
    let diff_id = DiffId(Digest::of(tar));
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (s, tar, d) = (store.clone(), tar.clone(), diff_id.clone());
        set.spawn(async move {
            let opts = RegisterOpts { diff_id: state_diff_id.then_some(d), ..RegisterOpts::default() };
            s.register(reader(&tar), opts).await.expect("register").chain_id
        });
    }
    let mut chain = None;
    while let Some(r) = set.join_next().await {
        chain = Some(r.expect("join"));
    }
    store.settle().await;
    (t.elapsed(), chain.expect("at least one"))
}

async fn bench_duplicate_registrations(b: &mut Bench) {
    let mb = scaled(100);
    println!("\n## 3. 20 concurrent registrations of one {mb} MB layer (best of 3, runs alternated)");
    let tar = Arc::new(make_tar(mb * 4, 256 * 1024, 8));
    let (mut one, mut twenty, mut retains) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let store = b.store(false).await;
        one = one.min(timed_registrations(&store, &tar, 1, true).await.0);
        // What the 19 followers pay after the leader: a durable reference
        // each (group-committed `refs` writes).
        let chain = store.list()[0].chain_id.clone();
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..19 {
            let (s, c) = (store.clone(), chain.clone());
            set.spawn(async move { s.retain(&c).await.expect("retain") });
        }
        while let Some(r) = set.join_next().await {
            r.expect("join");
        }
        retains = retains.min(t.elapsed());
        let store = b.store(false).await;
        let (t20, chain) = timed_registrations(&store, &tar, 20, true).await;
        assert_eq!(store.get(&chain).expect("layer").references, 20);
        twenty = twenty.min(t20);
    }
    let store = b.store(false).await;
    let (twenty_blind, _) = timed_registrations(&store, &tar, 20, false).await;
    let store = b.store(true).await;
    let (twenty_coarse, _) = timed_registrations(&store, &tar, 20, false).await;
    println!("  one registration                      {:>8.3} s", secs(one));
    println!("  19 concurrent retains of it           {:>8.3} s  (durable references, group-committed)", secs(retains));
    println!(
        "  20 concurrent, diff_id stated         {:>8.3} s  ratio {:.2}x of one",
        secs(twenty),
        secs(twenty) / secs(one)
    );
    println!(
        "  20 concurrent, no diff_id (20 unpacks) {:>8.3} s  ratio {:.2}x of one",
        secs(twenty_blind),
        secs(twenty_blind) / secs(one)
    );
    println!(
        "  20 concurrent, coarse baseline        {:>8.3} s  ratio {:.2}x of one",
        secs(twenty_coarse),
        secs(twenty_coarse) / secs(one)
    );
}

fn sync_fs() {
    run(&mut Command::new("sync"));
}

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("spawn");
    assert!(st.success(), "{cmd:?} failed");
}

fn drop_dir(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

async fn bench_throughput(b: &mut Bench) {
    let (files, size) = (scaled(2_000), 64 * 1024);
    println!(
        "\n## 4. throughput on a {} MB, {files}-file archive (best of 5, runs alternated)",
        files * size / (1 << 20)
    );
    let tar = Arc::new(make_tar(files, size, 50));
    let tar_path: PathBuf = b.dir.path().join("input.tar");
    std::fs::write(&tar_path, &*tar).expect("write tar");
    let (mut tar_x, mut tar_c, mut reg, mut exp) = (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    let mut tar_c_sha = Duration::MAX;
    for round in 0..5 {
        // GNU tar, same filesystem. (`tar -c` writing straight to /dev/null
        // skips reading file data, hence the pipe.)
        let x_dir = b.dir.path().join(format!("tarx{round}"));
        std::fs::create_dir_all(&x_dir).expect("mkdir");
        let t = Instant::now();
        run(Command::new("tar").arg("-xf").arg(&tar_path).arg("-C").arg(&x_dir));
        tar_x = tar_x.min(t.elapsed());
        let t = Instant::now();
        run(Command::new("sh").arg("-c").arg(format!("tar -cf - -C {} . | cat > /dev/null", x_dir.display())));
        tar_c = tar_c.min(t.elapsed());
        // The same work export does: it verifies every byte's SHA-256
        // against the DiffID (OpenSSL uses the CPU's SHA extensions too).
        let t = Instant::now();
        run(Command::new("sh")
            .arg("-c")
            .arg(format!("tar -cf - -C {} . | openssl dgst -sha256 > /dev/null", x_dir.display())));
        tar_c_sha = tar_c_sha.min(t.elapsed());
        drop_dir(&x_dir);
        // The store, same archive.
        let store = b.store(false).await;
        let t = Instant::now();
        let chain = store.register(reader(&tar), RegisterOpts::default()).await.expect("register").chain_id;
        reg = reg.min(t.elapsed());
        let t = Instant::now();
        let mut r = store.tar_stream(&chain).await.expect("tar stream");
        // Read in 256 KiB chunks, as the daemon's streaming does.
        let n = tokio::task::spawn_blocking(move || {
            std::io::copy(&mut std::io::BufReader::with_capacity(256 * 1024, &mut r), &mut std::io::sink())
        })
        .await
        .expect("join")
        .expect("export");
        exp = exp.min(t.elapsed());
        assert_eq!(n as usize, tar.len(), "export must give back every byte");
        store.release(&chain).await.expect("release");
        store.settle().await;
    }
    println!(
        "  tar -x {:>7.3} s   register {:>7.3} s   register throughput {:.2}x of tar -x",
        secs(tar_x),
        secs(reg),
        secs(tar_x) / secs(reg)
    );
    println!(
        "  tar -c {:>7.3} s   export   {:>7.3} s   export throughput   {:.2}x of tar -c",
        secs(tar_c),
        secs(exp),
        secs(tar_c) / secs(exp)
    );
    println!(
        "  tar -c | openssl dgst -sha256 {:>7.3} s   export throughput {:.2}x of it (the same work: export verifies the DiffID)",
        secs(tar_c_sha),
        secs(tar_c_sha) / secs(exp)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes; nothing to list.
    }
    let base = std::env::var_os("LAYERD_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("layerd-bench").tempdir_in(base).expect("tempdir");
    println!(
        "# layerd concurrency benchmark (vfs driver, {} cores, scale {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        scale()
    );
    let mut b = Bench { dir, n: 0 };
    // `LAYERD_BENCH_ONLY=1,4` runs just those scenarios.
    let only = std::env::var("LAYERD_BENCH_ONLY").unwrap_or_default();
    let wanted = |n: &str| only.is_empty() || only.split(',').any(|o| o.trim() == n);
    if wanted("1") {
        // Start each scenario on a quiet disk: the previous one's deletions
        // and writeback must not be measured here.
        sync_fs();
        tokio::time::sleep(Duration::from_secs(2)).await;
        bench_removals(&mut b).await;
    }
    if wanted("2") {
        // Start each scenario on a quiet disk: the previous one's deletions
        // and writeback must not be measured here.
        sync_fs();
        tokio::time::sleep(Duration::from_secs(2)).await;
        bench_list_during_delete(&mut b).await;
    }
    if wanted("3") {
        // Start each scenario on a quiet disk: the previous one's deletions
        // and writeback must not be measured here.
        sync_fs();
        tokio::time::sleep(Duration::from_secs(2)).await;
        bench_duplicate_registrations(&mut b).await;
    }
    if wanted("4") {
        // Start each scenario on a quiet disk: the previous one's deletions
        // and writeback must not be measured here.
        sync_fs();
        tokio::time::sleep(Duration::from_secs(2)).await;
        bench_throughput(&mut b).await;
    }
}
