//! Test support: homes on a disk filesystem, a guard that undoes every
//! mount below a home even when a test panics, tars and tree dumps.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use graphdriver::archive::fs::list_xattrs;
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

/// One tar entry for [`tar_of`].
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Whiteout(&'a str),
    Opaque(&'a str),
    Symlink(&'a str, &'a str),
}

/// A tar of `entries`, in order, all owned by root, mtime 1_700_000_000.
pub fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let (name, data): (String, &[u8]) = match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (format!("{p}/"), b"")
            }
            E::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (p.to_string(), data.as_bytes())
            }
            E::Whiteout(p) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o600);
                let (dir, base) = p.rsplit_once('/').map_or(("", *p), |(d, b)| (d, b));
                (if dir.is_empty() { format!(".wh.{base}") } else { format!("{dir}/.wh.{base}") }, b"")
            }
            E::Opaque(dir) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o600);
                (format!("{dir}/.wh..wh..opq"), b"")
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_link_name(target).expect("link name");
                (p.to_string(), b"")
            }
        };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).expect("append");
    }
    b.into_inner().expect("tar")
}

pub fn read_all(mut r: TarReader) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("read tar");
    out
}

/// The entry names of a tar, in order.
pub fn names(tar: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(tar);
    ar.entries().expect("entries").map(|e| e.expect("entry").path().expect("path").display().to_string()).collect()
}

/// Every path below `root` (not the root) with type, owner, mode, size,
/// content, link target, device and xattrs; mtimes of non-directories.
pub fn dump(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.expect("walk");
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("below root");
        let md = fs::symlink_metadata(path).expect("lstat");
        let mut desc = format!("mode={:o} uid={} gid={}", md.mode(), md.uid(), md.gid());
        let ft = md.file_type();
        // Whiteouts are made at apply time; their times carry nothing.
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
        let x: Vec<String> = list_xattrs(path)
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
