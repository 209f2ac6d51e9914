//! The one tar reader of the workspace: Go's `archive/tar` rules (Go 1.19,
//! what Docker reads layers with), so every member, name, size, owner, mode,
//! time and xattr we see is the one Docker, containerd and every Go scanner
//! see. The extractor (`apply.rs`) and the tar-split recorder
//! (`layer::tarsplit`) both read through it, so they cannot disagree either.
//!
//! Rules kept from Go, each a former differential:
//! - PAX records are read by their length prefix (a value may hold `\n`);
//!   later records of one header win; `uid`, `gid`, `size` parse as signed
//!   decimal (`1e20` and overflow are refused) and a negative data size is
//!   refused; an empty value keeps the header's field.
//! - Name: GNU long name (`L`), else PAX `path`, else `prefix/name`; a
//!   typeflag-NUL member whose name ends in `/` is a directory.
//! - Numeric fields: octal with NULs/spaces trimmed (empty reads as 0), or
//!   base-256; the checksum may be signed or unsigned.
//! - Links, symlinks, devices, fifos and directories carry no data whatever
//!   their size field says: the next header follows at once.
//! - `L`/`K`/`x`/`g` bodies are capped at 1 MiB.
//! - The archive ends at two zero blocks, or at end of input on a member
//!   boundary (no end blocks, or one zero block only).
//! - Sparse files (GNU `S`, PAX 0.0/0.1/1.0): map validated as Go does.
//!
//! The reader never reads ahead: after [`Reader::next_member`] returns, exactly the
//! member's headers have been consumed; member data is read through
//! [`Read`] (bounded by the member's physical data size).

use std::collections::BTreeMap;
use std::io::{self, Read};

mod fields;
mod sparse;

use fields::{cstr, merge_pax, parse_header};
pub use fields::{numeric, parse_int, parse_pax, parse_pax_time};

/// Bodies of `L`, `K`, `x` and `g` headers larger than this are refused
/// (Go's `maxSpecialFileSize`).
pub const MAX_SPECIAL: u64 = 1 << 20;

/// A time as tar carries it (header: whole seconds; PAX: nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TarTime {
    pub secs: i64,
    /// Always in `0..1_000_000_000`.
    pub nanos: u32,
}

/// One member, as Go's `tar.Reader.Next` returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    /// Typeflag after Go's rule (`\0` becomes `0`, or `5` for a name
    /// ending in `/`).
    pub typeflag: u8,
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    /// Logical size (a sparse file's expanded size).
    pub size: i64,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub mtime: TarTime,
    pub atime: Option<TarTime>,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub devmajor: i64,
    pub devminor: i64,
    /// The PAX records that applied to this member (later ones won).
    pub pax: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `SCHILY.xattr.*` records with a non-empty value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Data fragments `(offset, length)` of a sparse file, validated
    /// against `size`.
    pub sparse: Option<Vec<(u64, u64)>>,
    /// Offset of this member's first header (extension headers included).
    pub header_pos: u64,
    /// Offset of the member's physical data (after a PAX 1.0 sparse map).
    pub data_pos: u64,
    /// Bytes of physical data at `data_pos`.
    pub data_len: u64,
}

