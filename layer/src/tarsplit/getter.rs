//! [`DirGetter`]: open files by tar name beneath a root directory, never
//! leaving it.
//!
//! Resolution: the parent directory is opened with `openat2` and
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` (symlinks inside the layer
//! resolve as if the root were `/`); where `openat2` is unavailable (kernel
//! before 5.6, or a seccomp filter), each component is opened with
//! `O_NOFOLLOW`, so no symlink is followed at all. The final component is
//! `lstat`ed and must be a regular file before it is opened (`O_NOFOLLOW`,
//! `O_NONBLOCK`), so a record can't make us open a device or block on a FIFO,
//! and it is `fstat`ed again once open.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, fstat, openat, openat2, statat};
use rustix::io::Errno;

use super::names::{relative_components, show};
use super::{FileGetter, NotRegular, TarSplitError};

/// Set once `openat2` turned out to be unusable on this host.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens files by tar name beneath `root`. Names that are absolute, contain
/// `..` or NUL, or name the root itself are refused (`InvalidInput`).
#[derive(Debug)]
pub struct DirGetter {
    root: PathBuf,
    root_fd: OnceLock<OwnedFd>,
    walk_only: bool,
}

impl DirGetter {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirGetter { root: root.into(), root_fd: OnceLock::new(), walk_only: false }
    }

    /// A getter that always uses the component-wise walk (tests the fallback).
    #[cfg(test)]
    pub(crate) fn walk_only(root: impl Into<PathBuf>) -> Self {
        DirGetter { walk_only: true, ..DirGetter::new(root) }
    }

    fn root(&self) -> io::Result<BorrowedFd<'_>> {
        if let Some(fd) = self.root_fd.get() {
            return Ok(fd.as_fd());
        }
        let fd = rustix::fs::open(&self.root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| {
                io::Error::new(io::Error::from(e).kind(), format!("open root {}: {e}", self.root.display()))
            })?;
        Ok(self.root_fd.get_or_init(|| fd).as_fd())
    }

    /// Open the directory holding the last component, beneath the root.
    fn parent(&self, root: BorrowedFd<'_>, dirs: &[&[u8]]) -> Result<Option<OwnedFd>, Errno> {
        if dirs.is_empty() {
            return Ok(None);
        }
        if !self.walk_only && !NO_OPENAT2.load(Ordering::Relaxed) {
            let path = dirs.join(&b'/');
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            match openat2(
                root,
                path.as_slice(),
                flags,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
                other => return other.map(Some),
            }
        }
        let mut cur: Option<OwnedFd> = None;
        for dir in dirs {
            let at = cur.as_ref().map_or(root, |fd| fd.as_fd());
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            cur = Some(openat(at, *dir, flags, Mode::empty())?);
        }
        Ok(cur)
    }

    fn open_file(&self, comps: &[&[u8]]) -> io::Result<File> {
        let root = self.root()?;
        let Some((base, dirs)) = comps.split_last() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty name"));
        };
        let parent = self.parent(root, dirs)?;
        let dir = parent.as_ref().map_or(root, |fd| fd.as_fd());
        let st = statat(dir, *base, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(io::ErrorKind::InvalidData, NotRegular));
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = openat(dir, *base, flags, Mode::empty())?;
        let again = fstat(&fd)?;
        if FileType::from_raw_mode(again.st_mode) != FileType::RegularFile
            || (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino)
        {
            return Err(io::Error::new(io::ErrorKind::InvalidData, NotRegular));
        }
        Ok(File::from(fd))
    }
}

impl FileGetter for DirGetter {
    fn open(&self, name: &[u8]) -> io::Result<Box<dyn Read + Send>> {
        let comps = relative_components(name).map_err(|why| {
            io::Error::new(io::ErrorKind::InvalidInput, TarSplitError::UnsafeName { name: show(name), why })
        })?;
        Ok(Box::new(self.open_file(&comps)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn read(g: &DirGetter, name: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        g.open(name)?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// root/{a/b, top, link->a/b, dirlink->a, esc->outside, abs->/<outside>,
    /// up->../outside, fifo}, outside/secret.
    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a/b"), b"inside").unwrap();
        std::fs::write(root.join("top"), b"top").unwrap();
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        symlink("a/b", root.join("link")).unwrap();
        symlink("a", root.join("dirlink")).unwrap();
        symlink(&outside, root.join("abs")).unwrap();
        symlink("../outside", root.join("up")).unwrap();
        symlink("../../../../../../../../", root.join("a/deep")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        (tmp, root)
    }

    #[test]
    fn opens_files_beneath_root() {
        let (_tmp, root) = fixture();
        for g in [DirGetter::new(&root), DirGetter::walk_only(&root)] {
            assert_eq!(read(&g, b"a/b").unwrap(), b"inside");
            assert_eq!(read(&g, b"./a//b").unwrap(), b"inside");
            assert_eq!(read(&g, b"top").unwrap(), b"top");
        }
        // Symlinked directories inside the root resolve (openat2 only).
        assert_eq!(read(&DirGetter::new(&root), b"dirlink/b").unwrap(), b"inside");
    }

    #[test]
    fn refuses_unsafe_names_and_escapes() {
        let (_tmp, root) = fixture();
        for g in [DirGetter::new(&root), DirGetter::walk_only(&root)] {
            // An absolute name resolves beneath the root, as Docker extracts it.
            assert_eq!(read(&g, b"/etc/passwd").unwrap_err().kind(), io::ErrorKind::NotFound);
            for name in [&b"../outside/secret"[..], b"a/../../outside/secret", b"", b".", b"a\0b"] {
                let err = read(&g, name).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{}", show(name));
                assert!(matches!(TarSplitError::from_io(&err), Some(TarSplitError::UnsafeName { .. })));
            }
            // Symlinks out of the root are never followed; the final
            // component is never followed at all.
            for name in [&b"abs/secret"[..], b"up/secret", b"a/deep/secret", b"link", b"abs", b"fifo", b"a"] {
                let got = read(&g, name);
                assert!(got.is_err(), "{} opened: {:?}", show(name), got);
            }
        }
    }

    #[test]
    fn missing_root_is_an_error() {
        let g = DirGetter::new("/nonexistent/tarsplit-root");
        let err = read(&g, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/tarsplit-root"), "{err}");
    }
}
