//! Go's `handleSparseFile`: the data map of old GNU (`S`) and PAX (0.0,
//! 0.1, 1.0) sparse members, validated as Go validates it.

use std::io::Read;

use super::fields::{Format, block_format, numeric, parse_int};
use super::{BLOCK, Member, ReadError, Reader, bad};

impl<R: Read> Reader<R> {
    /// Go's `handleSparseFile`.
    pub(super) fn sparse(&mut self, m: &mut Member, blk: &[u8; BLOCK], at: u64) -> Result<(), ReadError> {
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
