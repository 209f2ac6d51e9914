//! Round trips over a corpus built at test time with the real tools (GNU tar,
//! Python's tarfile, dpkg-deb, the `tar` crate): disassemble, extract with
//! GNU tar as root, reassemble from the extracted tree, compare the bytes.
//! Plus hostile records and tars, tampered trees, Docker's exact JSON, and a
//! property test. A missing tool fails the test, saying which.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

use super::*;

// ---------------------------------------------------------------- helpers

fn run(cmd: &mut Command) -> Vec<u8> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!("required tool `{prog}` is missing: {e}"),
        Err(e) => panic!("running {cmd:?}: {e}"),
    };
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn require_root() {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().unwrap();
    let uid = probe.as_file().metadata().unwrap().uid();
    assert_eq!(uid, 0, "these tests need root (mknod, --same-owner); run them as root");
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn record(tar: &[u8]) -> (DisassembleSummary, Vec<u8>) {
    let mut rec = Vec::new();
    let summary = disassemble(tar, &mut rec).expect("disassemble");
    assert_eq!(summary.bytes, tar.len() as u64);
    (summary, rec)
}

fn assemble<G: FileGetter>(rec: &[u8], getter: G) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    Assembler::new(Box::new(Cursor::new(rec.to_vec())), getter).read_to_end(&mut out)?;
    Ok(out)
}

/// Extract `tar` with GNU tar into a fresh dir.
fn extract(tar: &[u8], tmp: &Path) -> PathBuf {
    let file = tmp.join("in.tar");
    std::fs::write(&file, tar).unwrap();
    let dir = tmp.join("x");
    std::fs::create_dir(&dir).unwrap();
    run(Command::new("tar")
        .args(["-xpf"])
        .arg(&file)
        .args(["--xattrs", "--xattrs-include=*", "--same-owner", "--numeric-owner", "-C"])
        .arg(&dir));
    dir
}

/// Disassemble, extract with GNU tar, reassemble with DirGetter: identical.
fn roundtrip(label: &str, tar: &[u8]) -> (DisassembleSummary, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let (summary, rec) = record(tar);
    let dir = extract(tar, tmp.path());
    let out = assemble(&rec, DirGetter::new(&dir)).unwrap_or_else(|e| panic!("{label}: assemble: {e}"));
    assert_eq!(out.len(), tar.len(), "{label}: length");
    assert_eq!(sha(&out), sha(tar), "{label}: bytes differ");
    (summary, rec)
}

