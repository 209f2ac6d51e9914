//! The layerdb on disk, in Docker's layout:
//!
//! ```text
//! <layerdb>/sha256/<chain-hex>/{diff,size,cache-id,parent,tar-split.json.gz,refs}
//! <layerdb>/mounts/<name>/{mount-id,init-id,parent}
//! <layerdb>/tmp/      transactions in flight (a crash leaves them; start-up empties it)
//! <layerdb>/trash/    unpublished layers and mounts waiting for deletion
//! ```
//! `refs` is ours (Docker keeps references in its image store): the count of
//! client references, so they survive a restart. So is `layerd-index`, a
//! cache of every record in one file (see [`crate::index`] for its format and
//! [`LayerDb::write_index`] for how it is kept from going stale). Every commit is atomic:
//! files are written and fsynced in a `tmp/` dir, which is renamed into place,
//! and the parent dir is fsynced. Everything here blocks: call it from the
//! blocking pool, never under a map lock.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use graphdriver::{CacheId, IoContext};

use crate::digest::{ChainId, DiffId};
use crate::error::{LayerStoreError, Result};
use crate::index::{self, DirStamp, Index};
use crate::name::RwName;

pub(crate) const TAR_SPLIT: &str = "tar-split.json.gz";

/// The persisted form of a layer (one file per field, as Docker has them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerRecord {
    pub diff_id: DiffId,
    pub size: u64,
    pub cache_id: CacheId,
    pub parent: Option<ChainId>,
    /// `None` for a layer Docker wrote (no `refs` file).
    pub refs: Option<u64>,
}

/// The persisted form of an RW layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountRecord {
    pub mount_id: CacheId,
    pub init_id: Option<CacheId>,
    pub parent: Option<ChainId>,
}

/// A metadata operation a fault can be injected into (see [`FaultHook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaOp {
    /// Creating or writing a file.
    Write,
    /// An fsync of a file or a dir.
    Fsync,
    /// A rename (a commit, a `refs` replacement, a move to the trash).
    Rename,
    /// A listing of `sha256/` or `mounts/`, asked once it has been read
    /// (tests use it to stop `check` or start-up right after its listing).
    List,
    /// Removing the index before the first change it would miss.
    Remove,
}

/// The seam the fault-injection tests use: called before every metadata
/// write, fsync and rename, with the operation and its path; an error it
/// returns is what the operation fails with (the operation is not done).
/// Production stores have none.
pub(crate) type FaultHook = std::sync::Arc<dyn Fn(MetaOp, &Path) -> Option<std::io::Error> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct LayerDb {
    root: PathBuf,
    faults: Option<FaultHook>,
    /// Whether the index is on disk, and the count of changes to the
    /// layerdb (shared by every clone).
    index: Arc<IndexLocks>,
}

/// The index's two locks, both leaves.
#[derive(Debug, Default)]
struct IndexLocks {
    /// Held for a counter or flag update, never across I/O.
    state: Mutex<IndexState>,
    /// Held across the index file's own I/O: publishing it (the rename) and
    /// removing it. Taken only by the writer, once the store is quiet, and
    /// by changes that find an index on disk — which must wait for its
    /// removal anyway, since no record may change while an index claiming
    /// to be current is there. Changes made while no index is on disk (all
    /// of them under load: the index is rewritten only when quiet) never
    /// take it; readers of the state never do.
    file: Mutex<()>,
}

#[derive(Debug, Default)]
struct IndexState {
    /// An index file may be on disk: the next change must remove it first.
    on_disk: bool,
    /// The file on disk is a good index of the records (read or written,
    /// and no change since).
    current: bool,
    /// Changes begun (every commit, `refs` replacement and move to the trash).
    changes: u64,
}

impl std::fmt::Debug for LayerDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerDb").field("root", &self.root).field("faults", &self.faults.is_some()).finish()
    }
}

/// What is known of one field of a record that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Known<T> {
    Is(T),
    /// The file does not exist.
    Absent,
    /// The file exists but could not be read or parsed.
    Unknown,
}

