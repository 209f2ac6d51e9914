//! The vfs driver: every layer is a full copy of its parent.
//!
//! Layout (moby's): `<home>/dir/<id>/` holds each layer's whole tree;
//! `<home>/staging/` is where a layer is built before one atomic rename
//! makes it visible, so a failed or crashed `create` leaves nothing at
//! `dir/<id>`; `<home>/trash/` is where `remove` renames a layer before
//! deleting it; `<home>/tmp/` is the naive diff's scratch space.
//! `staging/` and `trash/` hold only crash leftovers when the driver
//! starts, and [`Vfs::new`] empties them.
//!
//! Diffs are the naive defaults: `get` needs no mount, so the layer dir is
//! also the [`Driver::diff_getter`] directory.

mod check;
mod copy;

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use graphdriver::{IoContext, IoError, Result};

use crate::common::{HostProbe, make_root};
use crate::tree::{TreeBackend, TreeDriver};

pub use check::HostInfo;
pub use copy::{CopyStats, copy_tree};

/// The vfs driver: the tree-driver core with copies as layers.
pub type Vfs = TreeDriver<VfsTrees>;

/// How vfs makes a layer: a plain directory, a full copy of the parent.
#[derive(Debug)]
pub struct VfsTrees {
    info: HostInfo,
}

impl Vfs {
    /// Open (creating if needed) a vfs store at `home`, clearing crash
    /// leftovers from `staging/` and `trash/`.
    pub fn new(home: impl Into<PathBuf>) -> Result<Vfs> {
        TreeDriver::open(home.into(), |home| Ok(VfsTrees { info: HostInfo::probe(home)? }))
    }
}

impl TreeBackend for VfsTrees {
    const NAME: &'static str = "vfs";
    const LAYERS: &'static str = "dir";
    const SIZE_WHY: &'static str = "the size option needs project quotas, which vfs does not implement";

    fn is_layer(md: &fs::Metadata) -> bool {
        md.is_dir()
    }

    fn make_empty(stage: &Path) -> Result<(), IoError> {
        fs::DirBuilder::new().mode(0o700).create(stage).ctx("create", stage)?;
        make_root(stage)
    }

    fn make_child(src: &Path, stage: &Path) -> Result<(), IoError> {
        fs::DirBuilder::new().mode(0o700).create(stage).ctx("create", stage)?;
        let stats = copy::copy_tree(src, stage)?;
        tracing::debug!(driver = Self::NAME, stage = %stage.display(), ?stats, "copied parent");
        Ok(())
    }

