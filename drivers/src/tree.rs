//! The tree-driver core: everything a driver whose every layer is a whole
//! directory tree (vfs: a copy; btrfs: a subvolume snapshot) does the same
//! way, written once. A backend ([`TreeBackend`]) says only how one layer
//! tree is made, told apart and destroyed; [`TreeDriver`] owns the layout,
//! the bookkeeping and the [`Driver`] contract — as containerd's
//! snapshotters sit on one metadata store.
//!
//! Layout (moby's, plus crash-safety dirs): `<home>/<layers>/<id>/` holds
//! each layer's whole tree (`<layers>` is the backend's: `dir` for vfs,
//! `subvolumes` for btrfs); `<home>/staging/` is where a layer is built
//! before one `RENAME_NOREPLACE` makes it visible, so a failed or crashed
//! `create` leaves nothing at `<layers>/<id>`; `<home>/trash/` is where
//! `remove` renames a layer before destroying it; `<home>/tmp/` is the naive
//! diff's scratch space. `staging/` and `trash/` hold only crash leftovers
//! when the driver starts, and [`TreeDriver::open`] destroys them.
//!
//! `get` mounts nothing: the layer dir is the tree, so `get` only counts,
//! `cleanup` has nothing to undo, and the layer dir is also the
//! [`Driver::diff_getter`] directory. Diffs are the naive defaults.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use graphdriver::{CacheId, Capabilities, CreateOpts, Driver, DriverError, IoContext, IoError, Result};

use crate::common::{Counts, blocking, list_ids, publish_staged, reject_storage_opts, remove_via_trash, unique};

/// How one kind of tree driver stores a layer. Every method but `status`
/// and `metadata` runs on the blocking pool.
pub trait TreeBackend: Send + Sync + std::fmt::Debug + 'static {
    /// The driver's name (Docker's).
    const NAME: &'static str;
    /// The dir under the home holding one tree per layer.
    const LAYERS: &'static str;
    /// Why `size` is not supported.
    const SIZE_WHY: &'static str;

    /// Whether `md` (from `lstat` of a layer path) is a layer tree.
    fn is_layer(md: &fs::Metadata) -> bool;
    /// Make an empty layer at `stage` (absent): root dir 0755 root:root.
    fn make_empty(stage: &Path) -> Result<(), IoError>;
    /// Make a layer at `stage` (absent) holding the tree of the layer at `src`.
    fn make_child(src: &Path, stage: &Path) -> Result<(), IoError>;
    /// Destroy a layer tree (a removed layer, a failed or leftover stage);
    /// a missing path is not an error.
    fn destroy(path: &Path) -> Result<(), IoError>;
    /// `status()` pairs.
    fn status(&self) -> Vec<(String, String)>;
    /// Backend-specific `metadata()` pairs of the layer at `dir`.
    fn metadata(_dir: &Path) -> Result<BTreeMap<String, String>, IoError> {
        Ok(BTreeMap::new())
    }
}

/// A driver whose layers are whole trees, made by backend `B`.
#[derive(Debug)]
pub struct TreeDriver<B: TreeBackend> {
    pub(crate) home: PathBuf,
    /// `get` counts per layer. Never held across I/O.
    refs: Counts,
    pub(crate) backend: B,
}

impl<B: TreeBackend> TreeDriver<B> {
    /// Open (creating if needed) the driver's dirs at `home`, destroying
    /// crash leftovers in `staging/` and `trash/`, then make the backend
    /// (which may probe the dirs). A backend that must refuse a host checks
    /// before calling this, so a refused home gets no dirs.
    pub fn open(home: PathBuf, backend: impl FnOnce(&Path) -> Result<B>) -> Result<Self> {
        for sub in ["", B::LAYERS, "staging", "trash", "tmp"] {
            let p = home.join(sub);
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&p).ctx("create", &p)?;
        }
        for sub in ["staging", "trash"] {
            let p = home.join(sub);
            for entry in fs::read_dir(&p).ctx("read dir", &p)? {
                let leftover = entry.ctx("read dir", &p)?.path();
                tracing::info!(driver = B::NAME, path = %leftover.display(), "destroying crash leftover");
                // Leftovers have unique names and block nothing; one that
                // cannot go now is retried at the next start.
                if let Err(e) = B::destroy(&leftover) {
                    tracing::warn!(driver = B::NAME, error = %e, "cannot destroy crash leftover; retried at next start");
                }
            }
        }
        let backend = backend(&home)?;
        Ok(TreeDriver { home, refs: Counts::default(), backend })
    }

    fn layer_dir(&self, id: &CacheId) -> PathBuf {
        self.home.join(B::LAYERS).join(id.as_str())
    }

    /// The layer dir, or `NotFound`.
    async fn existing(&self, id: &CacheId) -> Result<PathBuf> {
        let dir = self.layer_dir(id);
        match tokio::fs::symlink_metadata(&dir).await {
            Ok(md) if B::is_layer(&md) => Ok(dir),
            Ok(_) => Err(DriverError::NotFound(id.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DriverError::NotFound(id.to_string())),
            Err(e) => Err(IoError::new("stat", dir, e).into()),
        }
    }

    async fn create_layer(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        reject_storage_opts(B::NAME, opts, B::SIZE_WHY)?;
        let home = self.home.clone();
        let (id, parent) = (id.clone(), parent.cloned());
        tracing::debug!(driver = B::NAME, %id, parent = ?parent.as_ref().map(CacheId::as_str), "create");
        blocking(move || create_blocking::<B>(&home, &id, parent.as_ref())).await
    }
}

