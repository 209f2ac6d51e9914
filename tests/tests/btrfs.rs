//! The conformance suite on the btrfs driver, on a loop-mounted btrfs
//! ([`drivers::testing::BtrfsLoop`]). Tests running at the same time share
//! one loop filesystem; it is torn down (unmounted, detached, deleted) when
//! the last test holding it ends, failed or not, and a later test makes a
//! fresh one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use drivers::testing::BtrfsLoop;
use graphdriver::Driver;

/// Sparse image size: room for two cases at once (the largest writes a
/// 32 MiB file a few times).
const IMAGE_MB: u64 = 2048;

static SHARED: Mutex<Weak<BtrfsLoop>> = Mutex::new(Weak::new());

/// The btrfs driver with its case dirs on the shared loop filesystem.
struct OnLoop {
    lo: Arc<BtrfsLoop>,
}

impl OnLoop {
    fn new() -> OnLoop {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        let lo = match shared.upgrade() {
            Some(lo) => lo,
            None => {
                let lo = Arc::new(BtrfsLoop::new(IMAGE_MB).expect("cannot make a loop-mounted btrfs"));
                *shared = Arc::downgrade(&lo);
                lo
            }
        };
        OnLoop { lo }
    }
}

#[async_trait]
impl conformance::Factory for OnLoop {
    fn driver_name(&self) -> String {
        "btrfs".into()
    }

    fn parent_dir(&self) -> Option<PathBuf> {
        Some(self.lo.path().to_path_buf())
    }

    async fn open(&self, root: &Path) -> graphdriver::Result<Arc<dyn Driver>> {
        drivers::registry::open("btrfs", root)
    }
}

conformance::stamp!(btrfs, OnLoop::new());