fn decode(rec: &[u8]) -> Vec<serde_json::Value> {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(rec).read_to_string(&mut text).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Type-1 entries of a record: (name bytes, size).
fn files(rec: &[u8]) -> Vec<(Vec<u8>, u64)> {
    decode(rec)
        .into_iter()
        .filter(|v| v["type"] == 1)
        .map(|v| {
            let name = match v.get("name_raw") {
                Some(raw) => STANDARD.decode(raw.as_str().unwrap()).unwrap(),
                None => v.get("name").and_then(|n| n.as_str()).unwrap_or("").as_bytes().to_vec(),
            };
            (name, v.get("size").and_then(|s| s.as_u64()).unwrap_or(0))
        })
        .collect()
}

fn mknod(path: &Path, ty: rustix::fs::FileType, dev: (u32, u32)) {
    let mode = rustix::fs::Mode::from_raw_mode(0o640);
    rustix::fs::mknodat(rustix::fs::CWD, path, ty, mode, rustix::fs::makedev(dev.0, dev.1)).unwrap();
}

#[derive(Clone, Copy, PartialEq)]
enum Tree {
    /// Everything, including names and link targets over 100 and 255 bytes.
    Full,
    /// Names that fit ustar.
    Ustar,
    /// Names that fit v7, and no special files.
    V7,
}

/// A source tree exercising what layers contain.
fn make_tree(root: &Path, tree: Tree) {
    use std::fs;
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::create_dir_all(root.join("wh")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("one"), b"1").unwrap();
    for n in [511usize, 512, 513] {
        fs::write(root.join(format!("b{n}")), testkit::noise(n as u64, n)).unwrap();
    }
    fs::write(root.join("rand100k"), testkit::noise(7, 100_000)).unwrap();
    fs::write(root.join("dir/sub/file.txt"), b"hello\n").unwrap();
    fs::write(root.join("name with spaces & <amp>.txt"), b"amp").unwrap();
    fs::write(root.join("ünïcode.txt"), "ü".repeat(300)).unwrap();
    fs::write(root.join(OsStr::from_bytes(b"bad\xffname")), b"not utf-8").unwrap();
    fs::write(root.join("wh/.wh.gone"), b"").unwrap();
    std::os::unix::fs::symlink("one", root.join("sym")).unwrap();
    fs::hard_link(root.join("b513"), root.join("hard")).unwrap();
    rustix::fs::setxattr(root.join("one").as_path(), "user.test", b"value", rustix::fs::XattrFlags::empty()).unwrap();
    if tree != Tree::V7 {
        mknod(&root.join("fifo"), rustix::fs::FileType::Fifo, (0, 0));
        mknod(&root.join("cdev"), rustix::fs::FileType::CharacterDevice, (1, 3));
        mknod(&root.join("bdev"), rustix::fs::FileType::BlockDevice, (7, 200));
    }
    if tree == Tree::Full {
        let long = root.join("l".repeat(120));
        fs::create_dir_all(&long).unwrap();
        fs::write(long.join("in-long-dir"), b"long dir").unwrap();
        let deep = root.join("a".repeat(90)).join("b".repeat(90)).join("c".repeat(90));
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f".repeat(200)), testkit::noise(3, 3000)).unwrap();
        std::os::unix::fs::symlink("t".repeat(150), root.join("longlink")).unwrap();
        fs::hard_link(deep.join("f".repeat(200)), root.join("hard-to-long")).unwrap();
    }
}

/// Sparse files: one with a few chunks (one unaligned), one with 40 chunks
/// (beyond the GNU header's 4 and one extension block's 21).
fn make_sparse(root: &Path) {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(root).unwrap();
    let f = std::fs::File::create(root.join("sparse")).unwrap();
    f.set_len(10 << 20).unwrap();
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(&testkit::noise(11, 5000), 1 << 20).unwrap();
    f.write_all_at(b"unaligned", (5 << 20) + 3).unwrap();
    let g = std::fs::File::create(root.join("many")).unwrap();
    g.set_len(8 << 20).unwrap();
    for i in 0..40u64 {
        g.write_all_at(&testkit::noise(i, 100), i * (200 << 10)).unwrap();
    }
    std::fs::write(root.join("plain"), b"plain file next to sparse ones").unwrap();
}

fn gnu_tar(src: &Path, args: &[&str]) -> Vec<u8> {
    run(Command::new("tar").args(["--sort=name", "-C"]).arg(src).args(args).args(["-cf", "-", "."]))
}

// ------------------------------------------------------- corpus round trips

#[test]
fn gnu_tar_formats_round_trip() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let mut trees = HashMap::new();
    for (name, tree) in [("full", Tree::Full), ("ustar", Tree::Ustar), ("v7", Tree::V7)] {
        let dir = tmp.path().join(name);
        make_tree(&dir, tree);
        trees.insert(name, dir);
    }
    let cases: &[(&str, &str, &[&str])] = &[
        ("gnu", "full", &["--format=gnu"]),
        ("oldgnu", "full", &["--format=oldgnu"]),
        ("posix", "full", &["--format=posix"]),
        ("posix+xattrs", "full", &["--format=posix", "--xattrs", "--xattrs-include=*"]),
        ("ustar", "ustar", &["--format=ustar"]),
        ("v7", "v7", &["--format=v7"]),
        ("gnu -b 1", "full", &["--format=gnu", "-b", "1"]),
        ("gnu -b 7", "full", &["--format=gnu", "-b", "7"]),
        ("posix -b 7", "full", &["--format=posix", "-b", "7"]),
    ];
    for (label, tree, args) in cases {
        let tar = gnu_tar(&trees[tree], args);
        let (summary, rec) = roundtrip(label, &tar);
        assert!(summary.files >= 15, "{label}: {summary:?}");
        // Every regular file with content is taken from disk, by its name.
        let names = files(&rec);
        assert!(names.iter().any(|(n, s)| n.ends_with(b"rand100k") && *s == 100_000), "{label}");
        assert!(names.iter().any(|(n, s)| n.ends_with(b"bad\xffname") && *s == 9), "{label}");
    }
    // The xattr really went through the PAX header.
    let tar = gnu_tar(&trees["full"], &["--format=posix", "--xattrs", "--xattrs-include=*"]);
    assert!(tar.windows(20).any(|w| w == b"SCHILY.xattr.user.te"));
}

