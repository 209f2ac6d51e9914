//! The btrfs driver: one subvolume per layer.
//!
//! Layout (moby's, plus vfs's crash-safety dirs): `<home>/subvolumes/<id>`
//! is each layer's subvolume, holding its whole tree. A layer without a
//! parent is a new empty subvolume (`BTRFS_IOC_SUBVOL_CREATE`, root dir 0755
//! root:root); a layer with a parent is a writable snapshot of the parent's
//! subvolume (`BTRFS_IOC_SNAP_CREATE_V2`), so creating it costs O(1) whatever
//! the parent's size, and the two share extents until either is written.
//!
//! A layer is built in `<home>/staging/` and appears at `subvolumes/<id>`
//! by one `RENAME_NOREPLACE`; `remove` renames it into `<home>/trash/`
//! before destroying it (nested subvolumes first), so a crash at any point
//! leaves nothing that blocks re-creating an id. [`Btrfs::new`] destroys
//! whatever staging/ and trash/ still hold. `<home>/tmp/` is the naive
//! diff's scratch space.
//!
//! `get` mounts nothing: a subvolume is a directory of the mounted btrfs, so
//! `get` returns its path and only counts, and `cleanup` has nothing to undo.
//! Unlike moby we do not bind-mount the home onto itself: there are no
//! mounts below it to give a propagation type to. Diffs are the naive
//! defaults; the subvolume holds the full tree, so it is also the
//! [`Driver::diff_getter`] directory (as with vfs). Quotas (`size`) are not
//! implemented.
//!
//! The raw ioctls live in `ioctl.rs`, the only module of the workspace that
//! may use `unsafe`.

mod check;
mod ioctl;
mod subvol;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use graphdriver::{IoError, Result};

use crate::common::{HostProbe, make_root};
use crate::tree::{TreeBackend, TreeDriver};

pub use check::{BTRFS_SUPER_MAGIC, HostInfo};
pub use ioctl::FsInfo;

const NAME: &str = "btrfs";

/// The btrfs driver: the tree-driver core with subvolumes as layers.
pub type Btrfs = TreeDriver<Subvolumes>;

/// How btrfs makes a layer: a subvolume, a snapshot of the parent's.
#[derive(Debug)]
pub struct Subvolumes {
    info: HostInfo,
}

impl Btrfs {
    /// Open (creating if needed) a btrfs store at `home`, which must be on
    /// btrfs (else [`graphdriver::DriverError::Unsupported`], and nothing is
    /// created), and destroy crash leftovers in `staging/` and `trash/`.
    pub fn new(home: impl Into<PathBuf>) -> Result<Btrfs> {
        let home = home.into();
        check::require_btrfs(&home)?;
        TreeDriver::open(home, |home| Ok(Subvolumes { info: HostInfo::probe(home)? }))
    }
}

impl TreeBackend for Subvolumes {
    const NAME: &'static str = NAME;
    const LAYERS: &'static str = "subvolumes";
    const SIZE_WHY: &'static str = "the size option needs btrfs quota groups, which this driver does not implement";

    fn is_layer(md: &fs::Metadata) -> bool {
        subvol::is_subvolume(md)
    }

    fn make_empty(stage: &Path) -> Result<(), IoError> {
        subvol::create(stage)?;
        make_root(stage)
    }

    fn make_child(src: &Path, stage: &Path) -> Result<(), IoError> {
        subvol::snapshot(src, stage)
    }

    fn destroy(path: &Path) -> Result<(), IoError> {
        subvol::destroy_tree(path)
    }

    fn status(&self) -> Vec<(String, String)> {
        self.info.status()
    }

