//! `apply_tar`: extract a hostile tar into a directory.
//!
//! The workspace's one tar reader (`reader.rs`, Go's rules) parses — the
//! tar-split recorder reads the same bytes through it; every filesystem
//! operation is ours and relative to a directory fd reached component by
//! component with `O_NOFOLLOW`, so an entry can never write through a
//! symlink, and names that climb above the root are refused before any lookup.
//! The directories of the last member's path stay open for the next member
//! (`dircache.rs`, which says why that is safe).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::dircache::{Dir, DirCache};
use super::fs::{list_dir, open_dir_at, proc_path, remove_all_at};
use super::header::MAX_PATH;
use super::header::{
    Kind, Meta, Pax, Rel, Shown, check_symlink, content_errno, invalid, meta, parse_path, pax_of, read_err, show,
    shown_lossy,
};
use super::pathset::PathSet;
use super::reader::{Member, Reader};
use super::sparse;
use super::whiteout::{self, WHITEOUT_META_PREFIX, Whiteout};
use super::{Applied, ApplyOptions, WHITEOUT_OPAQUE, WhiteoutFormat};
use crate::error::{ArchiveError, IoContext, IoError};

pub(super) fn apply(dir: &Path, tar: &mut dyn Read, opts: &ApplyOptions) -> Result<u64, ArchiveError> {
    Ok(apply_measured(dir, tar, opts, false)?.tar_size)
}

/// [`apply`], and with `measure` the size of the tree as `dir_size` would
/// find it, counted while writing where that is exact (see [`Applied`]).
pub(super) fn apply_measured(
    dir: &Path,
    tar: &mut dyn Read,
    opts: &ApplyOptions,
    measure: bool,
) -> Result<Applied, ArchiveError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root = rustix::fs::open(dir, flags, Mode::empty()).map_err(io::Error::from).ctx("open", dir)?;
    // Counting is exact only from an empty directory: nothing to count twice.
    let lstat_size = if measure && list_dir(root.as_fd()).ctx("read dir", dir)?.is_empty() { Some(0) } else { None };
    let mut ap = Applier {
        dir,
        cache: DirCache::new(root),
        format: opts.whiteouts,
        unpacked: PathSet::default(),
        dirs: HashMap::new(),
        written: 0,
        lstat_size,
        buf: vec![0; COPY_BUF],
    };
    let mut rd = Reader::new(tar);
    while let Some(m) = rd.next_member().map_err(read_err(dir))? {
        ap.entry(&m, &mut rd)?;
    }
    ap.finish_dirs()?;
    Ok(Applied { tar_size: ap.written, lstat_size: ap.lstat_size })
}

pub(super) struct Applier<'a> {
    pub(super) dir: &'a Path,
    /// The layer root and the directories of the last path opened below it.
    pub(super) cache: DirCache,
    pub(super) format: WhiteoutFormat,
    /// Paths written (or created as parents) by this tar: an opaque marker
    /// keeps these.
    pub(super) unpacked: PathSet,
    /// Directory mode and times, applied after every entry, deepest first.
    pub(super) dirs: HashMap<Rel, (u32, Timestamps)>,
    /// Docker's `UnpackLayer` size: the sum of every member's header size,
    /// a sparse file counting its logical size (as Go's reader reports it).
    pub(super) written: u64,
    /// The tree's size by `dir_size`'s rule (non-directories by `lstat`
    /// size, each inode once), kept while it is exact: from an empty
    /// directory, nothing removed since. `None` once unknown.
    pub(super) lstat_size: Option<u64>,
    /// File data passes through here ([`COPY_BUF`] bytes).
    buf: Vec<u8>,
}

/// Most files of a small-file tar fit: one `write` each.
const COPY_BUF: usize = 128 * 1024;