#[test]
fn gnu_tar_sparse_files_round_trip() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_sparse(&src);
    let cases: &[(&str, &[&str])] = &[
        ("gnu", &["--format=gnu", "--sparse"]),
        ("oldgnu", &["--format=oldgnu", "--sparse"]),
        ("posix 0.0", &["--format=posix", "--sparse", "--sparse-version=0.0"]),
        ("posix 0.1", &["--format=posix", "--sparse", "--sparse-version=0.1"]),
        ("posix 1.0", &["--format=posix", "--sparse", "--sparse-version=1.0"]),
    ];
    for (label, args) in cases {
        let tar = gnu_tar(&src, args);
        assert!(tar.len() < 2 << 20, "{label}: not sparse ({} bytes)", tar.len());
        // The archive really holds the sparse variant under test: GNU 'S'
        // members (the 40-chunk one with extension blocks), or PAX keys.
        let headers: Vec<&[u8]> = tar.chunks(512).collect();
        if label.contains("gnu") {
            let sparse: Vec<_> = headers.iter().filter(|h| h.len() == 512 && h[156] == b'S').collect();
            assert_eq!(sparse.len(), 2, "{label}");
            assert!(sparse.iter().any(|h| h[482] == 1), "{label}: no extension blocks");
        } else {
            let version = label.trim_start_matches("posix ");
            let key: &[u8] = if version == "1.0" { b"GNU.sparse.major=1" } else { b"GNU.sparse.numblocks=" };
            assert!(tar.windows(key.len()).any(|w| w == key), "{label}");
            let map: &[u8] = b"GNU.sparse.map=";
            assert_eq!(tar.windows(map.len()).any(|w| w == map), version == "0.1", "{label}");
        }
        let (_, rec) = roundtrip(label, &tar);
        // Sparse members are inline: their file entries carry no size.
        let names = files(&rec);
        let sparse: Vec<_> = names.iter().filter(|(n, _)| n.ends_with(b"sparse") || n.ends_with(b"many")).collect();
        assert_eq!(sparse.len(), 2, "{label}: {names:?}");
        assert!(sparse.iter().all(|(_, s)| *s == 0), "{label}: {sparse:?}");
        assert!(names.iter().any(|(n, s)| n.ends_with(b"plain") && *s == 30), "{label}");
    }
}

const PYTHON_TARS: &str = r#"
import io, os, sys, tarfile
src, out = sys.argv[1], sys.argv[2]
for fmt, name, tree in [(tarfile.PAX_FORMAT, "pax", "full"), (tarfile.GNU_FORMAT, "gnu", "full"),
                        (tarfile.USTAR_FORMAT, "ustar", "ustar")]:
    kw = {"pax_headers": {"comment": "global header"}} if fmt == tarfile.PAX_FORMAT else {}
    with tarfile.open(os.path.join(out, name + ".tar"), "w", format=fmt, **kw) as t:
        t.add(os.path.join(src, tree), arcname=".")
        data = b"added from memory" * 100
        info = tarfile.TarInfo("mem/" + "m" * 150 if fmt != tarfile.USTAR_FORMAT else "mem/file")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;

