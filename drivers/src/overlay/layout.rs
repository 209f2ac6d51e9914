//! The overlay2 on-disk layout: paths, short link ids, `link`/`lower` files.
//!
//! ```text
//! <home>/<id>/diff        the layer's own files (overlay's upper dir)
//! <home>/<id>/link        its short id, 26 base32 characters
//! <home>/<id>/lower       `l/<short>:l/<short>…` of its ancestors, parent first
//! <home>/<id>/work        overlay's work dir (layers with a parent)
//! <home>/<id>/merged      mount point, present only while mounted
//! <home>/<id>/committed   empty marker: mount read-only
//! <home>/l/<short>        symlink to `../<id>/diff`
//! ```
//! The `lower` file and short ids are read back from disk, so they are
//! validated before they reach a mount option string: a lower entry is
//! `l/` followed by letters and digits only.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use graphdriver::{CacheId, DriverError, IoContext, IoError, Result};
use rustix::fs::RenameFlags;

/// The directory of short-id symlinks.
pub const LINK_DIR: &str = "l";
/// Most lower layers a layer may have (moby's overlay2 limit).
pub const MAX_DEPTH: usize = 128;
/// Short id length: `(26 + len("l/") + 1) * 128` stays under a page.
pub const ID_LENGTH: usize = 26;

/// Paths of one driver home.
#[derive(Debug, Clone)]
pub struct Layout {
    pub home: PathBuf,
}

impl Layout {
    pub fn dir(&self, id: &CacheId) -> PathBuf {
        self.home.join(id.as_str())
    }
    pub fn diff(&self, id: &CacheId) -> PathBuf {
        self.dir(id).join("diff")
    }
    pub fn work(&self, id: &CacheId) -> PathBuf {
        self.dir(id).join("work")
    }
    pub fn merged(&self, id: &CacheId) -> PathBuf {
        self.dir(id).join("merged")
    }
    pub fn links(&self) -> PathBuf {
        self.home.join(LINK_DIR)
    }
    pub fn staging(&self) -> PathBuf {
        self.home.join("staging")
    }
    pub fn trash(&self) -> PathBuf {
        self.home.join("trash")
    }
    pub fn tmp(&self) -> PathBuf {
        self.home.join("tmp")
    }

    /// The layer's short id (`link` file).
    pub fn read_link(&self, dir: &Path) -> Result<String> {
        let path = dir.join("link");
        let link = fs::read_to_string(&path).ctx("read", &path)?;
        if !valid_short(&link) {
            return Err(DriverError::Other(format!("{}: malformed short id {link:?}", path.display())));
        }
        Ok(link)
    }

    /// The entries of the layer's `lower` file (`l/<short>`, parent first);
    /// empty for a layer without a parent.
    pub fn read_lowers(&self, id: &CacheId) -> Result<Vec<String>> {
        self.read_lowers_at(&self.dir(id))
    }

