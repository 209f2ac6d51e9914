//! The store root's exclusive lock: one process per root.
//!
//! A flock on `<root>/layerd.lock`, holding the owner's pid for the error a
//! second process gets. Take it before constructing the driver: a driver's
//! constructor may clean crash leftovers (staging, trash) in its home, which
//! must never happen under a live owner.

use std::fs::{self, File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use graphdriver::IoContext;

use crate::error::{LayerStoreError, Result};

pub const LOCK_FILE: &str = "layerd.lock";

/// Held for as long as the store is open; released on drop (or process exit).
#[derive(Debug)]
pub struct RootLock {
    root: PathBuf,
    _file: File,
}

impl RootLock {
    /// Take the lock on `root` (created if missing), or say who holds it.
    pub fn acquire(root: impl Into<PathBuf>) -> Result<RootLock> {
        let root = root.into();
        fs::create_dir_all(&root).ctx("create root", &root)?;
        let path = root.join(LOCK_FILE);
        let mut f =
            File::options().read(true).write(true).create(true).truncate(false).open(&path).ctx("open", &path)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
                return Err(LayerStoreError::Locked { path, holder: who });
            }
            Err(TryLockError::Error(e)) => return Err(graphdriver::IoError::new("lock", &path, e).into()),
        }
        f.set_len(0).ctx("truncate", &path)?;
        f.seek(SeekFrom::Start(0)).ctx("seek", &path)?;
        write!(f, "{}", std::process::id()).ctx("write", &path)?;
        Ok(RootLock { root, _file: f })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_root_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = RootLock::acquire(dir.path()).unwrap();
        let err = RootLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, LayerStoreError::Locked { .. }));
        assert!(err.to_string().contains(&std::process::id().to_string()), "{err}");
        drop(held);
        RootLock::acquire(dir.path()).unwrap();
    }
}
