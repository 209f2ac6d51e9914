//! What the store's integration tests share: a store root in a temporary
//! dir, on the vfs driver.

use std::path::PathBuf;
use std::sync::Arc;

use graphdriver::Driver;
use layer::Store;

pub struct Env {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        Env { _tmp: tmp, root }
    }

    pub fn driver(&self) -> Arc<dyn Driver> {
        Arc::new(drivers::vfs::Vfs::new(self.root.join("vfs")).unwrap())
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.root, self.driver()).await.unwrap()
    }

    /// The layerdb: `image/vfs/layerdb` under the root.
    pub fn layerdb(&self) -> PathBuf {
        self.root.join("image/vfs/layerdb")
    }
}