impl Applier<'_> {
    /// Wrap an io error with its operation and the full path of `rel`; an
    /// error the content caused is `InvalidTar` naming the member instead.
    pub(super) fn io<'s>(&'s self, op: &'static str, rel: &'s [Vec<u8>]) -> impl Fn(io::Error) -> ArchiveError + 's {
        move |e| match e.raw_os_error() {
            Some(code) if content_errno(op, code) => invalid(format!("{}: {op}: {e}", show(rel))),
            _ => ArchiveError::Io(IoError::new(op, self.dir.join(OsStr::from_bytes(&rel.join(&b'/'))), e)),
        }
    }

    fn entry<R: Read>(&mut self, m: &Member, rd: &mut Reader<R>) -> Result<(), ArchiveError> {
        let ty = m.typeflag;
        if ty == b'g' {
            return Ok(());
        }
        let pax = pax_of(m)?;
        let raw = &m.name;
        let rel = parse_path(raw, "path")?;
        let shown = Shown(&rel);
        // Whatever later walks the layer by full path (size, diff, export
        // of a child, removal; Docker itself) fails on paths of PATH_MAX
        // bytes or more: refuse them now rather than store a layer that
        // cannot be handled later.
        let full = self.dir.as_os_str().len() + rel.iter().map(|c| c.len() + 1).sum::<usize>();
        if full > MAX_PATH {
            return Err(invalid(format!(
                "{shown}: path is too long: {full} bytes with the layer's directory, the limit is {MAX_PATH}"
            )));
        }
        let kind =
            Kind::of(ty).ok_or_else(|| invalid(format!("{shown}: unsupported entry type {:?}", char::from(ty))))?;
        // A regular file counts its logical size where it is written; every
        // other member (whiteouts and skipped AUFS metadata too) its header's.
        let header_size = u64::try_from(m.size).unwrap_or(0);
        if kind != Kind::File {
            self.written += header_size;
        }
        if rel.is_empty() {
            if kind != Kind::Dir {
                return Err(invalid(format!(
                    "entry {:?} names the layer root but is not a directory",
                    String::from_utf8_lossy(raw)
                )));
            }
            let meta = meta(m, &pax, &shown)?;
            let (_, root) = self.cache.reuse(&rel);
            return self.set_dir_meta(&root.fd, rel, meta);
        }
        // Whiteout markers are empty regular files: one with a body could
        // not be exported again (nothing on disk holds the body).
        let plain_empty = kind == Kind::File && m.sparse.is_none() && m.size == 0;
        if rel[0].starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            // AUFS metadata (`.wh..wh.plnk`, ...) and an opaque marker at the
            // root are skipped, as moby does; a malformed marker is still refused.
            if rel.len() == 1 && rel[0] == WHITEOUT_OPAQUE.as_bytes() && !plain_empty {
                return Err(invalid(format!("{shown}: whiteout entry is not an empty regular file")));
            }
            if m.data_len > 0 || (kind == Kind::File && m.size != 0) {
                return Err(invalid(format!("{shown}: AUFS metadata entry carries data")));
            }
            self.written += header_size;
            return Ok(());
        }
        let (parent, base) = rel.split_at(rel.len() - 1);
        let wh = whiteout::classify(&base[0]).map_err(|m| invalid(format!("{shown}: {m}")))?;
        if wh != Whiteout::None && !plain_empty {
            return Err(invalid(format!("{shown}: whiteout entry is not an empty regular file")));
        }
        match wh {
            Whiteout::None => self.write(m, rd, kind, &rel, pax),
            Whiteout::Meta => Err(invalid(format!("{shown}: AUFS metadata entry outside the layer root"))),
            Whiteout::Opaque => self.opaque(parent, &shown),
            Whiteout::Remove(name) => self.whiteout(parent, name, &shown),
        }
    }

    /// Open the directory `rel`, creating missing components (mode 0755) if
    /// `create`. `None`: missing and not created. Components the cache
    /// holds open are not looked up again; the rest are opened one by one
    /// with `O_NOFOLLOW` from the deepest cached one.
    fn open_dir(
        &mut self,
        rel: &[Vec<u8>],
        create: bool,
        shown: &dyn fmt::Display,
    ) -> Result<Option<Dir>, ArchiveError> {
        let (start, mut dir) = self.cache.reuse(rel);
        for (i, comp) in rel.iter().enumerate().skip(start) {
            let name = OsStr::from_bytes(comp);
            let node = self.unpacked.child(dir.node, comp);
            let next = match open_dir_at(dir.fd.as_fd(), name) {
                Ok(next) => next,
                Err(err) => match err.raw_os_error() {
                    Some(libc::ENOENT) if create => {
                        rustix::fs::mkdirat(&*dir.fd, name, Mode::from_raw_mode(0o755))
                            .map_err(io::Error::from)
                            .map_err(self.io("mkdir", &rel[..=i]))?;
                        let next = open_dir_at(dir.fd.as_fd(), name).map_err(self.io("open", &rel[..=i]))?;
                        rustix::fs::fchmod(&next, Mode::from_raw_mode(0o755))
                            .map_err(io::Error::from)
                            .map_err(self.io("chmod", &rel[..=i]))?;
                        self.unpacked.mark(node);
                        next
                    }
                    Some(libc::ENOENT) => return Ok(None),
                    Some(libc::ELOOP) => {
                        return Err(invalid(format!(
                            "{shown}: {} is a symlink; refusing to go through it",
                            show(&rel[..=i])
                        )));
                    }
                    Some(libc::ENOTDIR) => {
                        return Err(invalid(format!("{shown}: {} is not a directory", show(&rel[..=i]))));
                    }
                    _ => return Err(self.io("open", &rel[..=i])(err)),
                },
            };
            dir = self.cache.push(i, comp, next, node);
        }
        Ok(Some(dir))
    }

    pub(super) fn must_open_dir(&mut self, rel: &[Vec<u8>], shown: &dyn fmt::Display) -> Result<Dir, ArchiveError> {
        self.open_dir(rel, true, shown)?.ok_or_else(|| invalid(format!("{shown}: parent directory vanished")))
    }

    /// Clear the way for a member at `name`: remove what is there (a whole
    /// tree for a directory), except that a directory stays when the member
    /// is one (`keep_dir`; returns whether it stayed).
    fn make_room(
        &mut self,
        pfd: &OwnedFd,
        name: &OsStr,
        rel: &[Vec<u8>],
        keep_dir: bool,
    ) -> Result<bool, ArchiveError> {
        let st = match rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(err) => return Err(self.io("stat", rel)(err.into())),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && keep_dir {
            return Ok(true);
        }
        // What goes may have been counted (or be a link to what was).
        self.lstat_size = None;
        // From here on `rel` is no longer the directory the cache may hold.
        self.cache.forget(rel);
        if is_dir {
            remove_all_at(pfd.as_fd(), name).map_err(self.io("remove", rel))?;
        } else {
            rustix::fs::unlinkat(pfd, name, AtFlags::empty())
                .map_err(io::Error::from)
                .map_err(self.io("unlink", rel))?;
        }
        Ok(false)
    }

    /// Create a non-directory with `create`; if something is in the way
    /// (`EEXIST`), replace it and try once more. Most members land on a
    /// free name, so this costs no lookup before the create.
    fn create_replacing<T>(
        &mut self,
        pfd: &OwnedFd,
        name: &OsStr,
        rel: &[Vec<u8>],
        create: impl Fn() -> rustix::io::Result<T>,
    ) -> Result<rustix::io::Result<T>, ArchiveError> {
        match create() {
            Err(Errno::EXIST) => {
                self.make_room(pfd, name, rel, false)?;
                Ok(create())
            }
            res => Ok(res),
        }
    }

    fn write<R: Read>(
        &mut self,
        m: &Member,
        rd: &mut Reader<R>,
        kind: Kind,
        rel: &[Vec<u8>],
        pax: Pax,
    ) -> Result<(), ArchiveError> {
        let shown = Shown(rel);
        let (parent, base) = rel.split_at(rel.len() - 1);
        let name = OsStr::from_bytes(&base[0]);
        let meta = meta(m, &pax, &shown)?;
        let dir = self.must_open_dir(parent, &shown)?;
        let pfd = &*dir.fd;
        let node = self.unpacked.child(dir.node, &base[0]);
        let os = |err: Errno| io::Error::from(err);
        match kind {
            Kind::Dir => {
                // An existing directory stays (the member sets its metadata).
                let mode = Mode::from_raw_mode(0o700);
                let made = match rustix::fs::mkdirat(pfd, name, mode) {
                    Err(Errno::EXIST) if self.make_room(pfd, name, rel, true)? => Ok(()),
                    Err(Errno::EXIST) => rustix::fs::mkdirat(pfd, name, mode),
                    res => res,
                };
                made.map_err(os).map_err(self.io("mkdir", rel))?;
                let fd = open_dir_at(pfd.as_fd(), name).map_err(self.io("open", rel))?;
                // Its members usually follow: keep it open for them.
                let this = self.cache.push(parent.len(), &base[0], fd, node);
                self.set_dir_meta(&this.fd, rel.to_vec(), meta)?;
            }
            Kind::File => self.file(m, rd, pfd, name, rel, meta)?,
            Kind::Symlink => {
                let target = pax.link.clone().ok_or_else(|| invalid(format!("{shown}: symlink without a target")))?;
                check_symlink(parent.len(), &target).map_err(|m| invalid(format!("{shown}: {m}")))?;
                let target = OsStr::from_bytes(&target);
                self.create_replacing(pfd, name, rel, || rustix::fs::symlinkat(target, pfd, name))?
                    .map_err(os)
                    .map_err(self.io("symlink", rel))?;
                self.count(target.len() as u64);
                self.set_meta_at(pfd, name, rel, &meta, false)?;
            }
            Kind::Link => {
                // The old order (clear the name, then resolve the target), so a
                // link into the tree it replaces fails as it always did.
                self.make_room(pfd, name, rel, false)?;
                self.hardlink(pax.link.as_deref(), pfd, name, rel)?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (ft, dev) = match kind {
                    Kind::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let dev = |v: i64| {
                            u32::try_from(v).map_err(|_| invalid(format!("{shown}: device number {v} out of range")))
                        };
                        let (major, minor) = (dev(m.devmajor)?, dev(m.devminor)?);
                        let ft = if kind == Kind::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                let mode = Mode::from_raw_mode(0o600);
                self.create_replacing(pfd, name, rel, || rustix::fs::mknodat(pfd, name, ft, mode, dev))?
                    .map_err(os)
                    .map_err(self.io("mknod", rel))?;
                self.set_meta_at(pfd, name, rel, &meta, true)?;
            }
        }
        self.unpacked.mark(node);
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        m: &Member,
        rd: &mut Reader<R>,
        pfd: &OwnedFd,
        name: &OsStr,
        rel: &[Vec<u8>],
        meta: Meta,
    ) -> Result<(), ArchiveError> {
        let shown = Shown(rel);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = self
            .create_replacing(pfd, name, rel, || rustix::fs::openat(pfd, name, flags, Mode::from_raw_mode(0o600)))?
            .map_err(io::Error::from)
            .map_err(self.io("create", rel))?;
        let mut file = File::from(fd);
        let avail = m.data_len;
        let truncated = || invalid(format!("{shown}: tar is truncated inside the file data"));
        // Lent out while `write_err` borrows `self`; put back below.
        let mut buf = std::mem::take(&mut self.buf);
        let write_err = |err: io::Error| match err.raw_os_error() {
            // EINVAL: a seek past the largest offset the filesystem allows.
            Some(libc::EFBIG | libc::EINVAL) => {
                invalid(format!("{shown}: file size exceeds what the filesystem can hold"))
            }
            Some(_) => self.io("write", rel)(err),
            _ if err.kind() == io::ErrorKind::UnexpectedEof => truncated(),
            _ if matches!(err.kind(), io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) => {
                invalid(format!("{shown}: read tar stream: {err}"))
            }
            _ => self.io("write", rel)(err),
        };
        let copied = if let Some(map) = &m.sparse {
            let size = u64::try_from(m.size).unwrap_or(0);
            sparse::check_map(map, size, avail)
                .map_err(|why| invalid(format!("{shown}: {why}")))
                .and_then(|()| sparse::write_chunks(&mut buf, &mut file, rd, map, size).map_err(write_err))
                .and_then(|complete| if complete { Ok(size) } else { Err(truncated()) })
        } else {
            sparse::copy_data(&mut buf, rd, &mut file, avail)
                .map_err(write_err)
                .and_then(|n| if n == avail { Ok(avail) } else { Err(truncated()) })
        };
        self.buf = buf;
        let size = copied?;
        self.written += size;
        // A new inode (`O_EXCL`) whose `lstat` size is its logical size.
        self.count(size);
        let os = |err: Errno| io::Error::from(err);
        rustix::fs::fchown(&file, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
            .map_err(os)
            .map_err(self.io("chown", rel))?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(os).map_err(self.io("chmod", rel))?;
        for (k, v) in &meta.xattrs {
            rustix::fs::fsetxattr(&file, OsStr::from_bytes(k), v, XattrFlags::empty())
                .map_err(os)
                .map_err(self.io("setxattr", rel))?;
        }
        rustix::fs::futimens(&file, &meta.times()).map_err(os).map_err(self.io("set times of", rel))?;
        Ok(())
    }

    fn hardlink(
        &mut self,
        link: Option<&[u8]>,
        pfd: &OwnedFd,
        name: &OsStr,
        rel: &[Vec<u8>],
    ) -> Result<(), ArchiveError> {
        let shown = Shown(rel);
        let raw = link.ok_or_else(|| invalid(format!("{shown}: hardlink without a target")))?;
        let target = parse_path(raw, &format!("{shown}: hardlink target"))?;
        if target.is_empty() {
            return Err(invalid(format!("{shown}: hardlink target is the layer root")));
        }
        let (tparent, tbase) = target.split_at(target.len() - 1);
        let missing = || invalid(format!("{shown}: hardlink target {} does not exist in the layer", show(&target)));
        let tdir = self
            .open_dir(tparent, false, &format!("{shown}: hardlink target {}", show(&target)))?
            .ok_or_else(missing)?;
        let tfd = &*tdir.fd;
        // On overlay a whited-out path is a 0/0 character device: linking
        // to it would make a second whiteout, not a file (vfs, which
        // removes the path, finds nothing to link to).
        if self.format == WhiteoutFormat::Overlay
            && let Ok(st) = rustix::fs::statat(tfd, OsStr::from_bytes(&tbase[0]), AtFlags::SYMLINK_NOFOLLOW)
            && FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
            && st.st_rdev == 0
        {
            return Err(missing());
        }
        match rustix::fs::linkat(tfd, OsStr::from_bytes(&tbase[0]), pfd, name, AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::NOENT) => Err(missing()),
            Err(Errno::PERM) => Err(invalid(format!("{shown}: hardlink target {} is a directory", show(&target)))),
            Err(err) => Err(self.io("link", rel)(err.into())),
        }
    }

    /// A new inode of `size` bytes (by `lstat`) joined the tree.
    pub(super) fn count(&mut self, size: u64) {
        self.lstat_size = self.lstat_size.and_then(|n| n.checked_add(size));
    }

    /// Owner, mode, xattrs and times of a just-created non-directory that
    /// is not open (symlink, device, fifo).
    fn set_meta_at(
        &self,
        pfd: &OwnedFd,
        name: &OsStr,
        rel: &[Vec<u8>],
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), ArchiveError> {
        let os = |err: Errno| io::Error::from(err);
        let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        rustix::fs::chownat(pfd, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(os)
            .map_err(self.io("chown", rel))?;
        if chmod {
            rustix::fs::chmodat(pfd, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(os)
                .map_err(self.io("chmod", rel))?;
        }
        let path = proc_path(pfd.as_fd(), name);
        for (k, v) in &meta.xattrs {
            match rustix::fs::lsetxattr(&path, OsStr::from_bytes(k), v, XattrFlags::empty()) {
                Ok(()) => {}
                // user.* xattrs cannot exist on symlinks and devices.
                Err(Errno::PERM) if k.starts_with(b"user.") => {
                    tracing::warn!(path = %shown_lossy(rel), "dropping user xattr on a special file");
                }
                Err(err) => return Err(self.io("setxattr", rel)(err.into())),
            }
        }
        rustix::fs::utimensat(pfd, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(os)
            .map_err(self.io("set times of", rel))?;
        Ok(())
    }

    /// Owner and xattrs now; mode and times once every entry is in.
    fn set_dir_meta(&mut self, fd: &OwnedFd, rel: Rel, meta: Meta) -> Result<(), ArchiveError> {
        let os = |err: Errno| io::Error::from(err);
        rustix::fs::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
            .map_err(os)
            .map_err(self.io("chown", &rel))?;
        // A directory member describes the directory's whole metadata: on an
        // existing directory (a copy of the parent), xattrs the tar does not
        // list were removed in this layer. Overlay's own markers stay.
        let existing = super::fs::list_xattrs_fd(fd.as_fd()).map_err(self.io("list xattrs of", &rel))?;
        for (k, _) in existing {
            let keep = k.starts_with(b"trusted.overlay.") || k == b"security.selinux";
            if !keep && !meta.xattrs.iter().any(|(n, _)| *n == k) {
                rustix::fs::fremovexattr(fd, OsStr::from_bytes(&k))
                    .map_err(os)
                    .map_err(self.io("removexattr", &rel))?;
            }
        }
        for (k, v) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, XattrFlags::empty())
                .map_err(os)
                .map_err(self.io("setxattr", &rel))?;
        }
        let times = meta.times();
        self.dirs.insert(rel, (meta.mode, times));
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        for (rel, (mode, times)) in dirs {
            // Later entries may have removed or replaced the directory.
            let fd = match self.open_dir(&rel, false, &show(&rel)) {
                Ok(Some(dir)) => dir.fd,
                Ok(None) | Err(ArchiveError::InvalidTar(_)) => continue,
                Err(err) => return Err(err),
            };
            let os = |err: Errno| io::Error::from(err);
            rustix::fs::fchmod(&*fd, Mode::from_raw_mode(mode)).map_err(os).map_err(self.io("chmod", &rel))?;
            rustix::fs::futimens(&*fd, &times).map_err(os).map_err(self.io("set times of", &rel))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use super::super::testutil::{dump, fix_cksum, header, pax, raw_tar};
    use super::*;
    use crate::archive::fs::list_xattrs;
    use tar::EntryType;

    const REG: u8 = b'0';
    const LNK: u8 = b'1';
    const SYM: u8 = b'2';
    const DIR: u8 = b'5';

    struct Fixture {
        _tmp: tempfile::TempDir,
        layer: PathBuf,
        sentinel: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let layer = tmp.path().join("layer");
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir(&layer).unwrap();
        fs::create_dir(&sentinel).unwrap();
        fs::write(sentinel.join("file"), b"precious").unwrap();
        Fixture { layer, sentinel, _tmp: tmp }
    }

    fn apply_bytes(dir: &Path, tar: &[u8], format: WhiteoutFormat) -> Result<u64, ArchiveError> {
        let mut r = tar;
        apply(dir, &mut r, &ApplyOptions { whiteouts: format })
    }

    fn remove(dir: &Path, tar: &[u8]) -> Result<u64, ArchiveError> {
        apply_bytes(dir, tar, WhiteoutFormat::Remove)
    }

    #[test]
    fn hostile_tars_are_rejected_and_touch_nothing_outside() {
        let f = fixture();
        let sent = f.sentinel.display().to_string();
        let sent_file = format!("{sent}/file");
        let big = vec![b'x'; 1000];
        let mut bad_sum = raw_tar(&[(b"ok", REG, b"", b"data")]);
        bad_sum[0] = b'p';
        let mut truncated = raw_tar(&[(b"big", REG, b"", &big)]);
        truncated.truncate(512 + 700);
        let mut half_header = raw_tar(&[(b"a", REG, b"", b"1"), (b"b", REG, b"", b"2")]);
        half_header.truncate(1024 + 100);
        let mut pax_dotdot = pax(&[("path", b"../pwned")]);
        pax_dotdot.extend(raw_tar(&[(b"innocent", REG, b"", b"x")]));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dotdot", raw_tar(&[(b"../pwned", REG, b"", b"x")])),
            ("inner dotdot", raw_tar(&[(b"a/../../pwned", REG, b"", b"x")])),
            ("pax dotdot", pax_dotdot),
            ("write through symlink", raw_tar(&[(b"a", SYM, sent.as_bytes(), b""), (b"a/pwned", REG, b"", b"x")])),
            ("mkdir through symlink", raw_tar(&[(b"a", SYM, sent.as_bytes(), b""), (b"a/sub/pwned", REG, b"", b"x")])),
            ("relative symlink escape", raw_tar(&[(b"d/a", SYM, b"../../sentinel", b"")])),
            ("hardlink dotdot", raw_tar(&[(b"h", LNK, b"../sentinel/file", b"")])),
            ("hardlink absolute", raw_tar(&[(b"h", LNK, sent_file.as_bytes(), b"")])),
            ("hardlink through symlink", raw_tar(&[(b"s", SYM, sent.as_bytes(), b""), (b"h", LNK, b"s/file", b"")])),
            ("hardlink to nothing", raw_tar(&[(b"h", LNK, b"nope", b"")])),
            ("hardlink to dir", raw_tar(&[(b"d", DIR, b"", b""), (b"h", LNK, b"d", b"")])),
            ("bad checksum", bad_sum),
            ("truncated data", truncated),
            ("truncated header", half_header),
            ("empty whiteout", raw_tar(&[(b".wh.", REG, b"", b"")])),
            ("dotdot whiteout", raw_tar(&[(b"d/.wh...", REG, b"", b"")])),
            ("dot whiteout", raw_tar(&[(b"d/.wh..", REG, b"", b"")])),
            ("whiteout dir", raw_tar(&[(b".wh.foo", DIR, b"", b"")])),
            ("whiteout symlink", raw_tar(&[(b".wh.foo", SYM, b"x", b"")])),
            ("opaque symlink", raw_tar(&[(b"d/.wh..wh..opq", SYM, b"x", b"")])),
            ("opaque dir", raw_tar(&[(b"d/.wh..wh..opq", DIR, b"", b"")])),
            ("root opaque dir", raw_tar(&[(b".wh..wh..opq", DIR, b"", b"")])),
            ("aufs meta below root", raw_tar(&[(b"d/.wh..wh.plnk", DIR, b"", b"")])),
            ("whiteout through symlink", raw_tar(&[(b"s", SYM, sent.as_bytes(), b""), (b"s/.wh.file", REG, b"", b"")])),
            ("root as file", raw_tar(&[(b"./", REG, b"", b"x")])),
            ("unknown type", raw_tar(&[(b"v", b'V', b"", b"")])),
        ];
        for (what, tar) in cases {
            fs::remove_dir_all(&f.layer).unwrap();
            fs::create_dir(&f.layer).unwrap();
            for format in [WhiteoutFormat::Remove, WhiteoutFormat::Overlay] {
                let err = apply_bytes(&f.layer, &tar, format).expect_err(what);
                assert!(matches!(err, ArchiveError::InvalidTar(_)), "{what}: {err}");
                assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{what}");
                let mut names: Vec<_> = fs::read_dir(&f.sentinel).unwrap().map(|e| e.unwrap().file_name()).collect();
                names.sort();
                assert_eq!(names, vec!["file"], "{what}: sentinel touched");
                assert_eq!(fs::read(f.sentinel.join("file")).unwrap(), b"precious", "{what}");
                let parent: Vec<_> = fs::read_dir(f.layer.parent().unwrap()).unwrap().collect();
                assert_eq!(parent.len(), 2, "{what}: something written next to the layer");
            }
        }
    }

    /// What the filesystem refuses to hold because of the tar's content is
    /// the client's fault: `InvalidArgument`, naming the member.
    #[test]
    fn content_the_filesystem_refuses_is_invalid_argument() {
        let long_name = "n".repeat(300);
        let long_xattr = format!("SCHILY.xattr.user.{}", "x".repeat(296));
        let big = vec![b'v'; 100 * 1024];
        let target = "t".repeat(5000);
        let xattr_file = |k: &str, v: &[u8]| {
            let mut t = pax(&[(k, v)]);
            t.extend(raw_tar(&[(b"victim", REG, b"", b"x")]));
            t
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unknown xattr namespace", xattr_file("SCHILY.xattr.bogus.x", b"1")),
            ("100 KB xattr value", xattr_file("SCHILY.xattr.user.big", &big)),
            ("300-byte xattr name", xattr_file(&long_xattr, b"1")),
            ("malformed POSIX ACL", xattr_file("SCHILY.xattr.system.posix_acl_access", b"garbage")),
            ("malformed capability", xattr_file("SCHILY.xattr.security.capability", b"xx")),
            ("5000-char symlink target", {
                let mut t = pax(&[("linkpath", target.as_bytes())]);
                t.extend(raw_tar(&[(b"victim", SYM, b"x", b"")]));
                t
            }),
            ("300-byte component", {
                let mut t = pax(&[("path", format!("victim/{long_name}").as_bytes())]);
                t.extend(raw_tar(&[(b"x", REG, b"", b"x")]));
                t
            }),
            ("300-byte whiteout", {
                let mut t = pax(&[("path", format!("victim/.wh.{long_name}").as_bytes())]);
                t.extend(raw_tar(&[(b"x", REG, b"", b"")]));
                t
            }),
            ("path over 4095 bytes", {
                let mut t = pax(&[("path", format!("victim/{}", "d/".repeat(2100)).as_bytes())]);
                t.extend(raw_tar(&[(b"x", DIR, b"", b"")]));
                t
            }),
        ];
        for (what, tar) in cases {
            for format in [WhiteoutFormat::Remove, WhiteoutFormat::Overlay] {
                let f = fixture();
                let err = apply_bytes(&f.layer, &tar, format).expect_err(what);
                assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{what}: {err}");
                assert!(err.to_string().contains("victim"), "{what}: no member name in {err}");
                assert!(err.to_string().len() < 1024, "{what}: {} byte message", err.to_string().len());
            }
        }
    }

    /// The directory-fd cache (`dircache.rs`) holds `d/sub` open after the
    /// first member; each later member below changes what `d/sub` is. The
    /// outcome must be the one a fresh walk from the root gives: refused
    /// where the walk meets a symlink or a file (`O_NOFOLLOW|O_DIRECTORY`
    /// fails on a symlink with `ENOTDIR`, so both read "is not a
    /// directory"), the new tree otherwise, and nothing written outside the
    /// layer either way.
    #[test]
    fn cached_directories_are_dropped_when_a_member_changes_them() {
        let f = fixture();
        let sent = f.sentinel.display().to_string();
        let sent_dir = f.sentinel.parent().unwrap().display().to_string();
        // (what, tar, Ok(files that must exist) or Err(words of the refusal))
        type Want = Result<&'static [&'static str], &'static str>;
        let cases: Vec<(&str, Vec<u8>, Want, Want)> = vec![
            (
                "symlink swapped in for a cached dir",
                raw_tar(&[
                    (b"d/sub/f1", REG, b"", b"1"),
                    (b"d/sub", SYM, sent.as_bytes(), b""),
                    (b"d/sub/f2", REG, b"", b"2"),
                ]),
                Err("is not a directory"),
                Err("is not a directory"),
            ),
            (
                "symlink swapped in for a cached ancestor",
                raw_tar(&[
                    (b"d/sub/f1", REG, b"", b"1"),
                    (b"d", SYM, sent_dir.as_bytes(), b""),
                    (b"d/sub/f2", REG, b"", b"2"),
                ]),
                Err("is not a directory"),
                Err("is not a directory"),
            ),
            (
                "cached dir replaced by a file",
                raw_tar(&[(b"d/sub/f1", REG, b"", b"1"), (b"d/sub", REG, b"", b"file"), (b"d/sub/f2", REG, b"", b"2")]),
                Err("is not a directory"),
                Err("is not a directory"),
            ),
            (
                "cached dir replaced by a directory member (kept)",
                raw_tar(&[(b"d/sub/f1", REG, b"", b"1"), (b"d/sub/", DIR, b"", b""), (b"d/sub/f2", REG, b"", b"2")]),
                Ok(&["d/sub/f1", "d/sub/f2"]),
                Ok(&["d/sub/f1", "d/sub/f2"]),
            ),
            (
                "cached dir whited out, then written again",
                raw_tar(&[(b"d/sub/f1", REG, b"", b"1"), (b"d/.wh.sub", REG, b"", b""), (b"d/sub/f2", REG, b"", b"2")]),
                Ok(&["d/sub/f2"]),
                // On overlay the whiteout is a device where the dir was.
                Err("is not a directory"),
            ),
            (
                "cached ancestor whited out, then written again",
                raw_tar(&[(b"d/sub/f1", REG, b"", b"1"), (b".wh.d", REG, b"", b""), (b"d/sub/f2", REG, b"", b"2")]),
                Ok(&["d/sub/f2"]),
                Err("is not a directory"),
            ),
            (
                "hardlink to a path under a dir replaced by a symlink",
                raw_tar(&[
                    (b"d/sub/f1", REG, b"", b"1"),
                    (b"d/sub", SYM, sent.as_bytes(), b""),
                    (b"h", LNK, b"d/sub/file", b""),
                ]),
                Err("is not a directory"),
                Err("is not a directory"),
            ),
            (
                "hardlink to a path under a dir replaced by a file",
                raw_tar(&[(b"d/sub/f1", REG, b"", b"1"), (b"d/sub", REG, b"", b"x"), (b"h", LNK, b"d/sub/f1", b"")]),
                Err("is not a directory"),
                Err("is not a directory"),
            ),
            (
                "hardlink to a path under a whited-out dir",
                raw_tar(&[(b"d/sub/f1", REG, b"", b"1"), (b"d/.wh.sub", REG, b"", b""), (b"h", LNK, b"d/sub/f1", b"")]),
                Err("does not exist"),
                Err("is not a directory"),
            ),
            (
                "hardlink replacing the dir that holds its target",
                raw_tar(&[(b"d/sub/f1", REG, b"", b"1"), (b"d/sub", LNK, b"d/sub/f1", b"")]),
                Err("does not exist"),
                Err("does not exist"),
            ),
            (
                "dot-dot games around a cached dir",
                raw_tar(&[
                    (b"d/sub/f1", REG, b"", b"1"),
                    (b"d/sub/../sub2/f2", REG, b"", b"2"),
                    (b"d/sub/./../../d/sub/f3", REG, b"", b"3"),
                    (b"d/sub", SYM, sent.as_bytes(), b""),
                    // Cleaned lexically to `d/f4`: beside the symlink, not through it.
                    (b"d/sub/../f4", REG, b"", b"4"),
                ]),
                Ok(&["d/sub2/f2", "d/f4"]),
                Ok(&["d/sub2/f2", "d/f4"]),
            ),
            (
                "dot-dot climbing out from a cached dir",
                raw_tar(&[(b"d/sub/f1", REG, b"", b"1"), (b"d/sub/../../../pwned", REG, b"", b"x")]),
                Err("pwned"),
                Err("pwned"),
            ),
        ];
        for (what, tar, want_remove, want_overlay) in cases {
            for (format, want) in [(WhiteoutFormat::Remove, want_remove), (WhiteoutFormat::Overlay, want_overlay)] {
                fs::remove_dir_all(&f.layer).unwrap();
                fs::create_dir(&f.layer).unwrap();
                let got = apply_bytes(&f.layer, &tar, format);
                match (want, got) {
                    (Ok(files), Ok(_)) => {
                        for file in files {
                            assert!(f.layer.join(file).is_file(), "{what} ({format:?}): {file} missing");
                        }
                    }
                    (Err(words), Err(err)) => {
                        assert!(matches!(err, ArchiveError::InvalidTar(_)), "{what} ({format:?}): {err}");
                        assert!(err.to_string().contains(words), "{what} ({format:?}): {err}");
                    }
                    (want, got) => panic!("{what} ({format:?}): want {want:?}, got {got:?}"),
                }
                assert_eq!(names(&f.sentinel), ["file"], "{what} ({format:?}): sentinel touched");
                assert_eq!(fs::read(f.sentinel.join("file")).unwrap(), b"precious", "{what}");
                assert_eq!(fs::metadata(f.sentinel.join("file")).unwrap().nlink(), 1, "{what}: linked");
                let beside: Vec<_> = fs::read_dir(f.layer.parent().unwrap()).unwrap().collect();
                assert_eq!(beside.len(), 2, "{what} ({format:?}): something written next to the layer");
            }
        }
    }

    /// An opaque marker (naive format) prunes what this tar did not write,
    /// cached directories included: a later member recreates the directory
    /// instead of writing into the removed one.
    #[test]
    fn opaque_prune_drops_cached_directories() {
        let f = fixture();
        fs::create_dir_all(f.layer.join("d/old/x")).unwrap();
        fs::write(f.layer.join("d/old/x/lower"), b"lower").unwrap();
        let tar = raw_tar(&[
            // Caches d, d/old and d/old/x (none written by this tar).
            (b"d/old/x/f1", REG, b"", b"1"),
            (b"d/new/f2", REG, b"", b"2"),
            (b"d/.wh..wh..opq", REG, b"", b""),
            (b"d/old/x/f3", REG, b"", b"3"),
        ]);
        remove(&f.layer, &tar).unwrap();
        // d/old was there before the tar: pruned with everything below it
        // (f1 too), and made again for f3.
        assert_eq!(names(&f.layer.join("d")), ["new", "old"]);
        assert_eq!(names(&f.layer.join("d/old/x")), ["f3"]);
        // Now a prune that does remove the cached dir.
        let f = fixture();
        fs::create_dir_all(f.layer.join("d/old/x")).unwrap();
        let tar = raw_tar(&[
            (b"d/keep", REG, b"", b"k"),
            (b"d/old/x/.wh.gone", REG, b"", b""),
            (b"d/.wh..wh..opq", REG, b"", b""),
            (b"d/old/x/f3", REG, b"", b"3"),
        ]);
        remove(&f.layer, &tar).unwrap();
        assert_eq!(names(&f.layer.join("d")), ["keep", "old"]);
        assert_eq!(names(&f.layer.join("d/old/x")), ["f3"]);
    }

    /// The size counted while extracting is `dir_size` of the result
    /// whenever it is given, and is not given once something was removed.
    #[test]
    fn measured_size_is_dir_size() {
        let mut sparse =
            pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0"), ("GNU.sparse.realsize", b"9000")]);
        let mut data = b"1\n4000\n5\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"hello");
        sparse.extend(raw_tar(&[(b"GNUSparseFile.0/sp", REG, b"", &data)]));
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            (
                "files, links, symlinks",
                raw_tar(&[
                    (b"d/", DIR, b"", b""),
                    (b"d/f", REG, b"", b"hello"),
                    (b"d/h", LNK, b"d/f", b""),
                    (b"d/s", SYM, b"target", b""),
                    (b"d/e", REG, b"", b""),
                    (b"d/sub/g", REG, b"", &[7; 3000]),
                    (b"d/", DIR, b"", b""),
                ]),
                true,
            ),
            ("whiteouts of absent paths", whiteout_tar(), true),
            ("sparse", sparse, true),
            ("file replaced", raw_tar(&[(b"f", REG, b"", b"one"), (b"f", REG, b"", b"three")]), false),
            (
                "linked file replaced",
                raw_tar(&[(b"f", REG, b"", b"one"), (b"h", LNK, b"f", b""), (b"f", SYM, b"xy", b"")]),
                false,
            ),
            ("written then whited out", raw_tar(&[(b"d/f", REG, b"", b"one"), (b"d/.wh.f", REG, b"", b"")]), false),
            ("dir replaced by file", raw_tar(&[(b"d/f", REG, b"", b"one"), (b"d", REG, b"", b"two")]), false),
        ];
        for (what, tar, exact) in cases {
            for format in [WhiteoutFormat::Overlay, WhiteoutFormat::Remove] {
                let f = fixture();
                let got = apply_measured(&f.layer, &mut &tar[..], &ApplyOptions { whiteouts: format }, true).unwrap();
                let walked = super::super::dir_size(&f.layer).unwrap();
                match got.lstat_size {
                    Some(n) => assert_eq!(n, walked, "{what} ({format:?})"),
                    None => assert!(!exact || format == WhiteoutFormat::Remove, "{what} ({format:?}): not counted"),
                }
                if !exact {
                    assert_eq!(got.lstat_size, None, "{what} ({format:?})");
                }
            }
        }
        // Not counted into a directory that already holds something.
        let f = fixture();
        fs::write(f.layer.join("old"), b"x").unwrap();
        let got = apply_measured(
            &f.layer,
            &mut &raw_tar(&[(b"f", REG, b"", b"1")])[..],
            &ApplyOptions { whiteouts: WhiteoutFormat::Overlay },
            true,
        );
        assert_eq!(got.unwrap(), Applied { tar_size: 1, lstat_size: None });
    }

    /// On overlay, `f` whited out is a 0/0 device: a hardlink to it would
    /// be a second whiteout. Refused as on vfs, where `f` is gone.
    #[test]
    fn hardlink_to_a_whited_out_path_is_refused() {
        let tar = raw_tar(&[(b".wh.f", REG, b"", b""), (b"h", LNK, b"f", b"")]);
        for format in [WhiteoutFormat::Remove, WhiteoutFormat::Overlay] {
            let f = fixture();
            fs::write(f.layer.join("f"), b"lower").unwrap();
            let err = apply_bytes(&f.layer, &tar, format).expect_err("hardlink to whiteout");
            assert!(err.to_string().contains("does not exist"), "{format:?}: {err}");
        }
    }

    /// A deep tree costs memory linear in its depth: 2000 levels in one
    /// member apply quickly; one more byte than a full path may have is
    /// refused.
    #[test]
    fn deep_paths_apply() {
        let f = fixture();
        // Layer dir + "/a" * k + "/" + m bytes: MAX_PATH + 1, then MAX_PATH.
        let n = MAX_PATH - f.layer.as_os_str().len();
        let k = (n - 100) / 2;
        let at_limit = |m: usize| {
            let mut t = pax(&[("path", ("a/".repeat(k) + &"z".repeat(m)).as_bytes())]);
            t.extend(raw_tar(&[(b"x", REG, b"", b"deep")]));
            t
        };
        let err = remove(&f.layer, &at_limit(n - 2 * k)).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        remove(&f.layer, &at_limit(n - 2 * k - 1)).unwrap();
        let deep = "a/".repeat(2000) + "f";
        let mut t = pax(&[("path", deep.as_bytes())]);
        t.extend(raw_tar(&[(b"x", REG, b"", b"deep")]));
        let start = std::time::Instant::now();
        remove(&f.layer, &t).unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
        let mut fd = File::open(&f.layer).unwrap();
        for _ in 0..2000 {
            fd = File::from(open_dir_at(fd.as_fd(), OsStr::new("a")).unwrap());
        }
        let file = rustix::fs::openat(&fd, "f", OFlags::RDONLY, Mode::empty()).unwrap();
        let mut got = String::new();
        File::from(file).read_to_string(&mut got).unwrap();
        assert_eq!(got, "deep");
    }

    /// Docker extracts `/etc/x` as `etc/x` (and `a/../b` as `b`): so do we.
    #[test]
    fn absolute_names_are_extracted_beneath_the_root() {
        let f = fixture();
        let abs = format!("{}/pwned", f.sentinel.display());
        let mut t = pax(&[("path", abs.as_bytes())]);
        t.extend(raw_tar(&[(b"innocent", REG, b"", b"x"), (b"/etc/x", REG, b"", b"y"), (b"a/../b", REG, b"", b"z")]));
        remove(&f.layer, &t).unwrap();
        let inside = f.layer.join(abs.trim_start_matches('/'));
        assert_eq!(fs::read(inside).unwrap(), b"x");
        assert_eq!(fs::read(f.layer.join("etc/x")).unwrap(), b"y");
        assert_eq!(fs::read(f.layer.join("b")).unwrap(), b"z");
        assert!(!f.layer.join("a").exists());
        assert_eq!(names(&f.sentinel), ["file"]);
    }

    #[test]
    fn sizes_are_dockers_tar_rule_and_lstat_rule() {
        // A 5-byte file, its hardlink, a symlink with a 6-byte target, a
        // whiteout and AUFS metadata.
        let tar = raw_tar(&[
            (b"d", DIR, b"", b""),
            (b"d/f", REG, b"", b"hello"),
            (b"d/h", LNK, b"d/f", b""),
            (b"d/s", SYM, b"target", b""),
            (b"d/.wh.gone", REG, b"", b""),
            (b".wh..wh.plnk", DIR, b"", b""),
        ]);
        let f = fixture();
        // UnpackLayer's rule (naive drivers): the members' header sizes.
        assert_eq!(apply_bytes(&f.layer, &tar, WhiteoutFormat::Overlay).unwrap(), 5);
        // directory.Size's rule (overlay2): lstat sizes, each inode once.
        assert_eq!(super::super::dir_size(&f.layer).unwrap(), 5 + 6);
        let f = fixture();
        assert_eq!(remove(&f.layer, &tar).unwrap(), 5);
    }

    #[test]
    fn replaces_symlinks_and_hardlinks_instead_of_writing_through() {
        let f = fixture();
        let sent_file = f.sentinel.join("file");
        std::os::unix::fs::symlink(&sent_file, f.layer.join("s")).unwrap();
        fs::hard_link(&sent_file, f.layer.join("h")).unwrap();
        let tar = raw_tar(&[(b"s", REG, b"", b"new s"), (b"h", REG, b"", b"new h")]);
        assert_eq!(remove(&f.layer, &tar).unwrap(), 10);
        assert_eq!(fs::read(&sent_file).unwrap(), b"precious");
        assert_eq!(fs::read(f.layer.join("s")).unwrap(), b"new s");
        assert_eq!(fs::read(f.layer.join("h")).unwrap(), b"new h");
        assert_eq!(fs::metadata(&sent_file).unwrap().nlink(), 1);
    }

    #[test]
    fn replacement_rules() {
        let f = fixture();
        fs::create_dir_all(f.layer.join("dir2file/sub")).unwrap();
        fs::write(f.layer.join("file2dir"), b"x").unwrap();
        fs::create_dir(f.layer.join("keep")).unwrap();
        fs::write(f.layer.join("keep/old"), b"x").unwrap();
        let tar = raw_tar(&[
            (b"dir2file", REG, b"", b"now a file"),
            (b"file2dir/", DIR, b"", b""),
            (b"file2dir/child", REG, b"", b"c"),
            (b"keep/", DIR, b"", b""),
            (b"implicit/parent/file", REG, b"", b"p"),
        ]);
        remove(&f.layer, &tar).unwrap();
        assert_eq!(fs::read(f.layer.join("dir2file")).unwrap(), b"now a file");
        assert_eq!(fs::read(f.layer.join("file2dir/child")).unwrap(), b"c");
        assert!(f.layer.join("keep/old").exists());
        assert_eq!(fs::metadata(f.layer.join("keep")).unwrap().mode() & 0o7777, 0o644);
        let md = fs::metadata(f.layer.join("implicit/parent")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o755);
    }

    fn populate(layer: &Path) {
        for d in ["a", "b/sub", "d", "e/sub"] {
            fs::create_dir_all(layer.join(d)).unwrap();
        }
        for file in ["a/f", "a/g", "b/x", "b/sub/y", "c", "d/old", "d/keep", "e/sub/old", "e/other"] {
            fs::write(layer.join(file), b"lower").unwrap();
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn whiteout_tar() -> Vec<u8> {
        raw_tar(&[
            (b"a/.wh.f", REG, b"", b""),
            (b".wh.c", REG, b"", b""),
            (b".wh.missing", REG, b"", b""),
            (b"b/", DIR, b"", b""),
            (b"b/.wh..wh..opq", REG, b"", b""),
            (b"b/new", REG, b"", b"upper"),
            (b"d/keep", REG, b"", b"upper"),
            (b"d/.wh..wh..opq", REG, b"", b""),
            (b"e/sub/", DIR, b"", b""),
            (b"e/sub/new", REG, b"", b"upper"),
            (b"e/.wh..wh..opq", REG, b"", b""),
            (b".wh..wh.plnk/", DIR, b"", b""),
            (b".wh..wh.plnk/123", REG, b"", b""),
        ])
    }

    #[test]
    fn whiteouts_remove_format() {
        let f = fixture();
        populate(&f.layer);
        remove(&f.layer, &whiteout_tar()).unwrap();
        assert_eq!(names(&f.layer), ["a", "b", "d", "e"]);
        assert_eq!(names(&f.layer.join("a")), ["g"]);
        assert_eq!(names(&f.layer.join("b")), ["new"]);
        assert_eq!(names(&f.layer.join("d")), ["keep"]);
        assert_eq!(fs::read(f.layer.join("d/keep")).unwrap(), b"upper");
        assert_eq!(names(&f.layer.join("e")), ["sub"]);
        assert_eq!(names(&f.layer.join("e/sub")), ["new"]);
    }

    #[test]
    fn whiteouts_overlay_format() {
        let f = fixture();
        populate(&f.layer);
        apply_bytes(&f.layer, &whiteout_tar(), WhiteoutFormat::Overlay).unwrap();
        for wh in ["a/f", "c", "missing"] {
            let md = fs::symlink_metadata(f.layer.join(wh)).unwrap();
            assert!(md.file_type().is_char_device(), "{wh}");
            assert_eq!(md.rdev(), 0, "{wh}");
        }
        assert_eq!(names(&f.layer.join("b")), ["new", "sub", "x"]);
        for d in ["b", "d", "e"] {
            let x = list_xattrs(&f.layer.join(d)).unwrap();
            assert!(x.contains(&(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())), "{d}");
        }
        assert!(list_xattrs(&f.layer.join("a")).unwrap().is_empty());
        assert!(!f.layer.join(".wh..wh.plnk").exists());
    }

    #[test]
    fn metadata_is_preserved() {
        let f = fixture();
        let mut b = tar::Builder::new(Vec::new());
        let mut add =
            |path: &str, t: EntryType, mode: u32, uid: u64, link: Option<&str>, data: &[u8], recs: &[(&str, &[u8])]| {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(t);
                h.set_mode(mode);
                h.set_uid(uid);
                h.set_gid(uid + 1);
                h.set_mtime(1_600_000_000);
                h.set_size(data.len() as u64);
                if let Some(l) = link {
                    h.set_link_name(l).unwrap();
                }
                if matches!(t, EntryType::Char | EntryType::Block) {
                    h.set_device_major(if t == EntryType::Char { 1 } else { 7 }).unwrap();
                    h.set_device_minor(3).unwrap();
                }
                if !recs.is_empty() {
                    b.append_pax_extensions(recs.iter().copied()).unwrap();
                }
                b.append_data(&mut h, path, data).unwrap();
            };
        let ns: &[(&str, &[u8])] = &[("mtime", b"1600000000.123456789"), ("atime", b"1500000000.5")];
        add("dir", EntryType::Directory, 0o1777, 10, None, b"", &[("mtime", b"1600000001.25")]);
        add("dir/suid", EntryType::Regular, 0o4755, 1234, None, b"hello", ns);
        add("dir/sgid", EntryType::Regular, 0o2711, 0, None, b"", &[]);
        add(
            "dir/xattr",
            EntryType::Regular,
            0o640,
            7,
            None,
            b"x",
            &[
                ("SCHILY.xattr.user.foo", b"bar"),
                ("SCHILY.xattr.trusted.t", b"\x00\x01"),
                (
                    "SCHILY.xattr.security.capability",
                    b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
                ),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ],
        );
        add("dir/link", EntryType::Symlink, 0o777, 55, Some("/does/not/matter"), b"", ns);
        add("dir/hard", EntryType::Link, 0o644, 0, Some("dir/suid"), b"", &[]);
        add("dir/null", EntryType::Char, 0o666, 0, None, b"", &[]);
        add("dir/loop", EntryType::Block, 0o660, 6, None, b"", &[]);
        add("dir/fifo", EntryType::Fifo, 0o600, 9, None, b"", &[]);
        let tar = b.into_inner().unwrap();
        assert_eq!(remove(&f.layer, &tar).unwrap(), 6);

        let l = &f.layer;
        let md = |p: &str| fs::symlink_metadata(l.join(p)).unwrap();
        let dir = md("dir");
        assert_eq!((dir.mode() & 0o7777, dir.uid(), dir.gid()), (0o1777, 10, 11));
        assert_eq!((dir.mtime(), dir.mtime_nsec()), (1_600_000_001, 250_000_000));
        let suid = md("dir/suid");
        assert_eq!((suid.mode() & 0o7777, suid.uid(), suid.gid()), (0o4755, 1234, 1235));
        assert_eq!((suid.mtime(), suid.mtime_nsec()), (1_600_000_000, 123_456_789));
        assert_eq!((suid.atime(), suid.atime_nsec()), (1_500_000_000, 500_000_000));
        assert_eq!(suid.nlink(), 2);
        assert_eq!(md("dir/hard").ino(), suid.ino());
        assert_eq!(md("dir/sgid").mode() & 0o7777, 0o2711);
        let x = list_xattrs(&l.join("dir/xattr")).unwrap();
        let keys: Vec<_> = x.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
        assert_eq!(keys, ["security.capability", "trusted.t", "user.foo"]);
        assert_eq!(md("dir/xattr").uid(), 7);
        let link = md("dir/link");
        assert!(link.file_type().is_symlink());
        assert_eq!((link.uid(), link.mtime_nsec()), (55, 123_456_789));
        assert_eq!(fs::read_link(l.join("dir/link")).unwrap(), Path::new("/does/not/matter"));
        let null = md("dir/null");
        assert!(null.file_type().is_char_device());
        assert_eq!((rustix::fs::major(null.rdev()), rustix::fs::minor(null.rdev())), (1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        let lp = md("dir/loop");
        assert!(lp.file_type().is_block_device());
        assert_eq!((rustix::fs::major(lp.rdev()), lp.uid()), (7, 6));
        let fifo = md("dir/fifo");
        assert!(fifo.file_type().is_fifo());
        assert_eq!((fifo.mode() & 0o7777, fifo.uid(), fifo.mtime()), (0o600, 9, 1_600_000_000));
    }

    /// Sparse files from real GNU tar: the `S` type and every PAX version.
    #[test]
    fn gnu_tar_sparse_files_extract_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let file = src.join("sparse");
        let size = 8 * 1024 * 1024 + 333;
        let f = fs::File::create(&file).unwrap();
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"hello", 300_000).unwrap();
        f.write_all_at(&[0xab; 10_000], 5_000_000).unwrap();
        f.write_all_at(b"end", size - 3).unwrap();
        drop(f);
        fs::write(src.join("plain"), b"plain file").unwrap();
        let want = fs::read(&file).unwrap();
        let variants: &[&[&str]] = &[
            &["--format=gnu"],
            &["--format=posix"],
            &["--format=posix", "--sparse-version=0.0"],
            &["--format=posix", "--sparse-version=0.1"],
            &["--format=posix", "--sparse-version=1.0"],
        ];
        for args in variants {
            let tarfile = tmp.path().join("t.tar");
            let status = std::process::Command::new("tar")
                .args(["--sparse", "-cf"])
                .arg(&tarfile)
                .args(*args)
                .arg("-C")
                .arg(&src)
                .args(["sparse", "plain"])
                .status();
            match status {
                Ok(s) if s.success() => {}
                other => {
                    eprintln!("SKIP gnu_tar_sparse_files_extract_exactly {args:?}: GNU tar unusable: {other:?}");
                    continue;
                }
            }
            let out = tmp.path().join("out");
            let _ = fs::remove_dir_all(&out);
            fs::create_dir(&out).unwrap();
            let data = fs::read(&tarfile).unwrap();
            let n = remove(&out, &data).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(n, size + 10, "{args:?}");
            assert_eq!(names(&out), ["plain", "sparse"], "{args:?}");
            let got = fs::read(out.join("sparse")).unwrap();
            assert!(got == want, "{args:?}: content differs");
            let md = fs::metadata(out.join("sparse")).unwrap();
            assert!(md.blocks() * 512 < size / 2, "{args:?}: holes were filled ({} blocks)", md.blocks());
            assert_eq!(fs::read(out.join("plain")).unwrap(), b"plain file");
        }
    }

    #[test]
    fn absurd_gnu_sparse_size_is_rejected_quickly() {
        let f = fixture();
        let base256 = |v: u64| {
            let mut field = [0u8; 12];
            field[0] = 0x80;
            field[4..].copy_from_slice(&v.to_be_bytes());
            field
        };
        let mut h = header(b"huge", b'S', b"", 512, 0o644);
        h[257..265].copy_from_slice(b"ustar  \0");
        h[386..398].copy_from_slice(&base256((1 << 50) - 512));
        h[398..410].copy_from_slice(&base256(512));
        h[483..495].copy_from_slice(&base256(1 << 50));
        fix_cksum(&mut h);
        let mut t = h.to_vec();
        t.extend_from_slice(&[1u8; 512]);
        t.extend_from_slice(&[0u8; 1024]);
        let start = std::time::Instant::now();
        let err = remove(&f.layer, &t).unwrap_err();
        assert!(err.to_string().contains("exceeds what the filesystem can hold"), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn malformed_pax_sparse_is_rejected() {
        let f = fixture();
        let mut t = pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0"), ("GNU.sparse.realsize", b"10")]);
        let mut data = b"1\n0\n50\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(&[1; 50]);
        t.extend(raw_tar(&[(b"GNUSparseFile.0/f", REG, b"", &data)]));
        let err = remove(&f.layer, &t).unwrap_err();
        assert!(err.to_string().contains("invalid sparse map"), "{err}");
        let _ = header;
        let _: BTreeMap<String, String> = dump(&f.layer);
        assert_eq!(fs::metadata(&f.layer).unwrap().permissions().mode() & 0o7777, 0o755);
    }
}
