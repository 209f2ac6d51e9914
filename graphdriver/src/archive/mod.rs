//! Archive helpers shared by every driver: apply a (hostile) tar to a
//! directory with whiteouts, compute the changes between two trees, export
//! changes as a tar with AUFS whiteouts.
//!
//! - [`reader::Reader`] (`reader.rs`) is the workspace's one tar parser, with
//!   Go's `archive/tar` rules; the layer store's tar-split recorder uses it too.
//! - [`apply_tar`] (`apply.rs`, `sparse.rs`) reads through it and performs
//!   every filesystem operation itself,
//!   relative to directory fds opened with `O_NOFOLLOW`, so no entry can
//!   write through a symlink or outside the target.
//! - [`changes_dirs`] (`changes.rs`) follows moby's `ChangesDirs` rules.
//! - [`export_changes`] (`export.rs`) writes PAX tars that [`apply_tar`]
//!   re-applies exactly (nanosecond mtimes, all xattrs, hardlinks).
//! - `whiteout.rs` names the AUFS whiteout forms; `fs.rs` holds the
//!   fd-relative primitives.

use std::io::{Read, Write};
use std::path::Path;

use crate::driver::Change;
use crate::error::ArchiveError;

mod apply;
mod changes;
mod dircache;
mod export;
pub mod fs;
mod header;
pub mod overlay;
mod pathset;
pub mod reader;
mod sparse;
#[cfg(test)]
mod testutil;
mod whiteout;

pub use header::{MAX_PATH, member_components, show_bytes};
pub use whiteout::{OVERLAY_OPAQUE_XATTR, WHITEOUT_META_PREFIX};

/// AUFS whiteout prefix used in tar streams.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// AUFS opaque-directory marker used in tar streams.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// How whiteout entries in a tar are applied to the target directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Delete the whited-out path; an opaque marker empties the directory of
    /// everything not written by this same tar (naive drivers: vfs, btrfs).
    Remove,
    /// Record whiteouts the way overlayfs reads them: a 0/0 character device
    /// for `.wh.<name>`, `trusted.overlay.opaque=y` on the directory for
    /// `.wh..wh..opq` (overlay's `diff/` dir).
    Overlay,
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub whiteouts: WhiteoutFormat,
}

/// Extract `tar` into `dir`. Returns the size Docker's `UnpackLayer`
/// reports for it, which its naive-diff drivers (vfs, btrfs) record as a
/// layer's `size`: the sum of the members' header sizes (a sparse file's
/// logical size; symlinks, hardlinks and directories usually 0).
///
/// The tar is hostile: absolute paths, `..`, writes through symlinks, link
/// escapes and malformed whiteouts are [`ArchiveError::InvalidTar`], and
/// nothing is ever written outside `dir`. On error `dir` may hold part of
/// the tar; the caller discards it.
pub fn apply_tar(dir: &Path, tar: &mut dyn Read, opts: &ApplyOptions) -> Result<u64, ArchiveError> {
    apply::apply(dir, tar, opts)
}

/// The changes of `layer` relative to `parent` (`None`: everything is added), sorted by path.
pub fn changes_dirs(layer: &Path, parent: Option<&Path>) -> Result<Vec<Change>, ArchiveError> {
    changes::changes_dirs(layer, parent)
}

/// Bytes of regular-file content behind `changes` (deletions count nothing).
pub fn changes_size(layer: &Path, changes: &[Change]) -> u64 {
    changes::changes_size(layer, changes)
}

/// What [`apply_tar_measured`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// As [`apply_tar`] returns it: the members' header sizes.
    pub tar_size: u64,
    /// The extracted tree's [`dir_size`], counted while extracting, when
    /// that was exact: the directory was empty and nothing in it was
    /// removed or replaced since. `None`: walk the tree with [`dir_size`].
    pub lstat_size: Option<u64>,
}

/// [`apply_tar`], also counting the tree's [`dir_size`] as it is written,
/// so a driver that records that size (overlay2's rule) need not walk the
/// tree again afterwards.
pub fn apply_tar_measured(dir: &Path, tar: &mut dyn Read, opts: &ApplyOptions) -> Result<Applied, ArchiveError> {
    apply::apply_measured(dir, tar, opts, true)
}

/// The size of a tree as Docker's overlay2 records it for an applied layer
/// (moby's `directory.Size`): non-directories by `lstat` size — a symlink
/// counts its target's length — each inode once.
pub fn dir_size(dir: &Path) -> Result<u64, ArchiveError> {
    changes::dir_size(dir)
}

/// Write a tar of `changes` (read from `layer`), deletions as `.wh.` entries.
pub fn export_changes(layer: &Path, changes: &[Change], out: &mut dyn Write) -> Result<(), ArchiveError> {
    export::export(layer, changes, out)
}
