//! Archive helpers shared by every driver: apply a (hostile) tar to a
//! directory with whiteouts, compute the changes between two trees, export
//! changes as a tar with AUFS whiteouts.

use std::io::{Read, Write};
use std::path::Path;

use crate::driver::Change;
use crate::error::ArchiveError;

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

/// Extract `tar` into `dir`. Returns the bytes of file content written.
pub fn apply_tar(dir: &Path, tar: &mut dyn Read, opts: &ApplyOptions) -> Result<u64, ArchiveError> {
    let _ = (dir, tar, opts);
    todo!("archive::apply_tar")
}

/// The changes of `layer` relative to `parent` (`None`: everything is added), sorted by path.
pub fn changes_dirs(layer: &Path, parent: Option<&Path>) -> Result<Vec<Change>, ArchiveError> {
    let _ = (layer, parent);
    todo!("archive::changes_dirs")
}

/// Bytes of regular-file content behind `changes` (deletions count nothing).
pub fn changes_size(layer: &Path, changes: &[Change]) -> u64 {
    let _ = (layer, changes);
    todo!("archive::changes_size")
}

/// Write a tar of `changes` (read from `layer`), deletions as `.wh.` entries.
pub fn export_changes(layer: &Path, changes: &[Change], out: &mut dyn Write) -> Result<(), ArchiveError> {
    let _ = (layer, changes, out);
    todo!("archive::export_changes")
}
