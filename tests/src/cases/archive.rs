//! What must survive `diff` → `apply_diff` (special files, xattrs, hard
//! links, sparse files, nanosecond mtimes), `diff_getter`, and hostile tars.
//!
//! Defined here (the trait doc is silent): sockets are not part of a diff —
//! tar has no socket type, and moby and GNU tar skip them too — but they
//! survive `create` on a parent. Sparse files keep their size and content
//! through a diff; their holes are promised only through `create` on a
//! parent (a plain tar entry carries the zeros).

use std::path::Path;

use anyhow::{Context, bail, ensure};
use graphdriver::{CacheId, ChangeKind, ErrorKind};
use tar::EntryType;

use crate::harness::chain::{commit, committed_layer, rw_layer};
use crate::harness::manifest::{ScanOpts, ensure_same, scan};
use crate::harness::ops::{Node, chown, content, dir, file, link, mknod, sparse, symlink, times, unxattr, xattr};
use crate::harness::tars::TarMaker;
use crate::harness::{CaseResult, Cx, blocking, skip};

/// Commit `src` (on `parent`) and compare the result with `src`, minus the
/// paths in `dropped`.
async fn round_trip(
    cx: &Cx,
    src: &CacheId,
    parent: Option<&CacheId>,
    opts: ScanOpts,
    dropped: &[&str],
) -> anyhow::Result<CacheId> {
    let (copy, _) = commit(cx, "round-trip", src, parent).await?;
    let mut want = cx.scan(src, opts).await?;
    for d in dropped {
        want.0.remove(*d);
    }
    ensure_same(&want, &cx.scan(&copy, opts).await?, "diff → apply_diff of a layer vs the layer")?;
    Ok(copy)
}

/// Devices, fifos and sockets: kept by `create` on a parent; through a
/// diff, devices and fifos are kept and sockets dropped (listed by
/// `changes`, absent from the tar).
pub async fn special_files(cx: Cx) -> CaseResult {
    let (major, minor) = big_device(&cx).await?;
    let ops = vec![
        dir("/dev", 0o755),
        mknod("/dev/null", Node::Char(1, 3), 0o666),
        mknod("/dev/loop0", Node::Block(7, 0), 0o660),
        chown("/dev/loop0", 0, 6),
        mknod("/dev/big", Node::Char(major, minor), 0o600),
        dir("/run", 0o755),
        mknod("/run/fifo", Node::Fifo, 0o620),
        mknod("/run/app.sock", Node::Socket, 0o755),
    ];
    let src = rw_layer(&cx, "specials", None, ops).await?;
    let want = cx.manifest(&src).await?;
    let child = cx.create("child", Some(&src)).await?;
    ensure_same(&want, &cx.manifest(&child).await?, "create on a parent with special files")?;
    let changes = cx.driver().changes(&src, None).await?;
    ensure!(
        changes.iter().any(|c| c.path == "/run/app.sock" && c.kind == ChangeKind::Add),
        "changes() does not list the socket: {changes:?}"
    );
    round_trip(&cx, &src, None, ScanOpts::default(), &["/run/app.sock"]).await?;
    Ok(())
}

/// The largest device number the backing filesystem holds: Linux's
/// 511:1048575 (20-bit minor) where it can, else the old 14/18-bit split
/// (511:262143) that XFS stores on disk. The case says which it tested.
async fn big_device(cx: &Cx) -> anyhow::Result<(u32, u32)> {
    let probe = cx.work().join("device-probe");
    let refused = blocking(move || {
        let mode = rustix::fs::Mode::from_raw_mode(0o600);
        let dev = rustix::fs::makedev(511, 1_048_575);
        let r = rustix::fs::mknodat(rustix::fs::CWD, &probe, rustix::fs::FileType::CharacterDevice, mode, dev);
        let _ = std::fs::remove_file(&probe);
        Ok(r.err())
    })
    .await?;
    match refused {
        None => Ok((511, 1_048_575)),
        Some(e) => {
            eprintln!(
                "special_files: the filesystem under {} refuses device 511:1048575 ({e}); testing 511:262143 instead",
                cx.work().display()
            );
            Ok((511, 262_143))
        }
    }
}

