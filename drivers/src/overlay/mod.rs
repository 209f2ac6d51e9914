//! The overlay driver: the kernel's overlayfs, in Docker's overlay2 layout.
//!
//! Each layer keeps only its own files (`<id>/diff`, the upper dir of its
//! mounts); `get` stacks them with the ancestors' `diff` dirs, reached
//! through short `l/<short>` links so that even 128 lowers fit in one page
//! of mount options (`layout.rs` for the files, `mount.rs` for the page
//! limit). A layer made by `create` (an image layer), or one that has a
//! child, is marked `committed` and mounted read-only; a writable base
//! layer needs no mount at all: `get` returns its `diff`.
//!
//! Diffs are native — the layer's `diff` dir *is* its change set, with
//! whiteouts as 0/0 devices and opaque xattrs (`diff.rs`) — when asked
//! against the real parent and when the start-up probe (`check.rs`) found a
//! kernel whose upper dirs are plain with `redirect_dir=off,metacopy=off`;
//! otherwise the naive defaults compare mounted trees.
//!
//! Removing a layer that still has children keeps its files, hidden, until
//! the last child goes (`family.rs`), so a child never breaks.
//!
//! Mounts are counted per id in a map of per-id async locks: the map's
//! std mutex guards only the map; a layer's lock serialises its own
//! mount and unmount. Every mount lives under the home, so start-up (after a
//! crash) and `cleanup` find them all in `/proc/self/mountinfo`.
//!
//! Start-up work that looks at every layer — reading each `lower` file for
//! the child counts, mending kept layers' links, removing leftover `merged`
//! dirs and dangling links — runs on a thread of its own, so that opening a
//! home of 100,000 layers costs no more than opening an empty one; every
//! call that creates, removes or mounts a layer waits for it first
//! ([`Overlay::started`]).

mod check;
mod diff;
mod family;
mod layout;
mod mount;
#[cfg(test)]
mod testutil;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use graphdriver::keyed::KeyedMutex;
use graphdriver::{
    CacheId, Capabilities, Change, CreateOpts, Driver, DriverError, IoContext, IoError, Result, TarReader, naive,
};

pub use check::HostInfo;

use crate::common::HostProbe;
use family::{Family, Removal};
use layout::Layout;

/// Docker's name for this driver and its on-disk layout: the home is
/// `<root>/overlay2`, the layer metadata `<root>/image/overlay2/layerdb`.
const NAME: &str = "overlay2";

/// A layer's mount count and where `get` put it.
#[derive(Debug, Default)]
struct MountState {
    count: u32,
    path: Option<PathBuf>,
    /// An overlay is mounted on `merged` (not so for a base layer).
    mounted: bool,
}

fn is_dir(p: &std::path::Path) -> Result<bool> {
    Ok(fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false))
}

impl graphdriver::keyed::Idle for MountState {
    /// Unmounted and unused: the entry may go.
    fn is_idle(&self) -> bool {
        self.count == 0
    }
}

/// The overlay driver. See the module docs.
#[derive(Debug)]
pub struct Overlay {
    layout: Layout,
    info: HostInfo,
    /// `index=off,redirect_dir=off,metacopy=off,` as the kernel has them.
    prefix: String,
    /// Per-id mount state behind a per-id lock (the keyed lock the store
    /// uses too); an entry lives while it is held or mounted.
    mounts: KeyedMutex<CacheId, MountState>,
    /// Child counts, to refuse removing a parent. Never held across I/O.
    /// Filled by the start-up thread (see [`Overlay::started`]).
    family: Arc<Mutex<Family>>,
    /// The start-up thread's outcome, once it is known.
    started: tokio::sync::watch::Receiver<Option<std::result::Result<(), String>>>,
    /// Mounts that needed paths relative to the home (page-size fallback).
    relative_mounts: AtomicU64,
}

impl Overlay {
    /// Open (creating if needed) an overlay store at `home`: undo mounts and
    /// remove staging, trash and `merged` leftovers of a crash, then probe
    /// the host. `Unsupported` says why overlay cannot run here.
    pub fn new(home: impl Into<PathBuf>) -> Result<Overlay> {
        let home = home.into();
        fs::DirBuilder::new().recursive(true).mode(0o710).create(&home).ctx("create", &home)?;
        let home = fs::canonicalize(&home).ctx("resolve", &home)?;
        let layout = Layout { home };
        for dir in [layout.links(), layout.staging(), layout.trash(), layout.tmp()] {
            fs::DirBuilder::new().mode(0o700).create(&dir).or_else(mount::exists_ok).ctx("create", &dir)?;
        }
        let undone = mount::unmount_all_under(&layout.home).ctx("unmount leftovers under", &layout.home)?;
        if undone > 0 {
            tracing::info!(driver = NAME, count = undone, "unmounted leftover mounts");
        }
        layout::recover(&layout)?;
        let info = HostInfo::probe(&layout.home)?;
        if let Err(why) = &info.native_diff {
            tracing::warn!(driver = NAME, why, "native diff is off; diffs compare mounted trees");
        }
        let prefix = info.opts.prefix();
        let family = Arc::new(Mutex::new(Family::default()));
        let (tx, started) = tokio::sync::watch::channel(None);
        let (l2, f2) = (layout.clone(), family.clone());
        std::thread::Builder::new()
            .name("overlay-start".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                let res = start_layers(&l2, &f2).map_err(|e| e.to_string());
                match &res {
                    Ok(()) => tracing::debug!(driver = NAME, elapsed = ?t.elapsed(), "looked at every layer"),
                    Err(e) => tracing::error!(
                        driver = NAME,
                        error = e,
                        "start-up failed; layers can't be created, removed or mounted"
                    ),
                }
                let _ = tx.send(Some(res));
            })
            .ctx("spawn the start-up thread for", &layout.home)?;
        Ok(Overlay {
            layout,
            info,
            prefix,
            mounts: KeyedMutex::new(),
            family,
            started,
            relative_mounts: AtomicU64::new(0),
        })
    }

    /// Wait for the start-up work that looks at every layer (see the module
    /// docs); its error, if it failed.
    pub async fn started(&self) -> Result<()> {
        let mut rx = self.started.clone();
        let res = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| DriverError::Other("overlay2: the start-up thread ended without an answer".into()))?;
        match &*res {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(DriverError::Other(format!("overlay2 start-up failed: {e}"))),
            None => Err(DriverError::Other("overlay2: start-up still running".into())),
        }
    }

    /// Undo every mount below `dir` (a crash's leftovers), before the dir
    /// is moved ([`crate::legacy`]).
    pub(crate) fn unmount_all_under(dir: &std::path::Path) -> Result<usize> {
        Ok(mount::unmount_all_under(dir).ctx("unmount leftovers under", dir)?)
    }

    /// What the start-up probe found.
    pub fn host_info(&self) -> &HostInfo {
        &self.info
    }

    fn family(&self) -> MutexGuard<'_, Family> {
        family_of(&self.family)
    }
}

