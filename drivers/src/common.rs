//! What the tree drivers (vfs, btrfs) and overlay share: the blocking-pool
//! helper, staging names, the no-overwrite publish of a staged layer, the
//! storage-option check, the root dir's owner and mode, get/put counting,
//! delete-via-trash, and listing ids. One place, so the drivers agree.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use graphdriver::{CacheId, CreateOpts, DriverError, IoContext, IoError, Result};
use rustix::fs::RenameFlags;

/// The one shape of every driver's host probe (`check.rs`): the facts
/// about a home that decide whether the driver runs there and what
/// `status()` shows. `home` exists, with its scratch dir `home/tmp`; a host
/// the driver cannot run on is [`DriverError::Unsupported`], saying why.
pub trait HostProbe: Sized {
    fn probe(home: &Path) -> Result<Self>;
}

/// Run blocking filesystem work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DriverError::Other(format!("blocking task failed: {e}")))?
}

/// A name no other staging or trash entry has.
pub(crate) fn unique(id: &CacheId) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{id}-{}-{}-{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// These drivers take no storage options: `size` is `Unsupported` (saying
/// why), anything else `InvalidArgument`.
pub(crate) fn reject_storage_opts(driver: &str, opts: &CreateOpts, size_why: &str) -> Result<()> {
    if let Some(key) = opts.storage_opt.keys().next() {
        return Err(match key.as_str() {
            "size" => DriverError::Unsupported { driver: driver.into(), why: size_why.into() },
            _ => DriverError::InvalidArgument(format!("unknown {driver} storage option {key:?}")),
        });
    }
    Ok(())
}

/// A new layer's root: owned by root, mode 0755.
pub(crate) fn make_root(dir: &Path) -> Result<(), IoError> {
    std::os::unix::fs::lchown(dir, Some(0), Some(0))
        .and_then(|()| rustix::fs::chmod(dir, rustix::fs::Mode::from_raw_mode(0o755)).map_err(Into::into))
        .ctx("set owner and mode of", dir)
}

/// Move a staged layer into place; never over an existing one.
pub(crate) fn publish_staged(stage: &Path, target: &Path, id: &CacheId) -> Result<()> {
    match rustix::fs::renameat_with(rustix::fs::CWD, stage, rustix::fs::CWD, target, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
            Err(DriverError::AlreadyExists(id.to_string()))
        }
        Err(e) => Err(IoError::new("rename", stage, e.into()).into()),
    }
}

/// Rename `dir` into `trash` (out of view at once), then delete it with
/// `delete`; a failed delete is only logged: the driver's constructor
/// empties its trash at the next start.
pub(crate) async fn remove_via_trash(
    driver: &'static str,
    id: &CacheId,
    dir: PathBuf,
    trash: PathBuf,
    delete: fn(&Path) -> Result<()>,
) -> Result<()> {
    let t = trash.clone();
    blocking(move || match fs::rename(&dir, &t) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DriverError::NotFound(String::new())),
        Err(e) => Err(IoError::new("rename", &dir, e).into()),
    })
    .await
    .map_err(|e| match e {
        DriverError::NotFound(_) => DriverError::NotFound(id.to_string()),
        e => e,
    })?;
    tracing::debug!(driver, %id, "removed");
    if let Err(e) = blocking(move || delete(&trash)).await {
        tracing::warn!(driver, %id, error = %e, "cannot delete removed layer; retried at next start");
    }
    Ok(())
}

/// The ids of the entries of `dir` that `keep` accepts, sorted; the
/// driver's own dirs (`own`) are skipped; anything else is logged and
/// ignored.
pub(crate) async fn list_ids(
    driver: &'static str,
    dir: PathBuf,
    own: &'static [&'static str],
    keep: fn(&Path) -> Result<bool>,
) -> Result<Vec<CacheId>> {
    blocking(move || {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).ctx("read dir", &dir)? {
            let entry = entry.ctx("read dir", &dir)?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| own.contains(&n)) {
                continue;
            }
            match name.to_str().map(CacheId::parse) {
                Some(Ok(id)) if keep(&entry.path())? => ids.push(id),
                _ => tracing::warn!(driver, name = ?name, dir = %dir.display(), "ignoring a stray entry"),
            }
        }
        ids.sort();
        Ok(ids)
    })
    .await
}

/// `get`/`put` counts per id. The lock guards the map only, never I/O.
#[derive(Debug, Default)]
pub(crate) struct Counts(Mutex<HashMap<CacheId, u32>>);

impl Counts {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<CacheId, u32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn take(&self, id: &CacheId) {
        *self.map().entry(id.clone()).or_insert(0) += 1;
    }

    /// One `put`; a `put` without a `get` is a no-op.
    pub fn release(&self, id: &CacheId) {
        let mut m = self.map();
        if let Some(n) = m.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(id);
            }
        }
    }

    pub fn count(&self, id: &CacheId) -> u32 {
        self.map().get(id).copied().unwrap_or(0)
    }

    pub fn forget(&self, id: &CacheId) {
        self.map().remove(id);
    }
}
