//! Filesystem edits as data ([`Op`]), applied the same way to a mounted
//! layer and to a plain "flat" directory so the two can be compared — the
//! shape of containerd's `fstest.Applier`.
//!
//! Paths are layer-absolute (`/etc/hosts`). Modes are set with an explicit
//! `chmod` after creation, so the process umask never matters.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use graphdriver::archive::fs::list_xattrs;
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags};

/// The kind of a special file made by [`mknod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Socket,
}

/// One filesystem edit.
#[derive(Debug, Clone)]
pub enum Op {
    /// `mkdir -p`, then chmod.
    Dir(String, u32),
    /// Create or truncate-and-rewrite, then chmod.
    File(String, Vec<u8>, u32),
    Chown(String, u32, u32),
    Chmod(String, u32),
    /// `rm -rf`.
    Remove(String),
    /// `rename(2)`; on `EXDEV` (overlayfs without `redirect_dir`, for a
    /// directory from a lower layer) copy then remove, as `mv` does.
    Rename(String, String),
    /// Hard link: `(existing, new)`.
    Link(String, String),
    /// Symlink: `(target, path)`.
    Symlink(String, String),
    Mknod(String, Node, u32),
    /// `lsetxattr(path, name, value)`.
    Xattr(String, String, Vec<u8>),
    /// `lremovexattr(path, name)`.
    Unxattr(String, String),
    /// A sparse file of `len` bytes with data only at the given offsets.
    Sparse(String, u64, Vec<(u64, Vec<u8>)>),
    /// Set atime and mtime (seconds, nanoseconds) without following symlinks.
    Times(String, i64, i64),
}

fn p(s: &str) -> String {
    s.trim_start_matches('/').to_string()
}

pub fn dir(path: &str, mode: u32) -> Op {
    Op::Dir(p(path), mode)
}
pub fn file(path: &str, data: impl AsRef<[u8]>, mode: u32) -> Op {
    Op::File(p(path), data.as_ref().to_vec(), mode)
}
pub fn chown(path: &str, uid: u32, gid: u32) -> Op {
    Op::Chown(p(path), uid, gid)
}
pub fn chmod(path: &str, mode: u32) -> Op {
    Op::Chmod(p(path), mode)
}
pub fn rm(path: &str) -> Op {
    Op::Remove(p(path))
}
pub fn mv(from: &str, to: &str) -> Op {
    Op::Rename(p(from), p(to))
}
pub fn link(existing: &str, new: &str) -> Op {
    Op::Link(p(existing), p(new))
}
pub fn symlink(target: &str, path: &str) -> Op {
    Op::Symlink(target.to_string(), p(path))
}
pub fn mknod(path: &str, node: Node, mode: u32) -> Op {
    Op::Mknod(p(path), node, mode)
}
pub fn xattr(path: &str, name: &str, value: impl AsRef<[u8]>) -> Op {
    Op::Xattr(p(path), name.to_string(), value.as_ref().to_vec())
}
pub fn unxattr(path: &str, name: &str) -> Op {
    Op::Unxattr(p(path), name.to_string())
}
pub fn sparse(path: &str, len: u64, chunks: &[(u64, &[u8])]) -> Op {
    Op::Sparse(p(path), len, chunks.iter().map(|(o, d)| (*o, d.to_vec())).collect())
}
pub fn times(path: &str, sec: i64, nsec: i64) -> Op {
    Op::Times(p(path), sec, nsec)
}

/// Deterministic pseudo-random bytes (moby's `randomContent` idea).
pub fn content(size: usize, seed: u64) -> Vec<u8> {
    testkit::noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), size)
}

/// Apply `ops` below `root`, in order.
pub fn apply(root: &Path, ops: &[Op]) -> anyhow::Result<()> {
    for op in ops {
        apply_one(root, op).with_context(|| format!("apply {op:?} in {}", root.display()))?;
    }
    Ok(())
}

