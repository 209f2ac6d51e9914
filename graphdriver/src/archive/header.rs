//! Reading one tar entry's header: path validation, PAX records (times,
//! xattrs, sparse maps), ownership and mode, symlink target checks.

use std::io;
use std::path::Path;

use rustix::fs::{Timespec, Timestamps};

use super::reader::{Member, ReadError, TarTime};
use super::whiteout;
use crate::error::{ArchiveError, IoError};

/// A path inside the layer, as validated components.
pub(super) type Rel = Vec<Vec<u8>>;

pub(super) fn invalid(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::InvalidTar(msg.into())
}

pub(super) fn show(rel: &[Vec<u8>]) -> String {
    show_bytes(&rel.join(&b'/'))
}

/// [`show`], made only when an error is formatted: a member that applies
/// cleanly costs no string.
#[derive(Clone, Copy)]
pub(super) struct Shown<'a>(pub(super) &'a [Vec<u8>]);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&show(self.0))
    }
}

/// A name for messages: quoted, lossy UTF-8, cut after 256 bytes so an
/// error about a megabyte-long name stays a short error.
pub fn show_bytes(raw: &[u8]) -> String {
    const MAX: usize = 256;
    if raw.len() <= MAX {
        return format!("{:?}", String::from_utf8_lossy(raw));
    }
    format!("{:?}... ({} bytes)", String::from_utf8_lossy(&raw[..MAX]), raw.len())
}

/// The longest member path accepted, in bytes: the export reopens every
/// path by name, and Linux refuses names of `PATH_MAX` (4096) bytes or
/// more. Docker, which extracts by full path, cannot go deeper either.
pub const MAX_PATH: usize = 4095;

/// Split a member name into components by Docker's rule (`filepath.Clean`
/// then a breakout check): a leading `/` is dropped (`/etc/x` is `etc/x`),
/// `.` and empty components vanish, `..` cancels the previous component and
/// is refused where it would climb above the layer root; NUL bytes are
/// refused. Both the extractor and the tar-split recorder/getter use it.
pub fn member_components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.contains(&0) {
        return Err("contains a NUL byte");
    }
    let rooted = raw.first() == Some(&b'/');
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() && !rooted {
                    return Err("climbs above the layer root with `..`");
                }
            }
            _ => out.push(c),
        }
    }
    let len = out.iter().map(|c| c.len() + 1).sum::<usize>().saturating_sub(1);
    if len > MAX_PATH {
        return Err("is longer than the 4095 bytes a path may have");
    }
    Ok(out)
}

/// [`member_components`] as owned components, refusals as `InvalidTar`.
pub(super) fn parse_path(raw: &[u8], what: &str) -> Result<Rel, ArchiveError> {
    match member_components(raw) {
        Ok(parts) => Ok(parts.into_iter().map(<[u8]>::to_vec).collect()),
        Err(why) => Err(invalid(format!("{what} {} {why}", show_bytes(raw)))),
    }
}

/// Errors that come from applying the tar's content (a name or link target
/// too long for the filesystem, an xattr it refuses, a file too big, too
/// many links), not from the host: the client's fault, so `InvalidTar`.
pub(super) fn content_errno(op: &str, code: i32) -> bool {
    matches!(
        code,
        libc::ENAMETOOLONG | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | libc::ERANGE | libc::EMLINK | libc::EFBIG
    ) || (op.contains("xattr") && code == libc::ENOSPC)
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
    /// The kind of a member by its typeflag (after Go's `\0` rule).
    pub(super) fn of(t: u8) -> Option<Kind> {
        Some(match t {
            b'0' | b'7' | b'S' => Kind::File,
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink,
            b'1' => Kind::Link,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'6' => Kind::Fifo,
            _ => return None,
        })
    }
}

/// What the member says beyond path, size and owner.
#[derive(Default)]
pub(super) struct Pax {
    /// The link target (GNU `K`, then PAX `linkpath`, then the header).
    pub(super) link: Option<Vec<u8>>,
    pub(super) mtime: Option<Timespec>,
    pub(super) atime: Option<Timespec>,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
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

/// Map a reader error: format problems and undecodable input (a corrupt
/// gzip stream, a short body) are the client's; other input failures ours.
pub(super) fn read_err(dir: &Path) -> impl Fn(ReadError) -> ArchiveError + '_ {
    move |e| match e {
        ReadError::Format(m) => invalid(m),
        ReadError::Input(e) => match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
                invalid(format!("read tar stream: {e}"))
            }
            _ => ArchiveError::Io(IoError::new("read tar stream for", dir, e)),
        },
    }
}

pub(super) fn shown_lossy(rel: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&rel.join(&b'/')).into_owned()
}

fn timespec(t: TarTime) -> Timespec {
    Timespec { tv_sec: t.secs, tv_nsec: i64::from(t.nanos) }
}

/// The member's link target, times and xattrs, as the reader gave them.
pub(super) fn pax_of(m: &Member) -> Result<Pax, ArchiveError> {
    let mut pax = Pax {
        link: (!m.linkname.is_empty()).then(|| m.linkname.clone()),
        mtime: Some(timespec(m.mtime)),
        atime: m.atime.map(timespec),
        xattrs: Vec::new(),
    };
    for (name, value) in &m.xattrs {
        if name.contains(&0) {
            return Err(invalid(format!("xattr name {:?} contains a NUL byte", String::from_utf8_lossy(name))));
        }
        if !name.is_empty() && !whiteout::is_overlay_xattr(name) {
            pax.xattrs.push((name.clone(), value.clone()));
        }
    }
    Ok(pax)
}

pub(super) fn meta(m: &Member, pax: &Pax, shown: &dyn std::fmt::Display) -> Result<Meta, ArchiveError> {
    let id = |what: &str, v: i64| u32::try_from(v).map_err(|_| invalid(format!("{shown}: {what} {v} out of range")));
    let uid = id("uid", m.uid)?;
    let gid = id("gid", m.gid)?;
    let mode = (m.mode & 0o7777) as u32;
    let mtime = pax.mtime.unwrap_or(Timespec { tv_sec: m.mtime.secs, tv_nsec: 0 });
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
    fn member_names_follow_dockers_clean_rule() {
        let ok: &[(&str, &str)] =
            &[("/etc/x", "etc/x"), ("./a//b/", "a/b"), ("a/../b", "b"), ("/../x", "x"), ("//", ""), (".", "")];
        for (raw, want) in ok {
            assert_eq!(member_components(raw.as_bytes()).unwrap().join(&b'/'), want.as_bytes(), "{raw}");
        }
        for bad in ["..", "../x", "a/../../x", "a\0b"] {
            let bad = bad.replace("\\0", "\0");
            assert!(member_components(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
