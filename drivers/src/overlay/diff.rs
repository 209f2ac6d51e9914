//! The native diff: read a layer's own `diff/` dir without mounting.
//!
//! Valid only when the `parent` asked about is the layer's real parent and
//! the kernel writes plain upper dirs (no redirects, no metacopy) — the
//! driver checks both before calling in here. The work itself is
//! `graphdriver::archive::overlay`; this module adds the layout and the
//! streaming: [`diff`] writes the tar from a thread into a bounded channel,
//! so the caller reads it while it is made and an error mid-way reaches the
//! reader as an io error, never as a silently short tar.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use graphdriver::archive::{self, ApplyOptions, WhiteoutFormat};
use graphdriver::{CacheId, Change, DriverError, IoContext, Result, TarReader};
use nix::mount::MsFlags;

use super::layout::{self, Layout};
use super::mount::{self, PAGE, Stack};

/// Whether `parent` is `id`'s real parent (both `None` for a base layer).
pub fn is_parent(layout: &Layout, id: &CacheId, parent: Option<&CacheId>) -> Result<bool> {
    Ok(layout.parent(id)?.as_deref() == parent.map(CacheId::as_str))
}

/// The layer's changes relative to its parent.
pub fn changes(layout: &Layout, id: &CacheId) -> Result<Vec<Change>> {
    let lowers = layout.lower_dirs(id)?;
    Ok(archive::overlay::changes(&layout.diff(id), &lowers)?)
}

/// Bytes of regular-file content the layer changed relative to its parent.
pub fn size(layout: &Layout, id: &CacheId) -> Result<u64> {
    let lowers = layout.lower_dirs(id)?;
    Ok(archive::overlay::size(&layout.diff(id), &lowers)?)
}

/// The size Docker's overlay2 records for a layer applied natively: its
/// `diff/` dir as `lstat` sees it (moby's `directory.Size`).
pub fn applied_size(layout: &Layout, id: &CacheId) -> Result<u64> {
    Ok(archive::dir_size(&layout.diff(id))?)
}

/// Extract `tar` into the layer's `diff/`, whiteouts as overlay reads them.
/// Returns the tar's size and, when counted exactly while extracting, the
/// [`applied_size`].
pub fn apply(layout: &Layout, id: &CacheId, tar: &mut dyn Read) -> Result<archive::Applied> {
    let opts = ApplyOptions { whiteouts: WhiteoutFormat::Overlay };
    Ok(archive::apply_tar_measured(&layout.diff(id), tar, &opts)?)
}

/// Extract `tar` into `dir` (a merged view), deleting whited-out paths.
pub fn apply_naive(dir: &Path, tar: &mut dyn Read) -> Result<u64> {
    let opts = ApplyOptions { whiteouts: WhiteoutFormat::Remove };
    Ok(archive::apply_tar(dir, tar, &opts)?)
}

/// Apply a diff made against another parent onto the merged view of `id`,
/// through a private writable mount under `tmp/`.
pub fn apply_through_mount(layout: &Layout, prefix: &str, id: &CacheId, tar: &mut dyn Read) -> Result<u64> {
    let lowers = layout.read_lowers(id)?;
    if lowers.is_empty() {
        return apply_naive(&layout.diff(id), tar);
    }
    let stack = Stack { lowers, upper: Some((format!("{id}/diff"), format!("{id}/work"))) };
    let plan = mount::plan(prefix, &stack, &layout.home, "", PAGE).map_err(DriverError::InvalidArgument)?;
    let rel = format!("tmp/{}", layout::unique("apply"));
    let target = layout.home.join(&rel);
    fs::create_dir(&target).ctx("create", &target)?;
    /// Unmounts (if mounted) and removes the apply view however we leave.
    struct Undo(PathBuf);
    impl Drop for Undo {
        fn drop(&mut self) {
            if let Err(e) = mount::unmount(&self.0) {
                tracing::warn!(driver = "overlay", path = %self.0.display(), error = %e, "cannot unmount apply view");
            }
            let _ = fs::remove_dir(&self.0);
        }
    }
    let _undo = Undo(target.clone());
    mount::mount(&layout.home, &rel, &plan, MsFlags::empty()).ctx("mount overlay on", &target)?;
    apply_naive(&target, tar)
}

/// A tar of the layer's `diff/`, streamed from a thread.
pub fn diff(layout: &Layout, id: &CacheId) -> Result<TarReader> {
    let upper = layout.diff(id);
    std::fs::symlink_metadata(&upper).ctx("lstat", &upper)?;
    let (mut w, r) = graphdriver::pipe::pipe(8);
    let writer_upper = upper.clone();
    std::thread::Builder::new()
        .name("overlay-diff".into())
        .spawn(move || match archive::overlay::export(&writer_upper, &mut w) {
            Ok(()) => {
                // An error here is a reader that went away: nobody to tell.
                let _ = w.finish();
            }
            Err(e) => {
                tracing::warn!(driver = "overlay", upper = %writer_upper.display(), error = %e, "native diff failed");
                w.fail(io::Error::other(e.to_string()));
            }
        })
        .ctx("spawn diff thread for", &upper)
        .map_err(DriverError::from)?;
    Ok(Box::new(r))
}
