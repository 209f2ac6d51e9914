//! A probe of the store's root lock, held while the driver is constructed.
//!
//! Why: a driver's constructor may clean up crash leftovers in its home (vfs
//! empties `staging/` and `trash/`), and the driver must exist before
//! [`layer::Store::open`] can take the root lock. Without this probe a second
//! daemon on a live root would delete the first one's in-flight staging dirs
//! before the store refused it. The probe takes the same flock the store
//! takes, on the same file, and is dropped right before `Store::open`, which
//! then takes it for good; a daemon that loses the race fails in `Store::open`
//! with nothing destroyed, as the live daemon's work is created only after its
//! own `Store::open`.

use std::fs::{self, File, TryLockError};
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use layer::LayerStoreError;

/// The file `layer::Store::open` locks (`<root>/layerd.lock`).
pub const STORE_LOCK_FILE: &str = "layerd.lock";

/// Holds the root's lock until dropped.
#[derive(Debug)]
pub struct RootProbe {
    _file: File,
}

/// Take the root's lock, or fail with the store's own "locked" error.
pub fn probe_root(root: &Path) -> anyhow::Result<RootProbe> {
    fs::create_dir_all(root).with_context(|| format!("create root {}", root.display()))?;
    let path = root.join(STORE_LOCK_FILE);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(RootProbe { _file: file }),
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
            Err(LayerStoreError::Locked { path, holder }.into())
        }
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("lock {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_root_is_refused_with_the_store_message() {
        let dir = tempfile::tempdir().unwrap();
        let held = probe_root(dir.path()).unwrap();
        let msg = probe_root(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("is locked by another process"), "{msg}");
        drop(held);
        probe_root(dir.path()).unwrap();
    }
}