#[test]
fn python_tarfile_round_trips() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    make_tree(&tmp.path().join("full"), Tree::Full);
    make_tree(&tmp.path().join("ustar"), Tree::Ustar);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    run(Command::new("python3").arg("-c").arg(PYTHON_TARS).arg(tmp.path()).arg(&out));
    for name in ["pax", "gnu", "ustar"] {
        let tar = std::fs::read(out.join(format!("{name}.tar"))).unwrap();
        let (summary, _) = roundtrip(&format!("python {name}"), &tar);
        assert!(summary.files >= 15, "python {name}: {summary:?}");
    }
}

#[test]
fn dpkg_deb_data_tar_round_trips() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/doc/layerd-test")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: layerd-test\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: test\n",
    )
    .unwrap();
    std::fs::write(pkg.join("usr/share/doc/layerd-test/README"), testkit::noise(5, 7000)).unwrap();
    std::os::unix::fs::symlink("README", pkg.join("usr/share/doc/layerd-test/link")).unwrap();
    let deb = tmp.path().join("t.deb");
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&pkg).arg(&deb));
    let members = tmp.path().join("members");
    std::fs::create_dir(&members).unwrap();
    run(Command::new("ar").arg("x").arg(&deb).current_dir(&members));
    let gz = std::fs::read(members.join("data.tar.gz")).unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut tar).unwrap();
    let (_, rec) = roundtrip("dpkg-deb", &tar);
    assert!(files(&rec).iter().any(|(n, s)| n.ends_with(b"README") && *s == 7000));
}

/// A tar made by the `tar` crate's Builder: GNU long names and links, a PAX
/// header with an xattr, a symlink and a hardlink.
fn rust_built_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "d/", io::empty()).unwrap();
    let long = format!("d/{}/{}", "x".repeat(150), "y".repeat(150));
    let content = testkit::noise(9, 4321);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(content.len() as u64);
    b.append_data(&mut h, &long, &content[..]).unwrap();
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Link);
    l.set_size(0);
    b.append_link(&mut l, "d/hard", &long).unwrap();
    let mut s = tar::Header::new_gnu();
    s.set_entry_type(tar::EntryType::Symlink);
    s.set_size(0);
    b.append_link(&mut s, "d/sym", "z".repeat(200)).unwrap();
    // A PAX 'x' header (an xattr) in front of a ustar member.
    let rec = b"29 SCHILY.xattr.user.k=value\n";
    let mut x = tar::Header::new_ustar();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_path("d/PaxHeaders/f").unwrap();
    x.set_size(rec.len() as u64);
    x.set_cksum();
    b.append(&x, &rec[..]).unwrap();
    let mut f = tar::Header::new_ustar();
    f.set_path("d/f").unwrap();
    f.set_mode(0o600);
    f.set_size(3);
    f.set_cksum();
    b.append(&f, &b"abc"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn rust_tar_builder_round_trips() {
    require_root();
    let tar = rust_built_tar();
    let (summary, rec) = roundtrip("rust builder", &tar);
    assert_eq!(summary.files, 5);
    assert!(files(&rec).iter().any(|(n, s)| n == b"d/f" && *s == 3));
}

#[test]
fn empty_layer_round_trips() {
    require_root();
    let (summary, rec) = roundtrip("empty layer", &[0u8; 1024]);
    assert_eq!(summary, DisassembleSummary { bytes: 1024, entries: 1, files: 0 });
    assert_eq!(decode(&rec)[0]["payload"], STANDARD.encode([0u8; 1024]));
}

#[test]
fn trailing_garbage_and_padding_are_kept() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, Tree::Ustar);
    let mut tar = gnu_tar(&src, &["--format=gnu"]);
    tar.extend_from_slice(&[0u8; 3000]);
    tar.extend_from_slice(b"trailing garbage that is not a tar header");
    tar.extend_from_slice(&testkit::noise(1, 3 << 20)); // several 1 MiB segments
    let (_, rec) = roundtrip("garbage", &tar);
    let segs = decode(&rec).into_iter().filter(|v| v["type"] == 2).count();
    assert!(segs > 3);
}

// ------------------------------------------------------ tampered and hostile

