//! The hostile-tar corpus (issue 14) through the whole layer store, on
//! every driver: vfs always, overlay where the kernel has it, btrfs on a
//! loop filesystem where it can be made. Every case is registered as a
//! child of a small base layer and must either be accepted — DiffID the
//! sha256 of the (uncompressed) bytes, export byte-exact — or refused with
//! `InvalidArgument` (a 4xx) and a short message, leaving nothing behind
//! (no layer, no driver dir, no transaction, no parent pin). Nothing is
//! ever written outside the store. Peak memory over the whole corpus stays
//! bounded (it holds claims of 512 MiB names and PAX records).
//!
//! The expected outcome of each hand-written case is its entry in
//! `expect()`; the seeded mutations have none (only the invariants hold).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tarcorpus;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use graphdriver::{Driver, ErrorKind, TarReader};
use layer::{ChainId, DiffId, Digest, RegisterOpts, Store};
use tarcorpus::{Case, H, LINK, cat, end, file, member, pax};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accept,
    Refuse,
}

/// Cases of the generated corpus the store refuses (Go's reader refuses
/// them, or Docker's extraction rules do: escapes, unknown types, owners
/// out of range); every other hand-written case is accepted.
const REFUSED: &[&str] = &[
    "typeflag NUL slash with size",
    "symlink with size and data",
    "hardlink with size",
    "pax xattr",
    "gnu long name",
    "unknown typeflag",
    "gnu dumpdir typeflag",
    "dotdot name",
    "uid not octal",
    "uid letters",
    "uid plus sign",
    "size not octal",
    "devmajor garbage",
    "base-256 negative uid",
    "base-256 negative size",
    "base-256 overflow",
    "bad checksum",
    "empty checksum",
    "pax size -1",
    "pax size 1e3",
    "pax size overflow",
    "pax size spaces",
    "pax uid 1e20",
    "pax uid negative",
    "pax gid huge",
    "pax uid max",
    "pax mtime bad",
    "pax mtime no int",
    "pax ctime bad",
    "pax NUL in path",
    "pax NUL in key",
    "pax empty key",
    "pax no equals",
    "pax length too long",
    "pax length too short",
    "pax no newline",
    "pax trailing NULs",
    "pax length not a number",
    "global header bad record",
    "pax header negative size",
    "gnu long name exactly 1 MiB",
    "gnu long name over 1 MiB",
    "gnu long name 512 MiB claimed",
    "pax header over 1 MiB",
    "gnu long name truncated",
    "eof inside data",
    "eof inside header",
    "eof after header with data owed",
    "zero block then garbage",
    "zero block then partial",
    "partial block only",
    "junk block",
    "gnu sparse overlapping",
    "gnu sparse past size",
    "gnu sparse data short",
    "gnu sparse data long",
    "gnu sparse without gnu magic",
    "pax sparse 0.1 bad numblocks",
    "pax sparse 0.0 out of order",
    "pax sparse 1.0 map truncated",
    "pax sparse on a dir",
];

/// Overlay applies a child into its own `diff/` dir, where a lower
/// layer's file is not there to link to: it refuses these (as Docker's
/// overlay2 does), the naive drivers accept them.
const OVERLAY_REFUSES: &[&str] = &["hardlink absolute target", "hardlink to parent's file"];