/// `user.*` and `trusted.*` xattrs (binary and large values, on files,
/// dirs, symlinks and fifos) survive diff → apply; an upper layer that
/// changes and removes xattrs commits exactly.
///
/// Values holding newline bytes are included: PAX records are read by their
/// length, as Go's reader does (a binary `security.capability` can hold
/// 0x0a). Removing an xattr from a directory commits too: a directory
/// member describes the whole directory, also when applied onto a copy of
/// the parent (vfs, btrfs).
pub async fn xattrs(cx: Cx) -> CaseResult {
    let probe = cx.work().join("xattr-probe");
    let supported = blocking(move || {
        std::fs::write(&probe, b"")?;
        Ok(rustix::fs::lsetxattr(&probe, "user.probe", b"1", rustix::fs::XattrFlags::empty()))
    })
    .await?;
    if let Err(e) = supported {
        return Err(skip(format!("the filesystem under {} has no user xattrs: {e}", cx.work().display())));
    }
    let ops = vec![
        file("/f", b"data", 0o644),
        xattr("/f", "user.a", b"1"),
        xattr("/f", "user.binary", [0u8, 255, 1, 0]),
        xattr("/f", "user.big", content(3000, 9)),
        xattr("/f", "user.newlines", b"a\nb\n\n"),
        xattr("/f", "trusted.t", b"t"),
        dir("/d", 0o755),
        xattr("/d", "user.d", b"dir"),
        xattr("/d", "trusted.d", b"dir"),
        symlink("f", "/s"),
        xattr("/s", "trusted.s", b"link"),
        mknod("/fifo", Node::Fifo, 0o600),
        xattr("/fifo", "trusted.fifo", b"p"),
    ];
    let base = rw_layer(&cx, "base", None, ops).await?;
    let m = cx.manifest(&base).await?;
    ensure!(m.get("/f").map(|e| e.xattrs.len()) == Some(5), "xattrs did not stick: {:?}", m.get("/f"));
    let committed = round_trip(&cx, &base, None, ScanOpts::default(), &[]).await?;
    let upper = rw_layer(
        &cx,
        "upper",
        Some(&committed),
        vec![
            xattr("/f", "user.a", b"2"),
            unxattr("/f", "user.binary"),
            xattr("/d", "user.new", b"n"),
            unxattr("/d", "user.d"),
        ],
    )
    .await?;
    let mut changes = cx.driver().changes(&upper, Some(&committed)).await?;
    changes.sort();
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    ensure!(paths == ["/d", "/f"], "changes() of xattr-only edits = {changes:?}");
    round_trip(&cx, &upper, Some(&committed), ScanOpts::default(), &[]).await?;
    Ok(())
}

/// Hard-link groups made in a layer (across directories) survive diff →
/// apply, in a base layer and in an upper one.
pub async fn hardlinks(cx: Cx) -> CaseResult {
    let base = rw_layer(
        &cx,
        "base",
        None,
        vec![
            dir("/a", 0o755),
            dir("/b/c", 0o755),
            file("/a/one", b"three names", 0o640),
            link("/a/one", "/b/two"),
            link("/a/one", "/b/c/three"),
            file("/x", b"pair", 0o600),
            link("/x", "/y"),
            file("/single", b"single", 0o644),
        ],
    )
    .await?;
    let m = cx.manifest(&base).await?;
    let group = |p: &str| m.get(p).and_then(|e| e.link_group.clone());
    ensure!(
        group("/b/c/three").as_deref() == Some("/a/one") && group("/y").as_deref() == Some("/x"),
        "links did not stick"
    );
    let committed = round_trip(&cx, &base, None, ScanOpts::default(), &[]).await?;
    let upper = rw_layer(
        &cx,
        "upper",
        Some(&committed),
        vec![dir("/new", 0o755), file("/new/n", b"new group", 0o644), link("/new/n", "/new/n2"), link("/new/n", "/n3")],
    )
    .await?;
    round_trip(&cx, &upper, Some(&committed), ScanOpts::default(), &[]).await?;
    Ok(())
}