    fn destroy(path: &Path) -> Result<(), IoError> {
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => fs::remove_dir_all(path).ctx("remove", path),
            Ok(_) => fs::remove_file(path).ctx("remove", path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IoError::new("stat", path, e)),
        }
    }

    fn status(&self) -> Vec<(String, String)> {
        vec![
            ("Backing Filesystem".into(), self.info.backing_fs.clone()),
            ("Reflink".into(), self.info.reflink.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    use graphdriver::archive::{changes_dirs, export_changes};
    use graphdriver::{CacheId, Change, ChangeKind, CreateOpts, Driver, ErrorKind};

    use super::copy::tests::{dump, rich_tree};
    use super::*;

    fn vfs() -> (tempfile::TempDir, Vfs) {
        let t = tempfile::tempdir().unwrap();
        let v = Vfs::new(t.path().join("vfs")).unwrap();
        (t, v)
    }

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    fn opts() -> CreateOpts {
        CreateOpts::default()
    }

    #[tokio::test]
    async fn create_get_put_remove() {
        let (_t, v) = vfs();
        let id = CacheId::random();
        assert_eq!(v.get(&id, "").await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(v.put(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(v.remove(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(v.metadata(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert!(!v.exists(&id).await);

        v.create(&id, None, &opts()).await.unwrap();
        assert!(v.exists(&id).await);
        assert_eq!(v.create(&id, None, &opts()).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
        let p1 = v.get(&id, "").await.unwrap();
        let p2 = v.get(&id, "").await.unwrap();
        assert_eq!(p1, p2);
        assert_eq!(p1, v.home.join("dir").join(id.as_str()));
        let md = fs::metadata(&p1).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o755, 0, 0));
        assert_eq!(v.metadata(&id).await.unwrap()["refs"], "2");
        v.put(&id).await.unwrap();
        v.put(&id).await.unwrap();
        v.put(&id).await.unwrap(); // extra put: no-op
        assert_eq!(v.metadata(&id).await.unwrap()["refs"], "0");
        assert_eq!(v.diff_getter(&id).await.unwrap(), Some(p1.clone()));
        assert!(v.capabilities().diff_getter);
        assert_eq!(v.ids().await.unwrap(), vec![id.clone()]);

        v.get(&id, "").await.unwrap();
        v.remove(&id).await.unwrap();
        assert!(!v.exists(&id).await);
        assert!(!p1.exists());
        assert_eq!(v.ids().await.unwrap(), vec![]);
        assert_eq!(count(&v.home.join("trash")), 0);
        assert_eq!(count(&v.home.join("staging")), 0);
        assert_eq!(v.remove(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
        // The id is free again, with a fresh count.
        v.create(&id, None, &opts()).await.unwrap();
        assert_eq!(v.metadata(&id).await.unwrap()["refs"], "0");
    }

    #[tokio::test]
    async fn create_copies_the_parent_exactly() {
        let (_t, v) = vfs();
        let (parent, child) = (CacheId::random(), CacheId::random());
        assert_eq!(v.create(&child, Some(&parent), &opts()).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(count(&v.home.join("staging")), 0);
        v.create(&parent, None, &opts()).await.unwrap();
        let pdir = v.get(&parent, "").await.unwrap();
        rich_tree(&pdir);
        v.put(&parent).await.unwrap();
        let before = dump(&pdir);
        v.create_rw(&child, Some(&parent), &opts()).await.unwrap();
        let cdir = v.get(&child, "").await.unwrap();
        assert_eq!(dump(&cdir), before);
        fs::write(cdir.join("big"), b"child only").unwrap();
        fs::remove_file(cdir.join("suid")).unwrap();
        assert_eq!(dump(&pdir), before, "the parent changed through the child");
        assert_eq!(count(&v.home.join("staging")), 0);
    }

    #[tokio::test]
    async fn storage_options_are_checked() {
        let (_t, v) = vfs();
        let mut o = opts();
        o.storage_opt.insert("size".into(), "10G".into());
        assert_eq!(v.create(&CacheId::random(), None, &o).await.unwrap_err().kind(), ErrorKind::Unsupported);
        let mut o = opts();
        o.storage_opt.insert("bogus".into(), "1".into());
        assert_eq!(v.create(&CacheId::random(), None, &o).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(v.ids().await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn new_clears_crash_leftovers_and_ignores_strays() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("vfs");
        let id = {
            let v = Vfs::new(&home).unwrap();
            let id = CacheId::random();
            v.create(&id, None, &opts()).await.unwrap();
            id
        };
        let half = home.join("staging").join(format!("{}-dead", CacheId::random()));
        fs::create_dir_all(half.join("a/b")).unwrap();
        fs::write(half.join("a/b/f"), b"x").unwrap();
        fs::create_dir_all(home.join("trash/old/sub")).unwrap();
        fs::write(home.join("trash/stray-file"), b"x").unwrap();
        fs::create_dir(home.join("dir/not-an-id")).unwrap();
        let v = Vfs::new(&home).unwrap();
        assert_eq!(count(&home.join("staging")), 0);
        assert_eq!(count(&home.join("trash")), 0);
        assert_eq!(v.ids().await.unwrap(), vec![id.clone()]);
        assert!(v.exists(&id).await);
        let status: BTreeMap<_, _> = v.status().await.into_iter().collect();
        assert!(status.contains_key("Backing Filesystem"));
        assert!(status.contains_key("Reflink"));
        assert!(v.scratch_dir().is_dir());
    }

    /// The naive diff defaults on top of vfs: apply, changes, diff, size.
    #[tokio::test]
    async fn naive_diff_round_trip() {
        let (t, v) = vfs();
        let (base, top) = (CacheId::random(), CacheId::random());
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::create_dir(src.join("etc")).unwrap();
        fs::write(src.join("etc/passwd"), b"root:x:0:0").unwrap();
        fs::write(src.join("etc/gone"), b"bye").unwrap();
        let mut tar = Vec::new();
        export_changes(&src, &changes_dirs(&src, None).unwrap(), &mut tar).unwrap();
        v.create(&base, None, &opts()).await.unwrap();
        let n = v.apply_diff(&base, None, Box::new(io::Cursor::new(tar))).await.unwrap();
        assert_eq!(n, 13);

        v.create(&top, Some(&base), &opts()).await.unwrap();
        let mut upper = Vec::new();
        let changes = vec![
            Change { path: "/etc".into(), kind: ChangeKind::Modify },
            Change { path: "/etc/gone".into(), kind: ChangeKind::Delete },
            Change { path: "/etc/new".into(), kind: ChangeKind::Add },
        ];
        fs::write(src.join("etc/new"), b"hello").unwrap();
        export_changes(&src, &changes, &mut upper).unwrap();
        assert_eq!(v.apply_diff(&top, Some(&base), Box::new(io::Cursor::new(upper))).await.unwrap(), 5);
        let got = v.changes(&top, Some(&base)).await.unwrap();
        assert_eq!(got, changes);
        assert_eq!(v.diff_size(&top, Some(&base)).await.unwrap(), 5);

        // diff(top, base) applied onto a copy of base gives top.
        let mut diff = Vec::new();
        io::Read::read_to_end(&mut v.diff(&top, Some(&base)).await.unwrap(), &mut diff).unwrap();
        let again = CacheId::random();
        v.create(&again, Some(&base), &opts()).await.unwrap();
        v.apply_diff(&again, Some(&base), Box::new(io::Cursor::new(diff))).await.unwrap();
        let (a, b) = (v.get(&again, "").await.unwrap(), v.get(&top, "").await.unwrap());
        let (mut da, mut db) = (dump(&a), dump(&b));
        da.remove("/");
        db.remove("/");
        assert_eq!(da, db);

        // Hostile input through the driver: InvalidArgument, nothing outside.
        let mut evil = tar_header(b"../escape", 1);
        evil.extend_from_slice(&[b'x'; 512]);
        evil.extend_from_slice(&[0; 1024]);
        let err = v.apply_diff(&again, None, Box::new(io::Cursor::new(evil))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(!v.home.join("dir/escape").exists());
    }

    fn tar_header(name: &[u8], size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }
}
