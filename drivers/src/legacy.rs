//! Roots written by earlier layerd versions, which kept the overlay
//! driver under the name `overlay` (`<root>/overlay`,
//! `<root>/image/overlay`) where Docker uses `overlay2`. Opening overlay2
//! moves them, once, by two renames: the metadata first, then the driver's
//! home. Each rename is atomic and the pair is resumable — a crash between
//! them leaves `overlay/` beside `image/overlay2/`, which the next start
//! completes — so no state is ever half-moved. The daemon runs this under
//! the root's exclusive lock.
//!
//! Docker's own legacy `overlay` driver also lives in `<root>/overlay`, in
//! another layout (`<id>/root`, `lower-id`; no `l/` dir). Only a home in
//! overlay2's layout (with `l/`) is moved; Docker's is left alone.

use std::fs;
use std::io;
use std::path::Path;

use graphdriver::{DriverError, IoContext, Result};

/// Move an earlier layerd's `overlay` dirs to `overlay2`. Returns whether
/// anything moved. Both names holding state is a conflict the user settles.
pub fn migrate_overlay(root: &Path) -> Result<bool> {
    let old_home = root.join("overlay");
    if !old_home.join("l").is_dir() {
        return Ok(false);
    }
    let image = root.join("image");
    let pairs = [(image.join("overlay"), image.join("overlay2")), (old_home.clone(), root.join("overlay2"))];
    for (from, to) in &pairs {
        if from.exists() && occupied(to)? {
            return Err(DriverError::InvalidArgument(format!(
                "{} (written by an earlier layerd) and {} both exist; move one of them away",
                from.display(),
                to.display()
            )));
        }
    }
    crate::overlay::Overlay::unmount_all_under(&old_home)?;
    let mut moved = false;
    for (from, to) in &pairs {
        if !from.exists() {
            continue;
        }
        // rename(2) replaces an empty directory atomically.
        fs::rename(from, to).ctx("rename to overlay2", from)?;
        let parent = to.parent().unwrap_or(root);
        fs::File::open(parent).and_then(|d| d.sync_all()).ctx("sync", parent)?;
        tracing::info!(from = %from.display(), to = %to.display(), "migrated a dir of the overlay driver to Docker's name, overlay2");
        moved = true;
    }
    Ok(moved)
}

/// `path` exists and is not an empty directory.
fn occupied(path: &Path) -> Result<bool> {
    match fs::read_dir(path) {
        Ok(mut d) => Ok(d.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(true),
        Err(e) => Err(graphdriver::IoError::new("read dir", path, e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layerd_overlay_root(root: &Path) {
        fs::create_dir_all(root.join("overlay/l")).unwrap();
        fs::create_dir_all(root.join("overlay/abc/diff")).unwrap();
        fs::write(root.join("overlay/abc/diff/f"), "x").unwrap();
        fs::create_dir_all(root.join("image/overlay/layerdb/sha256/0123")).unwrap();
    }

    #[test]
    fn an_earlier_layerd_root_moves_once_and_resumes_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        layerd_overlay_root(root);
        assert!(migrate_overlay(root).unwrap());
        assert_eq!(fs::read_to_string(root.join("overlay2/abc/diff/f")).unwrap(), "x");
        assert!(root.join("image/overlay2/layerdb/sha256/0123").is_dir());
        assert!(!root.join("overlay").exists() && !root.join("image/overlay").exists());
        assert!(!migrate_overlay(root).unwrap(), "a second start has nothing to do");

        // A crash after the first rename: the next start completes it.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        layerd_overlay_root(root);
        fs::rename(root.join("image/overlay"), root.join("image/overlay2")).unwrap();
        fs::create_dir(root.join("overlay2")).unwrap(); // an empty one is replaced
        assert!(migrate_overlay(root).unwrap());
        assert!(root.join("overlay2/abc/diff/f").is_file() && !root.join("overlay").exists());
    }

    #[test]
    fn docker_legacy_overlay_is_left_alone_and_two_homes_conflict() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("overlay/0123/root")).unwrap();
        assert!(!migrate_overlay(dir.path()).unwrap());
        assert!(dir.path().join("overlay/0123/root").is_dir());

        let dir = tempfile::tempdir().unwrap();
        layerd_overlay_root(dir.path());
        fs::create_dir_all(dir.path().join("overlay2/l")).unwrap();
        let err = migrate_overlay(dir.path()).unwrap_err();
        assert!(err.to_string().contains("both exist"), "{err}");
        assert!(dir.path().join("overlay/abc/diff/f").is_file(), "nothing moved");
        assert!(dir.path().join("image/overlay/layerdb").is_dir(), "nothing moved");
    }
}