/// A tiny tar with two files, extracted with GNU tar; returns (tmp, tar, record, dir).
fn extracted_pair() -> (tempfile::TempDir, Vec<u8>, Vec<u8>, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/victim"), testkit::noise(4, 2000)).unwrap();
    std::fs::write(src.join("other"), b"other").unwrap();
    let tar = gnu_tar(&src, &["--format=gnu"]);
    let (_, rec) = record(&tar);
    let dir = extract(&tar, tmp.path());
    (tmp, tar, rec, dir)
}

fn assert_data_loss(rec: &[u8], dir: &Path, label: &str) {
    let err = assemble(rec, DirGetter::new(dir)).expect_err(label);
    let ts = TarSplitError::from_io(&err).unwrap_or_else(|| panic!("{label}: {err}"));
    assert_eq!(ts.kind(), graphdriver::ErrorKind::DataLoss, "{label}: {err}");
    assert!(err.to_string().contains("d/victim"), "{label}: {err}");
}

#[test]
fn tampered_files_fail_the_read() {
    require_root();
    let (_tmp, tar, rec, dir) = extracted_pair();
    let victim = dir.join("d/victim");
    assert_eq!(assemble(&rec, DirGetter::new(&dir)).unwrap(), tar);

    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    let err = assemble(&rec, DirGetter::new(&dir)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_data_loss(&rec, &dir, "flipped byte");

    bytes[1000] ^= 1;
    std::fs::write(&victim, &bytes[..1999]).unwrap();
    assert_data_loss(&rec, &dir, "shorter");
    let mut longer = bytes.clone();
    longer.push(0);
    std::fs::write(&victim, &longer).unwrap();
    assert_data_loss(&rec, &dir, "longer");
    std::fs::remove_file(&victim).unwrap();
    assert_data_loss(&rec, &dir, "missing");
    std::os::unix::fs::symlink("../other", &victim).unwrap();
    assert_data_loss(&rec, &dir, "symlink");
    std::fs::remove_file(&victim).unwrap();
    mknod(&victim, rustix::fs::FileType::Fifo, (0, 0));
    assert_data_loss(&rec, &dir, "fifo");
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, &bytes).unwrap();
    assert_eq!(assemble(&rec, DirGetter::new(&dir)).unwrap(), tar);
}

#[test]
fn failure_is_sticky_and_small_reads_work() {
    require_root();
    let (_tmp, tar, rec, dir) = extracted_pair();
    let mut asm = Assembler::new(Box::new(Cursor::new(rec.clone())), DirGetter::new(&dir));
    let mut out = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = asm.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, tar);
    std::fs::write(dir.join("d/victim"), b"changed").unwrap();
    let mut asm = Assembler::new(Box::new(Cursor::new(rec)), DirGetter::new(&dir));
    assert!(io::copy(&mut asm, &mut io::sink()).is_err());
    assert!(asm.read(&mut buf).is_err());
}

/// Gzip NDJSON lines into a record.
fn gz_lines(lines: &[String]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in lines {
        enc.write_all(l.as_bytes()).unwrap();
        enc.write_all(b"\n").unwrap();
    }
    enc.finish().unwrap()
}

fn crc_b64(content: &[u8]) -> String {
    STANDARD.encode(super::Crc64::checksum(content).to_be_bytes())
}

