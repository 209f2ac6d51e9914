//! AUFS whiteout names as they appear in tar streams.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, XattrFlags};

use super::apply::Applier;
use super::fs::{list_dir, open_dir_at, remove_all_at};
use super::header::Rel;
use super::{WHITEOUT_OPAQUE, WHITEOUT_PREFIX, WhiteoutFormat};
use crate::error::ArchiveError;

/// Prefix of AUFS metadata entries (`.wh..wh.plnk`, `.wh..wh.aufs`, ...).
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// The xattr overlayfs reads to hide lower layers below a directory.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Xattrs in this namespace steer overlayfs; they are never taken from a tar
/// nor exported into one.
pub(crate) const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// What a tar entry's base name says about whiteouts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whiteout<'a> {
    /// An ordinary name.
    None,
    /// `.wh..wh..opq`: the parent directory hides lower layers.
    Opaque,
    /// `.wh..wh.<x>`: AUFS metadata, skipped at the layer root.
    Meta,
    /// `.wh.<name>`: `<name>` is deleted.
    Remove(&'a [u8]),
}

/// Classify a base name; a whiteout naming no usable file is an error.
pub(crate) fn classify(base: &[u8]) -> Result<Whiteout<'_>, String> {
    let Some(name) = base.strip_prefix(WHITEOUT_PREFIX.as_bytes()) else {
        return Ok(Whiteout::None);
    };
    if base == WHITEOUT_OPAQUE.as_bytes() {
        return Ok(Whiteout::Opaque);
    }
    if base.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
        return Ok(Whiteout::Meta);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(format!("whiteout {:?} does not name a file", String::from_utf8_lossy(base)));
    }
    Ok(Whiteout::Remove(name))
}

/// The whiteout entry name for `base`.
pub(crate) fn whiteout_for(base: &[u8]) -> Vec<u8> {
    let mut v = WHITEOUT_PREFIX.as_bytes().to_vec();
    v.extend_from_slice(base);
    v
}

pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(OVERLAY_XATTR_PREFIX)
}

/// Applying whiteout entries to the target directory.
impl Applier<'_> {
    pub(super) fn whiteout(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        shown: &dyn std::fmt::Display,
    ) -> Result<(), ArchiveError> {
        let mut target = parent.to_vec();
        target.push(name.to_vec());
        let pfd = self.must_open_dir(parent, shown)?.fd;
        let os_name = OsStr::from_bytes(name);
        // The cache must not hand out the removed directory again.
        self.cache.forget(&target);
        if self.lstat_size.is_some() && rustix::fs::statat(&*pfd, os_name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            // Something this tar wrote goes: the running size is off.
            self.lstat_size = None;
        }
        remove_all_at(pfd.as_fd(), os_name).map_err(self.io("remove", &target))?;
        if self.format == WhiteoutFormat::Overlay {
            rustix::fs::mknodat(&*pfd, os_name, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0))
                .map_err(io::Error::from)
                .map_err(self.io("mknod whiteout", &target))?;
            self.unpacked.insert(&target);
        } else {
            self.unpacked.remove(&target);
        }
        Ok(())
    }

    pub(super) fn opaque(&mut self, dir: &[Vec<u8>], shown: &dyn std::fmt::Display) -> Result<(), ArchiveError> {
        let fd = self.must_open_dir(dir, shown)?.fd;
        match self.format {
            WhiteoutFormat::Overlay => rustix::fs::fsetxattr(&*fd, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(io::Error::from)
                .map_err(self.io("set opaque xattr on", dir)),
            WhiteoutFormat::Remove => {
                // Anything below `dir` may go: the cache must not hand it
                // out, and the running size no longer holds.
                self.cache.forget_below(dir);
                self.lstat_size = None;
                self.prune(fd.as_fd(), dir.to_vec())
            }
        }
    }

    /// Remove everything below `dir` that this tar did not write.
    fn prune(&self, fd: BorrowedFd<'_>, dir: Rel) -> Result<(), ArchiveError> {
        for child in list_dir(fd).map_err(self.io("read dir", &dir))? {
            let mut rel = dir.clone();
            rel.push(child.as_bytes().to_vec());
            if !self.unpacked.contains(&rel) {
                remove_all_at(fd, &child).map_err(self.io("remove", &rel))?;
                continue;
            }
            match open_dir_at(fd, &child) {
                Ok(sub) => self.prune(sub.as_fd(), rel)?,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {}
                Err(e) => return Err(self.io("open", &rel)(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(classify(b"file").unwrap(), Whiteout::None);
        assert_eq!(classify(b".whx").unwrap(), Whiteout::None);
        assert_eq!(classify(b".wh.foo").unwrap(), Whiteout::Remove(b"foo"));
        assert_eq!(classify(b".wh..wh..opq").unwrap(), Whiteout::Opaque);
        assert_eq!(classify(b".wh..wh.plnk").unwrap(), Whiteout::Meta);
        for bad in [&b".wh."[..], b".wh...", b".wh.."] {
            assert!(classify(bad).is_err(), "{bad:?}");
        }
        assert_eq!(whiteout_for(b"x"), b".wh.x");
    }
}
