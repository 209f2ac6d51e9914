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

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use graphdriver::{CacheId, Capabilities, CreateOpts, Driver, DriverError, IoContext, IoError, Result};

use crate::common::{
    Counts, blocking, list_ids, make_root, publish_staged, reject_storage_opts, remove_via_trash, unique,
};

pub use check::HostInfo;
pub use copy::{CopyStats, copy_tree};

const NAME: &str = "vfs";

/// The vfs driver. See the module docs for the layout.
#[derive(Debug)]
pub struct Vfs {
    home: PathBuf,
    /// `get` counts per layer. Never held across I/O.
    refs: Counts,
    info: HostInfo,
}

impl Vfs {
    /// Open (creating if needed) a vfs store at `home`, clearing crash
    /// leftovers from `staging/` and `trash/`.
    pub fn new(home: impl Into<PathBuf>) -> Result<Vfs> {
        let home = home.into();
        for sub in ["", "dir", "staging", "trash", "tmp"] {
            let p = home.join(sub);
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&p).ctx("create", &p)?;
        }
        for sub in ["staging", "trash"] {
            let p = home.join(sub);
            for entry in fs::read_dir(&p).ctx("read dir", &p)? {
                let leftover = entry.ctx("read dir", &p)?.path();
                tracing::info!(driver = NAME, path = %leftover.display(), "removing crash leftover");
                remove_path(&leftover)?;
            }
        }
        let info = check::probe(&home, &home.join("tmp"));
        Ok(Vfs { home, refs: Counts::default(), info })
    }

    fn layer_dir(&self, id: &CacheId) -> PathBuf {
        self.home.join("dir").join(id.as_str())
    }

    /// The layer dir, or `NotFound`.
    async fn existing(&self, id: &CacheId) -> Result<PathBuf> {
        let dir = self.layer_dir(id);
        match tokio::fs::symlink_metadata(&dir).await {
            Ok(md) if md.is_dir() => Ok(dir),
            Ok(_) => Err(DriverError::NotFound(id.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DriverError::NotFound(id.to_string())),
            Err(e) => Err(IoError::new("stat", dir, e).into()),
        }
    }

    async fn create_layer(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        check_opts(opts)?;
        let home = self.home.clone();
        let (id, parent) = (id.clone(), parent.cloned());
        tracing::debug!(driver = NAME, %id, parent = ?parent.as_ref().map(CacheId::as_str), "create");
        blocking(move || create_blocking(&home, &id, parent.as_ref())).await
    }
}

fn check_opts(opts: &CreateOpts) -> Result<()> {
    reject_storage_opts(NAME, opts, "the size option needs project quotas, which vfs does not implement")
}

fn create_blocking(home: &Path, id: &CacheId, parent: Option<&CacheId>) -> Result<()> {
    let target = home.join("dir").join(id.as_str());
    if fs::symlink_metadata(&target).is_ok() {
        return Err(DriverError::AlreadyExists(id.to_string()));
    }
    let src = match parent {
        Some(p) => {
            let src = home.join("dir").join(p.as_str());
            if !fs::symlink_metadata(&src).map(|m| m.is_dir()).unwrap_or(false) {
                return Err(DriverError::NotFound(p.to_string()));
            }
            Some(src)
        }
        None => None,
    };
    let stage = home.join("staging").join(unique(id));
    fs::DirBuilder::new().mode(0o700).create(&stage).ctx("create", &stage)?;
    let built = match &src {
        Some(src) => copy::copy_tree(src, &stage).map(|stats| {
            tracing::debug!(driver = NAME, %id, ?stats, "copied parent");
        }),
        None => make_root(&stage),
    };
    let res = built.map_err(DriverError::from).and_then(|()| publish_staged(&stage, &target, id));
    if res.is_err()
        && let Err(e) = remove_path(&stage)
    {
        tracing::warn!(driver = NAME, error = %e, "cannot clean up a failed create; removed at next start");
    }
    res
}

fn delete_tree(path: &Path) -> Result<()> {
    Ok(remove_path(path)?)
}

fn is_layer(path: &Path) -> Result<bool> {
    Ok(fs::symlink_metadata(path).map(|m| m.is_dir()).unwrap_or(false))
}

fn remove_path(path: &Path) -> Result<(), IoError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path).ctx("remove", path),
        Ok(_) => fs::remove_file(path).ctx("remove", path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new("stat", path, e)),
    }
}

#[async_trait]
impl Driver for Vfs {
    fn name(&self) -> &str {
        NAME
    }

    async fn create(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        self.create_layer(id, parent, opts).await
    }

    async fn create_rw(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        self.create_layer(id, parent, opts).await
    }

    async fn remove(&self, id: &CacheId) -> Result<()> {
        let dir = self.existing(id).await?;
        let trash = self.home.join("trash").join(unique(id));
        remove_via_trash(NAME, id, dir, trash, delete_tree).await?;
        self.refs.forget(id);
        Ok(())
    }

    async fn get(&self, id: &CacheId, _mount_label: &str) -> Result<PathBuf> {
        let dir = self.existing(id).await?;
        self.refs.take(id);
        Ok(dir)
    }

    async fn put(&self, id: &CacheId) -> Result<()> {
        self.existing(id).await?;
        self.refs.release(id);
        Ok(())
    }

    async fn exists(&self, id: &CacheId) -> bool {
        self.existing(id).await.is_ok()
    }

    async fn status(&self) -> Vec<(String, String)> {
        vec![
            ("Backing Filesystem".into(), self.info.backing_fs.clone()),
            ("Reflink".into(), self.info.reflink.to_string()),
        ]
    }

    async fn metadata(&self, id: &CacheId) -> Result<BTreeMap<String, String>> {
        let dir = self.existing(id).await?;
        let refs = self.refs.count(id);
        Ok(BTreeMap::from([("dir".to_string(), dir.display().to_string()), ("refs".to_string(), refs.to_string())]))
    }

    async fn cleanup(&self) -> Result<()> {
        Ok(())
    }

    async fn ids(&self) -> Result<Vec<CacheId>> {
        list_ids(NAME, self.home.join("dir"), is_layer).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { native_diff: false, diff_getter: true }
    }

    async fn diff_getter(&self, id: &CacheId) -> Result<Option<PathBuf>> {
        Ok(Some(self.existing(id).await?))
    }

    fn scratch_dir(&self) -> PathBuf {
        self.home.join("tmp")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use graphdriver::archive::{changes_dirs, export_changes};
    use graphdriver::{Change, ChangeKind, ErrorKind};

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
