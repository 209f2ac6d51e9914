//! `changes_dirs` / `changes_size`: moby's `ChangesDirs` and `ChangesSize`.
//!
//! Both trees are read into memory, then compared top-down:
//! - a path only in the layer is `Add` (its whole subtree too);
//! - a path only in the parent is `Delete`, reported at the topmost path only;
//! - a path in both is `Modify` when mode (type and permissions), uid, gid or
//!   rdev differ; for non-directories also when size or mtime differ (mtimes
//!   equal if the seconds match and either side has no nanoseconds); and,
//!   beyond moby (which compares only `security.capability`), when the
//!   symlink target or any xattr other than `trusted.overlay.*` differs;
//! - a directory with any change below it is `Modify` too (not the root),
//!   so that applying the diff restores its metadata.
//!
//! When a directory became a non-directory, the entries below the old
//! directory are not listed (its replacement removes them).

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::fs::list_xattrs;
use super::whiteout::is_overlay_xattr;
use crate::driver::{Change, ChangeKind};
use crate::error::{ArchiveError, IoContext, IoError};

/// What the comparison looks at, per path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stat {
    pub(super) mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: u64,
    mtime: (i64, i64),
    link: Option<OsString>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Stat {
    /// What change detection compares of a path (overlay's own xattrs left out).
    pub(super) fn of(path: &Path, md: &fs::Metadata) -> Result<Stat, crate::IoError> {
        let link = if md.file_type().is_symlink() {
            Some(fs::read_link(path).ctx("readlink", path)?.into_os_string())
        } else {
            None
        };
        let mut xattrs = list_xattrs(path).ctx("list xattrs of", path)?;
        xattrs.retain(|(k, _)| !is_overlay_xattr(k));
        Ok(Stat {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            link,
            xattrs,
        })
    }

    pub(super) fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// moby's rule: a directory's size and mtime don't count; mtimes are
    /// equal when the seconds match and either side lacks nanoseconds.
    pub(super) fn differs(&self, new: &Stat) -> bool {
        let same_time =
            self.mtime.0 == new.mtime.0 && (self.mtime.1 == new.mtime.1 || self.mtime.1 == 0 || new.mtime.1 == 0);
        self.mode != new.mode
            || self.uid != new.uid
            || self.gid != new.gid
            || self.rdev != new.rdev
            || (!self.is_dir() && (!same_time || self.size != new.size))
            || self.link != new.link
            || self.xattrs != new.xattrs
    }
}

#[derive(Debug)]
struct Node {
    stat: Option<Stat>,
    children: BTreeMap<OsString, Node>,
}

impl Node {
    /// The root counts as a directory whatever it is (moby).
    fn is_dir(&self) -> bool {
        self.stat.as_ref().is_none_or(Stat::is_dir)
    }
}

fn stat(path: &Path) -> Result<Stat, ArchiveError> {
    let md = fs::symlink_metadata(path).ctx("lstat", path)?;
    Ok(Stat::of(path, &md)?)
}

/// Read the tree below `dir` (the root's own stat is not kept).
fn scan(dir: &Path) -> Result<Node, ArchiveError> {
    let mut root = Node { stat: None, children: BTreeMap::new() };
    scan_children(dir, &mut root)?;
    Ok(root)
}

fn scan_children(dir: &Path, node: &mut Node) -> Result<(), ArchiveError> {
    for entry in fs::read_dir(dir).ctx("read dir", dir)? {
        let entry = entry.ctx("read dir", dir)?;
        let path = entry.path();
        let st = stat(&path)?;
        let mut child = Node { children: BTreeMap::new(), stat: None };
        if st.is_dir() {
            scan_children(&path, &mut child)?;
        }
        child.stat = Some(st);
        node.children.insert(entry.file_name(), child);
    }
    Ok(())
}

fn join(parent: &str, name: &OsString) -> String {
    let name = String::from_utf8_lossy(name.as_bytes());
    if parent == "/" { format!("/{name}") } else { format!("{parent}/{name}") }
}