/// A 32 MiB sparse file: `create` on a parent keeps it sparse; diff →
/// apply keeps its size and content.
pub async fn sparse_files(cx: Cx) -> CaseResult {
    const LEN: u64 = 32 << 20;
    let chunks: [(u64, &[u8]); 3] = [(0, b"head"), (10 << 20, &[7u8; 8192]), (LEN - 4096, b"tail")];
    let src = rw_layer(&cx, "sparse", None, vec![sparse("/sparse", LEN, &chunks)]).await?;
    let m = cx.manifest(&src).await?;
    let e = m.get("/sparse").context("the sparse file is missing")?;
    let dense = LEN / 512;
    if e.blocks * 2 > dense {
        return Err(skip(format!("the filesystem under {} does not keep holes", cx.root().display())));
    }
    let child = cx.create("child", Some(&src)).await?;
    let cm = cx.manifest(&child).await?;
    ensure_same(&m, &cm, "create on a parent with a sparse file")?;
    let blocks = cm.get("/sparse").map(|e| e.blocks).unwrap_or(u64::MAX);
    ensure!(blocks <= e.blocks + 2048, "create filled the holes: {blocks} blocks, the parent's file has {}", e.blocks);
    round_trip(&cx, &src, None, ScanOpts::default(), &[]).await?;
    Ok(())
}

/// Nanosecond mtimes of files, symlinks and fifos (old, new, pre-1970)
/// survive diff → apply, also for a file re-timed in an upper layer.
pub async fn mtimes(cx: Cx) -> CaseResult {
    let ops = vec![
        file("/old", b"old", 0o644),
        times("/old", 1, 1),
        file("/precise", b"precise", 0o644),
        times("/precise", 1_700_000_000, 123_456_789),
        file("/before-epoch", b"b", 0o644),
        times("/before-epoch", -86_400, 0),
        symlink("precise", "/link"),
        times("/link", 1_600_000_000, 999_999_999),
        mknod("/fifo", Node::Fifo, 0o644),
        times("/fifo", 1_234_567_890, 5),
    ];
    let with_times = ScanOpts { mtimes: true };
    let base = rw_layer(&cx, "base", None, ops).await?;
    let m = cx.scan(&base, with_times).await?;
    ensure!(m.get("/precise").and_then(|e| e.mtime) == Some((1_700_000_000, 123_456_789)), "times did not stick");
    let committed = round_trip(&cx, &base, None, with_times, &[]).await?;
    let upper = rw_layer(&cx, "upper", Some(&committed), vec![times("/old", 2_000_000_000, 42)]).await?;
    round_trip(&cx, &upper, Some(&committed), with_times, &[]).await?;
    Ok(())
}

/// `diff_getter`: with the capability advertised, a directory holding the
/// layer's own files under their tar paths; without it, `Ok(None)`.
pub async fn diff_getter(cx: Cx) -> CaseResult {
    let parent = committed_layer(&cx, "parent", None, vec![dir("/etc", 0o755), file("/etc/a", b"a", 0o644)]).await?;
    let mut t = TarMaker::new();
    t.dir("/etc", 0o755)?.file("/etc/a", b"changed", 0o644)?.dir("/own", 0o750)?.file("/own/file", b"mine", 0o600)?;
    let layer = cx.create("layer", Some(&parent)).await?;
    cx.apply(&layer, Some(&parent), t.finish()?).await?;
    let got = cx.driver().diff_getter(&layer).await.context("diff_getter")?;
    if !cx.driver().capabilities().diff_getter {
        ensure!(got.is_none(), "diff_getter is not advertised but returned {got:?}");
        return Ok(());
    }
    let dir = got.context("diff_getter is advertised but returned None")?;
    let m = blocking(move || scan(&dir, ScanOpts::default())).await?;
    let want = cx.manifest(&layer).await?;
    for path in ["/etc/a", "/own", "/own/file"] {
        ensure!(
            m.get(path) == want.get(path),
            "diff_getter dir: {path} is {:?}, the layer has {:?}",
            m.get(path),
            want.get(path)
        );
    }
    Ok(())
}

