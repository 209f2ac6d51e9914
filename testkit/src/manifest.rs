//! A tree read back as a comparable [`Manifest`]: per path its type,
//! permission bits (setuid/setgid/sticky included), owner, size and content
//! digest, link target, device numbers, xattrs and hard-link group.
//!
//! Left out on purpose: directory sizes and link counts (they depend on
//! the filesystem), `trusted.overlay.*` xattrs (overlayfs' private state,
//! never part of a layer), `lost+found` at the root (moby's `readDir`), and
//! times unless asked for (a flat copy made later never matches them).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::Context;
use graphdriver::archive::fs::list_xattrs;
use sha2::{Digest, Sha256};

/// One path's facts. Equality ignores `blocks`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `d` dir, `f` file, `l` symlink, `c`/`b` device, `p` fifo, `s` socket.
    pub kind: char,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files: apparent size.
    pub size: Option<u64>,
    /// Regular files: sha256 of the content (first 16 hex digits).
    pub digest: Option<String>,
    /// Symlinks: the target.
    pub target: Option<String>,
    /// Devices: (major, minor).
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Non-directories sharing an inode with another path of this tree:
    /// the first such path (sorted). Same group = same inode.
    pub link_group: Option<String>,
    /// Non-directories, when asked for: (seconds, nanoseconds).
    pub mtime: Option<(i64, i64)>,
    /// 512-byte blocks allocated (reported, never compared).
    pub blocks: u64,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        (self.kind, self.mode, self.uid, self.gid, self.size, &self.digest, &self.target, self.rdev)
            == (o.kind, o.mode, o.uid, o.gid, o.size, &o.digest, &o.target, o.rdev)
            && (&self.xattrs, &self.link_group, self.mtime) == (&o.xattrs, &o.link_group, o.mtime)
    }
}

impl Eq for Entry {}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:04o} {}:{}", self.kind, self.mode, self.uid, self.gid)?;
        if let (Some(size), Some(d)) = (self.size, &self.digest) {
            write!(f, " size={size} sha256={d} blocks={}", self.blocks)?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {t}")?;
        }
        if let Some((ma, mi)) = self.rdev {
            write!(f, " dev={ma},{mi}")?;
        }
        if let Some(g) = &self.link_group {
            write!(f, " hardlink-of={g}")?;
        }
        if let Some((s, ns)) = self.mtime {
            write!(f, " mtime={s}.{ns:09}")?;
        }
        for (k, v) in &self.xattrs {
            write!(f, " xattr:{k}=\"{}\"", shown(v))?;
        }
        Ok(())
    }
}

/// Printable ASCII as is, other bytes as `\xNN`, long values cut short.
fn shown(v: &[u8]) -> String {
    let mut s = String::new();
    for b in v.iter().take(48) {
        match b {
            b' '..=b'~' if *b != b'\\' && *b != b'"' => s.push(*b as char),
            _ => s += &format!("\\x{b:02x}"),
        }
    }
    if v.len() > 48 {
        s += &format!("...({} bytes)", v.len());
    }
    s
}

/// Entries keyed by layer-absolute path (`/`, `/etc`, `/etc/hosts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest(pub BTreeMap<String, Entry>);

/// What [`scan`] records beyond the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOpts {
    /// Record mtimes of non-directories.
    pub mtimes: bool,
}

impl Manifest {
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.0.get(path)
    }

    /// Paths other than the root.
    pub fn len(&self) -> usize {
        self.0.keys().filter(|k| k.as_str() != "/").count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of regular-file sizes, each inode once.
    pub fn content_bytes(&self) -> u64 {
        self.0
            .iter()
            .filter(|(path, e)| e.kind == 'f' && e.link_group.as_deref().is_none_or(|g| g == path.as_str()))
            .filter_map(|(_, e)| e.size)
            .sum()
    }

    /// The differences, one line each (`-` only in `want`, `+` only in
    /// `got`, `~` in both but different); empty when equal.
    pub fn differences(&self, got: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        for (path, w) in &self.0 {
            match got.0.get(path) {
                None => out.push(format!("- {path}: {w}")),
                Some(g) if g != w => {
                    out.push(format!("~ {path}: want {w}\n  {:width$}   got  {g}", "", width = path.len()))
                }
                Some(_) => {}
            }
        }
        for (path, g) in &got.0 {
            if !self.0.contains_key(path) {
                out.push(format!("+ {path}: {g}"));
            }
        }
        out
    }

    /// The whole tree, at most `limit` lines.
    pub fn render(&self, limit: usize) -> String {
        let mut s = String::new();
        for (i, (path, e)) in self.0.iter().enumerate() {
            if i == limit {
                let _ = writeln!(s, "... {} more", self.0.len() - limit);
                break;
            }
            let _ = writeln!(s, "{path}: {e}");
        }
        s
    }
}

/// Fail with a readable difference list unless `got` equals `want`.
pub fn ensure_same(want: &Manifest, got: &Manifest, what: &str) -> anyhow::Result<()> {
    let diffs = want.differences(got);
    if diffs.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = diffs.iter().take(40).map(String::as_str).collect();
    let more = if diffs.len() > 40 { format!("\n... {} more differences", diffs.len() - 40) } else { String::new() };
    anyhow::bail!("{what}: trees differ (- want only, + got only, ~ changed):\n{}{more}", shown.join("\n"))
}

/// Read the tree below `root` (never following symlinks).
pub fn scan(root: &Path, opts: ScanOpts) -> anyhow::Result<Manifest> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name();
    let mut it = walk.into_iter();
    while let Some(entry) = it.next() {
        let entry = entry.with_context(|| format!("walk {}", root.display()))?;
        let rel = entry.path().strip_prefix(root).context("walk left the root")?;
        if rel.as_os_str() == "lost+found" {
            it.skip_current_dir();
            continue;
        }
        let key = format!("/{}", String::from_utf8_lossy(rel.as_os_str().as_bytes()));
        let e = stat(entry.path(), opts).with_context(|| format!("stat {}", entry.path().display()))?;
        if e.0.kind != 'd' {
            inodes.entry(e.1).or_default().push(key.clone());
        }
        out.insert(key, e.0);
    }
    for paths in inodes.values().filter(|p| p.len() > 1) {
        let first = paths.iter().min().cloned();
        for path in paths {
            if let Some(e) = out.get_mut(path) {
                e.link_group = first.clone();
            }
        }
    }
    Ok(Manifest(out))
}

fn stat(path: &Path, opts: ScanOpts) -> anyhow::Result<(Entry, (u64, u64))> {
    let md = fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else {
        's'
    };
    let (size, digest) = if kind == 'f' { (Some(md.len()), Some(digest_of(path)?)) } else { (None, None) };
    let target = if kind == 'l' {
        Some(String::from_utf8_lossy(fs::read_link(path)?.as_os_str().as_bytes()).into_owned())
    } else {
        None
    };
    let rdev = matches!(kind, 'c' | 'b').then(|| (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())));
    let xattrs = list_xattrs(path)?
        .into_iter()
        .filter(|(k, _)| !k.starts_with(b"trusted.overlay."))
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
        .collect();
    let mtime = (opts.mtimes && kind != 'd').then(|| (md.mtime(), md.mtime_nsec()));
    let e = Entry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size,
        digest,
        target,
        rdev,
        xattrs,
        link_group: None,
        mtime,
        blocks: md.blocks(),
    };
    Ok((e, (md.dev(), md.ino())))
}

fn digest_of(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(&h.finalize()[..8]))
}
