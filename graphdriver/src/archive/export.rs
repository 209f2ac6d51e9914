//! `export_changes`: a PAX tar of the changed paths, deletions as `.wh.`
//! entries. Long names and link targets go to PAX `path`/`linkpath`,
//! xattrs to `SCHILY.xattr.*`, sub-second mtimes to PAX `mtime`; files
//! sharing an inode are written once and then as hardlink entries; sockets
//! are skipped, as Docker does.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::fs::list_xattrs;
use super::whiteout::{is_overlay_xattr, whiteout_for};
use crate::driver::{Change, ChangeKind};
use crate::error::{ArchiveError, IoContext, IoError};

/// Format a PAX time from `stat`'s seconds and nanoseconds.
pub(crate) fn format_time(secs: i64, nsec: i64) -> String {
    let (sign, int, frac) = if secs >= 0 || nsec == 0 {
        ("", secs.unsigned_abs(), nsec)
    } else {
        ("-", (secs + 1).unsigned_abs(), 1_000_000_000 - nsec)
    };
    let sign = if secs < 0 && nsec == 0 { "-" } else { sign };
    if frac == 0 {
        return format!("{sign}{int}");
    }
    let frac = format!("{frac:09}");
    format!("{sign}{int}.{}", frac.trim_end_matches('0'))
}

struct Exporter<'a> {
    layer: &'a Path,
    builder: tar::Builder<&'a mut dyn Write>,
    /// (dev, ino) → archive name of the first path seen with that inode.
    links: HashMap<(u64, u64), Vec<u8>>,
}

pub(super) fn export(layer: &Path, changes: &[Change], out: &mut dyn Write) -> Result<(), ArchiveError> {
    let mut sorted: Vec<&Change> = changes.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut ex = Exporter { layer, builder: tar::Builder::new(out), links: HashMap::new() };
    for c in sorted {
        let rel = c.path.trim_start_matches('/');
        if rel.is_empty() {
            continue;
        }
        match c.kind {
            ChangeKind::Delete => ex.whiteout(rel)?,
            ChangeKind::Add | ChangeKind::Modify => ex.add(rel)?,
        }
    }
    ex.builder.finish().ctx("finish tar of", layer)?;
    Ok(())
}

