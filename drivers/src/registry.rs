//! Driver selection by name, as `layerd --driver NAME` does it. Each driver's
//! home is `<root>/<name>` (moby's layout).

use std::path::Path;
use std::sync::Arc;

use graphdriver::{Driver, DriverError, Result};

/// The built-in drivers, in the order `layerd` documents them.
pub const BUILTIN: &[&str] = &["vfs", "overlay", "btrfs"];

/// Open the named built-in driver with its home under `root`.
pub fn open(name: &str, root: &Path) -> Result<Arc<dyn Driver>> {
    let home = root.join(name);
    match name {
        "vfs" => Ok(Arc::new(crate::vfs::Vfs::new(home)?)),
        "overlay" => Ok(Arc::new(crate::overlay::Overlay::new(home)?)),
        "btrfs" => Ok(Arc::new(crate::btrfs::Btrfs::new(home)?)),
        other => Err(DriverError::Unsupported {
            driver: other.to_string(),
            why: format!("no such driver; built in: {}", BUILTIN.join(", ")),
        }),
    }
}
