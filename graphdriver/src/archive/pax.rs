//! PAX extended headers read by their length prefixes, as POSIX defines them.
//!
//! The `tar` crate splits PAX data at newlines, so a record whose value holds
//! a 0x0a byte — a binary xattr such as `security.capability` — comes out
//! "malformed", and the layer could not be applied. Docker (Go's reader)
//! reads such layers. So the extractor taps its input: it keeps only the
//! bytes between one member's data and the next member's header (extension
//! headers: PAX `x`, GNU `L`/`K`), checks their header checksums and parses
//! the PAX records by length. Member data is never buffered.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

/// Bytes of extension headers between members, captured while reading.
#[derive(Default)]
struct TapState {
    /// Offset of the next byte read from the input.
    pos: u64,
    /// Bytes before this offset are member data: not kept.
    keep_from: u64,
    /// Kept bytes, starting at `keep_from`.
    buf: Vec<u8>,
}

pub struct Tap<R> {
    inner: R,
    state: Rc<RefCell<TapState>>,
}

/// The extractor's handle on a [`Tap`].
#[derive(Clone)]
pub struct TapHandle(Rc<RefCell<TapState>>);

/// What a member's extension headers said, read by length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberExt {
    /// PAX records (`x` headers), in order.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// A GNU long name (`L`) or long link name (`K`) header was present.
    pub gnu_long_name: bool,
    pub gnu_long_link: bool,
}

impl MemberExt {
    fn value(&self, key: &[u8]) -> Option<&[u8]> {
        self.records.iter().rev().find(|(k, _)| k == key).map(|(_, v)| &v[..])
    }

    /// The member's name as Go's reader (and so Docker) sees it: a GNU long
    /// name wins, then a PAX `path`, then the header's own name.
    pub fn path<R: Read>(&self, e: &tar::Entry<'_, R>) -> Vec<u8> {
        match self.value(b"path") {
            Some(p) if !self.gnu_long_name => p.to_vec(),
            _ => e.path_bytes().into_owned(),
        }
    }

    /// The link target, by the same rule (`K`, then PAX `linkpath`).
    pub fn link<R: Read>(&self, e: &tar::Entry<'_, R>) -> Option<Vec<u8>> {
        match self.value(b"linkpath") {
            Some(p) if !self.gnu_long_link => Some(p.to_vec()),
            _ => e.link_name_bytes().map(|c| c.into_owned()),
        }
    }

    /// Bytes of member data that follow the header in the archive.
    pub fn data_len(&self, h: &tar::Header) -> u64 {
        self.value(b"size")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or_else(|| h.entry_size().unwrap_or(0))
    }
}

/// Extension headers bigger than this are not kept (the crate still reads them).
const MAX_KEPT: usize = 16 << 20;

impl<R: Read> Tap<R> {
    /// Wrap the archive's input; give the `Tap` to `tar::Archive::new` and
    /// call [`TapHandle::member`] for every entry, in order.
    pub fn new(inner: R) -> (Tap<R>, TapHandle) {
        let state = Rc::new(RefCell::new(TapState::default()));
        (Tap { inner, state: state.clone() }, TapHandle(state))
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.state.borrow_mut();
        let start = st.pos;
        st.pos += n as u64;
        if st.pos > st.keep_from && st.buf.len() < MAX_KEPT {
            let skip = st.keep_from.saturating_sub(start) as usize;
            st.buf.extend_from_slice(&buf[skip.min(n)..n]);
        }
        Ok(n)
    }
}

impl TapHandle {
    /// The extension headers of `e` (call once per entry, in order). `None`
    /// if they can't be read exactly (then use the crate's own reading).
    pub fn member<R: Read>(&self, e: &tar::Entry<'_, R>) -> Option<MemberExt> {
        let ext = self.records_before(e.raw_header_position());
        let len = ext.as_ref().map_or_else(|| e.header().entry_size().unwrap_or(0), |x| x.data_len(e.header()));
        self.skip_data(e.raw_file_position(), len);
        ext
    }

    fn records_before(&self, header_pos: u64) -> Option<MemberExt> {
        let st = self.0.borrow();
        if st.buf.len() >= MAX_KEPT {
            return None;
        }
        let start = st.keep_from;
        let end = usize::try_from(header_pos.checked_sub(start)?).ok()?;
        let region = st.buf.get(..end)?;
        // The region opens with the padding of the previous member's data.
        let first = usize::try_from(start.next_multiple_of(512) - start).ok()?;
        parse_region(region.get(first..)?)
    }

