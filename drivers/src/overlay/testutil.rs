//! Test support: homes on a disk filesystem, a guard that undoes every
//! mount below a home even when a test panics; tars and tree dumps from
//! the shared test kit.

use std::io::Read;
use std::path::PathBuf;

use graphdriver::{CacheId, CreateOpts, Driver, TarReader};

use super::Overlay;
use super::mount;

/// A temp dir on a disk filesystem (never tmpfs: overlay needs a real
/// upper, and large trees must not eat RAM).
pub fn disk_tempdir() -> tempfile::TempDir {
    let base = std::env::temp_dir();
    let tmpfs = crate::fsmagic::of(&base).map(|m| m == crate::fsmagic::TMPFS).unwrap_or(true);
    let base = if tmpfs { PathBuf::from("/var/tmp") } else { base };
    tempfile::Builder::new().prefix("ovl").tempdir_in(base).expect("temp dir")
}

/// A driver in a fresh home. Dropping it unmounts everything below the
/// home before the temp dir is deleted (a delete through a live mount
/// would reach the layers), also when the test panicked.
pub struct Fixture {
    /// Deleted after the mounts are undone (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
    pub home: PathBuf,
    pub d: Overlay,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = disk_tempdir();
        Fixture::in_home(dir, "overlay")
    }

    pub fn in_home(dir: tempfile::TempDir, sub: &str) -> Fixture {
        let d = Overlay::new(dir.path().join(sub)).expect("overlay driver");
        let home = d.layout.home.clone();
        Fixture { _dir: dir, home, d }
    }

    /// Mount points below the home right now.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mount::mounts_under(&self.home).expect("read mountinfo")
    }

    /// `cleanup()`, then assert `/proc/self/mountinfo` has nothing of ours.
    pub async fn finish(&self) {
        self.d.cleanup().await.expect("cleanup");
        assert_eq!(self.mounts(), Vec::<PathBuf>::new(), "mounts left behind");
    }

    /// Create `id` on `parent` (read-only kind) and apply `tar`.
    pub async fn layer(&self, parent: Option<&CacheId>, tar: Vec<u8>) -> CacheId {
        let id = CacheId::random();
        self.d.create(&id, parent, &CreateOpts::default()).await.expect("create");
        self.d.apply_diff(&id, parent, Box::new(std::io::Cursor::new(tar))).await.expect("apply");
        id
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Err(e) = mount::unmount_all_under(&self.home) {
            eprintln!("cannot unmount test mounts under {}: {e}", self.home.display());
        }
    }
}

// Tars, entry names and tree dumps come from the shared test kit.
pub use testkit::tars::{E, names, tar_of};
pub use testkit::tree::dump;

pub fn read_all(mut r: TarReader) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("read tar");
    out
}
