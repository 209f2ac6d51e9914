//! The full tree copy behind `create(id, Some(parent))`.
//!
//! Never follows a symlink. Keeps modes (setuid/setgid/sticky included),
//! owners, every xattr (`trusted.*` and `security.*` too), hardlinks within
//! the tree (an inode map), symlinks, devices, fifos and sockets, and
//! mtimes/atimes — a directory's after its children. Regular files are
//! reflinked where the filesystem can, else copied with `copy_file_range`,
//! sparse files hole by hole.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use graphdriver::archive::fs::list_xattrs;
use graphdriver::{IoContext, IoError};
use rustix::fs::{AtFlags, FileType, Mode, SeekFrom, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

/// What a copy did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub reflinked: u64,
    pub bytes: u64,
}

/// Copy the tree below `src` into the existing empty directory `dst`, and
/// `src`'s own metadata onto `dst`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopyStats, IoError> {
    let mut c = Copier { links: HashMap::new(), stats: CopyStats::default() };
    let md = fs::symlink_metadata(src).ctx("lstat", src)?;
    c.copy_children(src, dst)?;
    copy_meta(src, dst, &md)?;
    Ok(c.stats)
}

struct Copier {
    /// (dev, ino) of multiply-linked sources → their first copy.
    links: HashMap<(u64, u64), PathBuf>,
    stats: CopyStats,
}

impl Copier {
    fn copy_children(&mut self, src: &Path, dst: &Path) -> Result<(), IoError> {
        for entry in fs::read_dir(src).ctx("read dir", src)? {
            let entry = entry.ctx("read dir", src)?;
            let (s, d) = (entry.path(), dst.join(entry.file_name()));
            let md = fs::symlink_metadata(&s).ctx("lstat", &s)?;
            let ft = md.file_type();
            if !ft.is_dir() && md.nlink() > 1 {
                if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                    fs::hard_link(first, &d).ctx("link", &d)?;
                    continue;
                }
                self.links.insert((md.dev(), md.ino()), d.clone());
            }
            if ft.is_dir() {
                fs::DirBuilder::new().mode(0o700).create(&d).ctx("mkdir", &d)?;
                self.copy_children(&s, &d)?;
            } else if ft.is_file() {
                let reflinked = copy_file(&s, &d, &md)?;
                self.stats.files += 1;
                self.stats.bytes += md.len();
                self.stats.reflinked += u64::from(reflinked);
            } else if ft.is_symlink() {
                let target = fs::read_link(&s).ctx("readlink", &s)?;
                std::os::unix::fs::symlink(&target, &d).ctx("symlink", &d)?;
            } else {
                // Character and block devices, fifos, sockets.
                let kind = FileType::from_raw_mode(md.mode());
                rustix::fs::mknodat(rustix::fs::CWD, &d, kind, Mode::from_raw_mode(0o600), md.rdev())
                    .map_err(io::Error::from)
                    .ctx("mknod", &d)?;
            }
            copy_meta(&s, &d, &md)?;
        }
        Ok(())
    }
}

/// Owner, then mode (chown clears setuid), then xattrs (chown clears
/// `security.capability`), then times.
fn copy_meta(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<(), IoError> {
    let symlink = md.file_type().is_symlink();
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid())).ctx("chown", dst)?;
    if !symlink {
        rustix::fs::chmod(dst, Mode::from_raw_mode(md.mode() & 0o7777)).map_err(io::Error::from).ctx("chmod", dst)?;
    }
    for (name, value) in list_xattrs(src).ctx("list xattrs of", src)? {
        rustix::fs::lsetxattr(dst, OsStr::from_bytes(&name), &value, XattrFlags::empty())
            .map_err(io::Error::from)
            .ctx("setxattr", dst)?;
    }
    let times = Timestamps {
        last_access: Timespec { tv_sec: md.atime(), tv_nsec: md.atime_nsec() },
        last_modification: Timespec { tv_sec: md.mtime(), tv_nsec: md.mtime_nsec() },
    };
    rustix::fs::utimensat(rustix::fs::CWD, dst, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
        .ctx("set times of", dst)?;
    Ok(())
}