#[test]
fn hostile_records_fail_cleanly_without_leaving_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let secret = b"outside secret";
    std::fs::write(outside.join("secret"), secret).unwrap();
    std::fs::write(root.join("small"), b"tiny").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("esc")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("up")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("leaf")).unwrap();
    let file = |name: &str, size: usize, payload: &str| {
        format!(r#"{{"type":1,"name":"{name}","size":{size},"payload":"{payload}","position":0}}"#)
    };
    let c = crc_b64(secret);
    let n = secret.len();
    let records: Vec<(&str, Vec<u8>)> = vec![
        ("bad gzip", b"\x1f\x8b\x08\x00garbage".to_vec()),
        ("plain text", b"{\"type\":2}".to_vec()),
        ("bad json", gz_lines(&["{\"type\":2,".into()])),
        ("type as string", gz_lines(&[r#"{"type":"2","payload":"AA=="}"#.into()])),
        ("unknown type", gz_lines(&[r#"{"type":7,"payload":"AA=="}"#.into()])),
        ("negative size", gz_lines(&[r#"{"type":1,"name":"small","size":-4,"payload":null}"#.into()])),
        ("huge size", gz_lines(&[file("small", 9_000_000_000_000_000_000, &crc_b64(b"tiny"))])),
        ("dotdot", gz_lines(&[file("../outside/secret", n, &c)])),
        ("dotdot inside", gz_lines(&[file("esc/../../outside/secret", n, &c)])),
        ("absolute", gz_lines(&[file(&outside.join("secret").to_string_lossy(), n, &c)])),
        ("absolute symlink dir", gz_lines(&[file("esc/secret", n, &c)])),
        ("relative symlink dir", gz_lines(&[file("up/secret", n, &c)])),
        ("symlink leaf", gz_lines(&[file("leaf", n, &c)])),
        ("duplicate", gz_lines(&[file("small", 4, &crc_b64(b"tiny")), file("./small", 4, &crc_b64(b"tiny"))])),
    ];
    for (label, rec) in records {
        for getter in [DirGetter::new(&root), DirGetter::walk_only(&root)] {
            let mut out = Vec::new();
            let res = Assembler::new(Box::new(Cursor::new(rec.clone())), getter).read_to_end(&mut out);
            let err = res.expect_err(label);
            assert!(!out.windows(secret.len()).any(|w| w == secret), "{label}: read outside root");
            let ts = TarSplitError::from_io(&err).unwrap_or_else(|| panic!("{label}: untyped error {err}"));
            assert_ne!(ts.kind(), graphdriver::ErrorKind::Internal, "{label}: {err}");
        }
    }
}

#[test]
fn reads_docker_json_exactly_as_go_writes_it() {
    // Go's json.Encoder escapes &, <, > and omits empty name and zero size;
    // payload is null for empty files; name_raw carries non-UTF-8 names.
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body, ty) in [
            (&b"a&b/"[..], &b""[..], tar::EntryType::Directory),
            (b"a&b/<f>", b"hello", tar::EntryType::Regular),
            (b"a&b/\xff\xfe", b"raw name", tar::EntryType::Regular),
            (b"a&b/empty", b"", tar::EntryType::Regular),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(ty);
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
            h.set_size(body.len() as u64);
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap()
    };
    let seg = |range: std::ops::Range<usize>| STANDARD.encode(&tar[range]);
    let lines = vec![
        format!(r#"{{"type":2,"payload":"{}","position":0}}"#, seg(0..512)),
        r#"{"type":1,"name":"a\u0026b/","payload":null,"position":1}"#.to_string(),
        format!(r#"{{"type":2,"payload":"{}","position":2}}"#, seg(512..1024)),
        format!(
            r#"{{"type":1,"name":"a\u0026b/\u003cf\u003e","size":5,"payload":"{}","position":3}}"#,
            crc_b64(b"hello")
        ),
        format!(r#"{{"type":2,"payload":"{}","position":4}}"#, seg(1029..1536 + 512)),
        format!(
            r#"{{"type":1,"name_raw":"{}","size":8,"payload":"{}","position":5}}"#,
            STANDARD.encode(b"a&b/\xff\xfe"),
            crc_b64(b"raw name")
        ),
        format!(r#"{{"type":2,"payload":"{}","position":6}}"#, seg(2056..2560 + 512)),
        r#"{"type":1,"name":"a\u0026b/empty","payload":null,"position":7}"#.to_string(),
        format!(r#"{{"type":2,"payload":"{}","position":8}}"#, seg(3072..tar.len())),
    ];
    let docker = gz_lines(&lines);
    let mut contents: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    contents.insert(b"a&b/<f>".to_vec(), b"hello".to_vec());
    contents.insert(b"a&b/\xff\xfe".to_vec(), b"raw name".to_vec());
    assert_eq!(assemble(&docker, MemGetter(contents.clone())).unwrap(), tar);
    // Ours decodes to the same file entries, in the same order.
    let (_, ours) = record(&tar);
    assert_eq!(files(&ours), files(&docker));
    assert_eq!(assemble(&ours, MemGetter(contents)).unwrap(), tar);
}

/// File contents from memory, as a map from tar name.
#[derive(Clone)]
struct MemGetter(HashMap<Vec<u8>, Vec<u8>>);

impl FileGetter for MemGetter {
    fn open(&self, name: &[u8]) -> io::Result<Box<dyn Read + Send>> {
        let data = self.0.get(name).cloned().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Box::new(Cursor::new(data)))
    }
}

/// A one-member-per-entry tar from (name, type, body) with raw headers.
fn raw_tar(members: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, ty, body) in members {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.as_mut_bytes()[156] = *ty;
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_tars_fail_disassembly() {
    let good = raw_tar(&[(b"d/", b'5', b""), (b"d/f", b'0', &testkit::noise(2, 1500)), (b"g", b'0', b"x")]);
    record(&good);
    let mut bad_sum = good.clone();
    bad_sum[512 + 10] ^= 0x20;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated in content", good[..1200].to_vec(), "truncated"),
        ("truncated in header", good[..2560 + 100].to_vec(), "truncated"),
        ("dir carrying data", raw_tar(&[(b"d/", b'5', &testkit::noise(8, 700))]), "checksum"),
        ("symlink carrying data", raw_tar(&[(b"l", b'2', b"data")]), "checksum"),
        ("bad checksum", bad_sum, "checksum"),
        ("same file twice", raw_tar(&[(b"a", b'0', b"1"), (b"./a", b'0', b"2")]), "replaces"),
        ("file then link", raw_tar(&[(b"a", b'0', b"1"), (b"a", b'2', b"")]), "replaces"),
        ("file under file", raw_tar(&[(b"a", b'0', b"1"), (b"a/b", b'0', b"2")]), "replaces"),
        ("dir becomes symlink", raw_tar(&[(b"d/f", b'0', b"1"), (b"d", b'2', b"")]), "replaces"),
        ("whiteout of content", raw_tar(&[(b"d/f", b'0', b"1"), (b"d/.wh.f", b'0', b"")]), "replaces"),
        ("whiteout of dir", raw_tar(&[(b"d/e/f", b'0', b"1"), (b"d/.wh.e", b'0', b"")]), "replaces"),
        ("dotdot content", raw_tar(&[(b"../x", b'0', b"1")]), "`..`"),
        ("escaping content", raw_tar(&[(b"a/../../x", b'0', b"1")]), "`..`"),
        ("absolute then relative", raw_tar(&[(b"/a", b'0', b"1"), (b"a", b'0', b"2")]), "replaces"),
    ];
    for (label, tar, want) in cases {
        let err = disassemble(&tar[..], Vec::new()).expect_err(label);
        assert!(err.to_string().contains(want), "{label}: {err}");
        assert_eq!(err.kind(), graphdriver::ErrorKind::InvalidArgument, "{label}: {err}");
    }
}

/// Go's reader accepts these (so Docker does): so must the recorder, and
/// rebuild them byte for byte.
#[test]
fn what_go_accepts_round_trips() {
    let good = raw_tar(&[(b"d/", b'5', b""), (b"d/f", b'0', &testkit::noise(2, 1500)), (b"g", b'0', b"x")]);
    let body = good.len() - 1024;
    let mut contents = HashMap::new();
    contents.insert(b"d/f".to_vec(), testkit::noise(2, 1500));
    contents.insert(b"g".to_vec(), b"x".to_vec());
    contents.insert(b"/etc/x".to_vec(), b"1".to_vec());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty input", Vec::new()),
        ("no end blocks", good[..body].to_vec()),
        ("one end block", good[..body + 512].to_vec()),
        ("end inside padding", good[..2540].to_vec()),
        ("absolute name", raw_tar(&[(b"/etc/x", b'0', b"1")])),
    ];
    for (label, tar) in cases {
        let (_, rec) = record(&tar);
        assert_eq!(assemble(&rec, MemGetter(contents.clone())).unwrap(), tar, "{label}");
    }
}

#[test]
fn io_failures_are_reported_as_such() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer went away"))
        }
    }
    let err = disassemble(Failing, Vec::new()).unwrap_err();
    assert!(matches!(err, TarSplitError::Read(_)), "{err}");
    assert_eq!(err.kind(), graphdriver::ErrorKind::Internal);

    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let tar = raw_tar(&[(b"f", b'0', &testkit::noise(3, 3 << 20))]);
    let err = disassemble(&tar[..], Full).unwrap_err();
    assert!(matches!(err, TarSplitError::Io { .. }), "{err}");
}

#[test]
fn repeated_names_and_inline_data_stay_rebuildable() {
    // Directories twice, an empty file later given content, a GNU long name
    // entry: all rebuild exactly,
    // and no name gets two file entries (Go's reader would refuse that).
    let long_name = [b"l".repeat(200), b"\0".to_vec()].concat();
    let tar = raw_tar(&[
        (b"d/", b'5', b""),
        (b"d/", b'5', b""),
        (b"e", b'0', b""),
        (b"e", b'0', b"now with content"),
        (b"weird-dir/", b'5', b""),
        (b"weird-link", b'2', b""),
        (b"././@LongLink", b'L', &long_name),
        (b"ignored", b'0', b"long-named content"),
        (b"fifo", b'6', b""),
    ]);
    let (summary, rec) = record(&tar);
    let names = files(&rec);
    let mut contents = HashMap::new();
    contents.insert(b"l".repeat(200), b"long-named content".to_vec());
    assert_eq!(
        names,
        vec![
            (b"d/".to_vec(), 0),
            (b"e".to_vec(), 0),
            (b"weird-dir/".to_vec(), 0),
            (b"weird-link".to_vec(), 0),
            (b"l".repeat(200), 18),
            (b"fifo".to_vec(), 0),
        ]
    );
    assert_eq!(summary.files, 6);
    assert_eq!(assemble(&rec, MemGetter(contents)).unwrap(), tar);
}

// ------------------------------------------------------------- properties

#[derive(Debug, Clone)]
enum Member {
    File(usize, u64),
    Dir,
    Symlink(usize),
    Hardlink,
}

fn member() -> impl Strategy<Value = Member> {
    prop_oneof![
        4 => (0usize..3000, any::<u64>()).prop_map(|(n, s)| Member::File(n, s)),
        1 => Just(Member::Dir),
        1 => (1usize..250).prop_map(Member::Symlink),
        1 => Just(Member::Hardlink),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_trees_round_trip(
        members in prop::collection::vec((member(), 1usize..300), 0..24),
        trailing in 0usize..5000,
        trailing_byte in any::<u8>(),
    ) {
        let mut b = tar::Builder::new(Vec::new());
        let mut contents = HashMap::new();
        let mut last_file: Option<String> = None;
        for (i, (m, len)) in members.iter().enumerate() {
            let name = format!("e{i}-{}", "n".repeat(*len));
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match m {
                Member::File(n, seed) => {
                    let data = testkit::noise(*seed, *n);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, &name, &data[..]).unwrap();
                    contents.insert(name.clone().into_bytes(), data);
                    last_file = Some(name);
                }
                Member::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{name}/"), io::empty()).unwrap();
                }
                Member::Symlink(n) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &name, "t".repeat(*n)).unwrap();
                }
                Member::Hardlink => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    let target = last_file.clone().unwrap_or_else(|| "nothing".into());
                    b.append_link(&mut h, &name, target).unwrap();
                }
            }
        }
        let mut tar = b.into_inner().unwrap();
        tar.extend(std::iter::repeat_n(trailing_byte, trailing));
        let (summary, rec) = record(&tar);
        prop_assert_eq!(summary.files, members.len() as u64);
        let out = assemble(&rec, MemGetter(contents)).unwrap();
        prop_assert_eq!(sha(&out), sha(&tar));
    }
}

#[test]
fn assembler_and_getter_can_cross_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Assembler<DirGetter>>();
    sync::<DirGetter>();
}
