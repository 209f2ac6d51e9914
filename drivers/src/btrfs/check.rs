//! Host probe: the btrfs home must be on btrfs (`statfs` magic
//! `BTRFS_SUPER_MAGIC`), else the driver refuses with a typed
//! [`DriverError::Unsupported`]. Also gathers the cheap facts `status()`
//! reports: kernel release and what `BTRFS_IOC_FS_INFO` says.

use std::path::Path;

use graphdriver::{DriverError, IoError, Result};

use super::{NAME, ioctl};

/// `BTRFS_SUPER_MAGIC` from `<linux/magic.h>`.
pub const BTRFS_SUPER_MAGIC: i64 = crate::fsmagic::BTRFS;

/// Refuse unless `home` (or, if it does not exist yet, its nearest existing
/// ancestor) is on btrfs. Creates nothing.
pub fn require_btrfs(home: &Path) -> Result<()> {
    let mut probe = home;
    let magic = loop {
        match rustix::fs::statfs(probe) {
            // `f_type`'s width differs between architectures.
            #[allow(clippy::unnecessary_cast)]
            Ok(st) => break st.f_type as i64,
            Err(rustix::io::Errno::NOENT) => {
                probe = match probe.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
            }
            Err(e) => return Err(IoError::new("statfs", probe, e.into()).into()),
        }
    };
    if magic == BTRFS_SUPER_MAGIC {
        return Ok(());
    }
    Err(DriverError::Unsupported {
        driver: NAME.into(),
        why: format!("{} is on {} (magic 0x{magic:x}), not btrfs", probe.display(), fs_name(magic)),
    })
}

/// The name of a filesystem magic ([`crate::fsmagic`]).
pub fn fs_name(magic: i64) -> String {
    crate::fsmagic::describe(magic)
}

/// What `status()` reports; gathered once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    pub kernel: String,
    pub fs: Option<ioctl::FsInfo>,
}

impl crate::common::HostProbe for HostInfo {
    /// Refuses a home not on btrfs (as [`check`] does before anything is
    /// created), then gathers the `status()` facts.
    fn probe(home: &Path) -> Result<HostInfo> {
        require_btrfs(home)?;
        Ok(probe(home))
    }
}

fn probe(home: &Path) -> HostInfo {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let fs = std::fs::File::open(home).and_then(|f| ioctl::fs_info(&f));
    let fs = match fs {
        Ok(info) => Some(info),
        Err(e) => {
            tracing::warn!(driver = NAME, home = %home.display(), error = %e, "btrfs fs info unavailable");
            None
        }
    };
    HostInfo { kernel, fs }
}

impl HostInfo {
    /// The key/value pairs of `Driver::status`.
    pub fn status(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("Backing Filesystem".to_string(), "btrfs".to_string()),
            ("Interface".into(), "kernel ioctls (no libbtrfs)".into()),
            ("Kernel Version".into(), self.kernel.clone()),
        ];
        if let Some(fs) = &self.fs {
            out.push(("Filesystem UUID".into(), uuid(&fs.fsid)));
            out.push(("Devices".into(), fs.num_devices.to_string()));
            out.push(("Node Size".into(), fs.nodesize.to_string()));
            out.push(("Sector Size".into(), fs.sectorsize.to_string()));
            if let Some(c) = fs.csum_type {
                out.push(("Checksum".into(), csum_name(c).into()));
            }
            out.push(("Incompat Features".into(), format!("0x{:x}", fs.incompat_flags)));
        }
        out.push(("Quota".into(), "off".into()));
        out
    }
}

fn csum_name(t: u16) -> &'static str {
    match t {
        0 => "crc32c",
        1 => "xxhash64",
        2 => "sha256",
        3 => "blake2b",
        _ => "unknown",
    }
}

fn uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uuid() {
        assert_eq!(fs_name(0xEF53), "extfs");
        assert_eq!(fs_name(1), "unknown (0x1)");
        assert_eq!(csum_name(0), "crc32c");
        let u = uuid(&[0x12; 16]);
        assert_eq!(u, "12121212-1212-1212-1212-121212121212");
    }
}