/// moby's `addChanges`.
fn add_changes(new: &Node, added: bool, old: Option<&Node>, path: &str, out: &mut Vec<Change>) {
    let start = out.len();
    let mut added = added;
    if old.is_none() {
        out.push(Change { path: path.to_string(), kind: ChangeKind::Add });
        added = true;
    }
    let empty = BTreeMap::new();
    let old_children = match old {
        Some(o) if new.is_dir() => &o.children,
        _ => &empty,
    };
    for (name, child) in &new.children {
        let child_path = join(path, name);
        let old_child = old_children.get(name);
        let mut child_added = false;
        if let (Some(os), Some(ns)) = (old_child.and_then(|c| c.stat.as_ref()), &child.stat)
            && os.differs(ns)
        {
            out.push(Change { path: child_path.clone(), kind: ChangeKind::Modify });
            child_added = true;
        }
        add_changes(child, child_added, old_child, &child_path, out);
    }
    for name in old_children.keys() {
        if !new.children.contains_key(name) {
            out.push(Change { path: join(path, name), kind: ChangeKind::Delete });
        }
    }
    if out.len() > start && new.is_dir() && !added && path != "/" {
        out.insert(start, Change { path: path.to_string(), kind: ChangeKind::Modify });
    }
}

pub(super) fn changes_dirs(layer: &Path, parent: Option<&Path>) -> Result<Vec<Change>, ArchiveError> {
    let new = scan(layer)?;
    let old = match parent {
        Some(p) => scan(p)?,
        None => Node { stat: None, children: BTreeMap::new() },
    };
    let mut out = Vec::new();
    add_changes(&new, true, Some(&old), "/", &mut out);
    out.sort();
    Ok(out)
}

/// moby's `directory.Size`: every non-directory under `dir` as `lstat`
/// sees it (so a symlink counts its target's length), once per inode, size-0
/// entries skipped; entries that vanish during the walk are ignored.
pub(super) fn dir_size(dir: &Path) -> Result<u64, ArchiveError> {
    let mut seen = HashSet::new();
    let mut size = 0u64;
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.depth() > 0 && e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => {
                continue;
            }
            Err(e) => {
                let path = e.path().unwrap_or(dir).to_path_buf();
                return Err(IoError::new("walk", path, e.into()).into());
            }
        };
        if entry.file_type().is_dir() {
            continue;
        }
        let md = match entry.metadata() {
            Ok(md) => md,
            Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(IoError::new("lstat", entry.path(), e.into()).into()),
        };
        if md.len() == 0 || !seen.insert(md.ino()) {
            continue;
        }
        size += md.len();
    }
    Ok(size)
}