    /// [`read_lowers`](Self::read_lowers) of the layer dir `dir`.
    pub fn read_lowers_at(&self, dir: &Path) -> Result<Vec<String>> {
        let path = dir.join("lower");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(IoError::new("read", path, e).into()),
        };
        let lowers: Vec<String> = text.split(':').map(str::to_string).collect();
        if let Some(bad) = lowers.iter().find(|l| !l.strip_prefix("l/").is_some_and(valid_short)) {
            return Err(DriverError::Other(format!("{}: malformed lower entry {bad:?}", path.display())));
        }
        Ok(lowers)
    }

    /// The `lower` entries a child of `parent` gets: the parent's link,
    /// then the parent's own lowers. More than [`MAX_DEPTH`] is refused.
    pub fn lowers_for_child(&self, parent: &CacheId) -> Result<Vec<String>> {
        let mut lowers = vec![format!("{LINK_DIR}/{}", self.read_link(&self.dir(parent))?)];
        lowers.extend(self.read_lowers(parent)?);
        if lowers.len() > MAX_DEPTH {
            return Err(DriverError::InvalidArgument(format!(
                "max depth exceeded: a child of {parent} would have {} lower layers, overlay allows {MAX_DEPTH}",
                lowers.len()
            )));
        }
        Ok(lowers)
    }

    /// Resolve a `lower` entry through its symlink to the name of the
    /// lower layer's dir: its id, or a removed layer's kept name.
    pub fn lower_name(&self, entry: &str) -> Result<String> {
        let path = self.home.join(entry);
        let target = fs::read_link(&path).ctx("readlink", &path)?;
        let name = target
            .strip_prefix("..")
            .ok()
            .and_then(|rest| rest.to_str())
            .and_then(|rest| rest.strip_suffix("/diff"))
            .filter(|name| is_layer_name(name));
        match name {
            Some(name) => Ok(name.to_string()),
            _ => Err(DriverError::Other(format!("{}: unexpected link target {}", path.display(), target.display()))),
        }
    }

    /// The `diff` dirs of the layer's lowers, parent first.
    pub fn lower_dirs(&self, id: &CacheId) -> Result<Vec<PathBuf>> {
        self.read_lowers(id)?.iter().map(|l| Ok(self.home.join(self.lower_name(l)?).join("diff"))).collect()
    }

    /// The dir name of the layer's parent, from the first `lower` entry.
    pub fn parent(&self, id: &CacheId) -> Result<Option<String>> {
        self.parent_at(&self.dir(id))
    }

    /// [`parent`](Self::parent) of the layer dir `dir`.
    pub fn parent_at(&self, dir: &Path) -> Result<Option<String>> {
        self.read_lowers_at(dir)?.first().map(|l| self.lower_name(l)).transpose()
    }
}

/// moby's metadata of a layer: `UpperDir`, `WorkDir`, `MergedDir`, and
/// `LowerDir` (the lowers' `diff` dirs, parent first) when it has a parent.
pub fn metadata(layout: &Layout, id: &CacheId) -> Result<BTreeMap<String, String>> {
    let show = |p: PathBuf| p.display().to_string();
    let mut m = BTreeMap::from([
        ("WorkDir".to_string(), show(layout.work(id))),
        ("MergedDir".to_string(), show(layout.merged(id))),
        ("UpperDir".to_string(), show(layout.diff(id))),
    ]);
    let lowers = layout.lower_dirs(id)?;
    if !lowers.is_empty() {
        let lowers: Vec<String> = lowers.into_iter().map(show).collect();
        m.insert("LowerDir".into(), lowers.join(":"));
    }
    Ok(m)
}

/// Prefix of a removed layer's dir kept for its children (`family.rs`).
pub const KEPT_PREFIX: &str = ".removed-";

/// A layer dir name: an id, or a removed layer kept for its children.
pub fn is_layer_name(name: &str) -> bool {
    CacheId::parse(name).is_ok() || is_kept(name)
}

/// A removed layer's kept dir name: the prefix, then letters, digits and `-`.
pub fn is_kept(name: &str) -> bool {
    name.strip_prefix(KEPT_PREFIX)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// A name no other staging, trash or scratch entry has.
pub fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{what}-{}-{}-{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), IoError> {
    fs::DirBuilder::new().mode(mode).create(path).ctx("create", path)?;
    // The umask may have cut the mode; the owner is root (mount needs root).
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(mode)).map_err(io::Error::from).ctx("chmod", path)?;
    std::os::unix::fs::lchown(path, Some(0), Some(0)).ctx("chown", path)
}

