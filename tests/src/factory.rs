//! Where drivers under test come from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use graphdriver::Driver;

/// Makes a fresh driver for each case.
#[async_trait]
pub trait Factory: Send + Sync {
    /// The driver's name, for reports and temp-dir names.
    fn driver_name(&self) -> String;

    /// The directory each case's temp dir (holding `root/` and `work/`) is
    /// made in. `None`: `$CONFORMANCE_TMPDIR`, else the system temp dir
    /// unless it is a tmpfs, else `/var/tmp`.
    fn parent_dir(&self) -> Option<PathBuf> {
        None
    }

    /// Open a driver whose state lives under `root`, an empty directory the
    /// case owns. A driver that cannot run on this host returns
    /// [`Unsupported`](graphdriver::DriverError::Unsupported): every case
    /// then skips, with that reason.
    async fn open(&self, root: &Path) -> graphdriver::Result<Arc<dyn Driver>>;
}

/// A built-in driver by name, through [`drivers::registry::open`] (its home
/// is `<root>/<name>`), as `layerctl conformance --driver NAME` does it.
#[derive(Debug, Clone)]
pub struct BuiltinFactory {
    name: String,
    parent: Option<PathBuf>,
}

impl BuiltinFactory {
    pub fn new(name: impl Into<String>) -> BuiltinFactory {
        BuiltinFactory { name: name.into(), parent: None }
    }

    /// Make the per-case temp dirs in `dir` (`layerctl conformance --root DIR`).
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> BuiltinFactory {
        self.parent = Some(dir.into());
        self
    }
}

#[async_trait]
impl Factory for BuiltinFactory {
    fn driver_name(&self) -> String {
        self.name.clone()
    }

    fn parent_dir(&self) -> Option<PathBuf> {
        self.parent.clone()
    }

    async fn open(&self, root: &Path) -> graphdriver::Result<Arc<dyn Driver>> {
        drivers::registry::open(&self.name, root)
    }
}

/// A factory from a closure: `conformance::from_fn("mine", |root| ...)`.
pub struct FnFactory<F> {
    name: String,
    parent: Option<PathBuf>,
    f: F,
}

/// Wrap a closure that opens a driver under the given root.
pub fn from_fn<F>(name: impl Into<String>, f: F) -> FnFactory<F>
where
    F: Fn(&Path) -> graphdriver::Result<Arc<dyn Driver>> + Send + Sync,
{
    FnFactory { name: name.into(), parent: None, f }
}

impl<F> FnFactory<F> {
    /// Make the per-case temp dirs in `dir`.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.parent = Some(dir.into());
        self
    }
}

#[async_trait]
impl<F> Factory for FnFactory<F>
where
    F: Fn(&Path) -> graphdriver::Result<Arc<dyn Driver>> + Send + Sync,
{
    fn driver_name(&self) -> String {
        self.name.clone()
    }

    fn parent_dir(&self) -> Option<PathBuf> {
        self.parent.clone()
    }

    async fn open(&self, root: &Path) -> graphdriver::Result<Arc<dyn Driver>> {
        (self.f)(root)
    }
}

/// The default parent of per-case temp dirs (see [`Factory::parent_dir`]).
pub fn default_parent_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONFORMANCE_TMPDIR") {
        return PathBuf::from(dir);
    }
    let tmp = std::env::temp_dir();
    match drivers::fsmagic::of(&tmp) {
        Ok(drivers::fsmagic::TMPFS) => PathBuf::from("/var/tmp"),
        _ => tmp,
    }
}