    fn metadata(dir: &Path) -> Result<BTreeMap<String, String>, IoError> {
        Ok(BTreeMap::from([("subvolume_id".to_string(), subvol::id(dir)?.to_string())]))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;
    use std::sync::Arc;

    use std::io;

    use graphdriver::archive::{changes_dirs, export_changes};
    use graphdriver::{CacheId, Change, ChangeKind, CreateOpts, Driver, DriverError, ErrorKind};

    use super::*;
    use crate::common::unique;
    use crate::testing::BtrfsLoop;

    /// A driver on a fresh loop-mounted btrfs. Fields drop in order: the
    /// driver first, then the filesystem.
    struct Fixture {
        d: Btrfs,
        lo: BtrfsLoop,
    }

    impl Fixture {
        fn new() -> Fixture {
            let lo = BtrfsLoop::new(128).expect("cannot make the btrfs loop harness (root, btrfs-progs, loop)");
            let d = Btrfs::new(lo.path().join("btrfs")).unwrap();
            Fixture { d, lo }
        }

        fn home(&self) -> &Path {
            &self.d.home
        }

        /// Tear down, failing if a mount or loop device is left.
        fn close(self) {
            let Fixture { d, lo } = self;
            drop(d);
            lo.close().unwrap();
        }
    }

    fn opts() -> CreateOpts {
        CreateOpts::default()
    }

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    /// Every live subvolume of the filesystem at `mnt`, by path, as
    /// btrfs-progs sees it (an independent check on our ioctls).
    fn live_subvolumes(mnt: &Path) -> Vec<String> {
        let out = Command::new("btrfs").arg("subvolume").arg("list").arg(mnt).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut v: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split(" path ").nth(1).map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// Path → type, mode, owner and content of everything below `root`.
    fn dump(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(root).unwrap();
            let md = entry.path().symlink_metadata().unwrap();
            let mut d = format!("mode={:o} uid={} gid={}", md.mode(), md.uid(), md.gid());
            if md.is_file() {
                d += &format!(" data={:?}", fs::read(entry.path()).unwrap());
            } else if md.is_symlink() {
                d += &format!(" -> {:?}", fs::read_link(entry.path()).unwrap());
            }
            out.insert(String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned(), d);
        }
        out
    }

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("etc/ssl")).unwrap();
        fs::write(root.join("etc/passwd"), b"root:x:0:0").unwrap();
        fs::write(root.join("etc/ssl/cert"), vec![7u8; 70_000]).unwrap();
        fs::set_permissions(root.join("etc/ssl"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::lchown(root.join("etc/passwd"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::symlink("etc/passwd", root.join("link")).unwrap();
    }

    #[tokio::test]
    async fn create_base_and_snapshot() {
        let f = Fixture::new();
        let d = &f.d;
        let (base, child) = (CacheId::random(), CacheId::random());
        assert_eq!(d.create(&child, Some(&base), &opts()).await.unwrap_err().kind(), ErrorKind::NotFound);
        d.create(&base, None, &opts()).await.unwrap();
        assert_eq!(d.create(&base, None, &opts()).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
        let pdir = d.get(&base, "").await.unwrap();
        assert_eq!(pdir, f.home().join("subvolumes").join(base.as_str()));
        let md = fs::symlink_metadata(&pdir).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid(), md.ino()), (0o755, 0, 0, 256));
        tree(&pdir);
        d.put(&base).await.unwrap();
        let before = dump(&pdir);

        d.create_rw(&child, Some(&base), &opts()).await.unwrap();
        let cdir = d.get(&child, "").await.unwrap();
        assert_eq!(fs::symlink_metadata(&cdir).unwrap().ino(), 256, "the child is a subvolume");
        assert_eq!(dump(&cdir), before, "the snapshot inherits the parent's files");
        fs::write(cdir.join("etc/passwd"), b"changed").unwrap();
        fs::write(cdir.join("new"), b"child only").unwrap();
        fs::remove_file(cdir.join("etc/ssl/cert")).unwrap();
        assert_eq!(dump(&pdir), before, "the parent changed through the child");
        d.put(&child).await.unwrap();

        let (mb, mc) = (d.metadata(&base).await.unwrap(), d.metadata(&child).await.unwrap());
        assert_eq!(mb["dir"], pdir.display().to_string());
        let (ib, ic): (u64, u64) = (mb["subvolume_id"].parse().unwrap(), mc["subvolume_id"].parse().unwrap());
        assert!(ib >= 256 && ic >= 256 && ib != ic, "{ib} {ic}");
        let mut want = vec![base.clone(), child.clone()];
        want.sort();
        assert_eq!(d.ids().await.unwrap(), want);
        assert_eq!(count(&f.home().join("staging")), 0);
        assert_eq!(
            live_subvolumes(f.lo.path()),
            vec![format!("btrfs/subvolumes/{base}"), format!("btrfs/subvolumes/{child}")]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        let status: BTreeMap<_, _> = d.status().await.into_iter().collect();
        assert_eq!(status["Backing Filesystem"], "btrfs");
        assert_eq!(status["Quota"], "off");
        assert_eq!(status["Devices"], "1");
        assert!(status.contains_key("Filesystem UUID") && status.contains_key("Kernel Version"), "{status:?}");
        assert!(d.scratch_dir().is_dir());
        assert!(d.capabilities().diff_getter && !d.capabilities().native_diff);
        assert_eq!(d.diff_getter(&base).await.unwrap(), Some(pdir));
        d.cleanup().await.unwrap();
        f.close();
    }

    #[tokio::test]
    async fn storage_options_are_checked() {
        let f = Fixture::new();
        let mut o = opts();
        o.storage_opt.insert("size".into(), "10G".into());
        assert_eq!(f.d.create(&CacheId::random(), None, &o).await.unwrap_err().kind(), ErrorKind::Unsupported);
        let mut o = opts();
        o.storage_opt.insert("bogus".into(), "1".into());
        assert_eq!(f.d.create(&CacheId::random(), None, &o).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(f.d.ids().await.unwrap(), vec![]);
        f.close();
    }

    #[tokio::test]
    async fn remove_destroys_nested_subvolumes() {
        let f = Fixture::new();
        let d = &f.d;
        let (id, child) = (CacheId::random(), CacheId::random());
        d.create(&id, None, &opts()).await.unwrap();
        let dir = d.get(&id, "").await.unwrap();
        fs::create_dir_all(dir.join("var/lib")).unwrap();
        subvol::create(&dir.join("var/lib/inner")).unwrap();
        fs::write(dir.join("var/lib/inner/file"), b"x").unwrap();
        subvol::create(&dir.join("var/lib/inner/deeper")).unwrap();
        fs::create_dir(dir.join("var/lib/inner/deeper/d")).unwrap();
        subvol::create(&dir.join("sibling")).unwrap();
        d.put(&id).await.unwrap();
        assert_eq!(live_subvolumes(f.lo.path()).len(), 4);
        // A snapshot of it has empty placeholders where the nested ones were.
        d.create(&child, Some(&id), &opts()).await.unwrap();
        let cdir = d.get(&child, "").await.unwrap();
        assert!(cdir.join("var/lib/inner").is_dir());
        assert_eq!(count(&cdir.join("var/lib/inner")), 0);
        d.put(&child).await.unwrap();

        d.remove(&id).await.unwrap();
        assert!(!d.exists(&id).await);
        assert_eq!(live_subvolumes(f.lo.path()), vec![format!("btrfs/subvolumes/{child}")]);
        assert_eq!(count(&f.home().join("trash")), 0);
        // The snapshot is independent of the removed parent.
        d.remove(&child).await.unwrap();
        assert_eq!(live_subvolumes(f.lo.path()), Vec::<String>::new());
        f.close();
    }

    #[tokio::test]
    async fn remove_semantics() {
        let f = Fixture::new();
        let d = &f.d;
        let id = CacheId::random();
        assert_eq!(d.remove(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
        d.create(&id, None, &opts()).await.unwrap();
        let p = d.get(&id, "").await.unwrap();
        fs::write(p.join("f"), b"x").unwrap();
        d.get(&id, "").await.unwrap();
        // Removing a layer that is in use (got twice) still removes it.
        d.remove(&id).await.unwrap();
        assert!(!d.exists(&id).await);
        assert!(!p.exists());
        assert_eq!(d.remove(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(d.get(&id, "").await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(d.put(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(d.metadata(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(d.diff_getter(&id).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(d.ids().await.unwrap(), vec![]);
        // The id is free again, empty, with a fresh count.
        d.create(&id, None, &opts()).await.unwrap();
        assert_eq!(d.metadata(&id).await.unwrap()["refs"], "0");
        assert_eq!(count(&d.get(&id, "").await.unwrap()), 0);
        // A plain directory (not a subvolume) under subvolumes/ is not a layer.
        let stray = CacheId::random();
        fs::create_dir(f.home().join("subvolumes").join(stray.as_str())).unwrap();
        assert!(!d.exists(&stray).await);
        assert_eq!(d.ids().await.unwrap(), vec![id.clone()]);
        f.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn get_put_counting() {
        let f = Fixture::new();
        let Fixture { d, lo } = f;
        let d = Arc::new(d);
        let id = CacheId::random();
        d.create(&id, None, &opts()).await.unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (d, id) = (d.clone(), id.clone());
                tokio::spawn(async move { d.get(&id, "").await.unwrap() })
            })
            .collect();
        let mut paths = Vec::new();
        for t in tasks {
            paths.push(t.await.unwrap());
        }
        assert!(paths.iter().all(|p| *p == paths[0]));
        assert_eq!(d.metadata(&id).await.unwrap()["refs"], "16");
        for _ in 0..15 {
            d.put(&id).await.unwrap();
        }
        assert_eq!(d.metadata(&id).await.unwrap()["refs"], "1");
        d.put(&id).await.unwrap();
        d.put(&id).await.unwrap(); // extra put: no-op
        assert_eq!(d.metadata(&id).await.unwrap()["refs"], "0");
        // No mount: the path stays usable between get and put and after.
        assert!(!crate::testing::mounted_at(&paths[0]));
        assert_eq!(d.get(&CacheId::random(), "").await.unwrap_err().kind(), ErrorKind::NotFound);
        drop(d);
        lo.close().unwrap();
    }

    #[tokio::test]
    async fn refuses_a_home_not_on_btrfs() {
        let t = tempfile::tempdir().unwrap();
        let magic = rustix::fs::statfs(t.path()).unwrap().f_type as i64;
        assert_ne!(magic, BTRFS_SUPER_MAGIC, "the test needs a temp dir that is not on btrfs");
        let home = t.path().join("root/btrfs");
        let err = Btrfs::new(&home).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        match &err {
            DriverError::Unsupported { driver, why } => {
                assert_eq!(driver, "btrfs");
                assert!(why.ends_with("not btrfs"), "{why}");
                assert!(why.contains(&format!("(magic 0x{magic:x})")), "{why}");
                assert!(why.contains(&t.path().display().to_string()), "{why}");
                if magic == crate::fsmagic::EXT {
                    assert!(why.contains("is on extfs"), "{why}");
                }
            }
            other => panic!("wrong error {other:?}"),
        }
        assert!(!t.path().join("root").exists(), "created dirs on the wrong filesystem");
        let err = crate::registry::open("btrfs", &t.path().join("root")).map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("not btrfs"), "{err}");
    }

    #[tokio::test]
    async fn registry_opens_btrfs() {
        let lo = BtrfsLoop::new(128).unwrap();
        assert!(crate::DriverKind::BUILTIN.contains(&crate::DriverKind::Btrfs));
        let d = crate::registry::open("btrfs", lo.path()).unwrap();
        assert_eq!(d.name(), "btrfs");
        let id = CacheId::random();
        d.create(&id, None, &opts()).await.unwrap();
        assert_eq!(d.get(&id, "").await.unwrap(), lo.path().join("btrfs/subvolumes").join(id.as_str()));
        drop(d);
        lo.close().unwrap();
    }

    #[tokio::test]
    async fn new_destroys_crash_leftovers() {
        let f = Fixture::new();
        let home = f.home().to_path_buf();
        let (gone, kept) = (CacheId::random(), CacheId::random());
        f.d.create(&gone, None, &opts()).await.unwrap();
        f.d.create(&kept, None, &opts()).await.unwrap();
        let dir = f.d.get(&gone, "").await.unwrap();
        subvol::create(&dir.join("nested")).unwrap();
        fs::write(dir.join("nested/f"), b"x").unwrap();
        // A crash right after remove's rename, before the destroy ...
        fs::rename(&dir, home.join("trash").join(unique(&gone))).unwrap();
        // ... one mid-create (a staged subvolume), and odd debris.
        subvol::create(&home.join("staging").join(unique(&kept))).unwrap();
        fs::create_dir_all(home.join("trash/plain/sub")).unwrap();
        fs::write(home.join("trash/plain/sub/f"), b"x").unwrap();
        fs::write(home.join("trash/stray-file"), b"x").unwrap();
        assert_eq!(live_subvolumes(f.lo.path()).len(), 4);
        // The id is already free: the crash left nothing in its way.
        let Fixture { d, lo } = f;
        drop(d);
        let d = Btrfs::new(&home).unwrap();
        assert_eq!(count(&home.join("trash")), 0);
        assert_eq!(count(&home.join("staging")), 0);
        assert_eq!(live_subvolumes(lo.path()), vec![format!("btrfs/subvolumes/{kept}")]);
        assert_eq!(d.ids().await.unwrap(), vec![kept.clone()]);
        assert!(!d.exists(&gone).await);
        d.create(&gone, None, &opts()).await.unwrap();
        assert!(d.exists(&gone).await);
        drop(d);
        lo.close().unwrap();
    }

    /// The naive diff defaults on top of btrfs: apply, changes, diff, size.
    #[tokio::test]
    async fn naive_diff_round_trip() {
        let f = Fixture::new();
        let d = &f.d;
        let t = tempfile::tempdir().unwrap();
        let (base, top) = (CacheId::random(), CacheId::random());
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::create_dir(src.join("etc")).unwrap();
        fs::write(src.join("etc/passwd"), b"root:x:0:0").unwrap();
        fs::write(src.join("etc/gone"), b"bye").unwrap();
        let mut tar = Vec::new();
        export_changes(&src, &changes_dirs(&src, None).unwrap(), &mut tar).unwrap();
        d.create(&base, None, &opts()).await.unwrap();
        assert_eq!(d.apply_diff(&base, None, Box::new(io::Cursor::new(tar))).await.unwrap(), 13);

        d.create(&top, Some(&base), &opts()).await.unwrap();
        let changes = vec![
            Change { path: "/etc".into(), kind: ChangeKind::Modify },
            Change { path: "/etc/gone".into(), kind: ChangeKind::Delete },
            Change { path: "/etc/new".into(), kind: ChangeKind::Add },
        ];
        fs::write(src.join("etc/new"), b"hello").unwrap();
        let mut upper = Vec::new();
        export_changes(&src, &changes, &mut upper).unwrap();
        assert_eq!(d.apply_diff(&top, Some(&base), Box::new(io::Cursor::new(upper))).await.unwrap(), 5);
        assert_eq!(d.changes(&top, Some(&base)).await.unwrap(), changes);
        assert_eq!(d.diff_size(&top, Some(&base)).await.unwrap(), 5);
        // The parent is untouched by the child's whiteout.
        assert!(f.home().join("subvolumes").join(base.as_str()).join("etc/gone").exists());

        // diff(top, base) applied onto a fresh snapshot of base gives top.
        let mut diff = Vec::new();
        io::Read::read_to_end(&mut d.diff(&top, Some(&base)).await.unwrap(), &mut diff).unwrap();
        let again = CacheId::random();
        d.create(&again, Some(&base), &opts()).await.unwrap();
        d.apply_diff(&again, Some(&base), Box::new(io::Cursor::new(diff))).await.unwrap();
        let (a, b) = (d.get(&again, "").await.unwrap(), d.get(&top, "").await.unwrap());
        assert_eq!(dump(&a), dump(&b));
        assert_eq!(count(&d.scratch_dir()), 0, "scratch files left behind");
        d.put(&again).await.unwrap();
        d.put(&top).await.unwrap();
        f.close();
    }
}