fn apply_one(root: &Path, op: &Op) -> io::Result<()> {
    let at = |rel: &str| root.join(rel);
    match op {
        Op::Dir(path, mode) => {
            fs::create_dir_all(at(path))?;
            fs::set_permissions(at(path), fs::Permissions::from_mode(*mode))
        }
        Op::File(path, data, mode) => {
            fs::write(at(path), data)?;
            fs::set_permissions(at(path), fs::Permissions::from_mode(*mode))
        }
        Op::Chown(path, uid, gid) => std::os::unix::fs::lchown(at(path), Some(*uid), Some(*gid)),
        Op::Chmod(path, mode) => fs::set_permissions(at(path), fs::Permissions::from_mode(*mode)),
        Op::Remove(path) => remove_all(&at(path)),
        Op::Rename(from, to) => match fs::rename(at(from), at(to)) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                copy_all(&at(from), &at(to))?;
                remove_all(&at(from))
            }
            other => other,
        },
        Op::Link(existing, new) => fs::hard_link(at(existing), at(new)),
        Op::Symlink(target, path) => std::os::unix::fs::symlink(target, at(path)),
        Op::Mknod(path, node, mode) => {
            let (ft, dev) = match node {
                Node::Char(ma, mi) => (FileType::CharacterDevice, rustix::fs::makedev(*ma, *mi)),
                Node::Block(ma, mi) => (FileType::BlockDevice, rustix::fs::makedev(*ma, *mi)),
                Node::Fifo => (FileType::Fifo, 0),
                Node::Socket => (FileType::Socket, 0),
            };
            rustix::fs::mknodat(rustix::fs::CWD, at(path), ft, Mode::from_raw_mode(*mode), dev)?;
            fs::set_permissions(at(path), fs::Permissions::from_mode(*mode))
        }
        Op::Xattr(path, name, value) => {
            Ok(rustix::fs::lsetxattr(at(path), OsStr::new(name), value, XattrFlags::empty())?)
        }
        Op::Unxattr(path, name) => Ok(rustix::fs::lremovexattr(at(path), OsStr::new(name))?),
        Op::Sparse(path, len, chunks) => {
            let f = fs::File::create(at(path))?;
            f.set_len(*len)?;
            for (off, data) in chunks {
                f.write_all_at(data, *off)?;
            }
            (&f).flush()
        }
        Op::Times(path, sec, nsec) => {
            let t = Timespec { tv_sec: *sec, tv_nsec: *nsec };
            let ts = Timestamps { last_access: t, last_modification: t };
            Ok(rustix::fs::utimensat(rustix::fs::CWD, at(path), &ts, AtFlags::SYMLINK_NOFOLLOW)?)
        }
    }
}

/// `rm -rf` that never follows symlinks; a missing path is fine.
pub fn remove_all(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `cp -a` of one tree (what `mv` falls back to across devices): types,
/// contents, modes, owners and xattrs.
fn copy_all(from: &Path, to: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(from)?;
    let ft = md.file_type();
    if ft.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let name = entry?.file_name();
            copy_all(&from.join(&name), &to.join(&name))?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if ft.is_file() {
        fs::copy(from, to)?;
    } else {
        let kind = FileType::from_raw_mode(md.mode());
        rustix::fs::mknodat(rustix::fs::CWD, to, kind, Mode::from_raw_mode(0o600), md.rdev())?;
    }
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))?;
    if !ft.is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    for (name, value) in list_xattrs(from)? {
        rustix::fs::lsetxattr(to, OsStr::from_bytes(&name), &value, XattrFlags::empty())?;
    }
    Ok(())
}

/// A fresh "flat" directory (mode 0755, owned by root like a layer's root).
pub fn flat_dir(path: PathBuf) -> anyhow::Result<PathBuf> {
    fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::lchown(&path, Some(0), Some(0)).with_context(|| format!("chown {}", path.display()))?;
    Ok(path)
}
