//! Subvolume operations by path, built on [`super::ioctl`]: create,
//! snapshot, and depth-first destruction of a tree that may hold nested
//! subvolumes. Directories are opened with `O_NOFOLLOW`, so a symlink never
//! redirects an ioctl.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use graphdriver::{IoContext, IoError};
use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};

use super::ioctl;

/// Whether `md` (from `symlink_metadata`) is a subvolume root: on btrfs
/// every subvolume's root directory, and nothing else, has inode 256.
pub fn is_subvolume(md: &fs::Metadata) -> bool {
    md.is_dir() && md.ino() == ioctl::FIRST_FREE_OBJECTID
}

fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path)
}

/// `path`'s parent directory, opened, and its last component.
fn parent_and_name(path: &Path) -> Result<(File, &std::ffi::OsStr), IoError> {
    let invalid = || IoError::new("split", path, io::Error::from(io::ErrorKind::InvalidInput));
    let name = path.file_name().ok_or_else(invalid)?;
    let parent = path.parent().ok_or_else(invalid)?;
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    Ok((open_dir(parent).ctx("open", parent)?, name))
}

/// A new, empty subvolume at `path` (whose parent must exist).
pub fn create(path: &Path) -> Result<(), IoError> {
    let (parent, name) = parent_and_name(path)?;
    ioctl::subvol_create(parent.as_fd(), name).ctx("create subvolume", path)
}

/// A writable snapshot of the subvolume `src` at `dst`.
pub fn snapshot(src: &Path, dst: &Path) -> Result<(), IoError> {
    let source = open_dir(src).ctx("open", src)?;
    let (parent, name) = parent_and_name(dst)?;
    ioctl::snapshot(source.as_fd(), parent.as_fd(), name).ctx("snapshot subvolume", src)
}

/// The btrfs subvolume (tree) id of the subvolume at `path`.
pub fn id(path: &Path) -> Result<u64, IoError> {
    let dir = open_dir(path).ctx("open", path)?;
    ioctl::subvol_id(&dir).ctx("look up subvolume id of", path)
}

fn destroy(path: &Path) -> Result<(), IoError> {
    let (parent, name) = parent_and_name(path)?;
    ioctl::subvol_destroy(parent.as_fd(), name).ctx("destroy subvolume", path)
}

/// Delete `path` for good: every nested subvolume first (deepest first),
/// then `path` itself — with the destroy ioctl if it is a subvolume, else as
/// a plain file or directory tree. Missing `path` is success. Refuses, with
/// `EBUSY`, to descend into a mount point: what is mounted there is not ours.
pub fn destroy_tree(path: &Path) -> Result<(), IoError> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(IoError::new("stat", path, e)),
    };
    if !md.is_dir() {
        return fs::remove_file(path).ctx("remove", path);
    }
    let mut nested = Vec::new();
    find_nested(path, &mut nested)?;
    // `find_nested` lists parents before children; destroy children first.
    for sub in nested.iter().rev() {
        tracing::debug!(path = %sub.display(), "destroying nested subvolume");
        destroy(sub)?;
    }
    if is_subvolume(&md) { destroy(path) } else { fs::remove_dir_all(path).ctx("remove", path) }
}

/// Every subvolume strictly below `dir`, parents before their children.
/// Iterative: a layer may be thousands of directories deep.
fn find_nested(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), IoError> {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).ctx("read dir", &dir)? {
            let entry = entry.ctx("read dir", &dir)?;
            if !entry.file_type().ctx("stat", entry.path())?.is_dir() {
                continue;
            }
            let p = entry.path();
            let st = rustix::fs::statx(rustix::fs::CWD, &p, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::INO)
                .map_err(io::Error::from)
                .ctx("stat", &p)?;
            if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
                && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
            {
                return Err(IoError::new(
                    "refuse to delete below mount point",
                    p,
                    io::Error::from_raw_os_error(libc::EBUSY),
                ));
            }
            if st.stx_ino == ioctl::FIRST_FREE_OBJECTID {
                out.push(p.clone());
            }
            todo.push(p);
        }
    }
    Ok(())
}