fn expect(case: &Case) -> Option<Expect> {
    if case.name.starts_with("mutation ") {
        return None;
    }
    Some(if REFUSED.contains(&case.name.as_str()) { Expect::Refuse } else { Expect::Accept })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

struct Extra {
    name: String,
    /// What is sent (maybe gzipped).
    input: Vec<u8>,
    /// The tar inside (what the DiffID and export are of).
    tar: Vec<u8>,
    /// `None`: no expectation (a seeded mutation), only the invariants.
    expect: Option<Expect>,
}

fn plain(name: &str, tar: Vec<u8>, expect: Expect) -> Extra {
    Extra { name: name.to_string(), input: tar.clone(), tar, expect: Some(expect) }
}

/// Store-level cases beyond the reader: escapes, whiteouts, what the
/// filesystem refuses, what could not be exported, compressed input.
fn extras() -> Vec<Extra> {
    use Expect::*;
    let sym = |name: &[u8], target: &[u8]| member(H::new(name, b'2', 0).set(LINK, target).done(), b"");
    let hard = |name: &[u8], target: &[u8]| member(H::new(name, b'1', 0).set(LINK, target).done(), b"");
    let with_pax = |recs: &[(&[u8], &[u8])], m: Vec<u8>| cat(&[pax(recs), m, end()]);
    let long = "n".repeat(300);
    let good = cat(&[file(b"new", b"new content"), sym(b"s", b"new"), end()]);
    let mut corrupt = gzip(&cat(&[file(b"big", &[9u8; 100_000]), end()]));
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let truncated_gz = gzip(&good)[..20].to_vec();
    vec![
        Extra { name: "gzip".into(), input: gzip(&good), tar: good.clone(), expect: Some(Accept) },
        Extra { name: "corrupt gzip".into(), input: corrupt, tar: Vec::new(), expect: Some(Refuse) },
        Extra { name: "truncated gzip".into(), input: truncated_gz, tar: Vec::new(), expect: Some(Refuse) },
        plain("write through symlink", cat(&[sym(b"s", b"/"), file(b"s/pwned", b"x"), end()]), Refuse),
        plain("write through relative symlink", cat(&[sym(b"s", b"."), file(b"s/x", b"x"), end()]), Refuse),
        plain("symlink escape", cat(&[sym(b"d/s", b"../../../x"), end()]), Refuse),
        plain("hardlink escape", cat(&[hard(b"h", b"../../etc/passwd"), end()]), Refuse),
        plain("hardlink absolute target", cat(&[hard(b"h", b"/f"), end()]), Accept),
        plain("hardlink to parent's file", cat(&[hard(b"h", b"f"), end()]), Accept),
        plain("hardlink to missing", cat(&[hard(b"h", b"nope"), end()]), Refuse),
        plain("whiteout then hardlink to it", cat(&[file(b".wh.f", b""), hard(b"h", b"f"), end()]), Refuse),
        plain("whiteout", cat(&[file(b".wh.f", b""), end()]), Accept),
        plain(
            "opaque dir",
            cat(&[member(H::new(b"dir/", b'5', 0).done(), b""), file(b"dir/.wh..wh..opq", b""), end()]),
            Accept,
        ),
        plain("whiteout with a body", cat(&[file(b".wh.f", b"body"), end()]), Refuse),
        plain("opaque marker with a body", cat(&[file(b"dir/.wh..wh..opq", b"body"), end()]), Refuse),
        plain("aufs plnk with a body", cat(&[file(b".wh..wh.plnk/x", b"body"), end()]), Refuse),
        plain(
            "aufs plnk empty",
            cat(&[member(H::new(b".wh..wh.plnk/", b'5', 0).done(), b""), file(b".wh..wh.plnk/x", b""), end()]),
            Accept,
        ),
        plain("whiteout as dir", cat(&[member(H::new(b".wh.x", b'5', 0).done(), b""), end()]), Refuse),
        plain("path of 5000 chars", with_pax(&[(b"path", "p/".repeat(2500).as_bytes())], file(b"x", b"x")), Refuse),
        plain("path of 16000 chars", with_pax(&[(b"path", "p/".repeat(8000).as_bytes())], file(b"x", b"x")), Refuse),
        plain(
            "path of 4095 chars",
            with_pax(&[(b"path", ("p/".repeat(2047) + "x").as_bytes())], file(b"x", b"x")),
            Refuse,
        ),
        plain(
            "path of 3501 chars",
            with_pax(&[(b"path", ("p/".repeat(1750) + "x").as_bytes())], file(b"x", b"x")),
            Accept,
        ),
        plain(
            "deep tree whited out",
            cat(&[
                pax(&[(b"path", ("q/".repeat(1700) + "x").as_bytes())]),
                file(b"x", b""),
                file(b".wh.q", b""),
                end(),
            ]),
            Accept,
        ),
        plain("component of 300 bytes", with_pax(&[(b"path", long.as_bytes())], file(b"x", b"x")), Refuse),
        plain("component of 255 bytes", with_pax(&[(b"path", "n".repeat(255).as_bytes())], file(b"x", b"x")), Accept),
        plain(
            "whiteout name over 255 bytes",
            with_pax(&[(b"path", format!(".wh.{long}").as_bytes())], file(b"x", b"")),
            Refuse,
        ),
        plain(
            "symlink target of 5000 chars",
            with_pax(&[(b"linkpath", "t".repeat(5000).as_bytes())], sym(b"s", b"x")),
            Refuse,
        ),
        plain("xattr unknown namespace", with_pax(&[(b"SCHILY.xattr.bogus.x", b"1")], file(b"x", b"x")), Refuse),
        plain(
            "xattr 100 KB value",
            with_pax(&[(b"SCHILY.xattr.user.big", &[b'v'; 100 * 1024])], file(b"x", b"x")),
            Refuse,
        ),
        plain(
            "xattr 300-byte name",
            with_pax(&[(format!("SCHILY.xattr.user.{long}").as_bytes(), b"1")], file(b"x", b"x")),
            Refuse,
        ),
        plain(
            "xattr malformed POSIX ACL",
            with_pax(&[(b"SCHILY.xattr.system.posix_acl_access", b"garbage")], file(b"x", b"x")),
            Refuse,
        ),
        plain(
            "xattr malformed capability",
            with_pax(&[(b"SCHILY.xattr.security.capability", b"xx")], file(b"x", b"x")),
            Refuse,
        ),
        plain("xattr user", with_pax(&[(b"SCHILY.xattr.user.ok", b"v\nw")], file(b"x", b"x")), Accept),
        plain(
            "xattr trusted.overlay dropped",
            with_pax(&[(b"SCHILY.xattr.trusted.overlay.opaque", b"y")], file(b"x", b"x")),
            Accept,
        ),
        plain("pax path 2 MiB", with_pax(&[(b"path", &vec![b'p'; 2 << 20])], file(b"x", b"x")), Refuse),
        plain("replace parent dir with file", cat(&[file(b"dir", b"now a file"), end()]), Accept),
        plain(
            "replace parent file with dir",
            cat(&[member(H::new(b"f/", b'5', 0).done(), b""), file(b"f/x", b"y"), end()]),
            Accept,
        ),
        plain("same file twice", cat(&[file(b"a", b"1"), file(b"a", b"2"), end()]), Refuse),
    ]
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        walkdir::WalkDir::new(dir).into_iter().filter_map(|e| e.ok()).map(|e| e.into_path()).collect();
    v.sort();
    v
}

fn reader(bytes: Vec<u8>) -> TarReader {
    Box::new(std::io::Cursor::new(bytes))
}

async fn export(store: &Store, chain: &ChainId) -> std::io::Result<Vec<u8>> {
    let mut r = store.tar_stream(chain).await.map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    })
    .await
    .unwrap()
}

