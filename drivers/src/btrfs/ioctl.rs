//! The btrfs ioctls the driver uses, behind safe functions. This is the only
//! module of the workspace allowed `unsafe`: every `unsafe` block below is a
//! raw `ioctl(2)` on a borrowed (so open) fd with a pointer to a `#[repr(C)]`
//! struct whose layout matches `<linux/btrfs.h>` (checked at compile time by
//! the size assertions below and at test time against the header itself).
//!
//! Request numbers come from `nix::ioctl_*!`, which encode the struct size
//! exactly as the kernel's `_IOW`/`_IOR`/`_IOWR` do.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_PATH_NAME_MAX + 1`.
const VOL_NAME_BUF: usize = 4088;
/// `BTRFS_SUBVOL_NAME_MAX + 1`.
const SUBVOL_NAME_BUF: usize = 4040;
/// `BTRFS_INO_LOOKUP_PATH_MAX`.
const INO_LOOKUP_PATH_MAX: usize = 4080;
/// `BTRFS_VOL_NAME_MAX`: the longest name a subvolume may have.
const VOL_NAME_MAX: usize = 255;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root dir.
pub const FIRST_FREE_OBJECTID: u64 = 256;

const FS_INFO_FLAG_CSUM_INFO: u64 = 1 << 0;
const FS_INFO_FLAG_GENERATION: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
#[allow(dead_code)] // fields the kernel reads or we never look at
struct VolArgs {
    fd: i64,
    name: [u8; VOL_NAME_BUF],
}