fn family_of(family: &Mutex<Family>) -> MutexGuard<'_, Family> {
    family.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The start-up work that looks at every layer (after a crash's mounts are
/// undone): mend kept layers' links, remove leftover `merged` dirs and
/// dangling links, count children, and delete kept dirs no child needs.
fn start_layers(layout: &Layout, family: &Mutex<Family>) -> Result<()> {
    family::retarget_links(layout)?;
    layout::recover_layers(layout)?;
    let (scanned, mut unneeded) = Family::scan(layout)?;
    *family_of(family) = scanned;
    while let Some(name) = unneeded.pop() {
        if let Some(parent) = family::delete_kept(layout, &name)? {
            unneeded.extend(family_of(family).disown(&parent));
        }
    }
    Ok(())
}

impl Overlay {
    /// The layer dir, or `NotFound`.
    async fn existing(&self, id: &CacheId) -> Result<PathBuf> {
        let dir = self.layout.dir(id);
        match tokio::fs::symlink_metadata(&dir).await {
            Ok(md) if md.is_dir() => Ok(dir),
            Ok(_) => Err(DriverError::NotFound(id.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DriverError::NotFound(id.to_string())),
            Err(e) => Err(IoError::new("stat", dir, e).into()),
        }
    }

    async fn create_layer(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts, ro: bool) -> Result<()> {
        check_opts(opts)?;
        self.started().await?;
        let (layout, id, parent) = (self.layout.clone(), id.clone(), parent.cloned());
        tracing::debug!(driver = NAME, %id, parent = ?parent.as_ref().map(CacheId::as_str), ro, "create");
        self.family().made(&id);
        if let Some(p) = &parent {
            self.family().adopt(p)?;
        }
        let p = parent.clone();
        let res = blocking(move || layout::create(&layout, &id, p.as_ref(), ro)).await;
        if res.is_err()
            && let Some(p) = &parent
        {
            self.family().disown(p.as_str());
        }
        res
    }

    /// Delete kept layers no child needs any more, and their kept parents.
    async fn delete_unneeded(&self, mut unneeded: Vec<String>) {
        while let Some(name) = unneeded.pop() {
            let layout = self.layout.clone();
            match blocking(move || family::delete_kept(&layout, &name)).await {
                Ok(Some(parent)) => unneeded.extend(self.family().disown(&parent)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(driver = NAME, error = %e, "cannot delete a kept layer; retried at next start")
                }
            }
        }
    }

    /// Whether the native diff answers for `(id, parent)`.
    async fn native(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<bool> {
        self.existing(id).await?;
        if self.info.native_diff.is_err() {
            return Ok(false);
        }
        let (layout, id, parent) = (self.layout.clone(), id.clone(), parent.cloned());
        blocking(move || diff::is_parent(&layout, &id, parent.as_ref())).await
    }

    /// Run `f` on tokio's blocking pool with this driver's layout.
    async fn on_layer<T: Send + 'static>(
        &self,
        id: &CacheId,
        f: impl FnOnce(&Layout, &CacheId) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (layout, id) = (self.layout.clone(), id.clone());
        blocking(move || f(&layout, &id)).await
    }
}

fn check_opts(opts: &CreateOpts) -> Result<()> {
    reject_storage_opts(
        NAME,
        opts,
        "the size option needs xfs project quotas, which this overlay driver does not implement",
    )
}

use crate::common::{blocking, list_ids, reject_storage_opts};

#[async_trait]
impl Driver for Overlay {
    fn name(&self) -> &str {
        NAME
    }

    async fn create(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        self.create_layer(id, parent, opts, true).await
    }

    async fn create_rw(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        self.create_layer(id, parent, opts, false).await
    }

    async fn remove(&self, id: &CacheId) -> Result<()> {
        self.started().await?;
        self.existing(id).await?;
        let has_children = self.family().begin_remove(id)?;
        let mut st = self.mounts.lock(id).await;
        let was_mounted = st.mounted;
        let res = self.on_layer(id, move |layout, id| family::take_out(layout, id, was_mounted, has_children)).await;
        let (how, trash) = match res {
            Ok(r) => r,
            Err(e) => {
                self.family().end_remove(id, Removal::Failed);
                return Err(e);
            }
        };
        tracing::debug!(driver = NAME, %id, ?how, "removed");
        let unneeded = self.family().end_remove(id, how);
        *st = MountState::default();
        drop(st);
        // The layer is gone from view; a failed delete is retried at start.
        if let Some(trash) = trash
            && let Err(e) = blocking(move || layout::remove_path(&trash).map_err(DriverError::from)).await
        {
            tracing::warn!(driver = NAME, %id, error = %e, "cannot delete removed layer; retried at next start");
        }
        self.delete_unneeded(unneeded).await;
        Ok(())
    }

    async fn get(&self, id: &CacheId, mount_label: &str) -> Result<PathBuf> {
        self.started().await?;
        self.existing(id).await?;
        let mut st = self.mounts.lock(id).await;
        if st.count > 0
            && let Some(path) = st.path.clone()
        {
            st.count += 1;
            return Ok(path);
        }
        let (prefix, label) = (self.prefix.clone(), mount::label(mount_label).to_string());
        let res = self.on_layer(id, move |layout, id| mount::mount_layer(layout, &prefix, id, &label)).await;
        let (path, mounted, relative) = match res {
            Ok(r) => r,
            Err(e) => return Err(e),
        };
        if relative {
            self.relative_mounts.fetch_add(1, Ordering::Relaxed);
        }
        *st = MountState { count: 1, path: Some(path.clone()), mounted };
        Ok(path)
    }

    async fn put(&self, id: &CacheId) -> Result<()> {
        self.existing(id).await?;
        let Some(mut st) = self.mounts.lock_existing(id).await else { return Ok(()) };
        match st.count {
            0 => return Ok(()),
            1 => {}
            _ => {
                st.count -= 1;
                return Ok(());
            }
        }
        if st.mounted {
            self.on_layer(id, mount::unmount_layer).await?;
        }
        *st = MountState::default();
        Ok(())
    }

    async fn exists(&self, id: &CacheId) -> bool {
        self.existing(id).await.is_ok()
    }

    async fn status(&self) -> Vec<(String, String)> {
        self.info.status(&self.prefix)
    }

    async fn metadata(&self, id: &CacheId) -> Result<BTreeMap<String, String>> {
        self.existing(id).await?;
        self.on_layer(id, layout::metadata).await
    }

    async fn cleanup(&self) -> Result<()> {
        // Hold every known layer's lock so that no get mounts while we unmount.
        let mut guards = Vec::new();
        for id in self.mounts.keys() {
            if let Some(g) = self.mounts.lock_existing(&id).await {
                guards.push((id, g));
            }
        }
        let mounted: Vec<CacheId> = guards.iter().filter(|(_, g)| g.mounted).map(|(id, _)| id.clone()).collect();
        let layout = self.layout.clone();
        let res = blocking(move || {
            mount::unmount_all_under(&layout.home).ctx("unmount mounts under", &layout.home)?;
            for id in &mounted {
                let _ = fs::remove_dir(layout.merged(id));
            }
            Ok(())
        })
        .await;
        for (_, g) in &mut guards {
            **g = MountState::default();
        }
        drop(guards);
        res
    }

    async fn ids(&self) -> Result<Vec<CacheId>> {
        list_ids(NAME, self.layout.home.clone(), &["l", "staging", "trash", "tmp"], is_dir).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { native_diff: self.info.native_diff.is_ok(), diff_getter: true }
    }

    async fn diff_getter(&self, id: &CacheId) -> Result<Option<PathBuf>> {
        self.existing(id).await?;
        Ok(Some(self.layout.diff(id)))
    }

    fn scratch_dir(&self) -> PathBuf {
        self.layout.tmp()
    }

    async fn diff(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<TarReader> {
        if self.native(id, parent).await? {
            return self.on_layer(id, diff::diff).await;
        }
        naive::diff(self, id, parent).await
    }

    async fn changes(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<Vec<Change>> {
        if self.native(id, parent).await? {
            return self.on_layer(id, diff::changes).await;
        }
        naive::changes(self, id, parent).await
    }

    async fn apply_diff(&self, id: &CacheId, parent: Option<&CacheId>, mut tar: TarReader) -> Result<u64> {
        self.existing(id).await?;
        let (parent, prefix) = (parent.cloned(), self.prefix.clone());
        let native_diff = self.info.native_diff.is_ok();
        // Applying writes only files, whiteout devices and opaque xattrs, so
        // it is native even where the kernel makes the native *diff* unsafe.
        // The size is Docker's for the same case: overlay2 measures the
        // applied diff dir (moby's `directory.Size`) when its diff is native,
        // and otherwise applies naively and reports the tar's size.
        self.on_layer(id, move |layout, id| {
            if diff::is_parent(layout, id, parent.as_ref())? {
                let applied = diff::apply(layout, id, &mut tar)?;
                match (native_diff, applied.lstat_size) {
                    // Counted while extracting: no second walk of the tree.
                    (true, Some(size)) => Ok(size),
                    (true, None) => diff::applied_size(layout, id),
                    (false, _) => Ok(applied.tar_size),
                }
            } else {
                diff::apply_through_mount(layout, &prefix, id, &mut tar)
            }
        })
        .await
    }

    async fn diff_size(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<u64> {
        if self.native(id, parent).await? {
            return self.on_layer(id, diff::size).await;
        }
        naive::diff_size(self, id, parent).await
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::path::Path;

    use graphdriver::archive::overlay::{is_opaque, is_whiteout};
    use graphdriver::{ChangeKind, ErrorKind};

    use super::mount::{PAGE, Stack};
    use super::testutil::{E, Fixture, disk_tempdir, dump, names, read_all, tar_of};
    use super::*;

    fn opts() -> CreateOpts {
        CreateOpts::default()
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    fn chg(path: &str, kind: ChangeKind) -> Change {
        Change { path: path.into(), kind }
    }

    fn tar(entries: &[E<'_>]) -> Vec<u8> {
        tar_of(entries)
    }

    #[tokio::test]
    async fn layout_files_and_links_are_overlay2s() {
        let fx = Fixture::new();
        let (d, home) = (&fx.d, &fx.home);
        let (base, mid, rw) = (CacheId::random(), CacheId::random(), CacheId::random());
        d.create(&base, None, &opts()).await.unwrap();
        d.create(&mid, Some(&base), &opts()).await.unwrap();
        d.create_rw(&rw, Some(&mid), &opts()).await.unwrap();
        assert_eq!(mode(home), 0o710);
        assert_eq!(mode(&home.join("l")), 0o700);
        let mut links = BTreeMap::new();
        for id in [&base, &mid, &rw] {
            let dir = home.join(id.as_str());
            assert_eq!(mode(&dir), 0o710);
            assert_eq!(mode(&dir.join("diff")), 0o755);
            assert_eq!(fs::metadata(dir.join("diff")).unwrap().uid(), 0);
            let link = fs::read_to_string(dir.join("link")).unwrap();
            assert_eq!(link.len(), 26, "{link}");
            assert!(link.bytes().all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
            let target = fs::read_link(home.join("l").join(&link)).unwrap();
            assert_eq!(target, Path::new("..").join(id.as_str()).join("diff"));
            assert!(!dir.join("merged").exists());
            links.insert(id.clone(), link);
        }
        let (b, m) = (&links[&base], &links[&mid]);
        assert!(!home.join(base.as_str()).join("lower").exists());
        assert!(!home.join(base.as_str()).join("work").exists());
        assert_eq!(fs::read_to_string(home.join(mid.as_str()).join("lower")).unwrap(), format!("l/{b}"));
        assert_eq!(fs::read_to_string(home.join(rw.as_str()).join("lower")).unwrap(), format!("l/{m}:l/{b}"));
        assert_eq!(mode(&home.join(rw.as_str()).join("work")), 0o700);
        // Image layers and parents are committed; the container layer is not.
        assert!(home.join(base.as_str()).join("committed").exists());
        assert!(home.join(mid.as_str()).join("committed").exists());
        assert!(!home.join(rw.as_str()).join("committed").exists());
        let mut want = vec![base.clone(), mid.clone(), rw.clone()];
        want.sort();
        assert_eq!(d.ids().await.unwrap(), want);
        let md = d.metadata(&rw).await.unwrap();
        let h = home.display();
        assert_eq!(md["LowerDir"], format!("{h}/{mid}/diff:{h}/{base}/diff"));
        assert_eq!(md["UpperDir"], format!("{h}/{rw}/diff"));
        assert_eq!(md["WorkDir"], format!("{h}/{rw}/work"));
        assert_eq!(md["MergedDir"], format!("{h}/{rw}/merged"));
        assert!(!d.metadata(&base).await.unwrap().contains_key("LowerDir"));
        assert_eq!(d.diff_getter(&rw).await.unwrap(), Some(home.join(rw.as_str()).join("diff")));
        assert_eq!(d.create(&mid, Some(&base), &opts()).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
        let orphan = CacheId::random();
        assert_eq!(d.create(&orphan, Some(&orphan.init()), &opts()).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(count(&home.join("staging")), 0);
        assert_eq!(count(&home.join("l")), 3);
        fx.finish().await;
    }

    #[tokio::test]
    async fn get_put_are_counted_and_committed_layers_mount_read_only() {
        let fx = Fixture::new();
        let d = &fx.d;
        let base = fx.layer(None, tar(&[E::Dir("etc"), E::File("etc/a", "base")])).await;
        let child = fx.layer(Some(&base), tar(&[E::File("etc/b", "child")])).await;
        // A writable base layer is its diff dir: no mount.
        let wbase = CacheId::random();
        d.create_rw(&wbase, None, &opts()).await.unwrap();
        let p = d.get(&wbase, "").await.unwrap();
        assert_eq!(p, fx.home.join(wbase.as_str()).join("diff"));
        assert!(fx.mounts().is_empty());
        fs::write(p.join("w"), "w").unwrap();
        d.put(&wbase).await.unwrap();
        // A committed base layer: a read-only bind of its diff dir.
        let p = d.get(&base, "").await.unwrap();
        assert_eq!(p, fx.home.join(base.as_str()).join("merged"));
        assert_eq!(fx.mounts(), vec![p.clone()]);
        assert_eq!(fs::read_to_string(p.join("etc/a")).unwrap(), "base");
        assert_eq!(fs::write(p.join("etc/new"), "x").unwrap_err().raw_os_error(), Some(libc::EROFS));
        d.put(&base).await.unwrap();
        assert!(fx.mounts().is_empty() && !p.exists());

        let p1 = d.get(&child, "").await.unwrap();
        let p2 = d.get(&child, "").await.unwrap();
        assert_eq!(p1, p2);
        assert_eq!(p1, fx.home.join(child.as_str()).join("merged"));
        assert_eq!(fx.mounts(), vec![p1.clone()]);
        assert_eq!(fs::read_to_string(p1.join("etc/a")).unwrap(), "base");
        assert_eq!(fs::read_to_string(p1.join("etc/b")).unwrap(), "child");
        let err = fs::write(p1.join("etc/new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        d.put(&child).await.unwrap();
        assert_eq!(fx.mounts(), vec![p1.clone()]);
        d.put(&child).await.unwrap();
        assert!(fx.mounts().is_empty());
        assert!(!p1.exists(), "merged dir left after the last put");
        d.put(&child).await.unwrap(); // no matching get: no-op

        let rw = CacheId::random();
        d.create_rw(&rw, Some(&child), &opts()).await.unwrap();
        let p = d.get(&rw, "").await.unwrap();
        fs::write(p.join("etc/new"), "rw").unwrap();
        fs::remove_file(p.join("etc/a")).unwrap();
        let upper = fx.home.join(rw.as_str()).join("diff");
        assert_eq!(fs::read_to_string(upper.join("etc/new")).unwrap(), "rw");
        assert!(is_whiteout(&fs::symlink_metadata(upper.join("etc/a")).unwrap()));
        assert_eq!(fs::read_to_string(fx.home.join(base.as_str()).join("diff/etc/a")).unwrap(), "base");
        d.put(&rw).await.unwrap();

        let unknown = CacheId::random();
        for kind in [
            d.get(&unknown, "").await.unwrap_err().kind(),
            d.put(&unknown).await.unwrap_err().kind(),
            d.remove(&unknown).await.unwrap_err().kind(),
            d.metadata(&unknown).await.unwrap_err().kind(),
            d.diff_getter(&unknown).await.unwrap_err().kind(),
        ] {
            assert_eq!(kind, ErrorKind::NotFound);
        }
        assert!(!d.exists(&unknown).await);
        assert!(d.mounts.is_empty(), "idle mount entries kept");
        fx.finish().await;
    }

    #[tokio::test]
    async fn a_chain_of_128_lowers_mounts_and_129_is_refused() {
        let fx = Fixture::new();
        let d = &fx.d;
        let mut chain: Vec<CacheId> = Vec::new();
        for i in 0..=layout::MAX_DEPTH {
            let name = format!("f{i}");
            let body = i.to_string();
            let t = tar(&[E::File(&name, &body), E::File("top", &body)]);
            chain.push(fx.layer(chain.last(), t).await);
        }
        let top = chain.last().unwrap().clone();
        assert_eq!(fs::read_to_string(fx.home.join(top.as_str()).join("lower")).unwrap().split(':').count(), 128);
        let err = d.create(&CacheId::random(), Some(&top), &opts()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("max depth"), "{err}");
        assert_eq!(count(&fx.home.join("staging")), 0);
        assert_eq!(count(&fx.home.join("l")), chain.len());

        // Read-only: its own diff + 128 lowers.
        let p = d.get(&top, "").await.unwrap();
        assert_eq!(fs::read_to_string(p.join("f0")).unwrap(), "0");
        assert_eq!(fs::read_to_string(p.join("f128")).unwrap(), "128");
        assert_eq!(fs::read_to_string(p.join("top")).unwrap(), "128");
        assert_eq!(fs::read_dir(&p).unwrap().count(), 130);
        // Writable, on the 128-deep layer: 128 lowers + upper.
        let rw = CacheId::random();
        d.create_rw(&rw, Some(&chain[127]), &opts()).await.unwrap();
        let q = d.get(&rw, "").await.unwrap();
        assert_eq!(fs::read_to_string(q.join("top")).unwrap(), "127");
        fs::write(q.join("top"), "rw").unwrap();
        assert_eq!(fx.mounts().len(), 2);
        // Absolute paths cannot fit; the short links make the relative form fit.
        assert_eq!(d.relative_mounts.load(Ordering::Relaxed), 2);
        let stack = Stack { lowers: d.layout.read_lowers(&rw).unwrap(), upper: Some(("x".repeat(69), "y".repeat(69))) };
        let abs = mount::data(&d.prefix, &stack, d.layout.home.to_str(), "").len();
        let rel = mount::data(&d.prefix, &stack, None, "").len();
        eprintln!("mount data at 128 lowers + upper: {abs} bytes absolute, {rel} bytes relative (page {PAGE})");
        assert!(abs >= PAGE && rel < PAGE);
        d.put(&top).await.unwrap();
        d.put(&rw).await.unwrap();
        fx.finish().await;
    }

    #[tokio::test]
    async fn a_long_home_forces_the_relative_lowerdir_fallback() {
        let dir = disk_tempdir();
        let long = format!("{}/{}/overlay", "a".repeat(200), "b".repeat(200));
        let fx = Fixture::in_home(dir, &long);
        let d = &fx.d;
        let mut chain: Vec<CacheId> = Vec::new();
        for i in 0..8 {
            let name = format!("f{i}");
            chain.push(fx.layer(chain.last(), tar(&[E::File(&name, "x")])).await);
        }
        // Two lowers still fit with absolute paths.
        let short = CacheId::random();
        d.create_rw(&short, Some(&chain[1]), &opts()).await.unwrap();
        d.get(&short, "").await.unwrap();
        assert_eq!(d.relative_mounts.load(Ordering::Relaxed), 0);
        // Eight do not: 8 × ~460 bytes + upper and work.
        let rw = CacheId::random();
        d.create_rw(&rw, Some(&chain[7]), &opts()).await.unwrap();
        let p = d.get(&rw, "").await.unwrap();
        assert_eq!(d.relative_mounts.load(Ordering::Relaxed), 1);
        assert_eq!(fs::read_dir(&p).unwrap().count(), 8);
        fs::write(p.join("new"), "n").unwrap();
        assert_eq!(fs::read_to_string(fx.home.join(rw.as_str()).join("diff/new")).unwrap(), "n");
        // The process's own cwd was never changed.
        assert_ne!(std::env::current_dir().unwrap(), fx.home);
        assert_eq!(fx.mounts().len(), 2);
        d.put(&rw).await.unwrap();
        d.put(&short).await.unwrap();
        fx.finish().await;
    }

    #[tokio::test]
    async fn whiteouts_and_opaque_dirs_are_devices_and_xattrs_on_disk_and_wh_entries_in_tars() {
        let fx = Fixture::new();
        let d = &fx.d;
        let base = fx
            .layer(
                None,
                tar(&[
                    E::Dir("a"),
                    E::File("a/x", "1"),
                    E::File("a/y", "2"),
                    E::Dir("b"),
                    E::File("b/z", "3"),
                    E::File("gone", "g"),
                ]),
            )
            .await;
        let t = tar(&[E::Whiteout("gone"), E::Dir("a"), E::Opaque("a"), E::File("a/new", "n"), E::Whiteout("b/z")]);
        let child = fx.layer(Some(&base), t).await;
        let upper = fx.home.join(child.as_str()).join("diff");
        assert!(is_whiteout(&fs::symlink_metadata(upper.join("gone")).unwrap()));
        assert!(is_whiteout(&fs::symlink_metadata(upper.join("b/z")).unwrap()));
        assert!(is_opaque(&upper.join("a")).unwrap());
        assert!(!is_opaque(&upper.join("b")).unwrap());

        let p = d.get(&child, "").await.unwrap();
        assert!(!p.join("gone").exists());
        assert_eq!(count(&p.join("a")), 1);
        assert_eq!(count(&p.join("b")), 0);
        d.put(&child).await.unwrap();

        let out = read_all(d.diff(&child, Some(&base)).await.unwrap());
        let n = names(&out);
        for want in [".wh.gone", "a/", "a/.wh..wh..opq", "a/new", "b/", "b/.wh.z"] {
            assert!(n.contains(&want.to_string()), "{want} not in {n:?}");
        }
        assert_eq!(n.len(), 6, "{n:?}");
        let mut ar = tar::Archive::new(&out[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            assert!(!e.header().entry_type().is_character_special());
            if let Some(ext) = e.pax_extensions().unwrap() {
                for x in ext {
                    assert!(!x.unwrap().key().unwrap().contains("overlay"));
                }
            }
        }
        use ChangeKind::*;
        let want = vec![
            chg("/a", Modify),
            chg("/a/new", Add),
            chg("/a/x", Delete),
            chg("/a/y", Delete),
            chg("/b", Modify),
            chg("/b/z", Delete),
            chg("/gone", Delete),
        ];
        assert_eq!(d.changes(&child, Some(&base)).await.unwrap(), want);
        assert_eq!(naive::changes(d, &child, Some(&base)).await.unwrap(), want);
        assert_eq!(d.diff_size(&child, Some(&base)).await.unwrap(), 1);
        assert_eq!(naive::diff_size(d, &child, Some(&base)).await.unwrap(), 1);
        // The exported tar re-applies to the same upper dir.
        let again = fx.layer(Some(&base), out).await;
        let ours = |id: &CacheId| dump(&fx.home.join(id.as_str()).join("diff"));
        assert_eq!(ours(&again), ours(&child));
        fx.finish().await;
    }

    /// What a container does, through its mount.
    fn mutate(p: &Path) {
        let x = rustix::fs::XattrFlags::empty();
        fs::remove_file(p.join("etc/passwd")).unwrap();
        fs::write(p.join("etc/new"), "new file").unwrap();
        fs::write(p.join("usr/bin/tool"), "tool v2, longer").unwrap();
        fs::set_permissions(p.join("etc/group"), fs::Permissions::from_mode(0o600)).unwrap();
        rustix::fs::lsetxattr(p.join("etc/group"), "user.x", b"1", x).unwrap();
        fs::remove_dir_all(p.join("var/lib")).unwrap();
        fs::remove_dir_all(p.join("opt")).unwrap();
        fs::create_dir(p.join("opt")).unwrap();
        fs::write(p.join("opt/fresh"), "fresh").unwrap();
        fs::remove_file(p.join("etc/tofile")).unwrap();
        fs::create_dir(p.join("etc/tofile")).unwrap();
        fs::write(p.join("etc/tofile/inner"), "inner").unwrap();
        fs::remove_dir_all(p.join("srv")).unwrap();
        fs::write(p.join("srv"), "now a file").unwrap();
        fs::remove_file(p.join("lnk")).unwrap();
        symlink("elsewhere", p.join("lnk")).unwrap();
        fs::write(p.join("h1"), "linked").unwrap();
        fs::hard_link(p.join("h1"), p.join("etc/h2")).unwrap();
        // Copied up, but unchanged.
        drop(fs::OpenOptions::new().write(true).open(p.join("etc/untouched")).unwrap());
        std::os::unix::fs::chown(p.join("keep"), Some(0), Some(0)).unwrap();
    }

    fn image() -> Vec<u8> {
        tar(&[
            E::Dir("etc"),
            E::File("etc/passwd", "root:x:0:0"),
            E::File("etc/group", "root:x:0:"),
            E::File("etc/untouched", "same"),
            E::File("etc/tofile", "file"),
            E::Dir("usr"),
            E::Dir("usr/bin"),
            E::File("usr/bin/tool", "tool v1"),
            E::Dir("var"),
            E::Dir("var/lib"),
            E::Dir("var/lib/db"),
            E::File("var/lib/db/x", "x"),
            E::Dir("opt"),
            E::File("opt/old1", "o"),
            E::Dir("opt/old2"),
            E::Dir("srv"),
            E::File("srv/data", "d"),
            E::Symlink("lnk", "target"),
            E::Dir("keep"),
        ])
    }

    #[tokio::test]
    async fn native_changes_and_diffs_match_the_naive_ones() {
        let mut fx = Fixture::new();
        let base = fx.layer(None, image()).await;
        let d = &fx.d;
        // The layer store's shape: an init layer, then the container layer.
        let rw = CacheId::random();
        let init = rw.init();
        d.create_rw(&init, Some(&base), &opts()).await.unwrap();
        let p = d.get(&init, "").await.unwrap();
        fs::write(p.join("etc/hostname"), "box").unwrap();
        d.put(&init).await.unwrap();
        d.create_rw(&rw, Some(&init), &opts()).await.unwrap();
        let p = d.get(&rw, "").await.unwrap();
        mutate(&p);

        let native = d.changes(&rw, Some(&init)).await.unwrap();
        let naive = naive::changes(d, &rw, Some(&init)).await.unwrap();
        assert_eq!(native, naive);
        use ChangeKind::*;
        for c in [
            chg("/etc/passwd", Delete),
            chg("/etc/new", Add),
            chg("/etc/group", Modify),
            chg("/etc/tofile", Modify),
            chg("/etc/tofile/inner", Add),
            chg("/opt", Modify),
            chg("/opt/fresh", Add),
            chg("/opt/old1", Delete),
            chg("/opt/old2", Delete),
            chg("/srv", Modify),
            chg("/var/lib", Delete),
            chg("/lnk", Modify),
            chg("/h1", Add),
            chg("/etc/h2", Add),
        ] {
            assert!(native.contains(&c), "{c:?} not in {native:?}");
        }
        assert!(
            !native.iter().any(|c| c.path == "/etc/untouched" || c.path == "/keep" || c.path == "/srv/data"),
            "{native:?}"
        );
        let size = d.diff_size(&rw, Some(&init)).await.unwrap();
        assert_eq!(size, naive::diff_size(d, &rw, Some(&init)).await.unwrap());
        assert_eq!(size, 8 + 15 + 9 + 5 + 5 + 10 + 6);

        // Against another ancestor than the real parent: the naive answer.
        let vs_base = d.changes(&rw, Some(&base)).await.unwrap();
        assert!(vs_base.contains(&chg("/etc/hostname", Add)));

        // Both tars, applied onto the parent, give the container's view.
        let native_tar = read_all(d.diff(&rw, Some(&init)).await.unwrap());
        let naive_tar = read_all(naive::diff(d, &rw, Some(&init)).await.unwrap());
        assert!(names(&native_tar).contains(&"opt/.wh..wh..opq".to_string()));
        let want = dump(&p);
        for t in [native_tar, naive_tar] {
            let id = fx.layer(Some(&init), t).await;
            let q = d.get(&id, "").await.unwrap();
            assert_eq!(dump(&q), want);
            d.put(&id).await.unwrap();
        }
        d.put(&rw).await.unwrap();

        // With the native diff switched off, the answers are the same.
        fx.d.info.native_diff = Err("testing the fallback".into());
        let d = &fx.d;
        assert!(!d.capabilities().native_diff);
        let status: BTreeMap<_, _> = d.status().await.into_iter().collect();
        assert_eq!(status["Native Overlay Diff"], "false, because testing the fallback");
        assert_eq!(d.changes(&rw, Some(&init)).await.unwrap(), native);
        assert_eq!(d.diff_size(&rw, Some(&init)).await.unwrap(), size);
        let t = read_all(d.diff(&rw, Some(&init)).await.unwrap());
        assert!(!names(&t).contains(&"opt/.wh..wh..opq".to_string()));
        fx.finish().await;
    }

    #[tokio::test]
    async fn a_restart_after_a_crash_undoes_mounts_and_leftovers() {
        let fx = Fixture::new();
        let home = fx.home.clone();
        let base = fx.layer(None, tar(&[E::File("f", "base")])).await;
        let rw = CacheId::random();
        fx.d.create_rw(&rw, Some(&base), &opts()).await.unwrap();
        let p = fx.d.get(&rw, "").await.unwrap();
        fs::write(p.join("g"), "rw").unwrap();
        // What a crash mid-create, mid-remove and mid-diff leaves.
        fs::create_dir_all(home.join("staging/half/diff/etc")).unwrap();
        fs::write(home.join("staging/half/diff/etc/x"), "x").unwrap();
        fs::create_dir_all(home.join("trash/old/diff")).unwrap();
        fs::write(home.join("tmp/scratch"), "s").unwrap();
        symlink(format!("../{}/diff", CacheId::random()), home.join("l/DANGLING")).unwrap();
        fs::create_dir(home.join(base.as_str()).join("merged")).unwrap();
        assert_eq!(fx.mounts().len(), 1);

        // The crashed driver never ran cleanup; a new one starts.
        let d2 = Overlay::new(&home).unwrap();
        d2.started().await.unwrap();
        assert!(fx.mounts().is_empty());
        assert!(!p.exists());
        assert!(!home.join(base.as_str()).join("merged").exists());
        for dir in ["staging", "trash", "tmp"] {
            assert_eq!(count(&home.join(dir)), 0, "{dir}");
        }
        assert!(fs::symlink_metadata(home.join("l/DANGLING")).is_err());
        assert_eq!(count(&home.join("l")), 2);
        let mut want = vec![base.clone(), rw.clone()];
        want.sort();
        assert_eq!(d2.ids().await.unwrap(), want);
        let q = d2.get(&rw, "").await.unwrap();
        assert_eq!(fs::read_to_string(q.join("g")).unwrap(), "rw");
        assert_eq!(fs::read_to_string(q.join("f")).unwrap(), "base");
        d2.put(&rw).await.unwrap();
        assert!(fx.mounts().is_empty());
        // Parenthood is read back from disk: the parent is kept for its child.
        d2.remove(&base).await.unwrap();
        assert_eq!(d2.family().children(base.as_str()), 0);
        assert_eq!(d2.ids().await.unwrap(), vec![rw.clone()]);
        d2.remove(&rw).await.unwrap();
        assert_eq!(count(&home), 4, "l, staging, trash and tmp only");
        fx.finish().await;
    }

    #[tokio::test]
    async fn remove_while_mounted_unmounts_first() {
        let fx = Fixture::new();
        let d = &fx.d;
        let base = fx.layer(None, tar(&[E::File("f", "base")])).await;
        let rw = CacheId::random();
        d.create_rw(&rw, Some(&base), &opts()).await.unwrap();
        let p = d.get(&rw, "").await.unwrap();
        d.get(&rw, "").await.unwrap();
        fs::write(p.join("mine"), "x").unwrap();
        d.remove(&rw).await.unwrap();
        assert!(fx.mounts().is_empty());
        assert!(!d.exists(&rw).await);
        assert!(!fx.home.join(rw.as_str()).exists());
        assert_eq!(d.family().children(base.as_str()), 0);
        assert_eq!(count(&fx.home.join("l")), 1);
        assert_eq!(count(&fx.home.join("trash")), 0);
        assert_eq!(d.put(&rw).await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(d.remove(&rw).await.unwrap_err().kind(), ErrorKind::NotFound);
        // The id is free again, with a fresh count and no old files.
        d.create_rw(&rw, Some(&base), &opts()).await.unwrap();
        let p = d.get(&rw, "").await.unwrap();
        assert!(!p.join("mine").exists());
        d.put(&rw).await.unwrap();
        assert!(fx.mounts().is_empty());
        // Top-down removal always works.
        d.remove(&rw).await.unwrap();
        d.remove(&base).await.unwrap();
        assert_eq!(d.ids().await.unwrap(), vec![]);
        assert_eq!(count(&fx.home.join("l")), 0);
        fx.finish().await;
    }

    /// A parent removed before its children is kept, hidden, for them.
    #[tokio::test]
    async fn removing_a_parent_keeps_its_files_for_its_children() {
        let fx = Fixture::new();
        let d = &fx.d;
        let a = fx.layer(None, tar(&[E::File("a", "a")])).await;
        let b = fx.layer(Some(&a), tar(&[E::File("b", "b")])).await;
        let c = CacheId::random();
        d.create_rw(&c, Some(&b), &opts()).await.unwrap();
        let p = d.get(&c, "").await.unwrap();
        let want = dump(&p);
        let b_link = fs::read_to_string(fx.home.join(b.as_str()).join("link")).unwrap();
        d.remove(&b).await.unwrap();
        assert!(!d.exists(&b).await);
        assert_eq!(d.ids().await.unwrap().len(), 2);
        assert_eq!(dump(&p), want, "through the mount taken before");
        d.put(&c).await.unwrap();
        let target = fs::read_link(fx.home.join("l").join(&b_link)).unwrap();
        assert!(target.to_str().unwrap().starts_with("../.removed-"), "{target:?}");
        let p = d.get(&c, "").await.unwrap();
        assert_eq!(dump(&p), want, "through a new mount");
        assert!(d.metadata(&c).await.unwrap()["LowerDir"].contains("/.removed-"));
        d.put(&c).await.unwrap();
        // The id is free; a new b is a different layer.
        d.create(&b, Some(&a), &opts()).await.unwrap();
        // Not c's parent any more: the naive answer against the new b.
        assert!(d.changes(&c, Some(&b)).await.unwrap().contains(&chg("/b", ChangeKind::Add)));
        d.remove(&b).await.unwrap();
        // a is kept too once removed; c's removal frees both kept dirs.
        d.remove(&a).await.unwrap();
        let kept = |id: &str| -> Vec<PathBuf> {
            let names = fs::read_dir(&fx.home).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap());
            names.filter(|n| n.starts_with(".removed-") && n.contains(id)).map(|n| fx.home.join(n)).collect()
        };
        assert_eq!(kept("").len(), 2);
        // A crash between keeping a dir and re-pointing its link is mended at start.
        let a_link = fs::read_to_string(kept(a.as_str())[0].join("link")).unwrap();
        fs::remove_file(fx.home.join("l").join(&a_link)).unwrap();
        symlink(format!("../{a}/diff"), fx.home.join("l").join(&a_link)).unwrap();
        let d2 = Overlay::new(&fx.home).unwrap();
        let p = d2.get(&c, "").await.unwrap();
        assert_eq!(dump(&p), want);
        d2.put(&c).await.unwrap();
        d2.remove(&c).await.unwrap();
        assert!(kept("").is_empty());
        assert_eq!(d2.ids().await.unwrap(), vec![]);
        assert_eq!(count(&fx.home.join("l")), 0);
        assert_eq!(count(&fx.home.join("trash")), 0);
        fx.finish().await;
    }

    #[tokio::test]
    async fn a_home_on_overlayfs_is_reported_unsupported() {
        let fx = Fixture::new();
        let base = fx.layer(None, tar(&[E::File("f", "base")])).await;
        let rw = CacheId::random();
        fx.d.create_rw(&rw, Some(&base), &opts()).await.unwrap();
        let p = fx.d.get(&rw, "").await.unwrap();
        let err = Overlay::new(p.join("nested")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(
            matches!(&err, DriverError::Unsupported { driver, why } if driver == "overlay2" && why.contains("overlayfs"))
        );
        fx.d.put(&rw).await.unwrap();
        fx.finish().await;
    }

    /// Register a layer the way the layer store does, through the Driver
    /// contract alone, then commit a container layer on top of it.
    #[tokio::test]
    async fn register_and_commit_through_the_contract() {
        let fx = Fixture::new();
        let d: &dyn Driver = &fx.d;
        let base = CacheId::random();
        d.create(&base, None, &opts()).await.unwrap();
        let n = d.apply_diff(&base, None, Box::new(Cursor::new(image()))).await.unwrap();
        // Docker's overlay2 size: the diff dir as lstat sees it, so the
        // symlink counts its 6-byte target; diff_size counts file bytes.
        let file_bytes = 10 + 9 + 4 + 4 + 7 + 1 + 1 + 1;
        assert_eq!(n, file_bytes + "target".len() as u64);
        let dir = d.diff_getter(&base).await.unwrap().unwrap();
        assert_eq!(fs::read_to_string(dir.join("usr/bin/tool")).unwrap(), "tool v1");
        assert_eq!(d.diff_size(&base, None).await.unwrap(), file_bytes);
        // The whole-layer diff re-registers to the same tree.
        let copy = CacheId::random();
        d.create(&copy, None, &opts()).await.unwrap();
        d.apply_diff(&copy, None, d.diff(&base, None).await.unwrap()).await.unwrap();
        assert_eq!(dump(&d.diff_getter(&copy).await.unwrap().unwrap()), dump(&dir));

        let rw = CacheId::random();
        d.create_rw(&rw, Some(&base), &opts()).await.unwrap();
        let p = d.get(&rw, "").await.unwrap();
        mutate(&p);
        let view = dump(&p);
        d.put(&rw).await.unwrap();
        let committed = CacheId::random();
        d.create(&committed, Some(&base), &opts()).await.unwrap();
        d.apply_diff(&committed, Some(&base), d.diff(&rw, Some(&base)).await.unwrap()).await.unwrap();
        let q = d.get(&committed, "").await.unwrap();
        assert_eq!(dump(&q), view);
        d.put(&committed).await.unwrap();

        // A diff made against another parent is applied through a mount.
        let other = CacheId::random();
        d.create(&other, Some(&base), &opts()).await.unwrap();
        let t = tar(&[E::Whiteout("etc/passwd"), E::File("extra", "e")]);
        d.apply_diff(&other, None, Box::new(Cursor::new(t))).await.unwrap();
        let upper = fx.home.join(other.as_str()).join("diff");
        assert!(is_whiteout(&fs::symlink_metadata(upper.join("etc/passwd")).unwrap()));
        assert_eq!(count(&fx.home.join("tmp")), 0);

        // Hostile input: InvalidArgument, nothing written outside.
        let mut evil = tar(&[E::File("ok", "1")]);
        evil.truncate(evil.len() - 1024);
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        evil.extend_from_slice(h.as_bytes());
        evil.extend_from_slice(&[b'x'; 512]);
        evil.extend_from_slice(&[0; 1024]);
        let err = d.apply_diff(&other, Some(&base), Box::new(Cursor::new(evil))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(!fx.home.join(other.as_str()).join("escape").exists());
        fx.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_gets_and_puts_of_one_layer() {
        let fx = std::sync::Arc::new(Fixture::new());
        let base = fx.layer(None, tar(&[E::File("f", "base")])).await;
        let rw = CacheId::random();
        fx.d.create_rw(&rw, Some(&base), &opts()).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (fx, rw) = (fx.clone(), rw.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    let p = fx.d.get(&rw, "").await.unwrap();
                    assert_eq!(fs::read_to_string(p.join("f")).unwrap(), "base");
                    fx.d.put(&rw).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(fx.mounts().is_empty());
        assert!(fx.d.mounts.is_empty());
        fx.finish().await;
    }

    #[tokio::test]
    async fn status_options_and_the_registry() {
        let dir = disk_tempdir();
        let d = crate::registry::open("overlay", dir.path()).unwrap();
        assert_eq!(d.name(), "overlay2", "the alias opens Docker's overlay2");
        assert_eq!(d.capabilities(), Capabilities { native_diff: true, diff_getter: true });
        let status: BTreeMap<_, _> = d.status().await.into_iter().collect();
        assert_eq!(status["Native Overlay Diff"], "true");
        assert_eq!(status["Supports d_type"], "true");
        assert!(status["Mount Options"].contains("index=off"), "{status:?}");
        assert_eq!(status["Redirect Dir"], "off (mount option)");
        assert!(!status["Backing Filesystem"].is_empty());
        assert_eq!(d.scratch_dir(), dir.path().canonicalize().unwrap().join("overlay2/tmp"));
        let mut o = opts();
        o.storage_opt.insert("size".into(), "10G".into());
        assert_eq!(d.create(&CacheId::random(), None, &o).await.unwrap_err().kind(), ErrorKind::Unsupported);
        o.storage_opt.clear();
        o.storage_opt.insert("bogus".into(), "1".into());
        assert_eq!(d.create(&CacheId::random(), None, &o).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
        assert_eq!(d.ids().await.unwrap(), vec![]);
        d.cleanup().await.unwrap();
        assert!(mount::mounts_under(dir.path()).unwrap().is_empty());
    }
}
