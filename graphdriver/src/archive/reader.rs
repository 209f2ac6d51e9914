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

fn bad(at: u64, why: impl std::fmt::Display) -> ReadError {
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

const BLOCK: usize = 512;

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

    /// Go's `handleSparseFile`.
    fn sparse(&mut self, m: &mut Member, blk: &[u8; BLOCK], at: u64) -> Result<(), ReadError> {
        let frags = if m.typeflag == b'S' { Some(self.old_gnu_sparse(m, blk, at)?) } else { self.pax_sparse(m, at)? };
        let Some(frags) = frags else { return Ok(()) };
        if Member::header_only(m.typeflag) {
            return Err(bad(at, "sparse map on a member without data"));
        }
        let valid = |frags: &[(i64, i64)]| {
            if m.size < 0 {
                return false;
            }
            let mut pre_end = 0i64;
            for &(off, len) in frags {
                if off < 0 || len < 0 || off > i64::MAX - len || off + len > m.size || pre_end > off {
                    return false;
                }
                pre_end = off + len;
            }
            true
        };
        if !valid(&frags) {
            return Err(bad(at, "invalid sparse map"));
        }
        m.sparse = Some(frags.iter().filter(|(_, l)| *l > 0).map(|&(o, l)| (o as u64, l as u64)).collect());
        Ok(())
    }

    fn old_gnu_sparse(&mut self, m: &mut Member, blk: &[u8; BLOCK], at: u64) -> Result<Vec<(i64, i64)>, ReadError> {
        if block_format(blk) != Some(Format::Gnu) {
            return Err(bad(at, "GNU sparse member without the GNU magic"));
        }
        m.size = numeric(&blk[483..495]).ok_or_else(|| bad(at, "bad GNU sparse real size"))?;
        let mut frags = Vec::new();
        let mut b = *blk;
        let (mut area, mut count, mut ext_at) = (386usize, 4usize, 482usize);
        loop {
            for i in 0..count {
                let e = &b[area + i * 24..area + i * 24 + 24];
                if e[0] == 0 {
                    break;
                }
                let off = numeric(&e[..12]).ok_or_else(|| bad(at, "bad GNU sparse offset"))?;
                let len = numeric(&e[12..]).ok_or_else(|| bad(at, "bad GNU sparse length"))?;
                frags.push((off, len));
            }
            if b[ext_at] == 0 {
                return Ok(frags);
            }
            let ext = self.pos;
            if self.fill(&mut b)? != BLOCK {
                return Err(ReadError::Format(format!("truncated: GNU sparse extension block at offset {ext}")));
            }
            (area, count, ext_at) = (0, 21, 504);
        }
    }

    fn pax_sparse(&mut self, m: &mut Member, at: u64) -> Result<Option<Vec<(i64, i64)>>, ReadError> {
        let get = |k: &str| m.pax.get(format!("GNU.sparse.{k}").as_bytes()).map(|v| &v[..]).unwrap_or(b"");
        let is_1_0 = match (get("major"), get("minor")) {
            (b"0", b"0" | b"1") => false,
            (b"1", b"0") => true,
            (b"", b"") if !get("map").is_empty() => false,
            _ => return Ok(None),
        };
        if !get("name").is_empty() {
            m.name = get("name").to_vec();
        }
        let size = if get("size").is_empty() { get("realsize") } else { get("size") };
        if !size.is_empty() {
            m.size = parse_int(size).ok_or_else(|| bad(at, "bad GNU.sparse.size"))?;
        }
        if is_1_0 {
            return self.sparse_map_1_0(at).map(Some);
        }
        let n = parse_int(get("numblocks")).filter(|n| *n >= 0).ok_or_else(|| bad(at, "bad GNU.sparse.numblocks"))?;
        let map = get("map");
        let parts: Vec<&[u8]> = if map.is_empty() { Vec::new() } else { map.split(|b| *b == b',').collect() };
        if parts.len() as u64 != 2 * n as u64 {
            return Err(bad(at, "GNU.sparse.map does not match GNU.sparse.numblocks"));
        }
        let mut frags = Vec::with_capacity(parts.len() / 2);
        for p in parts.chunks(2) {
            match (parse_int(p[0]), parse_int(p[1])) {
                (Some(o), Some(l)) => frags.push((o, l)),
                _ => return Err(bad(at, "bad GNU.sparse.map")),
            }
        }
        Ok(Some(frags))
    }

    /// The 1.0 map heads the data, in whole blocks.
    fn sparse_map_1_0(&mut self, at: u64) -> Result<Vec<(i64, i64)>, ReadError> {
        let mut buf: Vec<u8> = Vec::new();
        let mut newlines = 0u64;
        let mut feed = |r: &mut Self, buf: &mut Vec<u8>, want: u64| -> Result<(), ReadError> {
            while newlines < want {
                let mut blk = [0u8; BLOCK];
                if r.remaining < BLOCK as u64 || r.fill(&mut blk)? != BLOCK {
                    return Err(ReadError::Format(format!("truncated: sparse map of the member at offset {at}")));
                }
                r.remaining -= BLOCK as u64;
                newlines += blk.iter().filter(|b| **b == b'\n').count() as u64;
                buf.extend_from_slice(&blk);
            }
            Ok(())
        };
        let mut cursor = 0usize;
        let mut token = |buf: &Vec<u8>| -> Option<i64> {
            let nl = buf[cursor..].iter().position(|b| *b == b'\n')?;
            let t = &buf[cursor..cursor + nl];
            cursor += nl + 1;
            parse_int(t)
        };
        feed(self, &mut buf, 1)?;
        let n =
            token(&buf).filter(|n| *n >= 0 && n.checked_mul(2).is_some()).ok_or_else(|| bad(at, "bad sparse map"))?;
        feed(self, &mut buf, 1 + 2 * n as u64)?;
        let mut frags = Vec::new();
        for _ in 0..n {
            match (token(&buf), token(&buf)) {
                (Some(o), Some(l)) => frags.push((o, l)),
                _ => return Err(bad(at, "bad sparse map entry")),
            }
        }
        Ok(frags)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

/// Go's `block.getFormat`: `None` if the checksum is wrong.
fn block_format(b: &[u8; BLOCK]) -> Option<Format> {
    let want = octal(&b[148..156])?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    if want != unsigned && want != signed {
        return None;
    }
    let magic = &b[257..263];
    Some(if magic == b"ustar\0" && &b[508..512] == b"tar\0" {
        Format::Star
    } else if magic == b"ustar\0" {
        Format::Ustar
    } else if magic == b"ustar " && &b[263..265] == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    })
}

/// Go's `readHeader` after the block is read; returns the raw typeflag.
fn parse_header(b: &[u8; BLOCK], at: u64) -> Result<(Member, u8), ReadError> {
    let format = block_format(b).ok_or_else(|| bad(at, "bad checksum or not a tar header"))?;
    let num =
        |r: std::ops::Range<usize>, what: &str| numeric(&b[r]).ok_or_else(|| bad(at, format!("bad {what} field")));
    let mut m = Member {
        name: cstr(&b[0..100]).to_vec(),
        linkname: cstr(&b[157..257]).to_vec(),
        size: num(124..136, "size")?,
        mode: num(100..108, "mode")?,
        uid: num(108..116, "uid")?,
        gid: num(116..124, "gid")?,
        mtime: TarTime { secs: num(136..148, "mtime")?, nanos: 0 },
        ..Member::default()
    };
    if format == Format::V7 {
        return Ok((m, b[156]));
    }
    m.uname = cstr(&b[265..297]).to_vec();
    m.gname = cstr(&b[297..329]).to_vec();
    m.devmajor = num(329..337, "devmajor")?;
    m.devminor = num(337..345, "devminor")?;
    let prefix: &[u8] = match format {
        Format::Ustar => cstr(&b[345..500]),
        Format::Star => {
            m.atime = Some(TarTime { secs: num(476..488, "atime")?, nanos: 0 });
            num(488..500, "ctime")?;
            cstr(&b[345..476])
        }
        _ => {
            // GNU; a pre-Go-1.8 writer put a USTAR prefix here.
            let t = |r: std::ops::Range<usize>| if b[r.start] != 0 { numeric(&b[r]).map(Some) } else { Some(None) };
            match (t(345..357), t(357..369)) {
                (Some(a), Some(_)) => {
                    m.atime = a.map(|secs| TarTime { secs, nanos: 0 });
                    b""
                }
                _ => {
                    let p = cstr(&b[345..500]);
                    if p.is_ascii() { p } else { b"" }
                }
            }
        }
    };
    if !prefix.is_empty() {
        let mut name = prefix.to_vec();
        name.push(b'/');
        name.extend_from_slice(&m.name);
        m.name = name;
    }
    Ok((m, b[156]))
}

/// Go's `parser.parseString`: up to the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|c| *c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// Go's `parseNumeric`: base-256 if the high bit is set, else octal.
pub fn numeric(b: &[u8]) -> Option<i64> {
    if b.first().is_some_and(|c| c & 0x80 != 0) {
        let inv = if b[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 > 0 {
                return None;
            }
            x = x << 8 | u64::from(c);
        }
        if x >> 63 > 0 {
            return None;
        }
        let x = x as i64;
        return Some(if inv == 0xff { !x } else { x });
    }
    octal(b)
}

/// Go's `parseOctal`: NULs and spaces trimmed on both ends; empty is 0.
fn octal(b: &[u8]) -> Option<i64> {
    let is_pad = |c: &u8| *c == 0 || *c == b' ';
    let start = b.iter().position(|c| !is_pad(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !is_pad(c)).map_or(start, |i| i + 1);
    let b = cstr(&b[start..end]);
    if start == end {
        return Some(0);
    }
    if b.is_empty() || !b.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    let mut x: u64 = 0;
    for &c in b {
        x = x.checked_mul(8)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(x as i64)
}

/// Go's `strconv.ParseInt(s, 10, 64)`.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut x: i128 = 0;
    for &c in digits {
        x = x * 10 + i128::from(c - b'0');
        if x > i128::from(i64::MAX) + 1 {
            return None;
        }
    }
    let x = if neg { -x } else { x };
    i64::try_from(x).ok()
}

/// Go's `parsePAXTime`.
pub fn parse_pax_time(s: &[u8]) -> Option<TarTime> {
    let (ss, sn) = match s.iter().position(|b| *b == b'.') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &b""[..]),
    };
    let secs = parse_int(ss)?;
    if sn.is_empty() {
        return Some(TarTime { secs, nanos: 0 });
    }
    if !sn.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + sn.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    if ss.first() == Some(&b'-') && nanos > 0 {
        return Some(TarTime { secs: secs.checked_sub(1)?, nanos: (1_000_000_000 - nanos) as u32 });
    }
    Some(TarTime { secs, nanos: nanos as u32 })
}

