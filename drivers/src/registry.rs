//! Driver selection by name, as `layerd --driver NAME` does it, and the
//! automatic choice `layerd` makes by default. Each driver's home is
//! `<root>/<name>` and its layer metadata `<root>/image/<name>/layerdb`
//! (moby's layout), under Docker's names, so a Docker root opens as is and
//! a root layerd filled opens in dockerd.

use std::path::Path;
use std::sync::Arc;

use graphdriver::{Driver, DriverError, Result};

use crate::legacy;

use crate::kind::DriverKind;

/// Docker drivers layerd does not implement. A root holding one of them is
/// refused by the automatic choice rather than given a second driver.
const FOREIGN: &[&str] = &["overlay", "aufs", "devicemapper", "zfs", "fuse-overlayfs", "windowsfilter"];

/// The built-in driver `name` stands for (itself or through an alias), by
/// its Docker name ([`DriverKind::builtin`]).
pub fn canonical(name: &str) -> Option<&'static str> {
    DriverKind::builtin(name).and_then(|k| k.builtin_name())
}

/// Open the named built-in driver (or alias) with its home under `root`.
/// Opening overlay2 first moves the dirs an earlier layerd wrote under the
/// name `overlay` to `overlay2` (see [`legacy`]).
pub fn open(name: &str, root: &Path) -> Result<Arc<dyn Driver>> {
    let Some(name) = canonical(name) else {
        return Err(DriverError::Unsupported {
            driver: name.to_string(),
            why: format!("no such driver; built in: {} (overlay is an alias of overlay2)", DriverKind::builtin_list()),
        });
    };
    if name == "overlay2" {
        legacy::migrate_overlay(root)?;
    }
    let home = root.join(name);
    match name {
        "vfs" => Ok(Arc::new(crate::vfs::Vfs::new(home)?)),
        "overlay2" => Ok(Arc::new(crate::overlay::Overlay::new(home)?)),
        _ => Ok(Arc::new(crate::btrfs::Btrfs::new(home)?)),
    }
}

fn has_entries(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false)
}

/// Whether `root` holds state of the driver `name`: its home
/// (`<root>/<name>`) is not empty — dockerd's rule — or its layerdb
/// (`<root>/image/<name>/layerdb/{sha256,mounts}`) has entries.
fn holds(root: &Path, name: &str) -> bool {
    let db = root.join("image").join(name).join("layerdb");
    has_entries(&root.join(name)) || has_entries(&db.join("sha256")) || has_entries(&db.join("mounts"))
}

/// Built-in drivers that already hold state under `root`.
pub fn prior_drivers(root: &Path) -> Vec<&'static str> {
    DriverKind::BUILTIN.iter().filter_map(DriverKind::builtin_name).filter(|name| holds(root, name)).collect()
}

