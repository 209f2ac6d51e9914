//! Filesystem primitives relative to directory fds, never following
//! symlinks, plus xattr listing. Shared by the archive code and the drivers.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, Mode, OFlags};

/// Open the directory `name` inside `parent` without following a symlink.
/// A symlink fails with `ELOOP`, a non-directory with `ENOTDIR`.
pub fn open_dir_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?)
}

/// Open a directory by path (the path itself is trusted; its last
/// component may not be a symlink).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(rustix::fs::CWD, path, flags, Mode::empty())?)
}

/// The names in a directory, without `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(out)
}

/// Remove `name` in `parent` and, if it is a directory, everything below it,
/// never following symlinks. A missing `name` is success.
pub fn remove_all_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = match open_dir_at(parent, name) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    for child in list_dir(dir.as_fd())? {
        remove_all_at(dir.as_fd(), &child)?;
    }
    drop(dir);
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A path naming `name` inside the directory open as `dir`, for the few
/// calls that have no fd-relative form (`lsetxattr`). The kernel resolves
/// the fd's magic link to that very directory, so the lookup stays below it;
/// `name` itself is not followed by `l*` calls.
pub fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

/// Every xattr of `path` (not following a symlink), as `(name, value)`.
pub fn list_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = fill(|buf| rustix::fs::llistxattr(path, rustix::buffer::spare_capacity(buf)))?;
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        match fill(|buf| rustix::fs::lgetxattr(path, name_os, rustix::buffer::spare_capacity(buf))) {
            Ok(value) => out.push((name.to_vec(), value)),
            // Raced with a removal, or a name we may list but not read.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Every xattr of the open file `fd`.
pub fn list_xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = fill(|buf| rustix::fs::flistxattr(fd, rustix::buffer::spare_capacity(buf)))?;
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        match fill(|buf| rustix::fs::fgetxattr(fd, name_os, rustix::buffer::spare_capacity(buf))) {
            Ok(value) => out.push((name.to_vec(), value)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Call `f` with growing buffers until the value fits.
fn fill(mut f: impl FnMut(&mut Vec<u8>) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut cap = 256;
    loop {
        let mut buf = Vec::with_capacity(cap);
        match f(&mut buf) {
            Ok(_) => return Ok(buf),
            Err(rustix::io::Errno::RANGE) if cap < (1 << 24) => cap *= 4,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_all_at_does_not_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let inside = t.path().join("inside");
        std::fs::create_dir_all(inside.join("d/e")).unwrap();
        std::os::unix::fs::symlink(&outside, inside.join("d/link")).unwrap();
        let fd = open_dir(&inside).unwrap();
        remove_all_at(fd.as_fd(), OsStr::new("d")).unwrap();
        remove_all_at(fd.as_fd(), OsStr::new("missing")).unwrap();
        assert!(!inside.join("d").exists());
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn xattrs_listed() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"").unwrap();
        rustix::fs::lsetxattr(&f, "trusted.big", &[7u8; 1000], rustix::fs::XattrFlags::empty()).unwrap();
        rustix::fs::lsetxattr(&f, "user.a", b"1", rustix::fs::XattrFlags::empty()).unwrap();
        let x = list_xattrs(&f).unwrap();
        assert!(x.contains(&(b"user.a".to_vec(), b"1".to_vec())));
        assert!(x.contains(&(b"trusted.big".to_vec(), vec![7u8; 1000])));
        let file = std::fs::File::open(&f).unwrap();
        assert_eq!(list_xattrs_fd(file.as_fd()).unwrap(), x);
    }
}
