//! The layerdb index: every layer and RW layer record of a layerdb in one
//! checksummed file, `<layerdb>/layerd-index`, so a start-up reads one file
//! instead of five or six per layer.
//!
//! The index is a cache. The Docker layout (`sha256/`, `mounts/`) stays the
//! source of truth, Docker ignores the file, and anything wrong with it —
//! missing, truncated, a bad checksum, another version, or a layerdb changed
//! since it was written — sends start-up to the full scan. This module is
//! the persisted format only (pure: bytes in, bytes out); the rules that keep
//! it fresh live in [`crate::metadata::LayerDb`].
//!
//! ```text
//! "LYRDIDX\n"  version u32  stamp(sha256/)  stamp(mounts/)
//! layers u64   { chain[32] diff[32] size u64 cache-id str  flags u8  [parent[32]] [refs u64] }*
//! mounts u64   { name str  mount-id str  flags u8  [init-id str] [parent[32]] }*
//! sha256[32] of everything before it
//! ```
//! Integers are little-endian; `str` is a u16 length and the bytes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use graphdriver::CacheId;
use sha2::{Digest as _, Sha256};

use crate::digest::{ChainId, DiffId, Digest};
use crate::metadata::{LayerRecord, MountRecord};
use crate::name::RwName;

/// The file's name in the layerdb.
pub(crate) const FILE: &str = "layerd-index";
const MAGIC: &[u8; 8] = b"LYRDIDX\n";
/// Bumped on any change of the format: another version is rebuilt.
pub(crate) const VERSION: u32 = 1;

const HAS_PARENT: u8 = 1;
const HAS_REFS: u8 = 2;
const HAS_INIT: u8 = 4;

