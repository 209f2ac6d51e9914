//! The conformance suite through the plugin protocol: every case runs on a
//! [`PluginDriver`] talking over a real unix socket to a [`PluginServer`]
//! serving vfs, overlay or btrfs (on a loop-mounted btrfs). A plugin is just
//! another driver, held to the same cases with no skips.

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use drivers::testing::BtrfsLoop;
use graphdriver::Driver;
use plugin::{Addr, ClientOptions, PluginDriver, PluginServer};

/// Sparse loop image for the btrfs cases (as the btrfs suite uses).
const IMAGE_MB: u64 = 2048;

static SHARED: Mutex<Weak<BtrfsLoop>> = Mutex::new(Weak::new());

/// A built-in driver served over a socket in the case's root, used through
/// the client; the driver's home is `<root>/<plugin name>`, as dockerd's is.
struct ThroughPlugin {
    inner: &'static str,
    lo: Option<Arc<BtrfsLoop>>,
}

impl ThroughPlugin {
    fn new(inner: &'static str) -> ThroughPlugin {
        let lo = (inner == "btrfs").then(|| {
            let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
            match shared.upgrade() {
                Some(lo) => lo,
                None => {
                    let lo = Arc::new(BtrfsLoop::new(IMAGE_MB).expect("cannot make a loop-mounted btrfs"));
                    *shared = Arc::downgrade(&lo);
                    lo
                }
            }
        });
        ThroughPlugin { inner, lo }
    }
}

#[async_trait]
impl conformance::Factory for ThroughPlugin {
    fn driver_name(&self) -> String {
        format!("plugin-{}", self.inner)
    }

    fn parent_dir(&self) -> Option<PathBuf> {
        self.lo.as_ref().map(|lo| lo.path().to_path_buf())
    }

    async fn open(&self, root: &Path) -> graphdriver::Result<Arc<dyn Driver>> {
        let inner = self.inner;
        let opener: plugin::Opener = Arc::new(move |home: &Path, opts: &[String]| {
            assert!(opts.is_empty(), "the client sent storage options: {opts:?}");
            drivers::registry::open_in(inner, home)
        });
        let server = PluginServer::new(opener, Some(root.join("plugin-state.json")));
        // Socket paths are short (108 bytes); case roots may not be.
        let sock_dir = tempfile::Builder::new().prefix("pl").tempdir_in("/tmp").unwrap();
        let socket = sock_dir.path().join("p.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let _dir = sock_dir;
            axum::serve(listener, plugin::router(server)).await.unwrap();
        });
        let opts = ClientOptions { call_timeout: Duration::from_secs(120), ..Default::default() };
        let d = PluginDriver::connect_addr("p", Addr::Unix(socket), &root.join("p"), opts).await?;
        Ok(d)
    }
}

conformance::stamp!(plugin_vfs, ThroughPlugin::new("vfs"));
conformance::stamp!(plugin_overlay, ThroughPlugin::new("overlay"));
conformance::stamp!(plugin_btrfs, ThroughPlugin::new("btrfs"));