async fn run(driver_name: &str, parent: &Path, open: impl Fn(&Path) -> graphdriver::Result<Arc<dyn Driver>>) {
    // As layerd does at start-up: removing a tree holds a descriptor per
    // level, and "deep tree whited out" is 1700 levels deep.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let tmp = tempfile::tempdir_in(parent).unwrap();
    let root = tmp.path().join("root");
    let sentinel = tmp.path().join("sentinel");
    std::fs::create_dir_all(&sentinel).unwrap();
    std::fs::write(sentinel.join("keep"), b"keep").unwrap();
    let driver = open(&root.join("driver")).unwrap();
    let store = Store::open(&root, driver).await.unwrap();
    let base_tar =
        cat(&[file(b"f", b"lower"), member(H::new(b"dir/", b'5', 0).done(), b""), file(b"dir/g", b"g"), end()]);
    let base = store.register(reader(base_tar), RegisterOpts::default()).await.unwrap().chain_id;
    store.settle().await;
    let ids_before = store.driver().ids().await.unwrap().len();
    let outside_before = listing(tmp.path()).into_iter().filter(|p| !p.starts_with(&root)).collect::<Vec<_>>();
    let hwm_before = vm_hwm_kib();

    let mut cases: Vec<Extra> = tarcorpus::corpus()
        .into_iter()
        .map(|c| {
            let expect = expect(&c);
            Extra { name: c.name, input: c.tar.clone(), tar: c.tar, expect }
        })
        .collect();
    cases.extend(extras());
    let with_expectation = cases.iter().filter(|c| c.expect.is_some()).count();
    assert!(with_expectation >= 150, "only {with_expectation} cases with an expected outcome");
    let (mut accepted, mut refused, mut wrong) = (0, 0, Vec::new());
    for Extra { name, input, tar, expect: want } in cases {
        let want = if driver_name == "overlay2" && OVERLAY_REFUSES.contains(&name.as_str()) {
            Some(Expect::Refuse)
        } else {
            want
        };
        let opts = RegisterOpts { parent: Some(base.clone()), ..RegisterOpts::default() };
        let got = store.register(reader(input), opts).await;
        match got {
            Ok(info) => {
                accepted += 1;
                if want == Some(Expect::Refuse) {
                    wrong.push(format!("{name}: accepted, expected a refusal"));
                }
                if info.diff_id != DiffId(Digest::of(&tar)) {
                    wrong.push(format!("{name}: DiffID {} is not the sha256 of the tar", info.diff_id));
                }
                match export(&store, &info.chain_id).await {
                    Ok(out) if out == tar => {}
                    Ok(out) => wrong.push(format!("{name}: export differs ({} vs {} bytes)", out.len(), tar.len())),
                    Err(e) => wrong.push(format!("{name}: export failed: {e}")),
                }
                store.release(&info.chain_id).await.unwrap();
            }
            Err(e) => {
                refused += 1;
                if want == Some(Expect::Accept) {
                    wrong.push(format!("{name}: refused, expected acceptance: {e}"));
                }
                if e.kind() != ErrorKind::InvalidArgument {
                    wrong.push(format!("{name}: refused with {:?}, not InvalidArgument: {e}", e.kind()));
                }
                if e.to_string().len() > 2048 {
                    wrong.push(format!("{name}: {}-byte error message", e.to_string().len()));
                }
            }
        }
        store.settle().await;
        if store.list().len() != 1 || store.get(&base).unwrap().children != 0 {
            wrong.push(format!("{name}: a layer or a parent pin was left behind"));
        }
        let ids = store.driver().ids().await.unwrap().len();
        if ids != ids_before {
            wrong.push(format!("{name}: {ids} driver dirs, expected {ids_before}"));
        }
        let tx = root.join("image").join(store.driver().name()).join("layerdb/tmp");
        if std::fs::read_dir(&tx).map(|d| d.count()).unwrap_or(0) != 0 {
            wrong.push(format!("{name}: a transaction was left in layerdb/tmp"));
        }
        let outside = listing(tmp.path()).into_iter().filter(|p| !p.starts_with(&root)).collect::<Vec<_>>();
        if outside != outside_before || std::fs::read(sentinel.join("keep")).unwrap() != b"keep" {
            wrong.push(format!("{name}: something was written outside the store: {outside:?}"));
        }
    }
    let grew_mib = vm_hwm_kib().saturating_sub(hwm_before) / 1024;
    eprintln!(
        "hostile corpus on {driver_name}: {accepted} accepted, {refused} refused ({with_expectation} with an expected outcome); peak RSS grew {grew_mib} MiB"
    );
    store.shutdown().await.unwrap();
    assert!(wrong.is_empty(), "{driver_name}: {} problems:\n{}", wrong.len(), wrong.join("\n"));
    assert!(grew_mib < 256, "{driver_name}: peak RSS grew {grew_mib} MiB over the corpus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_on_vfs() {
    run("vfs", &std::env::temp_dir(), |root| drivers::registry::open("vfs", root)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_on_overlay() {
    let parent = conformance::default_parent_dir();
    let probe = tempfile::tempdir_in(&parent).unwrap();
    if let Err(e) = drivers::registry::open("overlay2", &probe.path().join("probe")) {
        eprintln!("SKIP hostile_corpus_on_overlay: overlay unusable here: {e}");
        return;
    }
    drop(probe);
    run("overlay2", &parent, |root| drivers::registry::open("overlay2", root)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_on_btrfs() {
    let lo = match drivers::testing::BtrfsLoop::new(1024) {
        Ok(lo) => lo,
        Err(e) => {
            eprintln!("SKIP hostile_corpus_on_btrfs: no loop-mounted btrfs: {e}");
            return;
        }
    };
    run("btrfs", lo.path(), |root| drivers::registry::open("btrfs", root)).await;
    lo.close().unwrap();
}

/// Gzip of `header` followed by `len` bytes of `fill`, streamed (the
/// plain stream is never in memory).
fn gzip_claim(header: &[u8], fill: u8, len: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(header).unwrap();
    let chunk = vec![fill; 1 << 20];
    for _ in 0..len / chunk.len() {
        enc.write_all(&chunk).unwrap();
    }
    enc.finish().unwrap()
}

/// Issue 14's memory bombs: a small gzip holding a 512 MiB GNU long name,
/// and one holding a 512 MiB PAX record. Go caps both at 1 MiB; so do we:
/// refused with a short 400 and no growth of the peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_gigabyte_names_are_refused_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let store = Store::open(&root, drivers::registry::open("vfs", &root.join("vfs")).unwrap()).await.unwrap();
    let name = H::new(b"././@LongLink", b'L', 512 << 20).gnu().done();
    let pax_hdr = H::new(b"PaxHeaders/x", b'x', 512 << 20).done();
    let mut pax_start = pax_hdr.to_vec();
    pax_start.extend_from_slice(format!("{} path=", 512 << 20).as_bytes());
    let bombs = [
        ("gnu long name", gzip_claim(&name, b'a', 512 << 20)),
        ("pax record", gzip_claim(&pax_start, b'p', 512 << 20)),
    ];
    let before = vm_hwm_kib();
    for (what, gz) in bombs {
        assert!(gz.len() < 1 << 20, "{what}: {} bytes of gzip", gz.len());
        let err = store.register(reader(gz), RegisterOpts::default()).await.expect_err(what);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
        assert!(err.to_string().contains("1 MiB"), "{what}: {err}");
        assert!(err.to_string().len() < 512, "{what}: {}-byte message", err.to_string().len());
    }
    let grew_mib = vm_hwm_kib().saturating_sub(before) / 1024;
    eprintln!("512 MiB name bombs: peak RSS grew {grew_mib} MiB");
    assert!(grew_mib < 64, "peak RSS grew {grew_mib} MiB");
    assert!(store.list().is_empty());
    store.shutdown().await.unwrap();
}
