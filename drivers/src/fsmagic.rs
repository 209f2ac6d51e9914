//! The one table of filesystem magics (`statfs(2)`'s `f_type`) every driver
//! names its backing filesystem with. Names are moby's (`extfs` for ext2/3/4,
//! as `docker info` shows them), so `status()` reads as Docker's does.

/// ext2/3/4.
pub const EXT: i64 = 0xEF53;
pub const XFS: i64 = 0x5846_5342;
/// `BTRFS_SUPER_MAGIC` from `<linux/magic.h>`.
pub const BTRFS: i64 = 0x9123_683E;
pub const TMPFS: i64 = 0x0102_1994;
pub const OVERLAYFS: i64 = 0x794C_7630;

const TABLE: &[(i64, &str)] = &[
    (EXT, "extfs"),
    (XFS, "xfs"),
    (BTRFS, "btrfs"),
    (TMPFS, "tmpfs"),
    (OVERLAYFS, "overlayfs"),
    (0x2FC1_2FC1, "zfs"),
    (0xF2F5_2010, "f2fs"),
    (0x6969, "nfs"),
    (0x0100_2001, "nfs"),
    (0x6573_5546, "fuse"),
    (0xCA45_1A4E, "bcachefs"),
];

/// The filesystem's name, if the table knows its magic.
pub fn name(magic: i64) -> Option<&'static str> {
    TABLE.iter().find(|(m, _)| *m == magic).map(|(_, n)| *n)
}

/// The name, or `unknown (0x…)`.
pub fn describe(magic: i64) -> String {
    name(magic).map_or_else(|| format!("unknown (0x{magic:x})"), str::to_string)
}

/// The magic of the filesystem `path` is on.
pub fn of(path: &std::path::Path) -> std::io::Result<i64> {
    // `f_type`'s width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path).map(|st| st.f_type as i64).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_moby_does() {
        assert_eq!(describe(EXT), "extfs");
        assert_eq!(describe(XFS), "xfs");
        assert_eq!(name(BTRFS), Some("btrfs"));
        assert_eq!(describe(1), "unknown (0x1)");
        let mut magics: Vec<i64> = TABLE.iter().map(|(m, _)| *m).collect();
        magics.sort();
        magics.dedup();
        assert_eq!(magics.len(), TABLE.len(), "a magic listed twice");
    }
}