/// What identifies a directory's entries at one moment: adding, removing or
/// renaming an entry changes its mtime and ctime (and adding or removing a
/// subdirectory its link count). The index records the
/// stamps of `sha256/` and `mounts/`, so a layerdb another program (dockerd,
/// a hand) changed since is told apart without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirStamp {
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl DirStamp {
    pub fn of(dir: &Path) -> std::io::Result<DirStamp> {
        let m = std::fs::symlink_metadata(dir)?;
        Ok(DirStamp {
            dev: m.dev(),
            ino: m.ino(),
            nlink: m.nlink(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The whole layerdb as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Index {
    /// Stamps of `sha256/` and `mounts/` when the index was written.
    pub stamps: [DirStamp; 2],
    pub layers: Vec<(ChainId, LayerRecord)>,
    pub mounts: Vec<(RwName, MountRecord)>,
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every string stored is a driver id (≤ 69 bytes) or an RW name (≤ 128).
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn put_stamp(out: &mut Vec<u8>, s: &DirStamp) {
    for v in [s.dev, s.ino, s.nlink] {
        put_u64(out, v);
    }
    for v in [s.mtime.0, s.mtime.1, s.ctime.0, s.ctime.1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Encode an index (with its checksum).
pub(crate) fn encode(ix: &Index) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + ix.layers.len() * 190 + ix.mounts.len() * 200);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for s in &ix.stamps {
        put_stamp(&mut out, s);
    }
    put_u64(&mut out, ix.layers.len() as u64);
    for (chain, r) in &ix.layers {
        out.extend_from_slice(chain.digest().as_bytes());
        out.extend_from_slice(r.diff_id.digest().as_bytes());
        put_u64(&mut out, r.size);
        put_str(&mut out, r.cache_id.as_str());
        let flags = if r.parent.is_some() { HAS_PARENT } else { 0 } | if r.refs.is_some() { HAS_REFS } else { 0 };
        out.push(flags);
        if let Some(p) = &r.parent {
            out.extend_from_slice(p.digest().as_bytes());
        }
        if let Some(n) = r.refs {
            put_u64(&mut out, n);
        }
    }
    put_u64(&mut out, ix.mounts.len() as u64);
    for (name, r) in &ix.mounts {
        put_str(&mut out, name.as_str());
        put_str(&mut out, r.mount_id.as_str());
        let flags = if r.init_id.is_some() { HAS_INIT } else { 0 } | if r.parent.is_some() { HAS_PARENT } else { 0 };
        out.push(flags);
        if let Some(i) = &r.init_id {
            put_str(&mut out, i.as_str());
        }
        if let Some(p) = &r.parent {
            out.extend_from_slice(p.digest().as_bytes());
        }
    }
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

/// A cursor over the checked body; every read says what was cut short.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err("truncated".into());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn digest(&mut self) -> Result<Digest, String> {
        Ok(Digest::from_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let len = u16::from_le_bytes(self.array()?);
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn cache_id(&mut self) -> Result<CacheId, String> {
        CacheId::parse(self.str()?).map_err(|e| e.to_string())
    }

    fn stamp(&mut self) -> Result<DirStamp, String> {
        Ok(DirStamp {
            dev: self.u64()?,
            ino: self.u64()?,
            nlink: self.u64()?,
            mtime: (self.i64()?, self.i64()?),
            ctime: (self.i64()?, self.i64()?),
        })
    }

    /// A count of records of at least `min` bytes each that the rest can hold.
    fn count(&mut self, min: usize) -> Result<usize, String> {
        let n = self.u64()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.rest.len() / min => Ok(n),
            _ => Err(format!("a count of {n} records does not fit the file")),
        }
    }
}

/// Decode and check an index; the error says why it is not usable.
pub(crate) fn decode(bytes: &[u8]) -> Result<Index, String> {
    if bytes.len() < MAGIC.len() + 4 + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a layerd index".into());
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(format!("index version {version}, this layerd reads version {VERSION}"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    let want: [u8; 32] = Sha256::digest(body).into();
    if want.as_slice() != sum {
        return Err("checksum mismatch (torn or damaged)".into());
    }
    let mut c = Cursor { rest: &body[12..] };
    let stamps = [c.stamp()?, c.stamp()?];
    let n = c.count(32 + 32 + 8 + 2 + 1)?;
    let mut layers = Vec::with_capacity(n);
    for _ in 0..n {
        let chain = ChainId(c.digest()?);
        let diff_id = DiffId(c.digest()?);
        let size = c.u64()?;
        let cache_id = c.cache_id()?;
        let flags = c.u8()?;
        let parent = if flags & HAS_PARENT != 0 { Some(ChainId(c.digest()?)) } else { None };
        let refs = if flags & HAS_REFS != 0 { Some(c.u64()?) } else { None };
        layers.push((chain, LayerRecord { diff_id, size, cache_id, parent, refs }));
    }
    let n = c.count(2 + 2 + 1)?;
    let mut mounts = Vec::with_capacity(n);
    for _ in 0..n {
        let name = RwName::parse(c.str()?).map_err(|e| e.to_string())?;
        let mount_id = c.cache_id()?;
        let flags = c.u8()?;
        let init_id = if flags & HAS_INIT != 0 { Some(c.cache_id()?) } else { None };
        let parent = if flags & HAS_PARENT != 0 { Some(ChainId(c.digest()?)) } else { None };
        mounts.push((name, MountRecord { mount_id, init_id, parent }));
    }
    if !c.rest.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(Index { stamps, layers, mounts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        let stamp = DirStamp { dev: 1, ino: 2, nlink: 8, mtime: (3, 4), ctime: (5, -6) };
        let base = ChainId(Digest::of(b"base"));
        let layers = vec![
            (
                base.clone(),
                LayerRecord {
                    diff_id: DiffId(Digest::of(b"d0")),
                    size: 7,
                    cache_id: CacheId::random(),
                    parent: None,
                    refs: None,
                },
            ),
            (
                ChainId(Digest::of(b"top")),
                LayerRecord {
                    diff_id: DiffId(Digest::of(b"d1")),
                    size: u64::MAX,
                    cache_id: CacheId::random(),
                    parent: Some(base.clone()),
                    refs: Some(3),
                },
            ),
        ];
        let id = CacheId::random();
        let mounts = vec![
            (
                RwName::parse("c1").unwrap(),
                MountRecord { mount_id: id.clone(), init_id: Some(id.init()), parent: Some(base) },
            ),
            (RwName::parse("c2").unwrap(), MountRecord { mount_id: CacheId::random(), init_id: None, parent: None }),
        ];
        Index { stamps: [stamp, DirStamp { ino: 9, ..stamp }], layers, mounts }
    }

    #[test]
    fn round_trips() {
        let ix = sample();
        assert_eq!(decode(&encode(&ix)).unwrap(), ix);
        let empty = Index { layers: Vec::new(), mounts: Vec::new(), ..ix };
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(decode(&b).is_err(), "byte {i} flipped");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn another_version_is_refused_saying_so() {
        let mut bytes = encode(&sample());
        bytes[8] = 2;
        let body = bytes.len() - 32;
        let sum: [u8; 32] = Sha256::digest(&bytes[..body]).into();
        bytes[body..].copy_from_slice(&sum);
        assert!(decode(&bytes).unwrap_err().contains("version 2"));
    }

    #[test]
    fn a_stamp_changes_when_an_entry_is_added() {
        let tmp = tempfile::tempdir().unwrap();
        let before = DirStamp::of(tmp.path()).unwrap();
        // A subdirectory changes the link count at once.
        std::fs::create_dir(tmp.path().join("x")).unwrap();
        let with_dir = DirStamp::of(tmp.path()).unwrap();
        assert_ne!(with_dir.nlink, before.nlink);
        // A file, past the kernel's timestamp granularity (a jiffy), the times.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(tmp.path().join("f"), b"").unwrap();
        assert_ne!(DirStamp::of(tmp.path()).unwrap(), with_dir);
    }
}