impl Member {
    /// Links, symlinks, devices, fifos, directories: no data section.
    pub fn header_only(flag: u8) -> bool {
        matches!(flag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6')
    }

    /// Bytes of the content a reader of the member gets (sparse: the sum
    /// of the fragments; header-only types: none).
    pub fn fragments_len(&self) -> Option<u64> {
        self.sparse.as_ref().map(|m| m.iter().map(|(_, l)| l).sum())
    }
}

/// Why the stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a tar Go reads (the client's fault).
    #[error("{0}")]
    Format(String),
    /// The input itself failed (a decompressor error, a dropped body).
    #[error("read tar stream: {0}")]
    Input(#[source] io::Error),
}

pub(super) fn bad(at: u64, why: impl std::fmt::Display) -> ReadError {
    ReadError::Format(format!("invalid tar header at offset {at}: {why}"))
}

/// Streaming reader; see the module doc.
pub struct Reader<R> {
    inner: R,
    pos: u64,
    /// Physical data bytes of the current member not yet read.
    remaining: u64,
    /// Padding after the current member's data.
    pad: u64,
    done: bool,
}

pub(super) const BLOCK: usize = 512;

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader { inner, pos: 0, remaining: 0, pad: 0, done: false }
    }

    /// Bytes consumed from the input so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Read up to `buf.len()` bytes of raw input; `Ok(0)` at end of input.
    fn raw(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Input(e)),
            }
        }
    }

    /// Fill `buf`; returns the bytes read (short only at end of input).
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        let mut n = 0;
        while n < buf.len() {
            let k = self.raw(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok(n)
    }

    fn skip(&mut self, mut n: u64) -> Result<u64, ReadError> {
        let mut buf = [0u8; 8192];
        let mut done = 0;
        while n > 0 {
            let want = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let k = self.raw(&mut buf[..want])?;
            if k == 0 {
                break;
            }
            n -= k as u64;
            done += k as u64;
        }
        Ok(done)
    }

    /// The next member, `None` at the end of the archive. After an error
    /// the reader stays failed (`None`).
    pub fn next_member(&mut self) -> Result<Option<Member>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let r = self.next_inner();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Member>, ReadError> {
        let mut pax: Option<BTreeMap<Vec<u8>, Vec<u8>>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut first: Option<u64> = None;
        loop {
            let left = self.remaining;
            if self.skip(left)? != left {
                return Err(ReadError::Format(format!("truncated: member data ends early at offset {}", self.pos)));
            }
            self.remaining = 0;
            let pad = self.pad;
            self.pad = 0;
            if self.skip(pad)? != pad {
                return Ok(None); // Go: end of input inside padding is the end
            }
            let at = self.pos;
            let Some(blk) = self.read_header_block()? else { return Ok(None) };
            first.get_or_insert(at);
            let (mut m, flag) = parse_header(&blk, at)?;
            self.set_data(m.size, flag, at)?;
            match flag {
                b'x' | b'g' => {
                    let body = self.special(at, "PAX header")?;
                    let recs = parse_pax(&body).map_err(|why| bad(at, why))?;
                    if flag == b'g' {
                        let _ = merge_pax(&mut m, &recs, at);
                        let g = Member {
                            typeflag: b'g',
                            name: m.name,
                            xattrs: m.xattrs,
                            pax: m.pax,
                            header_pos: at,
                            data_pos: self.pos,
                            ..Member::default()
                        };
                        return Ok(Some(g));
                    }
                    pax = Some(recs);
                }
                b'L' | b'K' => {
                    let body = self.special(at, "GNU long name")?;
                    let s = cstr(&body).to_vec();
                    if flag == b'L' {
                        long_name = Some(s);
                    } else {
                        long_link = Some(s);
                    }
                }
                _ => {
                    if let Some(recs) = &pax {
                        merge_pax(&mut m, recs, at)?;
                    }
                    if let Some(n) = long_name.filter(|n| !n.is_empty()) {
                        m.name = n;
                    }
                    if let Some(l) = long_link.filter(|l| !l.is_empty()) {
                        m.linkname = l;
                    }
                    m.typeflag = match flag {
                        0 if m.name.ends_with(b"/") => b'5',
                        0 => b'0',
                        f => f,
                    };
                    self.set_data(m.size, m.typeflag, at)?;
                    self.sparse(&mut m, &blk, at)?;
                    m.header_pos = first.unwrap_or(at);
                    m.data_pos = self.pos;
                    m.data_len = self.remaining;
                    return Ok(Some(m));
                }
            }
        }
    }

    /// Go's `handleRegularFile`.
    fn set_data(&mut self, size: i64, flag: u8, at: u64) -> Result<(), ReadError> {
        let nb = if Member::header_only(flag) { 0 } else { size };
        let nb = u64::try_from(nb).map_err(|_| bad(at, format!("negative size {size}")))?;
        self.remaining = nb;
        self.pad = nb.next_multiple_of(BLOCK as u64) - nb;
        Ok(())
    }

    /// Go's `readHeader` up to the block: `None` at a clean end.
    fn read_header_block(&mut self) -> Result<Option<[u8; BLOCK]>, ReadError> {
        let at = self.pos;
        let mut blk = [0u8; BLOCK];
        match self.fill(&mut blk)? {
            0 => return Ok(None),
            BLOCK => {}
            n => return Err(ReadError::Format(format!("truncated: {n}-byte header block at offset {at}"))),
        }
        if blk.iter().all(|b| *b == 0) {
            let mut second = [0u8; BLOCK];
            return match self.fill(&mut second)? {
                0 => Ok(None),
                BLOCK if second.iter().all(|b| *b == 0) => Ok(None),
                BLOCK => Err(bad(at + BLOCK as u64, "a zero block followed by a non-zero block")),
                n => Err(ReadError::Format(format!("truncated: {n}-byte block after a zero block at offset {at}"))),
            };
        }
        Ok(Some(blk))
    }

    /// Read the whole data of a special member (capped).
    fn special(&mut self, at: u64, what: &str) -> Result<Vec<u8>, ReadError> {
        if self.remaining > MAX_SPECIAL {
            return Err(bad(at, format!("{what} of {} bytes is larger than the 1 MiB limit", self.remaining)));
        }
        let mut body = vec![0u8; self.remaining as usize];
        let n = self.fill(&mut body)?;
        self.remaining -= n as u64;
        if n < body.len() {
            return Err(ReadError::Format(format!("truncated: {what} at offset {at}")));
        }
        Ok(body)
    }
}

impl<R: Read> Read for Reader<R> {
    /// The current member's physical data; an early end of input is an
    /// `UnexpectedEof` error.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.raw(&mut buf[..want]).map_err(|e| match e {
            ReadError::Input(e) => e,
            ReadError::Format(m) => io::Error::new(io::ErrorKind::InvalidData, m),
        })?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated: member data ends early"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
