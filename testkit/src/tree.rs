//! A tree dump for equality assertions: one line of facts per path. Lighter
//! than a [`crate::manifest::Manifest`]: content is shown as text, so a
//! failing `assert_eq!` reads like a listing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Every path below `root` (not the root) with type, owner, mode, size,
/// content, link target, device and xattrs; mtimes of non-directories
/// (whiteout devices are made at apply time, so theirs are left out).
pub fn dump(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.expect("walk");
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("below root");
        let md = fs::symlink_metadata(path).expect("lstat");
        let mut desc = format!("mode={:o} uid={} gid={}", md.mode(), md.uid(), md.gid());
        let ft = md.file_type();
        let whiteout = ft.is_char_device() && md.rdev() == 0;
        if !ft.is_dir() && !whiteout {
            desc += &format!(" mtime={}.{}", md.mtime(), md.mtime_nsec());
        }
        if ft.is_file() {
            desc += &format!(" data={:?}", String::from_utf8_lossy(&fs::read(path).expect("read")));
        }
        if ft.is_symlink() {
            desc += &format!(" -> {:?}", fs::read_link(path).expect("readlink"));
        }
        if ft.is_char_device() || ft.is_block_device() {
            desc += &format!(" rdev={}", md.rdev());
        }
        let x: Vec<String> = graphdriver::archive::fs::list_xattrs(path)
            .expect("xattrs")
            .into_iter()
            .map(|(k, v)| format!("{}={:?}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v)))
            .collect();
        if !x.is_empty() {
            desc += &format!(" xattrs={x:?}");
        }
        out.insert(format!("/{}", String::from_utf8_lossy(rel.as_os_str().as_bytes())), desc);
    }
    out
}
