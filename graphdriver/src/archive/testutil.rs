//! Helpers for the archive tests: raw tar bytes (for what `tar::Builder`
//! refuses to write) and a tree dump for comparisons.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use super::fs::list_xattrs;

/// One raw ustar header block.
pub fn header(name: &[u8], typeflag: u8, link: &[u8], size: u64, mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    fix_cksum(&mut h);
    h
}

/// Recompute a header's checksum after editing it.
pub fn fix_cksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// `(name, typeflag, link target, data)` of one raw entry.
pub type RawEntry<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

/// A raw tar of entries, with the trailer.
pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, t, link, data) in entries {
        out.extend_from_slice(&header(name, *t, link, data.len() as u64, 0o644));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A PAX extended header entry carrying `records`.
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let rest = 3 + k.len() + v.len();
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    let mut out = header(b"PaxHeader", b'x', b"", data.len() as u64, 0o644).to_vec();
    out.extend_from_slice(&data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Every path below `root` with its type, owner, mode, size, mtime (not for
/// the root), content, link target, device, xattrs and hardlink group.
pub fn dump(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap();
        let key = format!("/{}", String::from_utf8_lossy(rel.as_os_str().as_bytes()));
        let md = fs::symlink_metadata(path).unwrap();
        let mut desc = format!("mode={:o} uid={} gid={} rdev={}", md.mode(), md.uid(), md.gid(), md.rdev());
        if key != "/" {
            desc += &format!(" mtime={}.{:09}", md.mtime(), md.mtime_nsec());
        }
        if md.file_type().is_file() {
            desc += &format!(" size={} data={:?}", md.len(), digest(&fs::read(path).unwrap()));
            if md.nlink() > 1 {
                let first = inodes.entry(md.ino()).or_insert_with(|| key.clone());
                desc += &format!(" inode-of={first}");
            }
        }
        if md.file_type().is_symlink() {
            desc += &format!(" -> {:?}", fs::read_link(path).unwrap());
        }
        let x = list_xattrs(path).unwrap();
        if !x.is_empty() {
            let x: Vec<String> = x
                .iter()
                .map(|(k, v)| format!("{}={:?}", String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
                .collect();
            desc += &format!(" xattrs={x:?}");
        }
        out.insert(key, desc);
    }
    out
}

fn digest(data: &[u8]) -> String {
    if data.len() <= 64 {
        return String::from_utf8_lossy(data).into_owned();
    }
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("{}B:{h:x}", data.len())
}

/// Set a path's atime/mtime without following symlinks.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec };
    let ts = rustix::fs::Timestamps { last_access: t, last_modification: t };
    rustix::fs::utimensat(rustix::fs::CWD, path, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

pub const T: i64 = 1_700_000_000;

/// A deterministic sample tree, every mtime `T`.
pub fn sample(root: &Path) {
    for d in ["dir1/sub", "dir2", "dir3", "dir4/sub", "dir5", "dirToFile", "fileToDir_placeholder"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::remove_dir(root.join("fileToDir_placeholder")).unwrap();
    for (f, data) in [
        ("file1", "file1\n"),
        ("file2", "file2\n"),
        ("file3", "file3\n"),
        ("file4", "file4\n"),
        ("file5", "file5\n"),
        ("file6", "file6\n"),
        ("fileToDir", "x"),
        ("dir1/f", "1"),
        ("dir1/sub/f", "1"),
        ("dir2/f", "2"),
        ("dir4/sub/f", "4"),
        ("dirToFile/a", "a"),
    ] {
        fs::write(root.join(f), data).unwrap();
        fs::set_permissions(root.join(f), fs::Permissions::from_mode(0o644)).unwrap();
    }
    symlink("target1", root.join("symlink1")).unwrap();
    symlink("target2", root.join("symlink2")).unwrap();
    touch_all(root);
}

pub fn touch_all(root: &Path) {
    for e in walkdir::WalkDir::new(root).contents_first(true) {
        set_mtime(e.unwrap().path(), T, 0);
    }
}