/// Copy one regular file; returns whether it was reflinked.
fn copy_file(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<bool, IoError> {
    let sf = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(src).ctx("open", src)?;
    let df = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .ctx("create", dst)?;
    if md.len() > 0 && rustix::fs::ioctl_ficlone(&df, &sf).is_ok() {
        return Ok(true);
    }
    let len = md.len();
    let sparse = md.blocks() * 512 < len;
    let res = if sparse { copy_sparse(&sf, &df, len) } else { copy_range(&sf, &df, 0, len) };
    res.ctx("copy to", dst)?;
    df.set_len(len).ctx("truncate", dst)?;
    Ok(false)
}

/// Copy the data extents of a sparse file, leaving its holes as holes.
fn copy_sparse(sf: &File, df: &File, len: u64) -> io::Result<()> {
    let mut off = 0;
    while off < len {
        let data = match rustix::fs::seek(sf, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            // No SEEK_DATA here: copy everything.
            Err(Errno::INVAL) | Err(Errno::NOTSUP) => return copy_range(sf, df, off, len - off),
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(sf, SeekFrom::Hole(data))?.min(len);
        copy_range(sf, df, data, hole - data)?;
        off = hole;
    }
    Ok(())
}

/// Copy `len` bytes at `off` with `copy_file_range`, or read/write where
/// the kernel refuses.
fn copy_range(sf: &File, df: &File, off: u64, len: u64) -> io::Result<()> {
    let (mut inp, mut out) = (off, off);
    let end = off + len;
    while inp < end {
        let want = usize::try_from(end - inp).unwrap_or(usize::MAX).min(1 << 30);
        match rustix::fs::copy_file_range(sf.as_fd(), Some(&mut inp), df.as_fd(), Some(&mut out), want) {
            Ok(0) => return Ok(()), // the source shrank
            Ok(_) => {}
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => {
                return copy_rw(sf, df, inp, end - inp);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_rw(sf: &File, df: &File, mut off: u64, len: u64) -> io::Result<()> {
    let end = off + len;
    let mut buf = vec![0u8; 256 * 1024];
    while off < end {
        let want = buf.len().min(usize::try_from(end - off).unwrap_or(usize::MAX));
        let n = sf.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        df.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt, symlink};

    use super::*;

    /// Every path below `root` with all the metadata a copy must keep.
    pub(crate) fn dump(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut inodes = BTreeMap::new();
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(root).unwrap();
            let key = format!("/{}", String::from_utf8_lossy(rel.as_os_str().as_bytes()));
            let md = fs::symlink_metadata(entry.path()).unwrap();
            let mut d = format!(
                "mode={:o} uid={} gid={} rdev={} mtime={}.{:09}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.rdev(),
                md.mtime(),
                md.mtime_nsec()
            );
            if md.file_type().is_file() {
                let data = fs::read(entry.path()).unwrap();
                let sum: u64 = data.iter().enumerate().map(|(i, b)| (i as u64 + 1) * u64::from(*b)).sum();
                d += &format!(" size={} sum={sum}", md.len());
                if md.nlink() > 1 {
                    d += &format!(" inode-of={}", inodes.entry(md.ino()).or_insert_with(|| key.clone()));
                }
            }
            if md.file_type().is_symlink() {
                d += &format!(" -> {:?}", fs::read_link(entry.path()).unwrap());
            }
            let x: Vec<String> = list_xattrs(entry.path())
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{}={v:?}", String::from_utf8_lossy(k)))
                .collect();
            if !x.is_empty() {
                d += &format!(" xattrs={x:?}");
            }
            out.insert(key, d);
        }
        out
    }

    pub(crate) fn set_times(path: &Path, sec: i64, nsec: i64) {
        let t = Timespec { tv_sec: sec, tv_nsec: nsec };
        let ts = Timestamps { last_access: t, last_modification: t };
        rustix::fs::utimensat(rustix::fs::CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    /// A tree with one of everything.
    pub(crate) fn rich_tree(root: &Path) {
        let x = XattrFlags::empty();
        fs::create_dir_all(root.join("sticky/sub")).unwrap();
        fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(root.join("suid"), b"#!/bin/true").unwrap();
        std::os::unix::fs::lchown(root.join("suid"), Some(1000), Some(1001)).unwrap();
        fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(root.join("sgid"), b"g").unwrap();
        fs::set_permissions(root.join("sgid"), fs::Permissions::from_mode(0o2750)).unwrap();
        fs::write(root.join("sticky/sub/hard1"), b"shared").unwrap();
        fs::hard_link(root.join("sticky/sub/hard1"), root.join("hard2")).unwrap();
        symlink("sticky/sub/hard1", root.join("link")).unwrap();
        std::os::unix::fs::lchown(root.join("link"), Some(7), Some(8)).unwrap();
        let mk = |name: &str, ft, dev| {
            rustix::fs::mknodat(rustix::fs::CWD, root.join(name), ft, Mode::from_raw_mode(0o640), dev).unwrap()
        };
        mk("null", FileType::CharacterDevice, rustix::fs::makedev(1, 3));
        mk("loop0", FileType::BlockDevice, rustix::fs::makedev(7, 0));
        mk("fifo", FileType::Fifo, 0);
        mk("sock", FileType::Socket, 0);
        fs::write(root.join("caps"), b"ping").unwrap();
        let cap = [1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        rustix::fs::lsetxattr(root.join("caps"), "security.capability", &cap, x).unwrap();
        rustix::fs::lsetxattr(root.join("caps"), "trusted.t", b"\x00secret", x).unwrap();
        rustix::fs::lsetxattr(root.join("caps"), "user.u", b"u", x).unwrap();
        rustix::fs::lsetxattr(root.join("sticky"), "trusted.overlay.opaque", b"y", x).unwrap();
        rustix::fs::lsetxattr(root.join("link"), "trusted.l", b"l", x).unwrap();
        let sparse = File::create(root.join("sparse")).unwrap();
        sparse.set_len(8 << 20).unwrap();
        sparse.write_all_at(b"middle", 4 << 20).unwrap();
        fs::write(root.join("big"), vec![0x11; 300_000]).unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        for (i, e) in walkdir::WalkDir::new(root).contents_first(true).into_iter().enumerate() {
            set_times(e.unwrap().path(), 1_600_000_000 + i as i64, 123_456_789);
        }
    }

    #[test]
    fn copy_preserves_everything() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        rich_tree(&src);
        let stats = copy_tree(&src, &dst).unwrap();
        assert_eq!(dump(&src), dump(&dst));
        assert_eq!(stats.files, 7);
        assert!(fs::symlink_metadata(dst.join("sock")).unwrap().file_type().is_socket());
        let sparse = fs::metadata(dst.join("sparse")).unwrap();
        assert!(sparse.blocks() * 512 < 1 << 20, "sparse file filled: {} blocks", sparse.blocks());
        // A copy, not a link: writing it leaves the source alone.
        fs::write(dst.join("big"), b"changed").unwrap();
        assert_eq!(fs::metadata(src.join("big")).unwrap().len(), 300_000);
        assert_ne!(fs::metadata(dst.join("hard2")).unwrap().ino(), fs::metadata(src.join("hard2")).unwrap().ino());
    }

    #[test]
    fn copy_range_falls_back_and_handles_holes() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let f = File::create(&a).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(b"x", 5 << 20).unwrap();
        drop(f);
        let b = t.path().join("b");
        let (sf, df) = (File::open(&a).unwrap(), File::create(&b).unwrap());
        copy_rw(&sf, &df, 0, 10 << 20).unwrap();
        df.set_len(10 << 20).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    }
}
