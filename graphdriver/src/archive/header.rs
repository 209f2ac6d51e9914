//! Reading one tar entry's header: path validation, PAX records (times,
//! xattrs, sparse maps), ownership and mode, symlink target checks.

use std::io::{self, Read};
use std::path::Path;

use rustix::fs::{Timespec, Timestamps};
use tar::EntryType;

use super::sparse::PaxSparse;
use super::whiteout;
use crate::error::{ArchiveError, IoError};

/// A path inside the layer, as validated components.
pub(super) type Rel = Vec<Vec<u8>>;

pub(super) fn invalid(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::InvalidTar(msg.into())
}

pub(super) fn show(rel: &[Vec<u8>]) -> String {
    let joined: Vec<u8> = rel.join(&b'/');
    format!("{:?}", String::from_utf8_lossy(&joined))
}

/// Split a tar path into components. Absolute paths, `..` and NUL bytes are
/// refused; empty and `.` components are dropped.
pub(super) fn parse_path(raw: &[u8], what: &str) -> Result<Rel, ArchiveError> {
    let lossy = String::from_utf8_lossy(raw);
    if raw.first() == Some(&b'/') {
        return Err(invalid(format!("{what} {lossy:?} is absolute")));
    }
    if raw.contains(&0) {
        return Err(invalid(format!("{what} {lossy:?} contains a NUL byte")));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(invalid(format!("{what} {lossy:?} contains `..`"))),
            _ => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// Parse a PAX time (`-?secs[.frac]`).
pub(super) fn parse_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    Some(if !neg {
        Timespec { tv_sec: secs, tv_nsec: nanos }
    } else if nanos == 0 {
        Timespec { tv_sec: -secs, tv_nsec: 0 }
    } else {
        Timespec { tv_sec: -secs - 1, tv_nsec: 1_000_000_000 - nanos }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    Link,
    Char,
    Block,
    Fifo,
}

impl Kind {
    pub(super) fn of(t: EntryType) -> Option<Kind> {
        Some(match t {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Link,
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            EntryType::Fifo => Kind::Fifo,
            _ => return None,
        })
    }
}

/// What the PAX records of one entry say beyond path/size/uid/gid.
#[derive(Default)]
pub(super) struct Pax {
    /// The link target by Go's rule (see `pax::MemberExt::link`).
    pub(super) link: Option<Vec<u8>>,
    pub(super) mtime: Option<Timespec>,
    pub(super) atime: Option<Timespec>,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) sparse: PaxSparse,
}

/// Metadata to put on a created path.
pub(super) struct Meta {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mode: u32,
    pub(super) atime: Timespec,
    pub(super) mtime: Timespec,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    pub(super) fn times(&self) -> Timestamps {
        Timestamps { last_access: self.atime, last_modification: self.mtime }
    }
}

/// Map a `tar` crate error: format problems are the tar's fault, anything
/// else is the reader's.
pub(super) fn tar_err(dir: &Path) -> impl Fn(io::Error) -> ArchiveError + '_ {
    move |e| match e.kind() {
        io::ErrorKind::Other | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            invalid(format!("malformed tar: {e}"))
        }
        _ => ArchiveError::Io(IoError::new("read tar stream for", dir, e)),
    }
}

pub(super) fn shown_lossy(rel: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&rel.join(&b'/')).into_owned()
}

/// The member's PAX records: `records` parsed by length from the raw
/// extension headers when the tap had them, else the `tar` crate's reading.
pub(super) fn read_pax<R: Read>(
    e: &mut tar::Entry<'_, R>,
    records: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    dir: &Path,
) -> Result<Pax, ArchiveError> {
    let records = match records {
        Some(r) => r,
        None => match e.pax_extensions().map_err(tar_err(dir))? {
            None => Vec::new(),
            Some(exts) => {
                let mut v = Vec::new();
                for ext in exts {
                    let ext = ext.map_err(tar_err(dir))?;
                    v.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
                }
                v
            }
        },
    };
    let mut pax = Pax::default();
    for (key, value) in &records {
        let key = std::str::from_utf8(key).map_err(|_| invalid("non-UTF-8 PAX record key"))?;
        let value = &value[..];
        let bad_time = || invalid(format!("bad PAX {key} {:?}", String::from_utf8_lossy(value)));
        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
            if name.contains('\0') {
                return Err(invalid(format!("xattr name {name:?} contains a NUL byte")));
            }
            if !name.is_empty() && !whiteout::is_overlay_xattr(name.as_bytes()) {
                pax.xattrs.push((name.as_bytes().to_vec(), value.to_vec()));
            }
        } else if key == "mtime" {
            pax.mtime = Some(parse_time(value).ok_or_else(bad_time)?);
        } else if key == "atime" {
            pax.atime = Some(parse_time(value).ok_or_else(bad_time)?);
        } else {
            pax.sparse.record(key, value).map_err(invalid)?;
        }
    }
    Ok(pax)
}

pub(super) fn meta(h: &tar::Header, pax: &Pax, shown: &str) -> Result<Meta, ArchiveError> {
    let bad = |what: &str, err: io::Error| invalid(format!("{shown}: bad {what} in header: {err}"));
    let id = |what: &str, v: u64| u32::try_from(v).map_err(|_| invalid(format!("{shown}: {what} {v} out of range")));
    let uid = id("uid", h.uid().map_err(|e| bad("uid", e))?)?;
    let gid = id("gid", h.gid().map_err(|e| bad("gid", e))?)?;
    let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let mtime = match pax.mtime {
        Some(t) => t,
        None => {
            let secs = h.mtime().map_err(|e| bad("mtime", e))?;
            let secs = i64::try_from(secs).map_err(|_| invalid(format!("{shown}: mtime out of range")))?;
            Timespec { tv_sec: secs, tv_nsec: 0 }
        }
    };
    let atime = pax.atime.unwrap_or(mtime);
    Ok(Meta { uid, gid, mode, atime, mtime, xattrs: pax.xattrs.clone() })
}

/// Refuse a relative symlink target that climbs above the layer root from
/// an entry `depth` directories deep (moby's breakout rule). Absolute
/// targets are fine: nothing here ever follows a symlink.
pub(super) fn check_symlink(depth: usize, target: &[u8]) -> Result<(), String> {
    if target.is_empty() || target.contains(&0) {
        return Err("symlink target is empty or contains a NUL byte".into());
    }
    if target[0] == b'/' {
        return Ok(());
    }
    let mut d = depth as i64;
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                d -= 1;
                if d < 0 {
                    return Err(format!(
                        "symlink target {:?} points outside the layer",
                        String::from_utf8_lossy(target)
                    ));
                }
            }
            _ => d += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse() {
        assert_eq!(parse_time(b"12.5"), Some(Timespec { tv_sec: 12, tv_nsec: 500_000_000 }));
        assert_eq!(parse_time(b"-1.5"), Some(Timespec { tv_sec: -2, tv_nsec: 500_000_000 }));
        assert_eq!(parse_time(b"7"), Some(Timespec { tv_sec: 7, tv_nsec: 0 }));
        assert_eq!(parse_time(b"1.1234567891"), Some(Timespec { tv_sec: 1, tv_nsec: 123_456_789 }));
        assert_eq!(parse_time(b"x"), None);
        assert_eq!(parse_time(b".5"), None);
    }
}