    /// The member's data runs from `data_pos` for `len` bytes: don't keep it.
    fn skip_data(&self, data_pos: u64, len: u64) {
        let mut st = self.0.borrow_mut();
        st.buf.clear();
        st.keep_from = data_pos.saturating_add(len);
    }
}

fn octal_or_base256(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() { Some(0) } else { u64::from_str_radix(s, 8).ok() }
}

fn checksum_ok(block: &[u8]) -> bool {
    let Some(want) = octal_or_base256(&block[148..156]) else { return false };
    let sum: u64 =
        block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum();
    sum == want
}

/// Walk extension headers; collect the records of `x` headers.
fn parse_region(mut region: &[u8]) -> Option<MemberExt> {
    let mut out = MemberExt::default();
    while !region.is_empty() {
        let block = region.get(..512)?;
        if !checksum_ok(block) {
            return None;
        }
        let size = usize::try_from(octal_or_base256(&block[124..136])?).ok()?;
        let data = region.get(512..512 + size)?;
        match block[156] {
            b'x' => out.records.extend(parse_records(data)?),
            b'L' => out.gnu_long_name = true,
            b'K' => out.gnu_long_link = true,
            _ => {}
        }
        region = region.get(512 + size.next_multiple_of(512)..)?;
    }
    Some(out)
}

/// `"<len> <key>=<value>\n"` records, each exactly `len` bytes long.
pub fn parse_records(mut data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break; // NUL padding after the last record
        }
        let sp = data.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..sp]).ok()?.parse().ok()?;
        let rec = data.get(..len)?;
        if len <= sp + 1 || rec.last() != Some(&b'\n') {
            return None;
        }
        let kv = &rec[sp + 1..len - 1];
        let eq = kv.iter().position(|b| *b == b'=')?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(k: &str, v: &[u8]) -> Vec<u8> {
        let body_len = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body_len + body_len.to_string().len();
        if len.to_string().len() != body_len.to_string().len() {
            len += 1;
        }
        let mut r = format!("{len} {k}=").into_bytes();
        r.extend_from_slice(v);
        r.push(b'\n');
        assert_eq!(r.len(), len);
        r
    }

    #[test]
    fn records_with_newlines_in_values_parse_by_length() {
        let cap = b"\x01\x00\x00\x02\n\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        let mut data = record("SCHILY.xattr.security.capability", cap);
        data.extend(record("path", b"usr/bin/ping"));
        let recs = parse_records(&data).unwrap();
        assert_eq!(recs[0], (b"SCHILY.xattr.security.capability".to_vec(), cap.to_vec()));
        assert_eq!(recs[1], (b"path".to_vec(), b"usr/bin/ping".to_vec()));
    }

    /// Through the whole extractor: Docker reads these layers, so must we.
    #[test]
    fn xattr_values_with_newlines_are_applied_exactly() {
        use crate::archive::{ApplyOptions, WhiteoutFormat, apply_tar};
        let cap = b"\x01\x00\x00\x02\x0a\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
        let mut b = tar::Builder::new(Vec::new());
        let recs: Vec<(&str, &[u8])> = vec![
            ("SCHILY.xattr.security.capability", &cap),
            ("SCHILY.xattr.user.multi", b"line1\nline2\n"),
            ("path", b"usr/bin/ping"),
        ];
        b.append_pax_extensions(recs).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("placeholder").unwrap();
        h.set_size(4);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"ping"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let opts = ApplyOptions { whiteouts: WhiteoutFormat::Remove };
        apply_tar(dir.path(), &mut &t[..], &opts).unwrap();
        let f = dir.path().join("usr/bin/ping");
        assert_eq!(std::fs::read(&f).unwrap(), b"ping");
        let get = |name: &str| {
            let mut buf = vec![0u8; 256];
            let n = rustix::fs::getxattr(&f, name, &mut buf).unwrap();
            buf.truncate(n);
            buf
        };
        assert_eq!(get("security.capability"), cap);
        assert_eq!(get("user.multi"), b"line1\nline2\n");
    }

    #[test]
    fn hostile_records_are_rejected_not_panicked() {
        for bad in
            [&b"5 a=b"[..], b"99 a=b\n", b"x a=b\n", b"3 =\n", b"6 ab\n\n", b"0 \n", b"18446744073709551616 a=b\n"]
        {
            assert!(parse_records(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