/// Create layer `id` on `parent`: build it under `staging/`, link its short
/// id, then rename it into place, so `<home>/<id>` is never half made.
/// `readonly`: mark it `committed` (a read-only image layer).
pub fn create(layout: &Layout, id: &CacheId, parent: Option<&CacheId>, readonly: bool) -> Result<()> {
    let target = layout.dir(id);
    if fs::symlink_metadata(&target).is_ok() {
        return Err(DriverError::AlreadyExists(id.to_string()));
    }
    let lowers = match parent {
        Some(p) if !layout.dir(p).is_dir() => return Err(DriverError::NotFound(p.to_string())),
        Some(p) => layout.lowers_for_child(p)?,
        None => Vec::new(),
    };
    let stage = layout.staging().join(unique(id.as_str()));
    let mut link = None;
    let res = (|| -> Result<()> {
        mkdir(&stage, 0o710)?;
        mkdir(&stage.join("diff"), 0o755)?;
        if !lowers.is_empty() {
            mkdir(&stage.join("work"), 0o700)?;
            write_atomic(&stage.join("lower"), lowers.join(":").as_bytes(), 0o644)?;
        }
        if readonly {
            write_atomic(&stage.join("committed"), b"", 0o600)?;
        }
        let short = make_link(layout, id)?;
        link = Some(layout.links().join(&short));
        write_atomic(&stage.join("link"), short.as_bytes(), 0o644)?;
        if let Some(p) = parent
            && fs::symlink_metadata(layout.dir(p).join("committed")).is_err()
        {
            // moby marks a parent read-only once it has a child.
            write_atomic(&layout.dir(p).join("committed"), b"", 0o600)?;
        }
        match rustix::fs::renameat_with(rustix::fs::CWD, &stage, rustix::fs::CWD, &target, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
                Err(DriverError::AlreadyExists(id.to_string()))
            }
            Err(e) => Err(IoError::new("rename", &stage, e.into()).into()),
        }
    })();
    if res.is_err() {
        if let Some(link) = link {
            let _ = fs::remove_file(link);
        }
        if let Err(e) = remove_path(&stage) {
            tracing::warn!(driver = "overlay", error = %e, "cannot clean up a failed create; removed at next start");
        }
    }
    res
}

/// Make `l/<short>` point at `../<id>/diff` (dangling until the rename).
fn make_link(layout: &Layout, id: &CacheId) -> Result<String> {
    let target = Path::new("..").join(id.as_str()).join("diff");
    for _ in 0..8 {
        let short = new_short_id();
        let link = layout.links().join(&short);
        match std::os::unix::fs::symlink(&target, &link) {
            Ok(()) => return Ok(short),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(IoError::new("symlink", link, e).into()),
        }
    }
    Err(DriverError::Other("no free short id after 8 tries".into()))
}

/// Take the layer dir `name` out of view: rename it into `trash/` and drop
/// its link. Returns the trash path, for the caller to delete.
pub fn unpublish(layout: &Layout, name: &str) -> Result<PathBuf> {
    let dir = layout.home.join(name);
    let short = layout.read_link(&dir).ok();
    let trash = layout.trash().join(unique(name.trim_start_matches('.')));
    match fs::rename(&dir, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DriverError::NotFound(name.to_string())),
        Err(e) => return Err(IoError::new("rename", &dir, e).into()),
    }
    if let Some(short) = short {
        let link = layout.links().join(short);
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(driver = "overlay", error = %e, "cannot remove link; removed at next start"),
        }
    }
    Ok(trash)
}

pub fn remove_path(path: &Path) -> Result<(), IoError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path).ctx("remove", path),
        Ok(_) => fs::remove_file(path).ctx("remove", path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new("stat", path, e)),
    }
}

/// After a crash (mounts already undone): empty `staging/`, `trash/` and
/// `tmp/` — work that grows with the leftovers, not with the layers.
pub fn recover(layout: &Layout) -> Result<()> {
    for dir in [layout.staging(), layout.trash(), layout.tmp()] {
        for entry in fs::read_dir(&dir).ctx("read dir", &dir)? {
            let leftover = entry.ctx("read dir", &dir)?.path();
            tracing::info!(driver = "overlay", path = %leftover.display(), "removing crash leftover");
            remove_path(&leftover)?;
        }
    }
    Ok(())
}