/// `struct btrfs_ioctl_vol_args_v2`; the two unions are kept as their
/// largest members (`unused[4]` and `name`).
#[repr(C)]
#[allow(dead_code)] // fields the kernel reads or we never look at
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_BUF],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
#[allow(dead_code)] // fields the kernel reads or we never look at
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_fs_info_args`.
#[repr(C)]
#[allow(dead_code)] // fields the kernel reads or we never look at
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; 16],
    reserved: [u8; 944],
}

/// `struct btrfs_ioctl_feature_flags`.
#[repr(C)]
#[allow(dead_code)] // fields the kernel reads or we never look at
struct FeatureFlags {
    compat_flags: u64,
    compat_ro_flags: u64,
    incompat_flags: u64,
}

// The sizes are part of the request numbers; a wrong one is a different ioctl.
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<FsInfoArgs>() == 1024);
const _: () = assert!(std::mem::size_of::<FeatureFlags>() == 24);

mod raw {
    use super::*;
    nix::ioctl_write_ptr!(subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
    nix::ioctl_write_ptr!(snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
    nix::ioctl_readwrite!(ino_lookup, BTRFS_IOCTL_MAGIC, 18, InoLookupArgs);
    nix::ioctl_write_ptr!(snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);
    nix::ioctl_read!(fs_info, BTRFS_IOCTL_MAGIC, 31, FsInfoArgs);
    nix::ioctl_read!(get_features, BTRFS_IOCTL_MAGIC, 57, FeatureFlags);
}

/// Copy a single path component into a zeroed, NUL-terminated name buffer.
fn put_name<const N: usize>(buf: &mut [u8; N], name: &OsStr) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes.len() > VOL_NAME_MAX
        || bytes.contains(&b'/')
        || bytes.contains(&0)
        || bytes == b"."
        || bytes == b".."
    {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid subvolume name {name:?}")));
    }
    // VOL_NAME_MAX < N, so at least one trailing NUL remains.
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

fn vol_args(name: &OsStr) -> io::Result<Box<VolArgs>> {
    let mut args = Box::new(VolArgs { fd: 0, name: [0; VOL_NAME_BUF] });
    put_name(&mut args.name, name)?;
    Ok(args)
}

/// `BTRFS_IOC_SUBVOL_CREATE`: a new, empty subvolume `name` in the directory `parent`.
pub fn subvol_create(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let args = vol_args(name)?;
    // SAFETY: `parent` is a live fd for the duration of the call; `args` is a
    // valid, initialised `btrfs_ioctl_vol_args` (size asserted above) that the
    // kernel only reads, and its name is NUL-terminated (`put_name`).
    unsafe { raw::subvol_create(parent.as_raw_fd(), &*args) }?;
    Ok(())
}

/// `BTRFS_IOC_SNAP_CREATE_V2`: a writable snapshot of the subvolume open as
/// `source`, named `name` in the directory `parent`.
pub fn snapshot(source: BorrowedFd<'_>, parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let mut args = Box::new(VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: 0,
        unused: [0; 4],
        name: [0; SUBVOL_NAME_BUF],
    });
    put_name(&mut args.name, name)?;
    // SAFETY: `source` and `parent` are live fds for the duration of the call
    // (the kernel resolves `args.fd` during it); `args` is a valid, initialised
    // `btrfs_ioctl_vol_args_v2` the kernel only reads; flags 0 asks for no
    // qgroup inherit, so the union holds no pointer; the name is NUL-terminated.
    unsafe { raw::snap_create_v2(parent.as_raw_fd(), &*args) }?;
    Ok(())
}

/// `BTRFS_IOC_SNAP_DESTROY`: delete the subvolume `name` in the directory
/// `parent`, whatever its contents, unless it holds nested subvolumes
/// (`ENOTEMPTY`).
pub fn subvol_destroy(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let args = vol_args(name)?;
    // SAFETY: `parent` is a live fd; `args` is a valid, initialised
    // `btrfs_ioctl_vol_args` the kernel only reads, with a NUL-terminated name.
    unsafe { raw::snap_destroy(parent.as_raw_fd(), &*args) }?;
    Ok(())
}

/// `BTRFS_IOC_INO_LOOKUP` with tree 0: the id of the subvolume `fd` is in.
/// Needs `CAP_SYS_ADMIN`.
pub fn subvol_id(fd: impl AsFd) -> io::Result<u64> {
    let mut args = Box::new(InoLookupArgs { treeid: 0, objectid: FIRST_FREE_OBJECTID, name: [0; INO_LOOKUP_PATH_MAX] });
    // SAFETY: `fd` is borrowed, so open; `args` is a valid, initialised,
    // exclusively borrowed `btrfs_ioctl_ino_lookup_args` of the size encoded in
    // the request, which the kernel reads and writes in place.
    unsafe { raw::ino_lookup(fd.as_fd().as_raw_fd(), &mut *args) }?;
    Ok(args.treeid)
}

/// What `BTRFS_IOC_FS_INFO` and `BTRFS_IOC_GET_FEATURES` tell about a filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub fsid: [u8; 16],
    pub num_devices: u64,
    pub nodesize: u32,
    pub sectorsize: u32,
    /// `None` on kernels that do not report it.
    pub csum_type: Option<u16>,
    pub generation: Option<u64>,
    pub compat_flags: u64,
    pub compat_ro_flags: u64,
    pub incompat_flags: u64,
}

/// `BTRFS_IOC_FS_INFO` + `BTRFS_IOC_GET_FEATURES` on any fd inside the filesystem.
pub fn fs_info(fd: impl AsFd) -> io::Result<FsInfo> {
    let raw_fd = fd.as_fd().as_raw_fd();
    let mut info = Box::new(FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        nodesize: 0,
        sectorsize: 0,
        clone_alignment: 0,
        csum_type: 0,
        csum_size: 0,
        flags: FS_INFO_FLAG_CSUM_INFO | FS_INFO_FLAG_GENERATION,
        generation: 0,
        metadata_uuid: [0; 16],
        reserved: [0; 944],
    });
    // SAFETY: `fd` is borrowed, so open; `info` is a valid, initialised,
    // exclusively borrowed `btrfs_ioctl_fs_info_args` of the size encoded in
    // the request; the kernel reads `flags` and writes the struct in place.
    unsafe { raw::fs_info(raw_fd, &mut *info) }?;
    let mut features = FeatureFlags { compat_flags: 0, compat_ro_flags: 0, incompat_flags: 0 };
    // SAFETY: as above, with a `btrfs_ioctl_feature_flags` the kernel writes.
    unsafe { raw::get_features(raw_fd, &mut features) }?;
    Ok(FsInfo {
        fsid: info.fsid,
        num_devices: info.num_devices,
        nodesize: info.nodesize,
        sectorsize: info.sectorsize,
        csum_type: (info.flags & FS_INFO_FLAG_CSUM_INFO != 0).then_some(info.csum_type),
        generation: (info.flags & FS_INFO_FLAG_GENERATION != 0).then_some(info.generation),
        compat_flags: features.compat_flags,
        compat_ro_flags: features.compat_ro_flags,
        incompat_flags: features.incompat_flags,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    use super::*;

    /// Compile a probe against the installed `<linux/btrfs.h>` and compare its
    /// sizes, offsets and request numbers with ours.
    #[test]
    fn layouts_match_linux_btrfs_h() {
        assert!(
            std::path::Path::new("/usr/include/linux/btrfs.h").exists(),
            "/usr/include/linux/btrfs.h missing: install linux-libc-dev"
        );
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("probe.c");
        let bin = t.path().join("probe");
        std::fs::write(
            &src,
            r#"
#include <stdio.h>
#include <stddef.h>
#include <linux/btrfs.h>
#define P(name, v) printf("%s %llu\n", name, (unsigned long long)(v))
int main(void) {
    P("vol_args", sizeof(struct btrfs_ioctl_vol_args));
    P("vol_args.name", offsetof(struct btrfs_ioctl_vol_args, name));
    P("vol_args_v2", sizeof(struct btrfs_ioctl_vol_args_v2));
    P("vol_args_v2.flags", offsetof(struct btrfs_ioctl_vol_args_v2, flags));
    P("vol_args_v2.unused", offsetof(struct btrfs_ioctl_vol_args_v2, unused));
    P("vol_args_v2.name", offsetof(struct btrfs_ioctl_vol_args_v2, name));
    P("ino_lookup", sizeof(struct btrfs_ioctl_ino_lookup_args));
    P("ino_lookup.name", offsetof(struct btrfs_ioctl_ino_lookup_args, name));
    P("fs_info", sizeof(struct btrfs_ioctl_fs_info_args));
    P("fs_info.csum_type", offsetof(struct btrfs_ioctl_fs_info_args, csum_type));
    P("fs_info.flags", offsetof(struct btrfs_ioctl_fs_info_args, flags));
    P("fs_info.generation", offsetof(struct btrfs_ioctl_fs_info_args, generation));
    P("features", sizeof(struct btrfs_ioctl_feature_flags));
    P("IOC_SUBVOL_CREATE", BTRFS_IOC_SUBVOL_CREATE);
    P("IOC_SNAP_DESTROY", BTRFS_IOC_SNAP_DESTROY);
    P("IOC_INO_LOOKUP", BTRFS_IOC_INO_LOOKUP);
    P("IOC_SNAP_CREATE_V2", BTRFS_IOC_SNAP_CREATE_V2);
    P("IOC_FS_INFO", BTRFS_IOC_FS_INFO);
    P("IOC_GET_FEATURES", BTRFS_IOC_GET_FEATURES);
    return 0;
}
"#,
        )
        .unwrap();
        let cc = Command::new("cc").arg("-o").arg(&bin).arg(&src).output().expect("run cc (a C compiler is needed)");
        assert!(cc.status.success(), "cc failed: {}", String::from_utf8_lossy(&cc.stderr));
        let out = Command::new(&bin).output().unwrap();
        let c: BTreeMap<String, u64> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect();
        let ours: BTreeMap<String, u64> = [
            ("vol_args", size_of::<VolArgs>()),
            ("vol_args.name", offset_of!(VolArgs, name)),
            ("vol_args_v2", size_of::<VolArgsV2>()),
            ("vol_args_v2.flags", offset_of!(VolArgsV2, flags)),
            ("vol_args_v2.unused", offset_of!(VolArgsV2, unused)),
            ("vol_args_v2.name", offset_of!(VolArgsV2, name)),
            ("ino_lookup", size_of::<InoLookupArgs>()),
            ("ino_lookup.name", offset_of!(InoLookupArgs, name)),
            ("fs_info", size_of::<FsInfoArgs>()),
            ("fs_info.csum_type", offset_of!(FsInfoArgs, csum_type)),
            ("fs_info.flags", offset_of!(FsInfoArgs, flags)),
            ("fs_info.generation", offset_of!(FsInfoArgs, generation)),
            ("features", size_of::<FeatureFlags>()),
            ("IOC_SUBVOL_CREATE", nix::request_code_write!(BTRFS_IOCTL_MAGIC, 14, size_of::<VolArgs>()) as usize),
            ("IOC_SNAP_DESTROY", nix::request_code_write!(BTRFS_IOCTL_MAGIC, 15, size_of::<VolArgs>()) as usize),
            (
                "IOC_INO_LOOKUP",
                nix::request_code_readwrite!(BTRFS_IOCTL_MAGIC, 18, size_of::<InoLookupArgs>()) as usize,
            ),
            ("IOC_SNAP_CREATE_V2", nix::request_code_write!(BTRFS_IOCTL_MAGIC, 23, size_of::<VolArgsV2>()) as usize),
            ("IOC_FS_INFO", nix::request_code_read!(BTRFS_IOCTL_MAGIC, 31, size_of::<FsInfoArgs>()) as usize),
            ("IOC_GET_FEATURES", nix::request_code_read!(BTRFS_IOCTL_MAGIC, 57, size_of::<FeatureFlags>()) as usize),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as u64))
        .collect();
        assert_eq!(ours, c);
    }

    #[test]
    fn names_are_single_components() {
        let mut buf = [0u8; VOL_NAME_BUF];
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            assert_eq!(put_name(&mut buf, OsStr::new(bad)).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        put_name(&mut buf, OsStr::new(&"x".repeat(255))).unwrap();
        assert_eq!(buf[255], 0);
    }
}