impl<T> Known<T> {
    pub fn is_unknown(&self) -> bool {
        matches!(self, Known::Unknown)
    }
}

/// A record that could not be loaded: why, and what could be read of it.
#[derive(Debug, Clone)]
pub(crate) struct Damage {
    pub why: String,
    /// A read failed with an error a retry may not repeat (out of file
    /// descriptors or memory): start-up refuses to start rather than guess.
    pub transient: bool,
    /// The driver ids the record names (a layer: cache-id; an RW layer:
    /// mount-id, init-id).
    pub ids: Vec<Known<CacheId>>,
    /// `Absent` for a layer without a parent.
    pub parent: Known<ChainId>,
    /// The persisted client references, if readable.
    pub refs: Option<u64>,
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR | libc::ENOBUFS)
    )
}

/// Reads a record's files one by one, noting every problem.
struct FieldReader<'a> {
    dir: &'a Path,
    whys: Vec<String>,
    transient: bool,
}

impl<'a> FieldReader<'a> {
    fn new(dir: &'a Path) -> Self {
        FieldReader { dir, whys: Vec::new(), transient: false }
    }

    fn parsed<T, E: std::fmt::Display>(
        &mut self,
        file: &str,
        parse: impl FnOnce(&str) -> std::result::Result<T, E>,
    ) -> Known<T> {
        match fs::read_to_string(self.dir.join(file)) {
            Ok(s) => match parse(s.trim()) {
                Ok(v) => Known::Is(v),
                Err(e) => {
                    self.whys.push(format!("{file}: {e}"));
                    Known::Unknown
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Known::Absent,
            Err(e) => {
                self.transient |= is_transient(&e);
                self.whys.push(format!("read {file}: {e}"));
                Known::Unknown
            }
        }
    }

    fn required<T, E: std::fmt::Display>(
        &mut self,
        file: &str,
        parse: impl FnOnce(&str) -> std::result::Result<T, E>,
    ) -> Known<T> {
        let v = self.parsed(file, parse);
        if matches!(v, Known::Absent) {
            self.whys.push(format!("missing {file}"));
        }
        v
    }

    fn regular_file(&mut self, file: &str) {
        match fs::symlink_metadata(self.dir.join(file)) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.whys.push(format!("{file} is not a regular file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.whys.push(format!("missing {file}")),
            Err(e) => {
                self.transient |= is_transient(&e);
                self.whys.push(format!("stat {file}: {e}"));
            }
        }
    }

    fn damage(self, ids: Vec<Known<CacheId>>, parent: Known<ChainId>, refs: Known<u64>) -> Damage {
        Damage {
            why: self.whys.join("; "),
            transient: self.transient,
            ids,
            parent,
            refs: match refs {
                Known::Is(r) => Some(r),
                _ => None,
            },
        }
    }
}

impl<T> Known<T> {
    fn ok(self) -> Option<T> {
        match self {
            Known::Is(v) => Some(v),
            _ => None,
        }
    }
}

fn random_suffix() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

impl LayerDb {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LayerDb { root: root.into(), faults: None, index: Arc::default() }
    }

    /// The same layerdb with a fault hook (tests).
    pub fn with_faults(mut self, faults: Option<FaultHook>) -> Self {
        self.faults = faults;
        self
    }

    /// Ask the fault hook whether `op` on `path` fails.
    fn fault(&self, op: MetaOp, path: &Path) -> std::io::Result<()> {
        match self.faults.as_ref().and_then(|f| f(op, path)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) fn create_file(&self, path: &Path) -> Result<File> {
        self.fault(MetaOp::Write, path).and_then(|()| File::create(path)).ctx("create", path).map_err(Into::into)
    }

    pub(crate) fn sync_file(&self, f: &File, path: &Path) -> Result<()> {
        self.fault(MetaOp::Fsync, path).and_then(|()| f.sync_all()).ctx("fsync", path)?;
        Ok(())
    }

    fn write_synced(&self, path: &Path, contents: &[u8]) -> Result<()> {
        let mut f = self.create_file(path)?;
        self.fault(MetaOp::Write, path).and_then(|()| f.write_all(contents)).ctx("write", path)?;
        self.sync_file(&f, path)
    }

    fn sync_dir(&self, path: &Path) -> Result<()> {
        self.fault(MetaOp::Fsync, path).and_then(|()| File::open(path)?.sync_all()).ctx("fsync dir", path)?;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path, what: &'static str) -> Result<()> {
        self.fault(MetaOp::Rename, from).and_then(|()| fs::rename(from, to)).ctx(what, to)?;
        Ok(())
    }

    /// fsync `dir` after a rename into it. The rename is the commit point:
    /// once it happened, the new state is what every reader sees, so memory
    /// must follow it whatever the fsync says. A failed fsync here is
    /// logged, not returned: reporting "not committed" for a commit that
    /// happened is how memory and disk come to disagree.
    fn sync_after_commit(&self, dir: &Path) {
        if let Err(e) = self.sync_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "fsync after a committed rename failed; the change is visible but its durability across a power loss is not confirmed");
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    pub fn ensure_dirs(&self) -> Result<()> {
        for sub in ["sha256", "mounts", "tmp", "trash"] {
            let d = self.dir(sub);
            fs::create_dir_all(&d).ctx("create dir", &d)?;
        }
        Ok(())
    }

    pub fn layer_dir(&self, chain: &ChainId) -> PathBuf {
        self.dir("sha256").join(chain.hex())
    }

    pub fn tar_split_path(&self, chain: &ChainId) -> PathBuf {
        self.layer_dir(chain).join(TAR_SPLIT)
    }

    pub fn mount_dir(&self, name: &RwName) -> PathBuf {
        self.dir("mounts").join(name.as_str())
    }

    /// A fresh transaction dir under `tmp/`.
    pub fn begin_tx(&self) -> Result<PathBuf> {
        let p = self.dir("tmp").join(format!("tx-{}", random_suffix()));
        self.fault(MetaOp::Write, &p).and_then(|()| fs::create_dir(&p)).ctx("create transaction dir", &p)?;
        Ok(p)
    }

    pub fn write_layer_record(&self, tx: &Path, rec: &LayerRecord) -> Result<()> {
        self.write_synced(&tx.join("diff"), rec.diff_id.to_string().as_bytes())?;
        self.write_synced(&tx.join("size"), rec.size.to_string().as_bytes())?;
        self.write_synced(&tx.join("cache-id"), rec.cache_id.as_str().as_bytes())?;
        if let Some(p) = &rec.parent {
            self.write_synced(&tx.join("parent"), p.to_string().as_bytes())?;
        }
        if let Some(r) = rec.refs {
            self.write_synced(&tx.join("refs"), r.to_string().as_bytes())?;
        }
        Ok(())
    }

    pub fn write_mount_record(&self, tx: &Path, rec: &MountRecord) -> Result<()> {
        self.write_synced(&tx.join("mount-id"), rec.mount_id.as_str().as_bytes())?;
        if let Some(i) = &rec.init_id {
            self.write_synced(&tx.join("init-id"), i.as_str().as_bytes())?;
        }
        if let Some(p) = &rec.parent {
            self.write_synced(&tx.join("parent"), p.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// The SHA-256 checkpoints of the layer's tar (see `checkpoint`).
    pub fn write_checkpoints(&self, tx: &Path, rec: &crate::checkpoint::Record) -> Result<()> {
        let json =
            serde_json::to_vec(rec).map_err(|e| LayerStoreError::Internal(format!("encode checkpoints: {e}")))?;
        self.write_synced(&tx.join(crate::checkpoint::FILE), &json)
    }

    /// The layer's checkpoints, if it has a usable record.
    pub fn read_checkpoints(&self, chain: &ChainId) -> Option<crate::checkpoint::Checkpoints> {
        let bytes = fs::read(self.layer_dir(chain).join(crate::checkpoint::FILE)).ok()?;
        let rec: crate::checkpoint::Record = serde_json::from_slice(&bytes).ok()?;
        crate::checkpoint::Checkpoints::from_record(&rec)
    }

    /// Publish a transaction dir at `target` (which must not exist). An
    /// error means nothing was published; `Ok` means the commit happened
    /// (see [`Self::sync_after_commit`]).
    fn commit(&self, tx: &Path, target: &Path) -> Result<()> {
        self.sync_dir(tx)?;
        self.changing()?;
        self.rename(tx, target, "publish transaction to")?;
        if let Some(parent) = target.parent() {
            self.sync_after_commit(parent);
        }
        Ok(())
    }

    pub fn commit_layer(&self, tx: &Path, chain: &ChainId) -> Result<()> {
        self.commit(tx, &self.layer_dir(chain))
    }

    pub fn commit_mount(&self, tx: &Path, name: &RwName) -> Result<()> {
        self.commit(tx, &self.mount_dir(name))
    }

    /// Atomically replace a layer's `refs` count. An error means the old
    /// count is still the one on disk (the temporary file is removed);
    /// `Ok` means the new one is.
    pub fn write_refs(&self, chain: &ChainId, refs: u64) -> Result<()> {
        let dir = self.layer_dir(chain);
        let tmp = dir.join(format!(".refs-{}", random_suffix()));
        let target = dir.join("refs");
        let res = self
            .write_synced(&tmp, refs.to_string().as_bytes())
            .and_then(|()| self.changing())
            .and_then(|()| self.rename(&tmp, &target, "replace"));
        if res.is_err() {
            let _ = remove_any(&tmp);
        }
        res?;
        self.sync_after_commit(&dir);
        Ok(())
    }

    /// Move `path` into `trash/` (same filesystem: a rename). Returns where it went.
    pub fn trash(&self, path: &Path) -> Result<PathBuf> {
        let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let target = self.dir("trash").join(format!("{base}-{}", random_suffix()));
        self.changing()?;
        self.fault(MetaOp::Rename, path).and_then(|()| fs::rename(path, &target)).ctx("move to trash", path)?;
        Ok(target)
    }

    /// Remove everything in `tmp/` and `trash/` (start-up only: the root lock
    /// guarantees no live owner).
    pub fn reap(&self) -> Result<usize> {
        let mut n = 0;
        for sub in ["tmp", "trash"] {
            let d = self.dir(sub);
            for e in fs::read_dir(&d).ctx("read dir", &d)? {
                let p = e.ctx("read dir", &d)?.path();
                remove_any(&p)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn index_state(&self) -> MutexGuard<'_, IndexState> {
        self.index.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join(index::FILE)
    }

    /// Called before every change of the records (a commit, a `refs`
    /// replacement, a move to the trash): counts it, and first removes the
    /// index if one may be on disk, durably, so that no index outlives a
    /// change it does not hold — a crash after this leaves no index, and the
    /// next start scans. An error means the change must not be made. The
    /// state lock is held for the increment only; the removal, once per
    /// index written, happens under the file lock (see [`IndexLocks`]),
    /// which changes made while no index is on disk never take.
    pub(crate) fn changing(&self) -> Result<()> {
        {
            let mut st = self.index_state();
            st.current = false;
            st.changes += 1;
            if !st.on_disk {
                return Ok(());
            }
        }
        // The removal, outside the state lock: the first change to get here
        // removes the file; the others find it gone.
        let _file = self.index.file.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.index_state().on_disk {
            return Ok(());
        }
        let path = self.index_path();
        self.fault(MetaOp::Remove, &path)
            .and_then(|()| match fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            })
            .ctx("remove the index", &path)?;
        self.sync_dir(&self.root)?;
        self.index_state().on_disk = false;
        tracing::debug!("removed the index: the layerdb changes");
        Ok(())
    }

    /// Whether the index on disk is a good copy of the records (nothing
    /// to write).
    pub(crate) fn index_current(&self) -> bool {
        self.index_state().current
    }

    /// Changes begun so far: a writer of the index reads it before taking
    /// its snapshot (see [`Self::write_index`]).
    pub(crate) fn changes(&self) -> u64 {
        self.index_state().changes
    }

    fn stamps(&self) -> std::io::Result<[DirStamp; 2]> {
        Ok([DirStamp::of(&self.dir("sha256"))?, DirStamp::of(&self.dir("mounts"))?])
    }

    /// The index, if there is a usable one; else why not. Any file there,
    /// usable or not, is removed by the next change.
    pub(crate) fn read_index(&self) -> std::result::Result<Index, String> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("there is no index".into()),
            Err(e) => {
                self.index_state().on_disk = true;
                return Err(format!("read {}: {e}", path.display()));
            }
        };
        self.index_state().on_disk = true;
        let ix = index::decode(&bytes)?;
        let now = self.stamps().map_err(|e| format!("stat sha256/ and mounts/: {e}"))?;
        if now != ix.stamps {
            return Err("sha256/ or mounts/ changed since the index was written".into());
        }
        self.index_state().current = true;
        Ok(ix)
    }

    /// Publish `layers` and `mounts` as the index — a snapshot the caller
    /// took after reading [`Self::changes`] as `since` — unless a change
    /// has begun since: then nothing is written and `Ok(false)` returned.
    /// The file is written and fsynced under `tmp/`, then renamed into place
    /// under the file lock, after the state lock has marked it on disk: a
    /// change either began before that mark (and the snapshot is dropped) or
    /// begins after it, waits for the rename, and removes the file before it
    /// lands. `Ok(true)` means the file is in place and current.
    pub(crate) fn write_index(
        &self,
        since: u64,
        layers: Vec<(ChainId, LayerRecord)>,
        mounts: Vec<(RwName, MountRecord)>,
    ) -> Result<bool> {
        let stamps = self.stamps().ctx("stat", &self.root)?;
        let bytes = index::encode(&Index { stamps, layers, mounts });
        let tmp = self.dir("tmp").join(format!("index-{}", random_suffix()));
        let res = self.write_synced(&tmp, &bytes).and_then(|()| {
            let file = self.index.file.lock().unwrap_or_else(PoisonError::into_inner);
            {
                let mut st = self.index_state();
                if st.changes != since {
                    return Ok(false);
                }
                // From here a change that begins removes the file, waiting
                // at `file` until it is in place.
                st.on_disk = true;
            }
            self.rename(&tmp, &self.index_path(), "publish the index as")?;
            let mut st = self.index_state();
            st.current = st.changes == since;
            let current = st.current;
            drop(st);
            drop(file);
            self.sync_after_commit(&self.root);
            Ok(current)
        });
        if !matches!(res, Ok(true)) {
            let _ = remove_any(&tmp);
        }
        res
    }

    /// Names of `sha256/` entries (valid or not).
    pub fn layer_names(&self) -> Result<Vec<String>> {
        self.list_names(&self.dir("sha256"))
    }

    pub fn mount_names(&self) -> Result<Vec<String>> {
        self.list_names(&self.dir("mounts"))
    }

    fn list_names(&self, dir: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).ctx("read dir", dir)? {
            let e = e.ctx("read dir", dir)?;
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        self.fault(MetaOp::List, dir).ctx("read dir", dir)?;
        Ok(out)
    }

    pub fn read_layer(&self, chain: &ChainId) -> std::result::Result<LayerRecord, Damage> {
        let dir = self.layer_dir(chain);
        let mut r = FieldReader::new(&dir);
        let diff_id = r.required("diff", DiffId::parse);
        let size = r.required("size", |s| s.parse::<u64>());
        let cache_id = r.required("cache-id", CacheId::parse);
        let parent = r.parsed("parent", ChainId::parse);
        let refs = r.parsed("refs", |s| s.parse::<u64>());
        r.regular_file(TAR_SPLIT);
        if r.whys.is_empty()
            && let (Known::Is(diff_id), Known::Is(size), Known::Is(cache_id)) = (&diff_id, &size, &cache_id)
        {
            return Ok(LayerRecord {
                diff_id: diff_id.clone(),
                size: *size,
                cache_id: cache_id.clone(),
                parent: parent.ok(),
                refs: refs.ok(),
            });
        }
        Err(r.damage(vec![cache_id], parent, refs))
    }

    pub fn read_mount(&self, name: &RwName) -> std::result::Result<MountRecord, Damage> {
        let dir = self.mount_dir(name);
        let mut r = FieldReader::new(&dir);
        let mount_id = r.required("mount-id", CacheId::parse);
        let init_id = r.parsed("init-id", CacheId::parse);
        let parent = r.parsed("parent", ChainId::parse);
        if r.whys.is_empty()
            && let Known::Is(mount_id) = &mount_id
        {
            return Ok(MountRecord { mount_id: mount_id.clone(), init_id: init_id.ok(), parent: parent.ok() });
        }
        Err(r.damage(vec![mount_id, init_id], parent, Known::Absent))
    }
}

/// Remove a file or a whole tree.
pub(crate) fn remove_any(p: &Path) -> Result<()> {
    let res = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    res.ctx("remove", p)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn rec(parent: Option<ChainId>) -> LayerRecord {
        LayerRecord { diff_id: DiffId(Digest::of(b"x")), size: 42, cache_id: CacheId::random(), parent, refs: Some(3) }
    }

    #[test]
    fn layer_record_round_trips_through_a_transaction() {
        let tmp = tempfile::tempdir().unwrap();
        let db = LayerDb::new(tmp.path());
        db.ensure_dirs().unwrap();
        let chain = ChainId(Digest::of(b"c"));
        let r = rec(Some(ChainId(Digest::of(b"p"))));
        let tx = db.begin_tx().unwrap();
        db.write_layer_record(&tx, &r).unwrap();
        File::create(tx.join(TAR_SPLIT)).unwrap();
        db.commit_layer(&tx, &chain).unwrap();
        assert!(!tx.exists());
        assert_eq!(db.read_layer(&chain).unwrap(), r);
        db.write_refs(&chain, 7).unwrap();
        assert_eq!(db.read_layer(&chain).unwrap().refs, Some(7));
        // Docker writes the same files with "sha256:" digests and plain numbers.
        assert_eq!(fs::read_to_string(db.layer_dir(&chain).join("diff")).unwrap(), r.diff_id.to_string());
    }

    /// The index's state lock is never held across I/O: while the writer is
    /// inside its rename, the counters answer at once; a change that begins
    /// then waits for the rename (at the file lock) and removes the file
    /// before it returns, and the writer reports the index not current.
    #[test]
    fn a_change_during_the_index_publish_waits_for_it_and_removes_the_file() {
        use std::sync::mpsc;
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let (entered_tx, entered) = mpsc::channel::<()>();
        let (release, release_rx) = mpsc::channel::<()>();
        let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
        let hook: FaultHook = Arc::new(move |op, path: &Path| {
            if op == MetaOp::Rename && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("index-")) {
                entered_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv().unwrap();
            }
            None
        });
        let db = LayerDb::new(tmp.path()).with_faults(Some(hook));
        db.ensure_dirs().unwrap();
        let since = db.changes();
        let writer = {
            let db = db.clone();
            std::thread::spawn(move || db.write_index(since, Vec::new(), Vec::new()))
        };
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        // The writer is inside its rename, holding the file lock; the state
        // lock must still answer (asked on a thread: a lock held across the
        // rename would hang it, and the test fails instead of hanging).
        let (tx, rx) = mpsc::channel();
        let asker = db.clone();
        std::thread::spawn(move || tx.send((asker.changes(), asker.index_current())).unwrap());
        let answered = rx.recv_timeout(Duration::from_secs(5)).expect("the index state is locked during the rename");
        assert_eq!(answered, (since, false), "the counter answers during the publish");
        let changer = {
            let db = db.clone();
            std::thread::spawn(move || db.changing())
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!changer.is_finished(), "a change that finds the index marked on disk waits for its rename");
        assert_eq!(db.changes(), since + 1, "the change was counted without waiting for the file");
        assert!(!db.index_current());
        release.send(()).unwrap();
        assert!(!writer.join().unwrap().unwrap(), "a change began during the publish: the index is not current");
        changer.join().unwrap().unwrap();
        assert!(!db.index_path().exists(), "the change removed the index before returning");
        assert!(!db.index_current());
        // With no index on disk, a change takes neither the file lock nor any I/O.
        db.changing().unwrap();
        assert_eq!(db.changes(), since + 2);
    }

    #[test]
    fn only_errors_a_retry_may_not_repeat_are_transient() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::EAGAIN, libc::EINTR, libc::ENOBUFS] {
            assert!(is_transient(&std::io::Error::from_raw_os_error(errno)), "{errno}");
        }
        // Damage (or a refusal) that a restart would meet again: keep and report.
        for errno in [libc::EIO, libc::EACCES, libc::EISDIR, libc::EUCLEAN] {
            assert!(!is_transient(&std::io::Error::from_raw_os_error(errno)), "{errno}");
        }
    }

    #[test]
    fn commit_refuses_to_overwrite_and_reap_empties_tmp_and_trash() {
        let tmp = tempfile::tempdir().unwrap();
        let db = LayerDb::new(tmp.path());
        db.ensure_dirs().unwrap();
        let chain = ChainId(Digest::of(b"c"));
        fs::create_dir(db.layer_dir(&chain)).unwrap();
        fs::write(db.layer_dir(&chain).join("diff"), "x").unwrap();
        let tx = db.begin_tx().unwrap();
        assert!(db.commit_layer(&tx, &chain).is_err());
        let trashed = db.trash(&db.layer_dir(&chain)).unwrap();
        assert!(trashed.exists());
        assert_eq!(db.reap().unwrap(), 2);
        assert!(db.layer_names().unwrap().is_empty());
    }

    #[test]
    fn damaged_records_are_reported_not_panicked() {
        let tmp = tempfile::tempdir().unwrap();
        let db = LayerDb::new(tmp.path());
        db.ensure_dirs().unwrap();
        let chain = ChainId(Digest::of(b"c"));
        let dir = db.layer_dir(&chain);
        fs::create_dir(&dir).unwrap();
        let d = db.read_layer(&chain).unwrap_err();
        assert!(d.why.contains("missing diff"), "{d:?}");
        assert_eq!(d.ids, vec![Known::Absent], "no cache-id file");
        fs::write(dir.join("diff"), "sha256:nothex").unwrap();
        assert!(db.read_layer(&chain).unwrap_err().why.contains("diff"));
        fs::write(dir.join("diff"), DiffId(Digest::of(b"x")).to_string()).unwrap();
        fs::write(dir.join("size"), "-1").unwrap();
        assert!(db.read_layer(&chain).unwrap_err().why.contains("size"));
        fs::write(dir.join("size"), "1").unwrap();
        fs::write(dir.join("cache-id"), "../../etc").unwrap();
        let d = db.read_layer(&chain).unwrap_err();
        assert!(d.why.contains("cache-id"));
        assert_eq!(d.ids, vec![Known::Unknown]);
        let id = CacheId::random();
        fs::write(dir.join("cache-id"), id.as_str()).unwrap();
        let d = db.read_layer(&chain).unwrap_err();
        assert!(d.why.contains(TAR_SPLIT));
        assert_eq!(d.ids, vec![Known::Is(id)]);
        assert!(!d.transient);
        File::create(dir.join(TAR_SPLIT)).unwrap();
        assert!(db.read_layer(&chain).is_ok());
        // A read error that is not ENOENT (here EISDIR) is damage, not absence.
        fs::remove_file(dir.join("size")).unwrap();
        fs::create_dir(dir.join("size")).unwrap();
        let d = db.read_layer(&chain).unwrap_err();
        assert!(d.why.contains("read size"), "{d:?}");
    }
}