pub(super) fn changes_size(layer: &Path, changes: &[Change]) -> u64 {
    let mut seen = HashSet::new();
    let mut size = 0u64;
    for c in changes {
        if c.kind == ChangeKind::Delete {
            continue;
        }
        let path = layer.join(c.path.trim_start_matches('/'));
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot stat changed path");
                continue;
            }
        };
        if !md.file_type().is_file() {
            continue;
        }
        if md.nlink() > 1 && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        size += md.len();
    }
    size
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::super::testutil::{T, sample, set_mtime};
    use super::*;

    fn chg(path: &str, kind: ChangeKind) -> Change {
        Change { path: path.into(), kind }
    }

    #[test]
    fn identical_trees_have_no_changes_and_no_parent_means_all_added() {
        let t = tempfile::tempdir().unwrap();
        let (p, l) = (t.path().join("p"), t.path().join("l"));
        fs::create_dir(&p).unwrap();
        fs::create_dir(&l).unwrap();
        sample(&p);
        sample(&l);
        assert_eq!(changes_dirs(&l, Some(&p)).unwrap(), vec![]);
        let all = changes_dirs(&l, None).unwrap();
        assert!(all.iter().all(|c| c.kind == ChangeKind::Add));
        assert_eq!(all.len(), walkdir::WalkDir::new(&l).into_iter().count() - 1);
        assert!(all.windows(2).all(|w| w[0].path < w[1].path));
        assert_eq!(all[0].path, "/dir1");
    }

    #[test]
    fn changes_dirs_mutated() {
        let t = tempfile::tempdir().unwrap();
        let (p, l) = (t.path().join("p"), t.path().join("l"));
        fs::create_dir(&p).unwrap();
        fs::create_dir(&l).unwrap();
        sample(&p);
        sample(&l);
        fs::remove_file(l.join("file1")).unwrap();
        fs::write(l.join("file2"), "fileN\n").unwrap();
        set_mtime(&l.join("file2"), T + 1, 0);
        fs::set_permissions(l.join("file3"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::lchown(l.join("file4"), Some(1), Some(1)).unwrap();
        rustix::fs::lsetxattr(l.join("file5"), "user.x", b"1", rustix::fs::XattrFlags::empty()).unwrap();
        set_mtime(&l.join("file6"), T, 5); // same second, one side without nanoseconds: equal
        fs::remove_dir_all(l.join("dir1")).unwrap();
        fs::write(l.join("dir2/new"), "n").unwrap();
        fs::set_permissions(l.join("dir3"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(l.join("dir4/sub/f"), "longer").unwrap();
        set_mtime(&l.join("dir5"), T + 100, 0); // directory mtimes are not a change
        fs::remove_file(l.join("symlink1")).unwrap();
        symlink("target9", l.join("symlink1")).unwrap();
        fs::write(l.join("filenew"), "new").unwrap();
        fs::create_dir(l.join("dirnew")).unwrap();
        fs::write(l.join("dirnew/x"), "x").unwrap();
        fs::remove_file(l.join("fileToDir")).unwrap();
        fs::create_dir(l.join("fileToDir")).unwrap();
        fs::write(l.join("fileToDir/c"), "c").unwrap();
        fs::remove_dir_all(l.join("dirToFile")).unwrap();
        fs::write(l.join("dirToFile"), "f").unwrap();
        for p in ["symlink1", "dir2", "dir4", "dir4/sub"] {
            set_mtime(&l.join(p), T, 0);
        }
        use ChangeKind::*;
        let want = vec![
            chg("/dir1", Delete),
            chg("/dir2", Modify),
            chg("/dir2/new", Add),
            chg("/dir3", Modify),
            chg("/dir4", Modify),
            chg("/dir4/sub", Modify),
            chg("/dir4/sub/f", Modify),
            chg("/dirToFile", Modify),
            chg("/dirnew", Add),
            chg("/dirnew/x", Add),
            chg("/file1", Delete),
            chg("/file2", Modify),
            chg("/file3", Modify),
            chg("/file4", Modify),
            chg("/file5", Modify),
            chg("/fileToDir", Modify),
            chg("/fileToDir/c", Add),
            chg("/filenew", Add),
            chg("/symlink1", Modify),
        ];
        assert_eq!(changes_dirs(&l, Some(&p)).unwrap(), want);
        // 1 + 6 + 3 + 1 + 1 + 3 (dirnew/x, fileToDir/c, filenew) + file2..5 (6 each)
        let size = changes_size(&l, &want);
        assert_eq!(size, 1 + 6 + 1 + 1 + 1 + 3 + 4 * 6);
    }

    #[test]
    fn changes_size_counts_hardlinks_once() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), vec![0; 1000]).unwrap();
        fs::hard_link(t.path().join("a"), t.path().join("b")).unwrap();
        fs::write(t.path().join("c"), vec![0; 10]).unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        symlink("target", t.path().join("s")).unwrap();
        let all = changes_dirs(t.path(), None).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(changes_size(t.path(), &all), 1010);
        let mut with_delete = all.clone();
        with_delete.push(chg("/gone", ChangeKind::Delete));
        assert_eq!(changes_size(t.path(), &with_delete), 1010);
    }
}
