//! Native diff of an overlayfs upper directory.
//!
//! An overlay layer's own files (its `diff/`, the "upper dir") record
//! deletions the way the kernel reads them: a 0/0 character device for a
//! deleted path, `trusted.overlay.opaque=y` on a directory that hides the
//! layers below it. These helpers read such a directory without mounting
//! and speak the tar side's AUFS vocabulary:
//!
//! - [`export`] writes the whole upper dir as a tar (moby's native `Diff`):
//!   a whiteout device becomes `.wh.<name>`, an opaque directory gets a
//!   `.wh..wh..opq` entry, `trusted.overlay.*` xattrs are dropped.
//! - [`changes`] lists what the layer changed relative to the merged view of
//!   its lower dirs, by the same rules as [`changes_dirs`](super::changes_dirs)
//!   (the naive comparison of two mounted trees gives the same list): only
//!   the paths present in the upper dir are compared, and the lower stack is
//!   looked up the way overlayfs does (topmost entry wins, a whiteout or a
//!   non-directory ends the stack, an opaque directory ends it below).
//! - [`size`] is [`changes_size`](super::changes_size) of those changes.
//!
//! They are valid only for upper dirs written with `redirect_dir` and
//! `metacopy` off; the driver checks the kernel before using them.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::whiteout::OVERLAY_OPAQUE_XATTR;
use crate::driver::{Change, ChangeKind};
use crate::error::{ArchiveError, IoContext, IoError};

/// Whether `md` is an overlay whiteout: a character device numbered 0/0.
pub fn is_whiteout(md: &Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Whether the directory at `path` carries `trusted.overlay.opaque=y`.
pub fn is_opaque(path: &Path) -> Result<bool, IoError> {
    let mut buf = [0u8; 4];
    match rustix::fs::lgetxattr(path, OVERLAY_OPAQUE_XATTR, &mut buf) {
        Ok(n) => Ok(&buf[..n] == b"y"),
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) | Err(rustix::io::Errno::RANGE) => Ok(false),
        Err(e) => Err(IoError::new("read opaque xattr of", path, e.into())),
    }
}

/// Write the upper dir `upper` as a tar with AUFS whiteouts.
pub fn export(upper: &Path, out: &mut dyn Write) -> Result<(), ArchiveError> {
    let mut list = Vec::new();
    if is_opaque(upper)? {
        list.push(Change { path: "/.wh..opq".into(), kind: ChangeKind::Delete });
    }
    for entry in walkdir::WalkDir::new(upper).min_depth(1) {
        let entry = entry.map_err(|e| walk_err(upper, e))?;
        let path = entry.path();
        let rel = path.strip_prefix(upper).map_err(|_| ArchiveError::InvalidTar("walk left the upper dir".into()))?;
        let name = format!("/{}", String::from_utf8_lossy(rel.as_os_str().as_bytes()));
        let md = fs::symlink_metadata(path).ctx("lstat", path)?;
        if is_whiteout(&md) {
            list.push(Change { path: name, kind: ChangeKind::Delete });
            continue;
        }
        if md.is_dir() && is_opaque(path)? {
            // A deletion of `.wh..opq` is written as `<dir>/.wh..wh..opq`.
            list.push(Change { path: format!("{name}/.wh..opq"), kind: ChangeKind::Delete });
        }
        list.push(Change { path: name, kind: ChangeKind::Add });
    }
    super::export::export(upper, &list, out)
}

/// The changes recorded in `upper` relative to the merged view of `lowers`
/// (topmost first), sorted by path.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>, ArchiveError> {
    let mut out = Vec::new();
    walk(upper, "/", lowers, is_opaque(upper)?, &mut out)?;
    out.sort();
    Ok(out)
}

/// Bytes of regular-file content behind [`changes`].
pub fn size(upper: &Path, lowers: &[PathBuf]) -> Result<u64, ArchiveError> {
    Ok(super::changes_size(upper, &changes(upper, lowers)?))
}

fn walk_err(root: &Path, e: walkdir::Error) -> ArchiveError {
    let path = e.path().unwrap_or(root).to_path_buf();
    IoError::new("walk", path, e.into()).into()
}

use super::changes::Stat;

/// A path as the lower layers show it: its stat, and (for a directory) the
/// lower directories merged at that path, topmost first.
struct Lower {
    stat: Stat,
    stack: Vec<PathBuf>,
}

fn lstat(path: &Path) -> Result<Option<Metadata>, IoError> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(None),
        Err(e) => Err(IoError::new("lstat", path, e)),
    }
}

/// Look `name` up in the lower directories `stack` as overlayfs does.
fn lookup(stack: &[PathBuf], name: &OsString) -> Result<Option<Lower>, IoError> {
    for (i, dir) in stack.iter().enumerate() {
        let path = dir.join(name);
        let Some(md) = lstat(&path)? else { continue };
        if is_whiteout(&md) {
            return Ok(None);
        }
        let stat = Stat::of(&path, &md)?;
        if !md.is_dir() {
            return Ok(Some(Lower { stat, stack: Vec::new() }));
        }
        let mut merged = vec![path.clone()];
        if !is_opaque(&path)? {
            for below in &stack[i + 1..] {
                let p = below.join(name);
                match lstat(&p)? {
                    None => continue,
                    Some(md) if md.is_dir() => {
                        let opaque = is_opaque(&p)?;
                        merged.push(p);
                        if opaque {
                            break;
                        }
                    }
                    Some(_) => break,
                }
            }
        }
        return Ok(Some(Lower { stat, stack: merged }));
    }
    Ok(None)
}

