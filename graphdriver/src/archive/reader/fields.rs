//! Go's field parsers: header blocks, numbers, PAX records and times,
//! each named after the Go function it follows.

use std::collections::BTreeMap;

use super::{BLOCK, Member, ReadError, TarTime, bad};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

/// Go's `block.getFormat`: `None` if the checksum is wrong.
pub(super) fn block_format(b: &[u8; BLOCK]) -> Option<Format> {
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
pub(super) fn parse_header(b: &[u8; BLOCK], at: u64) -> Result<(Member, u8), ReadError> {
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
pub(super) fn cstr(b: &[u8]) -> &[u8] {
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
pub(super) fn merge_pax(m: &mut Member, recs: &BTreeMap<Vec<u8>, Vec<u8>>, at: u64) -> Result<(), ReadError> {
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
