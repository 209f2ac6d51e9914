//! The [`Driver`] trait. Its doc comment is the specification every driver —
//! built in or out of process — is held to by the conformance suite.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::id::CacheId;
use crate::naive;

/// A tar stream handed to or returned by a driver (uncompressed, AUFS whiteouts).
pub type TarReader = Box<dyn Read + Send>;

/// Options for [`Driver::create`] and [`Driver::create_rw`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOpts {
    /// SELinux mount label; drivers that don't label ignore it.
    #[serde(default)]
    pub mount_label: String,
    /// Driver-specific options (`size`, ...). Unknown keys are an
    /// [`InvalidArgument`](crate::DriverError::InvalidArgument).
    #[serde(default)]
    pub storage_opt: BTreeMap<String, String>,
}

/// What a driver can do beyond the required core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `diff`/`changes`/`apply_diff` are native (read the layer's own upper
    /// dir) rather than the naive compare-two-trees defaults.
    pub native_diff: bool,
    /// [`Driver::diff_getter`] returns a directory of the layer's own files.
    pub diff_getter: bool,
}

/// One entry of a [`Driver::changes`] listing: `path` is absolute inside the
/// layer (`/etc/passwd`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Modify,
    Add,
    Delete,
}

/// A graph driver: stores layers as directory trees, each identified by a
/// [`CacheId`] and optionally stacked on a parent.
///
/// # Vocabulary
/// - **layer**: a directory tree owned by the driver, named by a `CacheId`.
///   A *read-only* layer is made by [`create`](Driver::create) and filled once
///   by [`apply_diff`](Driver::apply_diff); a *read-write* layer
///   ([`create_rw`](Driver::create_rw)) is a container's writable layer.
/// - **parent**: the layer a new layer starts as a copy/snapshot/overlay of.
///   Its contents are visible through the child; the parent is never changed
///   through the child.
/// - **diff**: the difference between a layer and its parent, as an
///   uncompressed tar with AUFS whiteouts (`.wh.<name>` deletes `<name>`,
///   `.wh..wh..opq` in a directory hides everything below it in lower layers).
///
/// # Lifecycle
/// `create`/`create_rw` → (`get` → use the path → `put`)* →
/// `diff`/`changes`/`apply_diff`/`diff_size` → `remove`.
///
/// # Per-method contract
/// - `create(id, parent)`: `id` must not exist (else `AlreadyExists`); `parent`,
///   if given, must exist (else `NotFound`). The new layer's root is a
///   directory, mode 0755, owned by root, containing the parent's tree.
/// - `create_rw`: the same, for a writable layer.
/// - `remove(id)`: deletes the layer. Removing an id that does not exist is
///   `NotFound`. Removing a layer while it is mounted unmounts it first.
///   A driver may defer the physical deletion (rename into a trash dir), but
///   once `remove` returns, `exists(id)` is false and `id` may be created anew.
/// - `get(id)`: makes the layer's merged tree available and returns its
///   absolute path. Calls are counted: every `get` must be matched by a `put`;
///   a second `get` returns the same path. Unknown id: `NotFound`.
/// - `put(id)`: releases one `get`. The tree is unmounted when the count drops
///   to zero. `put` without a matching `get` is a no-op success (idempotent),
///   `put` of an unknown id is `NotFound`.
/// - `exists(id)`: whether the layer exists. Never fails.
/// - `status`/`metadata`: diagnostic key/value pairs (backing fs, native diff,
///   lower dirs, ...). `metadata` of an unknown id is `NotFound`.
/// - `cleanup()`: undo every mount the driver made; called at shutdown and
///   safe to call at any time. Layers are kept.
/// - `ids()`: every layer id the driver holds, for start-up reconciliation.
/// - `diff(id, parent)`: tar of the changes of `id` relative to `parent`
///   (`None`: the whole tree).
/// - `changes(id, parent)`: the paths added, modified or deleted, sorted.
/// - `apply_diff(id, parent, tar)`: extracts `tar` into `id`, honouring
///   whiteouts; returns the size Docker's driver of the same kind records
///   for the layer (the store writes it to `size`): a naive apply reports
///   the tar's member sizes ([`archive::apply_tar`](crate::archive::apply_tar)),
///   overlay2's native apply the applied dir as `lstat` sees it
///   ([`archive::dir_size`](crate::archive::dir_size)). The tar
///   is hostile: nothing is written outside the layer, `..`, absolute paths,
///   and link escapes are rejected with `InvalidArgument`.
/// - `diff_size(id, parent)`: bytes of content changed relative to `parent`.
///
/// All methods may be called concurrently for *different* ids. For one id,
/// `get`/`put` may be called concurrently; the layer store serialises
/// everything else per id. Blocking filesystem work runs on tokio's blocking
/// pool, never on a runtime worker.
///
/// A driver that cannot run on this host fails its constructor with
/// [`DriverError::Unsupported`](crate::DriverError::Unsupported), saying why.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The driver's name, Docker's for the same driver (`vfs`, `overlay2`,
    /// `btrfs`, `plugin:NAME`): the store keeps its metadata in
    /// `<root>/image/<name>/layerdb`.
    fn name(&self) -> &str;

    async fn create(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()>;
    async fn create_rw(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()>;
    async fn remove(&self, id: &CacheId) -> Result<()>;
    async fn get(&self, id: &CacheId, mount_label: &str) -> Result<PathBuf>;
    async fn put(&self, id: &CacheId) -> Result<()>;
    async fn exists(&self, id: &CacheId) -> bool;
    async fn status(&self) -> Vec<(String, String)>;
    async fn metadata(&self, id: &CacheId) -> Result<BTreeMap<String, String>>;
    async fn cleanup(&self) -> Result<()>;
    async fn ids(&self) -> Result<Vec<CacheId>>;

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// A directory holding this layer's own files under their tar paths,
    /// readable without a mount (overlay: `<id>/diff`; vfs: the layer dir).
    /// `None`: the caller must `get`/`put` instead.
    async fn diff_getter(&self, _id: &CacheId) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    /// Where the naive diff may put scratch files; must not be a tmpfs for
    /// large layers. Defaults to the system temp dir.
    fn scratch_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }

    async fn diff(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<TarReader> {
        naive::diff(self, id, parent).await
    }

    async fn changes(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<Vec<Change>> {
        naive::changes(self, id, parent).await
    }

    async fn apply_diff(&self, id: &CacheId, parent: Option<&CacheId>, diff: TarReader) -> Result<u64> {
        naive::apply_diff(self, id, parent, diff).await
    }

    async fn diff_size(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<u64> {
        naive::diff_size(self, id, parent).await
    }
}