/// One hostile tar per escape route; each is `InvalidArgument`, writes
/// nothing outside the layer, and leaves the layer removable. An absolute
/// name is no escape: it lands beneath the layer root (Docker's rule).
pub async fn hostile_tar(cx: Cx) -> CaseResult {
    let work = cx.work().to_path_buf();
    let victim = work.join("victim");
    let w = work.clone();
    blocking(move || Ok(std::fs::write(w.join("victim"), b"untouched")?)).await?;
    let tag = CacheId::random().as_str()[..12].to_string();
    let abs = format!("/tmp/conformance-abs-{tag}");
    let up = "../".repeat(12);
    let mut cases: Vec<(&str, TarMaker)> = Vec::new();
    let mut t = TarMaker::new();
    t.raw(format!("../escape-{tag}").as_bytes(), EntryType::Regular, b"", b"x")?;
    cases.push(("a .. path", t));
    let mut t = TarMaker::new();
    t.raw(b"evil", EntryType::Symlink, work.as_os_str().as_encoded_bytes(), b"")?;
    t.raw(format!("evil/pwned-{tag}").as_bytes(), EntryType::Regular, b"", b"x")?;
    cases.push(("a write through an absolute symlink", t));
    let mut t = TarMaker::new();
    t.raw(b"up", EntryType::Symlink, up.as_bytes(), b"")?;
    t.raw(format!("up/tmp/pwned-{tag}").as_bytes(), EntryType::Regular, b"", b"x")?;
    cases.push(("a write through a relative symlink", t));
    let mut t = TarMaker::new();
    let target = format!("{up}{}", victim.display().to_string().trim_start_matches('/'));
    t.raw(b"hl", EntryType::Link, target.as_bytes(), b"")?;
    cases.push(("a hard link out of the layer", t));
    for (what, t) in cases {
        let id = cx.create("target", None).await?;
        let res = cx.driver().apply_diff(&id, None, Box::new(std::io::Cursor::new(t.finish()?))).await;
        match res {
            Err(e) if e.kind() == ErrorKind::InvalidArgument => {}
            Err(e) => bail!("{what}: want an invalid_argument error, got {} ({e})", e.kind().as_str()),
            Ok(n) => bail!("{what}: the tar was accepted ({n} bytes applied)"),
        }
        cx.driver().remove(&id).await.with_context(|| format!("{what}: remove the layer"))?;
    }
    // An absolute name lands beneath the layer root, as Docker extracts it.
    let mut t = TarMaker::new();
    t.raw(abs.as_bytes(), EntryType::Regular, b"", b"x")?;
    let id = cx.create("target", None).await?;
    cx.driver()
        .apply_diff(&id, None, Box::new(std::io::Cursor::new(t.finish()?)))
        .await
        .context("an absolute path: want it extracted beneath the layer root")?;
    let dir = cx.driver().get(&id, "").await?;
    let inside = dir.join(abs.trim_start_matches('/'));
    let got = blocking(move || Ok(std::fs::read(&inside)?)).await;
    cx.driver().put(&id).await?;
    ensure!(matches!(&got, Ok(d) if d == b"x"), "an absolute path: not beneath the layer root: {got:?}");
    cx.driver().remove(&id).await.context("an absolute path: remove the layer")?;
    let (w, abs2, t2) = (work.clone(), abs.clone(), tag.clone());
    let leaks = blocking(move || find_named(w.parent().unwrap_or(&w), &t2)).await?;
    ensure!(leaks.is_empty(), "files written outside the layer: {leaks:?}");
    ensure!(!Path::new(&abs2).exists() && !Path::new(&format!("/tmp/pwned-{tag}")).exists(), "a file escaped to /tmp");
    let v = victim.clone();
    let (data, nlink) = blocking(move || {
        use std::os::unix::fs::MetadataExt;
        Ok((std::fs::read(&v)?, std::fs::metadata(&v)?.nlink()))
    })
    .await?;
    ensure!(data == b"untouched" && nlink == 1, "the file outside the layer was linked or changed");
    Ok(())
}

/// Paths below `dir` whose name contains `tag`.
fn find_named(dir: &Path, tag: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).follow_links(false) {
        let e = e?;
        if e.file_name().to_string_lossy().contains(tag) {
            out.push(e.path().display().to_string());
        }
    }
    Ok(out)
}