impl Exporter<'_> {
    fn werr(&self) -> impl Fn(io::Error) -> ArchiveError + '_ {
        move |e| ArchiveError::Io(IoError::new("write tar of", self.layer, e))
    }

    fn whiteout(&mut self, rel: &str) -> Result<(), ArchiveError> {
        let (dir, base) = match rel.rsplit_once('/') {
            Some((d, b)) => (Some(d), b),
            None => (None, rel),
        };
        let mut name = Vec::new();
        if let Some(d) = dir {
            name.extend_from_slice(d.as_bytes());
            name.push(b'/');
        }
        name.extend_from_slice(&whiteout_for(base.as_bytes()));
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.append(h, &name, None, Vec::new(), io::empty())
    }

    fn add(&mut self, rel: &str) -> Result<(), ArchiveError> {
        let path = self.layer.join(rel);
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "changed path vanished before export");
                return Ok(());
            }
            Err(e) => return Err(IoError::new("lstat", path, e).into()),
        };
        let ft = md.file_type();
        if ft.is_socket() {
            return Ok(());
        }
        let mut h = Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut name = rel.as_bytes().to_vec();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
        if md.mtime_nsec() != 0 || md.mtime() < 0 {
            pax.push(("mtime".into(), format_time(md.mtime(), md.mtime_nsec()).into_bytes()));
        }
        for (k, v) in list_xattrs(&path).ctx("list xattrs of", &path)? {
            if is_overlay_xattr(&k) {
                continue;
            }
            match std::str::from_utf8(&k) {
                Ok(k) => pax.push((format!("SCHILY.xattr.{k}"), v)),
                Err(_) => tracing::warn!(path = %path.display(), "skipping non-UTF-8 xattr name"),
            }
        }
        let mut link = None;
        let mut data = None;
        let mut size = 0;
        let first = if !ft.is_dir() && md.nlink() > 1 {
            match self.links.get(&(md.dev(), md.ino())) {
                Some(first) => Some(first.clone()),
                None => {
                    self.links.insert((md.dev(), md.ino()), name.clone());
                    None
                }
            }
        } else {
            None
        };
        if let Some(first) = first {
            h.set_entry_type(EntryType::Link);
            link = Some(first);
        } else if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            name.push(b'/');
        } else if ft.is_file() {
            h.set_entry_type(EntryType::Regular);
            size = md.len();
            let file =
                fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).ctx("open", &path)?;
            data = Some(file);
        } else if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            link = Some(fs::read_link(&path).ctx("readlink", &path)?.as_os_str().as_bytes().to_vec());
        } else if ft.is_char_device() || ft.is_block_device() {
            let t = if ft.is_char_device() { EntryType::Char } else { EntryType::Block };
            h.set_entry_type(t);
            let rdev = md.rdev();
            h.set_device_major(rustix::fs::major(rdev)).ctx("set device of", &path)?;
            h.set_device_minor(rustix::fs::minor(rdev)).ctx("set device of", &path)?;
        } else if ft.is_fifo() {
            h.set_entry_type(EntryType::Fifo);
        } else {
            return Ok(());
        }
        h.set_size(size);
        match data {
            Some(file) => {
                let mut body: io::Take<File> = file.take(size);
                self.append(h, &name, link, pax, &mut body)?;
                if body.limit() != 0 {
                    return Err(IoError::new(
                        "read",
                        path,
                        io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being exported"),
                    )
                    .into());
                }
                Ok(())
            }
            None => self.append(h, &name, link, pax, io::empty()),
        }
    }

    /// Write one entry: PAX records first if the names do not fit.
    fn append(
        &mut self,
        mut h: Header,
        name: &[u8],
        link: Option<Vec<u8>>,
        mut pax: Vec<(String, Vec<u8>)>,
        data: impl Read,
    ) -> Result<(), ArchiveError> {
        let Some(ustar) = h.as_ustar_mut() else {
            return Err(ArchiveError::InvalidTar("internal: not a ustar header".into()));
        };
        let n = name.len().min(100);
        ustar.name[..n].copy_from_slice(&name[..n]);
        if name.len() > 100 {
            pax.insert(0, ("path".into(), name.to_vec()));
        }
        if let Some(link) = link {
            let n = link.len().min(100);
            ustar.linkname[..n].copy_from_slice(&link[..n]);
            if link.len() > 100 {
                pax.insert(0, ("linkpath".into(), link));
            }
        }
        h.set_cksum();
        if !pax.is_empty() {
            let records = pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
            self.builder.append_pax_extensions(records).map_err(self.werr())?;
        }
        self.builder.append(&h, data).map_err(self.werr())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::super::testutil::{T, dump, sample, set_mtime, touch_all};
    use super::super::{ApplyOptions, WhiteoutFormat, apply_tar, changes_dirs};
    use super::*;

    #[test]
    fn pax_time_format() {
        assert_eq!(format_time(12, 500_000_000), "12.5");
        assert_eq!(format_time(12, 0), "12");
        assert_eq!(format_time(-2, 500_000_000), "-1.5");
        assert_eq!(format_time(-1, 999_999_999), "-0.000000001");
        assert_eq!(format_time(-3, 0), "-3");
        for (s, n) in [(5, 1), (-1, 1), (-7, 0), (1_700_000_000, 123_456_789)] {
            let t = super::super::reader::parse_pax_time(format_time(s, n).as_bytes())
                .map(|t| rustix::fs::Timespec { tv_sec: t.secs, tv_nsec: i64::from(t.nanos) })
                .unwrap();
            assert_eq!((t.tv_sec, t.tv_nsec), (s, n));
        }
    }

    fn mutate(l: &Path) {
        let x = rustix::fs::XattrFlags::empty();
        fs::remove_file(l.join("file1")).unwrap();
        fs::remove_dir_all(l.join("dir1")).unwrap();
        fs::write(l.join("file2"), "changed content").unwrap();
        fs::set_permissions(l.join("file3"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::lchown(l.join("file4"), Some(1000), Some(2000)).unwrap();
        rustix::fs::lsetxattr(l.join("file5"), "trusted.secret", b"\x00t", x).unwrap();
        rustix::fs::lsetxattr(l.join("file5"), "user.plain", b"u", x).unwrap();
        rustix::fs::lsetxattr(l.join("file5"), "trusted.overlay.origin", b"skip", x).unwrap();
        fs::set_permissions(l.join("dir3"), fs::Permissions::from_mode(0o1777)).unwrap();
        let long_dir = l.join("d".repeat(120));
        fs::create_dir(&long_dir).unwrap();
        fs::write(long_dir.join("f".repeat(150)), vec![7u8; 70_000]).unwrap();
        symlink("t".repeat(200), l.join("longlink")).unwrap();
        fs::write(l.join("hard1"), "shared").unwrap();
        fs::hard_link(l.join("hard1"), long_dir.join("hard2")).unwrap();
        let mk = |name: &str, ft, dev| {
            rustix::fs::mknodat(rustix::fs::CWD, l.join(name), ft, rustix::fs::Mode::from_raw_mode(0o640), dev).unwrap()
        };
        mk("null", rustix::fs::FileType::CharacterDevice, rustix::fs::makedev(1, 3));
        mk("blk", rustix::fs::FileType::BlockDevice, rustix::fs::makedev(7, 200));
        mk("fifo", rustix::fs::FileType::Fifo, 0);
        fs::remove_dir_all(l.join("dirToFile")).unwrap();
        fs::write(l.join("dirToFile"), "now a file").unwrap();
        fs::remove_file(l.join("fileToDir")).unwrap();
        fs::create_dir(l.join("fileToDir")).unwrap();
        fs::write(l.join("fileToDir/inner"), "i").unwrap();
        touch_all(l);
        set_mtime(&l.join("file2"), T + 5, 123_456_789);
        set_mtime(&l.join("longlink"), T - 5, 987_654_321);
        set_mtime(&long_dir, T + 9, 1);
    }

    fn export_bytes(l: &Path, parent: Option<&Path>) -> (Vec<Change>, Vec<u8>) {
        let changes = changes_dirs(l, parent).unwrap();
        let mut out = Vec::new();
        export(l, &changes, &mut out).unwrap();
        (changes, out)
    }

    #[test]
    fn export_then_apply_reproduces_the_layer() {
        let t = tempfile::tempdir().unwrap();
        let (p, l, p2) = (t.path().join("p"), t.path().join("l"), t.path().join("p2"));
        for d in [&p, &l, &p2] {
            fs::create_dir(d).unwrap();
            sample(d);
        }
        mutate(&l);
        let (changes, tar) = export_bytes(&l, Some(&p));
        assert!(changes.contains(&Change { path: "/file1".into(), kind: ChangeKind::Delete }));
        let opts = ApplyOptions { whiteouts: WhiteoutFormat::Remove };
        apply_tar(&p2, &mut &tar[..], &opts).unwrap();
        let (mut want, mut got) = (dump(&l), dump(&p2));
        // The xattr the exporter filters out.
        rustix::fs::lremovexattr(l.join("file5"), "trusted.overlay.origin").unwrap();
        want.insert("/file5".into(), dump(&l)["/file5"].clone());
        want.remove("/");
        got.remove("/");
        assert_eq!(want, got);
        assert!(got["/file5"].contains("trusted.secret"));

        // Whole-tree export (no parent) into an empty dir, too.
        let (_, tar) = export_bytes(&l, None);
        let fresh = t.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        apply_tar(&fresh, &mut &tar[..], &opts).unwrap();
        let mut got = dump(&fresh);
        got.remove("/");
        assert_eq!(want, got);
    }

    #[test]
    fn export_writes_whiteouts_and_skips_sockets() {
        let t = tempfile::tempdir().unwrap();
        let l = t.path();
        fs::create_dir(l.join("d")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(l.join("d/sock")).unwrap();
        let changes = vec![
            Change { path: "/d".into(), kind: ChangeKind::Modify },
            Change { path: "/d/gone".into(), kind: ChangeKind::Delete },
            Change { path: "/d/sock".into(), kind: ChangeKind::Add },
            Change { path: "/top".into(), kind: ChangeKind::Delete },
        ];
        let mut out = Vec::new();
        export(l, &changes, &mut out).unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let names: Vec<(String, EntryType)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().entry_type())
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("d/".to_string(), EntryType::Directory),
                ("d/.wh.gone".to_string(), EntryType::Regular),
                (".wh.top".to_string(), EntryType::Regular),
            ]
        );
    }
}