/// The names visible in the merged view of `stack`.
fn visible_names(stack: &[PathBuf]) -> Result<Vec<OsString>, IoError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for dir in stack {
        for entry in fs::read_dir(dir).ctx("read dir", dir)? {
            let name = entry.ctx("read dir", dir)?.file_name();
            if !seen.insert(name.clone()) {
                continue;
            }
            let path = dir.join(&name);
            if lstat(&path)?.is_some_and(|md| !is_whiteout(&md)) {
                out.push(name);
            }
        }
    }
    Ok(out)
}

fn join(parent: &str, name: &OsString) -> String {
    let name = String::from_utf8_lossy(name.as_bytes());
    if parent == "/" { format!("/{name}") } else { format!("{parent}/{name}") }
}

/// Compare the upper directory `dir` (at `rel`) with the lower `stack` at
/// the same path; `opaque`: `dir` hides everything below it.
fn walk(dir: &Path, rel: &str, stack: &[PathBuf], opaque: bool, out: &mut Vec<Change>) -> Result<(), ArchiveError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).ctx("read dir", dir)? {
        names.push(entry.ctx("read dir", dir)?.file_name());
    }
    names.sort();
    for name in &names {
        let path = dir.join(name);
        let Some(md) = lstat(&path)? else { continue };
        let child = join(rel, name);
        let lower = lookup(stack, name)?;
        if is_whiteout(&md) {
            if lower.is_some() {
                out.push(Change { path: child, kind: ChangeKind::Delete });
            }
            continue;
        }
        let stat = Stat::of(&path, &md)?;
        let start = out.len();
        let reported = match &lower {
            None => {
                out.push(Change { path: child.clone(), kind: ChangeKind::Add });
                true
            }
            Some(l) if l.stat.differs(&stat) => {
                out.push(Change { path: child.clone(), kind: ChangeKind::Modify });
                true
            }
            Some(_) => false,
        };
        if md.is_dir() {
            let below = lower.map(|l| l.stack).unwrap_or_default();
            walk(&path, &child, &below, is_opaque(&path)?, out)?;
            if out.len() > start && !reported {
                out.insert(start, Change { path: child, kind: ChangeKind::Modify });
            }
        }
    }
    if opaque {
        let present: HashSet<&OsString> = names.iter().collect();
        for name in visible_names(stack)? {
            if !present.contains(&name) {
                out.push(Change { path: join(rel, &name), kind: ChangeKind::Delete });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use crate::archive::fs::list_xattrs;

    use rustix::fs::{FileType, Mode, XattrFlags, makedev, mknodat};

    use super::super::testutil::{T, dump, sample, set_mtime, touch_all};
    use super::super::{ApplyOptions, WhiteoutFormat, apply_tar, changes_dirs};
    use super::*;

    fn whiteout(path: &Path) {
        mknodat(rustix::fs::CWD, path, FileType::CharacterDevice, Mode::empty(), makedev(0, 0)).unwrap();
    }

    fn opaque(path: &Path) {
        rustix::fs::lsetxattr(path, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty()).unwrap();
    }

    fn chg(path: &str, kind: ChangeKind) -> Change {
        Change { path: path.into(), kind }
    }

    /// Build, by hand, what the kernel would leave: two lowers, an upper,
    /// and the merged view (as a plain copy) to check against the naive rule.
    #[test]
    fn changes_match_the_naive_comparison_of_merged_views() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, up) = (t.path().join("l1"), t.path().join("l2"), t.path().join("up"));
        for d in [&l1, &l2, &up] {
            fs::create_dir(d).unwrap();
        }
        sample(&l1);
        // l2 (above l1): deletes file6, makes dir5 opaque with one file.
        fs::create_dir(l2.join("dir5")).unwrap();
        opaque(&l2.join("dir5"));
        fs::write(l2.join("dir5/only"), "o").unwrap();
        whiteout(&l2.join("file6"));
        fs::create_dir(l2.join("dir2")).unwrap();
        fs::write(l2.join("dir2/x"), "x").unwrap();
        touch_all(&l2);
        // The upper: what a container did.
        for d in ["dir2", "dir4", "dir4/sub", "dir5", "dirnew", "fileToDir", "dir1"] {
            fs::create_dir(up.join(d)).unwrap();
        }
        whiteout(&up.join("file1")); // delete
        whiteout(&up.join("file6")); // already deleted below: nothing
        whiteout(&up.join("never")); // never existed: nothing
        fs::write(up.join("file2"), "changed\n").unwrap(); // modify
        fs::write(up.join("file3"), "file3\n").unwrap(); // copied up, unchanged
        fs::write(up.join("dir2/x"), "x").unwrap(); // copied up unchanged
        fs::write(up.join("dir4/sub/f"), "44").unwrap();
        opaque(&up.join("dir5")); // dir5 recreated: `only` deleted
        fs::write(up.join("dir5/new"), "n").unwrap();
        fs::write(up.join("dirnew/a"), "a").unwrap();
        whiteout(&up.join("dirnew/gone")); // inside a new dir: nothing
        opaque(&up.join("fileToDir"));
        fs::write(up.join("fileToDir/c"), "c").unwrap();
        fs::write(up.join("dirToFile"), "f").unwrap();
        opaque(&up.join("dir1")); // dir1 emptied
        symlink("target9", up.join("symlink1")).unwrap();
        rustix::fs::lsetxattr(up.join("dir2"), "trusted.overlay.origin", b"x", XattrFlags::empty()).unwrap();
        touch_all(&up);
        set_mtime(&up.join("file2"), T + 1, 0);

        let got = changes(&up, &[l2.clone(), l1.clone()]).unwrap();
        use ChangeKind::*;
        let want = vec![
            chg("/dir1", Modify),
            chg("/dir1/f", Delete),
            chg("/dir1/sub", Delete),
            chg("/dir4", Modify),
            chg("/dir4/sub", Modify),
            chg("/dir4/sub/f", Modify),
            chg("/dir5", Modify),
            chg("/dir5/new", Add),
            chg("/dir5/only", Delete),
            chg("/dirToFile", Modify),
            chg("/dirnew", Add),
            chg("/dirnew/a", Add),
            chg("/file1", Delete),
            chg("/file2", Modify),
            chg("/fileToDir", Modify),
            chg("/fileToDir/c", Add),
            chg("/symlink1", Modify),
        ];
        assert_eq!(got, want);

        // The naive rule on plain copies of the merged views agrees.
        let (parent, merged) = (t.path().join("parent"), t.path().join("merged"));
        fs::create_dir(&parent).unwrap();
        fs::create_dir(&merged).unwrap();
        let apply = |dir: &Path, layers: &[&Path]| {
            for l in layers {
                let mut tar = Vec::new();
                export(l, &mut tar).unwrap();
                apply_tar(dir, &mut &tar[..], &ApplyOptions { whiteouts: WhiteoutFormat::Remove }).unwrap();
            }
        };
        apply(&parent, &[&l1, &l2]);
        apply(&merged, &[&l1, &l2, &up]);
        assert_eq!(changes_dirs(&merged, Some(&parent)).unwrap(), want);
        // file2, dir4/sub/f, dir5/new, dirnew/a, dirToFile, fileToDir/c
        assert_eq!(size(&up, &[l2, l1]).unwrap(), 8 + 2 + 1 + 1 + 1 + 1);
    }

    #[test]
    fn export_converts_whiteouts_and_drops_overlay_xattrs() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        fs::create_dir_all(up.join("d/e")).unwrap();
        opaque(&up.join("d"));
        rustix::fs::lsetxattr(up.join("d/e"), "trusted.overlay.impure", b"y", XattrFlags::empty()).unwrap();
        rustix::fs::lsetxattr(up.join("d/e"), "user.keep", b"1", XattrFlags::empty()).unwrap();
        whiteout(&up.join("gone"));
        whiteout(&up.join("d/e/gone2"));
        fs::write(up.join("d/f"), "f").unwrap();
        let mut tar = Vec::new();
        export(up, &mut tar).unwrap();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&tar[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut xattrs = Vec::new();
            if let Some(ext) = e.pax_extensions().unwrap() {
                for x in ext {
                    let key = x.unwrap().key().unwrap().to_string();
                    if key != "mtime" {
                        xattrs.push(key);
                    }
                }
            }
            names.push((e.path().unwrap().display().to_string(), xattrs));
        }
        let n = |s: &str, x: &[&str]| (s.to_string(), x.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            names,
            vec![
                n("d/", &[]),
                n("d/.wh..wh..opq", &[]),
                n("d/e/", &["SCHILY.xattr.user.keep"]),
                n("d/e/.wh.gone2", &[]),
                n("d/f", &[]),
                n(".wh.gone", &[]),
            ]
        );
        // Applied back in overlay form, the upper dir is reproduced.
        let again = tempfile::tempdir().unwrap();
        let a = again.path();
        apply_tar(a, &mut &tar[..], &ApplyOptions { whiteouts: WhiteoutFormat::Overlay }).unwrap();
        for w in ["gone", "d/e/gone2"] {
            assert!(is_whiteout(&fs::symlink_metadata(a.join(w)).unwrap()), "{w}");
        }
        assert!(is_opaque(&a.join("d")).unwrap());
        assert!(!is_opaque(&a.join("d/e")).unwrap());
        assert_eq!(list_xattrs(&a.join("d/e")).unwrap(), vec![(b"user.keep".to_vec(), b"1".to_vec())]);
        assert_eq!(fs::read(a.join("d/f")).unwrap(), b"f");
        assert_eq!(dump(a).len(), dump(up).len());
    }
}