/// Go's `parsePAX`: records by length; 0.0 sparse offset/numbytes pairs
/// become `GNU.sparse.map`.
pub fn parse_pax(mut s: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let mut sparse: Vec<&[u8]> = Vec::new();
    while !s.is_empty() {
        let (k, v, rest) = parse_record(s).ok_or("malformed PAX record")?;
        s = rest;
        if k == b"GNU.sparse.offset" || k == b"GNU.sparse.numbytes" {
            let want: &[u8] =
                if sparse.len().is_multiple_of(2) { b"GNU.sparse.offset" } else { b"GNU.sparse.numbytes" };
            if k != want || v.contains(&b',') {
                return Err("malformed PAX sparse 0.0 records".into());
            }
            sparse.push(v);
        } else {
            out.insert(k.to_vec(), v.to_vec());
        }
    }
    if !sparse.is_empty() {
        out.insert(b"GNU.sparse.map".to_vec(), sparse.join(&b','));
    }
    Ok(out)
}

/// Go's `parsePAXRecord`: `"<len> <key>=<value>\n"`, exactly `len` bytes.
fn parse_record(s: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let sp = s.iter().position(|b| *b == b' ')?;
    let n = parse_int(&s[..sp])?;
    if n < 5 || n as u64 > s.len() as u64 {
        return None;
    }
    let n = n as usize;
    if n <= sp + 1 || s[n - 1] != b'\n' {
        return None;
    }
    let rec = &s[sp + 1..n - 1];
    let eq = rec.iter().position(|b| *b == b'=')?;
    let (k, v) = (&rec[..eq], &rec[eq + 1..]);
    let valid = !k.is_empty()
        && match k {
            b"path" | b"linkpath" | b"uname" | b"gname" => !v.contains(&0),
            _ => !k.contains(&0),
        };
    valid.then_some((k, v, &s[n..]))
}

/// Go's `mergePAX`.
fn merge_pax(m: &mut Member, recs: &BTreeMap<Vec<u8>, Vec<u8>>, at: u64) -> Result<(), ReadError> {
    for (k, v) in recs {
        if v.is_empty() {
            continue;
        }
        let int = || parse_int(v).ok_or_else(|| bad(at, format!("bad PAX {}", String::from_utf8_lossy(k))));
        let time = || parse_pax_time(v).ok_or_else(|| bad(at, format!("bad PAX {}", String::from_utf8_lossy(k))));
        match &k[..] {
            b"path" => m.name = v.clone(),
            b"linkpath" => m.linkname = v.clone(),
            b"uname" => m.uname = v.clone(),
            b"gname" => m.gname = v.clone(),
            b"uid" => m.uid = int()?,
            b"gid" => m.gid = int()?,
            b"size" => m.size = int()?,
            b"mtime" => m.mtime = time()?,
            b"atime" => m.atime = Some(time()?),
            b"ctime" => {
                time()?;
            }
            _ => {
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    m.xattrs.insert(name.to_vec(), v.clone());
                }
            }
        }
    }
    m.pax = recs.clone();
    Ok(())
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
