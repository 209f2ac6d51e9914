//! The layer store. See the crate docs for the locking rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use graphdriver::{Change, Driver, TarReader};

use crate::digest::ChainId;
use crate::error::Result;
use crate::name::RwName;
use crate::types::{LayerInfo, RegisterOpts, RwInfo, StoreInfo};

/// Options of [`Store::create_rw`].
#[derive(Default)]
pub struct RwOpts {
    /// Create an `-init` layer between the parent and the RW layer.
    pub init: bool,
    /// Called with the init layer's mounted root to populate it (Docker's
    /// `InitFunc`). Without it an init layer is left empty.
    pub init_fn: Option<Box<dyn FnOnce(&Path) -> std::io::Result<()> + Send>>,
    pub mount_label: String,
}

/// A handle to an open layer store. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<()>,
    _driver: Arc<dyn Driver>,
}

#[allow(unused_variables, clippy::unused_async)]
impl Store {
    /// Open (or create) the store under `root` for `driver`, reconciling what
    /// a crash may have left behind.
    pub async fn open(root: impl Into<PathBuf>, driver: Arc<dyn Driver>) -> Result<Store> {
        todo!()
    }

    /// Register a tar (plain, gzip or zstd) on top of `opts.parent`. Returns
    /// the layer with one new reference held by the caller.
    pub async fn register(&self, tar: TarReader, opts: RegisterOpts) -> Result<LayerInfo> {
        todo!()
    }

    /// Inspect a layer. Takes no reference.
    pub fn get(&self, chain_id: &ChainId) -> Result<LayerInfo> {
        todo!()
    }

    /// Take a new reference on an existing layer.
    pub async fn retain(&self, chain_id: &ChainId) -> Result<LayerInfo> {
        todo!()
    }

    /// A snapshot of every layer. Takes no references.
    pub fn list(&self) -> Vec<LayerInfo> {
        todo!()
    }

    /// Drop one reference. A layer left with no references, children or RW
    /// layers is deleted, and its parent loses the child's reference, so one
    /// release can free a whole chain. Returns the deleted layers.
    pub async fn release(&self, chain_id: &ChainId) -> Result<Vec<ChainId>> {
        todo!()
    }

    /// The layer's exact original tar bytes, verified against its DiffID.
    pub async fn tar_stream(&self, chain_id: &ChainId) -> Result<TarReader> {
        todo!()
    }

    pub async fn create_rw(&self, name: &RwName, parent: Option<&ChainId>, opts: RwOpts) -> Result<RwInfo> {
        todo!()
    }

    pub fn get_rw(&self, name: &RwName) -> Result<RwInfo> {
        todo!()
    }

    pub fn list_rw(&self) -> Vec<RwInfo> {
        todo!()
    }

    /// Mount the RW layer (counted); returns the path of its merged tree.
    pub async fn mount(&self, name: &RwName) -> Result<PathBuf> {
        todo!()
    }

    pub async fn unmount(&self, name: &RwName) -> Result<()> {
        todo!()
    }

    pub async fn changes(&self, name: &RwName) -> Result<Vec<Change>> {
        todo!()
    }

    /// Tar of the RW layer's changes (init layer changes excluded).
    pub async fn diff(&self, name: &RwName) -> Result<TarReader> {
        todo!()
    }

    /// Register the RW layer's diff as a new layer on top of its parent.
    pub async fn commit(&self, name: &RwName) -> Result<LayerInfo> {
        todo!()
    }

    /// Remove the RW layer (unmounting it if needed) and release its parent.
    pub async fn release_rw(&self, name: &RwName) -> Result<()> {
        todo!()
    }

    pub async fn info(&self) -> StoreInfo {
        todo!()
    }

    /// Undo driver mounts and wait for background deletions.
    pub async fn shutdown(&self) -> Result<()> {
        todo!()
    }
}