/// Choose a driver the way dockerd does: the one whose state is already in
/// `root` (several, or a Docker driver layerd lacks: refuse, saying which);
/// otherwise the first of [`DriverKind::PRIORITY`] this host supports. A driver tried
/// and passed over leaves no dirs behind, so the root never holds two
/// drivers' dirs. Returns the name, the driver, and why the drivers tried
/// before it were passed over.
pub fn select(root: &Path) -> Result<(&'static str, Arc<dyn Driver>, Vec<String>)> {
    legacy::migrate_overlay(root)?;
    let foreign: Vec<&str> = FOREIGN.iter().copied().filter(|name| holds(root, name)).collect();
    if let Some(name) = foreign.first() {
        return Err(DriverError::Unsupported {
            driver: (*name).to_string(),
            why: format!("{} holds layers of Docker's {name} driver, which layerd does not implement", root.display()),
        });
    }
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
    for name in DriverKind::PRIORITY.iter().filter_map(DriverKind::builtin_name) {
        let home = root.join(name);
        let existed = home.exists();
        match open(name, root) {
            Ok(d) => return Ok((name, d, passed)),
            Err(e @ DriverError::Unsupported { .. }) => {
                if !existed {
                    let _ = std::fs::remove_dir_all(&home);
                }
                passed.push(e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    Err(DriverError::Unsupported { driver: "any".into(), why: passed.join("; ") })
}

/// Open the named built-in driver with its home exactly at `home` (a plugin
/// server is told its home by dockerd's `Init`; no `<name>` is appended).
pub fn open_in(name: &str, home: &Path) -> Result<Arc<dyn Driver>> {
    match DriverKind::builtin(name) {
        Some(DriverKind::Vfs) => Ok(Arc::new(crate::vfs::Vfs::new(home)?)),
        Some(DriverKind::Overlay2) => Ok(Arc::new(crate::overlay::Overlay::new(home)?)),
        Some(DriverKind::Btrfs) => Ok(Arc::new(crate::btrfs::Btrfs::new(home)?)),
        _ => Err(DriverError::Unsupported {
            driver: name.to_string(),
            why: format!("no such driver; built in: {}", DriverKind::builtin_list()),
        }),
    }
}

/// The automatic choice for a driver whose home is `home` itself: the
/// driver whose layout the home already holds (vfs `dir/`, btrfs
/// `subvolumes/`, overlay `l/`), else the first of [`DriverKind::PRIORITY`] this host
/// supports. Returns the name and the driver.
pub fn select_in(home: &Path) -> Result<(&'static str, Arc<dyn Driver>)> {
    for (name, marker) in [("vfs", "dir"), ("btrfs", "subvolumes"), ("overlay2", "l")] {
        if home.join(marker).is_dir() {
            return open_in(name, home).map(|d| (name, d));
        }
    }
    let mut passed = Vec::new();
    for name in DriverKind::PRIORITY.iter().filter_map(DriverKind::builtin_name) {
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
        std::fs::create_dir_all(dir.path().join("image/overlay2/layerdb/mounts/x")).unwrap();
        let err = select(dir.path()).err().unwrap().to_string();
        assert!(err.contains("several drivers") && err.contains("--driver"), "{err}");
    }

    #[test]
    fn a_docker_root_is_recognised_by_its_driver_home() {
        // A fresh dockerd root: overlay2's `l/` and an empty layerdb.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("overlay2/l")).unwrap();
        std::fs::create_dir_all(dir.path().join("image/overlay2/layerdb/sha256")).unwrap();
        assert_eq!(prior_drivers(dir.path()), vec!["overlay2"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("btrfs/subvolumes")).unwrap();
        assert_eq!(prior_drivers(dir.path()), vec!["btrfs"]);
        // Docker's legacy overlay (no `l/`) and aufs are named, not joined.
        for (made, named) in [("overlay/0123/root", "overlay"), ("aufs/diff/x", "aufs")] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join(made)).unwrap();
            let err = select(dir.path()).err().unwrap();
            assert!(matches!(err, DriverError::Unsupported { .. }), "{err}");
            assert!(err.to_string().contains(&format!("Docker's {named} driver")), "{err}");
            assert!(!dir.path().join("overlay2").exists() && !dir.path().join("vfs").exists());
        }
    }

    #[test]
    fn aliases_and_unknown_names() {
        assert_eq!(canonical("overlay"), Some("overlay2"));
        assert_eq!(canonical("overlay2"), Some("overlay2"));
        assert_eq!(canonical("vfs"), Some("vfs"));
        assert_eq!(canonical("zfs"), None);
        let dir = tempfile::tempdir().unwrap();
        let err = open("zfs", dir.path()).err().unwrap();
        assert!(matches!(err, DriverError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn a_fresh_root_gets_overlay2_here_and_btrfs_says_why_not() {
        // This machine (root, ext4, overlayfs) supports overlay2: it wins.
        let dir = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
        let (name, d, passed) = select(dir.path()).unwrap();
        assert_eq!((name, d.name()), ("overlay2", "overlay2"));
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
