//! Host probe: what filesystem the vfs home is on and whether it reflinks.
//! vfs itself runs on any filesystem, so nothing here refuses a host.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// What `status()` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub backing_fs: String,
    pub reflink: bool,
}

impl crate::common::HostProbe for HostInfo {
    /// vfs runs on any filesystem: this never refuses.
    fn probe(home: &Path) -> graphdriver::Result<HostInfo> {
        Ok(probe(home, &home.join("tmp")))
    }
}

fn probe(home: &Path, scratch: &Path) -> HostInfo {
    let backing_fs = match rustix::fs::statfs(home) {
        // `f_type`'s width differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => fs_name(st.f_type as i64),
        Err(e) => {
            tracing::warn!(home = %home.display(), error = %e, "statfs failed");
            "unknown".to_string()
        }
    };
    HostInfo { backing_fs, reflink: reflink_works(scratch) }
}

/// Moby's name for a filesystem magic ([`crate::fsmagic`]).
pub fn fs_name(magic: i64) -> String {
    crate::fsmagic::describe(magic)
}

/// Try a FICLONE between two scratch files.
pub fn reflink_works(scratch: &Path) -> bool {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let a = scratch.join(format!(".reflink-probe-{}-{n}-a", std::process::id()));
    let b = scratch.join(format!(".reflink-probe-{}-{n}-b", std::process::id()));
    let res = (|| -> std::io::Result<bool> {
        let mut src = OpenOptions::new().create_new(true).read(true).write(true).open(&a)?;
        src.write_all(&[0x5a; 4096])?;
        src.sync_all()?;
        let dst = OpenOptions::new().create_new(true).write(true).open(&b)?;
        Ok(rustix::fs::ioctl_ficlone(&dst, &src).is_ok())
    })();
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    res.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_names_the_filesystem() {
        let t = tempfile::tempdir().unwrap();
        let info = probe(t.path(), t.path());
        assert!(!info.backing_fs.is_empty());
        assert_eq!(fs_name(0xEF53), "extfs");
        assert!(fs_name(1).starts_with("unknown"));
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0, "probe files left behind");
    }
}
