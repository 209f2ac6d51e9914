//! Driver selection by name, as `layerd --driver NAME` does it, and the
//! automatic choice `layerd` makes by default. Each driver's home is
//! `<root>/<name>` (moby's layout).

use std::path::Path;
use std::sync::Arc;

use graphdriver::{Driver, DriverError, Result};

/// The built-in drivers, in the order `layerd` documents them.
pub const BUILTIN: &[&str] = &["vfs", "overlay", "btrfs"];

/// The order the automatic choice tries them in (dockerd's: overlay first;
/// btrfs only works on a btrfs root, and says so; vfs always works).
pub const PRIORITY: &[&str] = &["overlay", "btrfs", "vfs"];

/// Open the named built-in driver with its home under `root`.
pub fn open(name: &str, root: &Path) -> Result<Arc<dyn Driver>> {
    let home = root.join(name);
    match name {
        "vfs" => Ok(Arc::new(crate::vfs::Vfs::new(home)?)),
        "overlay" => Ok(Arc::new(crate::overlay::Overlay::new(home)?)),
        "btrfs" => Ok(Arc::new(crate::btrfs::Btrfs::new(home)?)),
        other => Err(DriverError::Unsupported {
            driver: other.to_string(),
            why: format!("no such driver; built in: {}", BUILTIN.join(", ")),
        }),
    }
}

/// Drivers that already hold layers or RW layers under `root`
/// (`<root>/image/<name>/layerdb/{sha256,mounts}` not empty).
pub fn prior_drivers(root: &Path) -> Vec<&'static str> {
    let has_entries = |p: &Path| std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false);
    BUILTIN
        .iter()
        .copied()
        .filter(|name| {
            let db = root.join("image").join(name).join("layerdb");
            has_entries(&db.join("sha256")) || has_entries(&db.join("mounts"))
        })
        .collect()
}

/// Choose a driver the way dockerd does: the one whose layers are already in
/// `root` (several: refuse, the user must pick); otherwise the first of
/// [`PRIORITY`] this host supports. Returns the name, the driver, and why the
/// drivers tried before it were passed over.
pub fn select(root: &Path) -> Result<(&'static str, Arc<dyn Driver>, Vec<String>)> {
    match prior_drivers(root).as_slice() {
        [one] => return open(one, root).map(|d| (*one, d, Vec::new())),
        [] => {}
        several => {
            return Err(DriverError::InvalidArgument(format!(
                "{} holds layers of several drivers ({}); choose one with --driver",
                root.display(),
                several.join(", ")
            )));
        }
    }
    let mut passed = Vec::new();
    for name in PRIORITY {
        match open(name, root) {
            Ok(d) => return Ok((name, d, passed)),
            Err(e @ DriverError::Unsupported { .. }) => passed.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Err(DriverError::Unsupported { driver: "any".into(), why: passed.join("; ") })
}

/// Open the named built-in driver with its home exactly at `home` (a plugin
/// server is told its home by dockerd's `Init`; no `<name>` is appended).
pub fn open_in(name: &str, home: &Path) -> Result<Arc<dyn Driver>> {
    match name {
        "vfs" => Ok(Arc::new(crate::vfs::Vfs::new(home)?)),
        "overlay" | "overlay2" => Ok(Arc::new(crate::overlay::Overlay::new(home)?)),
        "btrfs" => Ok(Arc::new(crate::btrfs::Btrfs::new(home)?)),
        other => Err(DriverError::Unsupported {
            driver: other.to_string(),
            why: format!("no such driver; built in: {}", BUILTIN.join(", ")),
        }),
    }
}

/// The automatic choice for a driver whose home is `home` itself: the
/// driver whose layout the home already holds (vfs `dir/`, btrfs
/// `subvolumes/`, overlay `l/`), else the first of [`PRIORITY`] this host
/// supports. Returns the name and the driver.
pub fn select_in(home: &Path) -> Result<(&'static str, Arc<dyn Driver>)> {
    for (name, marker) in [("vfs", "dir"), ("btrfs", "subvolumes"), ("overlay", "l")] {
        if home.join(marker).is_dir() {
            return open_in(name, home).map(|d| (name, d));
        }
    }
    let mut passed = Vec::new();
    for name in PRIORITY {
        match open_in(name, home) {
            Ok(d) => return Ok((name, d)),
            Err(e @ DriverError::Unsupported { .. }) => passed.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Err(DriverError::Unsupported { driver: "any".into(), why: passed.join("; ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_with_layers_of_one_driver_keeps_that_driver() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("image/vfs/layerdb/sha256/abc")).unwrap();
        assert_eq!(prior_drivers(dir.path()), vec!["vfs"]);
        let (name, d, _) = select(dir.path()).unwrap();
        assert_eq!((name, d.name()), ("vfs", "vfs"));
    }

    #[test]
    fn a_root_with_layers_of_several_drivers_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("image/vfs/layerdb/sha256/abc")).unwrap();
        std::fs::create_dir_all(dir.path().join("image/overlay/layerdb/mounts/x")).unwrap();
        let err = select(dir.path()).err().unwrap().to_string();
        assert!(err.contains("several drivers") && err.contains("--driver"), "{err}");
    }

    #[test]
    fn a_fresh_root_gets_overlay_here_and_btrfs_says_why_not() {
        // This machine (root, ext4, overlayfs) supports overlay: it wins.
        let dir = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
        let (name, d, passed) = select(dir.path()).unwrap();
        assert_eq!(name, "overlay");
        assert!(passed.is_empty());
        let _ = futures_block(d.cleanup());
        // btrfs on a non-btrfs root is a typed "unsupported, because".
        let err = open("btrfs", dir.path()).err().unwrap();
        assert!(matches!(err, DriverError::Unsupported { .. }), "{err}");
    }

    fn futures_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }
}