fn is_layer_path<B: TreeBackend>(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(B::is_layer(&md)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(IoError::new("stat", path, e).into()),
    }
}

fn create_blocking<B: TreeBackend>(home: &Path, id: &CacheId, parent: Option<&CacheId>) -> Result<()> {
    let target = home.join(B::LAYERS).join(id.as_str());
    if fs::symlink_metadata(&target).is_ok() {
        return Err(DriverError::AlreadyExists(id.to_string()));
    }
    let src = match parent {
        Some(p) => {
            let src = home.join(B::LAYERS).join(p.as_str());
            if !is_layer_path::<B>(&src)? {
                return Err(DriverError::NotFound(p.to_string()));
            }
            Some(src)
        }
        None => None,
    };
    let stage = home.join("staging").join(unique(id));
    let built = match &src {
        Some(src) => B::make_child(src, &stage),
        None => B::make_empty(&stage),
    };
    let res = built.map_err(DriverError::from).and_then(|()| publish_staged(&stage, &target, id));
    if res.is_err()
        && let Err(e) = B::destroy(&stage)
    {
        tracing::warn!(driver = B::NAME, error = %e, "cannot clean up a failed create; destroyed at next start");
    }
    res
}

fn destroy_layer<B: TreeBackend>(path: &Path) -> Result<()> {
    Ok(B::destroy(path)?)
}

#[async_trait]
impl<B: TreeBackend> Driver for TreeDriver<B> {
    fn name(&self) -> &str {
        B::NAME
    }

    async fn create(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        self.create_layer(id, parent, opts).await
    }

    async fn create_rw(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        self.create_layer(id, parent, opts).await
    }

    async fn remove(&self, id: &CacheId) -> Result<()> {
        let dir = self.existing(id).await?;
        let trash = self.home.join("trash").join(unique(id));
        remove_via_trash(B::NAME, id, dir, trash, destroy_layer::<B>).await?;
        self.refs.forget(id);
        Ok(())
    }

    async fn get(&self, id: &CacheId, _mount_label: &str) -> Result<PathBuf> {
        let dir = self.existing(id).await?;
        self.refs.take(id);
        Ok(dir)
    }

    async fn put(&self, id: &CacheId) -> Result<()> {
        self.existing(id).await?;
        self.refs.release(id);
        Ok(())
    }

    async fn exists(&self, id: &CacheId) -> bool {
        self.existing(id).await.is_ok()
    }

    async fn status(&self) -> Vec<(String, String)> {
        self.backend.status()
    }

    async fn metadata(&self, id: &CacheId) -> Result<BTreeMap<String, String>> {
        let dir = self.existing(id).await?;
        let mut meta = BTreeMap::from([
            ("dir".to_string(), dir.display().to_string()),
            ("refs".to_string(), self.refs.count(id).to_string()),
        ]);
        let d = dir.clone();
        meta.extend(blocking(move || Ok(B::metadata(&d)?)).await?);
        Ok(meta)
    }

    /// Nothing to undo: a tree driver never mounts anything.
    async fn cleanup(&self) -> Result<()> {
        Ok(())
    }

    async fn ids(&self) -> Result<Vec<CacheId>> {
        list_ids(B::NAME, self.home.join(B::LAYERS), &[], is_layer_path::<B>).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { native_diff: false, diff_getter: true }
    }

    async fn diff_getter(&self, id: &CacheId) -> Result<Option<PathBuf>> {
        Ok(Some(self.existing(id).await?))
    }

    fn scratch_dir(&self) -> PathBuf {
        self.home.join("tmp")
    }
}