/// After a crash (mounts already undone, kept layers' links mended): remove
/// leftover `merged` dirs and links to no layer — a look at every layer.
pub fn recover_layers(layout: &Layout) -> Result<()> {
    for entry in fs::read_dir(&layout.home).ctx("read dir", &layout.home)? {
        let name = entry.ctx("read dir", &layout.home)?.file_name();
        let Some(Ok(id)) = name.to_str().map(CacheId::parse) else { continue };
        let merged = layout.merged(&id);
        match fs::remove_dir(&merged) {
            Ok(()) => tracing::info!(driver = "overlay", %id, "removed leftover merged dir"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Never emptied by force: it might still be a view of the layers.
            Err(e) => tracing::warn!(driver = "overlay", %id, error = %e, "cannot remove leftover merged dir"),
        }
    }
    let links = layout.links();
    for entry in fs::read_dir(&links).ctx("read dir", &links)? {
        let entry = entry.ctx("read dir", &links)?;
        let link = entry.path();
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            // A temp link of an interrupted re-pointing.
            fs::remove_file(&link).ctx("remove", &link)?;
            continue;
        }
        if let Err(e) = fs::metadata(&link)
            && e.kind() == io::ErrorKind::NotFound
        {
            tracing::info!(driver = "overlay", link = %link.display(), "removing link to no layer");
            fs::remove_file(&link).ctx("remove", &link)?;
        }
    }
    Ok(())
}

/// A short id as moby writes them (base32), or any other plain alphanumeric.
pub fn valid_short(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A fresh random short id: [`ID_LENGTH`] characters of base32.
pub fn new_short_id() -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    // CacheId::random is 32 random bytes, hex encoded: 4 random bits a digit.
    let random = CacheId::random();
    let mut bits: u64 = 0;
    let mut have = 0;
    let mut out = String::with_capacity(ID_LENGTH);
    for digit in random.as_str().bytes() {
        let nibble = (digit as char).to_digit(16).unwrap_or(0);
        bits = (bits << 4) | u64::from(nibble);
        have += 4;
        if have >= 5 {
            have -= 5;
            out.push(char::from(ALPHABET[((bits >> have) & 31) as usize]));
            if out.len() == ID_LENGTH {
                break;
            }
        }
    }
    out
}

/// Write `data` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), IoError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}", unique("tmp")));
    let mut f =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).ctx("create", &tmp)?;
    f.write_all(data).ctx("write", &tmp)?;
    f.sync_all().ctx("fsync", &tmp)?;
    fs::rename(&tmp, path).ctx("rename", &tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_base32_and_distinct() {
        let a = new_short_id();
        let b = new_short_id();
        assert_eq!(a.len(), ID_LENGTH);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)), "{a}");
        assert!(valid_short(&a));
        // The page bound moby picked the length for.
        assert!((ID_LENGTH + LINK_DIR.len() + 1) * MAX_DEPTH <= 4096 - 512);
    }

    #[test]
    fn malformed_lower_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout { home: t.path().to_path_buf() };
        let id = CacheId::random();
        fs::create_dir(layout.dir(&id)).unwrap();
        assert_eq!(layout.read_lowers(&id).unwrap(), Vec::<String>::new());
        assert_eq!(layout.parent(&id).unwrap(), None);
        for bad in ["l/AB,upperdir=/x", "l/../x", "/abs", "l/", "l/A:", "l/A::l/B"] {
            fs::write(layout.dir(&id).join("lower"), bad).unwrap();
            assert!(layout.read_lowers(&id).is_err(), "{bad}");
        }
        fs::write(layout.dir(&id).join("lower"), "l/AB:l/CD").unwrap();
        assert_eq!(layout.read_lowers(&id).unwrap(), vec!["l/AB", "l/CD"]);
        fs::write(layout.dir(&id).join("link"), "A/B").unwrap();
        assert!(layout.read_link(&layout.dir(&id)).is_err());
        fs::create_dir(layout.links()).unwrap();
        std::os::unix::fs::symlink("/etc", layout.links().join("AB")).unwrap();
        assert!(layout.lower_name("l/AB").is_err());
        std::os::unix::fs::symlink("../.removed-x-1/diff", layout.links().join("CD")).unwrap();
        assert_eq!(layout.lower_name("l/CD").unwrap(), ".removed-x-1");
        std::os::unix::fs::symlink("../.removed-x,y/diff", layout.links().join("EF")).unwrap();
        assert!(layout.lower_name("l/EF").is_err());
    }
}
