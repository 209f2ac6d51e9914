//! Sparse files. GNU `S` entries arrive already expanded by the `tar` crate
//! (holes as zeros); PAX sparse entries (GNU tar `--sparse --format=posix`,
//! formats 0.0, 0.1 and 1.0) arrive as a regular file whose data is the
//! concatenated chunks (1.0: preceded by the map), described by
//! `GNU.sparse.*` records. Both are written with holes left as holes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// A PAX sparse description gathered from `GNU.sparse.*` records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PaxSparse {
    pub(crate) major: Option<String>,
    pub(crate) minor: Option<String>,
    pub(crate) name: Option<Vec<u8>>,
    pub(crate) size: Option<u64>,
    pub(crate) realsize: Option<u64>,
    pub(crate) map: Option<String>,
    /// 0.0: repeated `offset`/`numbytes` records, in order.
    pub(crate) offsets: Vec<u64>,
    pub(crate) numbytes: Vec<u64>,
    pub(crate) numblocks: Option<u64>,
}

/// Where the map of a PAX sparse file is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// 0.0 / 0.1: the map came in the PAX records.
    Known(Vec<(u64, u64)>),
    /// 1.0: the map heads the data.
    InData,
}

impl PaxSparse {
    /// Take one PAX record; returns false if it is not a `GNU.sparse.` key.
    pub(crate) fn record(&mut self, key: &str, value: &[u8]) -> Result<bool, String> {
        let Some(k) = key.strip_prefix("GNU.sparse.") else {
            return Ok(false);
        };
        let text = || String::from_utf8_lossy(value).into_owned();
        let num = || -> Result<u64, String> {
            text().trim().parse::<u64>().map_err(|_| format!("bad PAX record {key}={:?}", text()))
        };
        match k {
            "major" => self.major = Some(text()),
            "minor" => self.minor = Some(text()),
            "name" => self.name = Some(value.to_vec()),
            "size" => self.size = Some(num()?),
            "realsize" => self.realsize = Some(num()?),
            "map" => self.map = Some(text()),
            "offset" => self.offsets.push(num()?),
            "numbytes" => self.numbytes.push(num()?),
            "numblocks" => self.numblocks = Some(num()?),
            _ => {}
        }
        Ok(true)
    }

    /// Whether the entry is a PAX sparse file at all.
    pub(crate) fn is_sparse(&self) -> bool {
        self.major.is_some() || self.map.is_some() || !self.offsets.is_empty() || self.numblocks.is_some()
    }

    /// The expanded size and where the map is.
    pub(crate) fn layout(&self) -> Result<(u64, Layout), String> {
        match (self.major.as_deref(), self.minor.as_deref()) {
            (Some("1"), Some("0")) => {
                let size = self.realsize.or(self.size).ok_or("PAX sparse 1.0 without GNU.sparse.realsize")?;
                Ok((size, Layout::InData))
            }
            (None, _) => {
                let size = self.size.or(self.realsize).ok_or("PAX sparse 0.x without GNU.sparse.size")?;
                let map: Vec<(u64, u64)> = if let Some(map) = &self.map {
                    let nums: Vec<u64> = map
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.trim().parse::<u64>().map_err(|_| format!("bad GNU.sparse.map {map:?}")))
                        .collect::<Result<_, _>>()?;
                    if !nums.len().is_multiple_of(2) {
                        return Err(format!("odd GNU.sparse.map {map:?}"));
                    }
                    nums.chunks(2).map(|c| (c[0], c[1])).collect()
                } else {
                    if self.offsets.len() != self.numbytes.len() {
                        return Err("GNU.sparse.offset/numbytes records do not pair up".into());
                    }
                    self.offsets.iter().copied().zip(self.numbytes.iter().copied()).collect()
                };
                if let Some(n) = self.numblocks
                    && n != map.len() as u64
                {
                    return Err(format!("GNU.sparse.numblocks={n} but the map has {} blocks", map.len()));
                }
                Ok((size, Layout::Known(map)))
            }
            (major, minor) => Err(format!("unsupported PAX sparse version {major:?}.{minor:?}")),
        }
    }
}

/// Read the 1.0 map from the head of `data` (`avail` bytes). Returns the map
/// and the bytes consumed, padding included.
pub(crate) fn read_map_1_0(data: &mut dyn Read, avail: u64) -> Result<(Vec<(u64, u64)>, u64), String> {
    let mut used = 0u64;
    let mut next = |used: &mut u64| -> Result<u64, String> {
        let mut digits = Vec::new();
        loop {
            let mut b = [0u8; 1];
            if *used >= avail || data.read(&mut b).map_err(|e| format!("reading sparse map: {e}"))? != 1 {
                return Err("sparse map runs past the entry data".into());
            }
            *used += 1;
            if b[0] == b'\n' {
                break;
            }
            if !b[0].is_ascii_digit() || digits.len() >= 20 {
                return Err("malformed sparse map".into());
            }
            digits.push(b[0]);
        }
        std::str::from_utf8(&digits)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| "malformed sparse map number".to_string())
    };
    let count = next(&mut used)?;
    // Each block needs at least "0\n0\n"; refuse counts the data cannot hold.
    if count > avail / 4 {
        return Err(format!("sparse map claims {count} blocks"));
    }
    // The count is only a claim: grow with the bytes actually read.
    let mut map = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let off = next(&mut used)?;
        let len = next(&mut used)?;
        map.push((off, len));
    }
    let pad = (512 - used % 512) % 512;
    if used + pad > avail {
        return Err("sparse map padding runs past the entry data".into());
    }
    io::copy(&mut data.take(pad), &mut io::sink()).map_err(|e| format!("reading sparse map: {e}"))?;
    Ok((map, used + pad))
}

/// Check a map against the expanded size and the data that carries it.
pub(crate) fn check_map(map: &[(u64, u64)], size: u64, data_len: u64) -> Result<(), String> {
    let mut end = 0u64;
    let mut total = 0u64;
    for &(off, len) in map {
        if off < end {
            return Err("sparse map blocks overlap or are out of order".into());
        }
        end = off.checked_add(len).ok_or("sparse map block overflows")?;
        if end > size {
            return Err(format!("sparse map block ends at {end}, past the file size {size}"));
        }
        total = total.checked_add(len).ok_or("sparse map overflows")?;
    }
    if total != data_len {
        return Err(format!("sparse map covers {total} bytes but the entry carries {data_len}"));
    }
    Ok(())
}

/// Write the chunks of `map` from `data` at their offsets, then extend the
/// file to `size`. Returns false if `data` ran short.
pub(crate) fn write_chunks(file: &mut File, data: &mut dyn Read, map: &[(u64, u64)], size: u64) -> io::Result<bool> {
    for &(off, len) in map {
        file.seek(SeekFrom::Start(off))?;
        if io::copy(&mut data.take(len), file)? != len {
            return Ok(false);
        }
    }
    file.set_len(size)?;
    Ok(true)
}

/// The largest expanded size accepted for a GNU `S` entry. The `tar` crate
/// hands its holes over as zeros that must be read through, so a tiny
/// hostile entry claiming exabytes would otherwise spin for hours.
pub(crate) const MAX_GNU_SPARSE_SIZE: u64 = 1 << 40;

/// Copy `len` bytes from `data`, seeking over all-zero blocks instead of
/// writing them. Returns the bytes read.
pub(crate) fn write_holey(file: &mut File, data: &mut dyn Read, len: u64) -> io::Result<u64> {
    // Fail early (EFBIG) if the filesystem cannot hold the file at all.
    file.set_len(len)?;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = data.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|b| *b == 0) {
            file.seek(SeekFrom::Current(n as i64))?;
        } else {
            file.write_all(&buf[..n])?;
        }
        done += n as u64;
    }
    file.set_len(done)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_1_0_parses_and_checks() {
        let mut data = b"2\n0\n5\n100\n3\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"helloabc");
        let avail = data.len() as u64;
        let mut r = &data[..];
        let (map, used) = read_map_1_0(&mut r, avail).unwrap();
        assert_eq!(map, vec![(0, 5), (100, 3)]);
        assert_eq!(used, 512);
        check_map(&map, 200, avail - used).unwrap();
        assert!(check_map(&map, 101, 8).is_err());
        assert!(check_map(&[(10, 5), (12, 1)], 100, 6).is_err());
        assert!(check_map(&map, 200, 9).is_err());
        let mut bad = &b"99999999\n"[..];
        assert!(read_map_1_0(&mut bad, 9).is_err());
        let mut short = &b"1\n0\n"[..];
        assert!(read_map_1_0(&mut short, 4).is_err());
    }

    #[test]
    fn layouts() {
        let mut s = PaxSparse::default();
        assert!(!s.is_sparse());
        s.record("GNU.sparse.map", b"0,5,100,3").unwrap();
        s.record("GNU.sparse.size", b"200").unwrap();
        s.record("GNU.sparse.numblocks", b"2").unwrap();
        assert!(s.is_sparse());
        assert_eq!(s.layout().unwrap(), (200, Layout::Known(vec![(0, 5), (100, 3)])));
        let mut s = PaxSparse::default();
        s.record("GNU.sparse.major", b"2").unwrap();
        s.record("GNU.sparse.minor", b"0").unwrap();
        assert!(s.layout().is_err());
    }
}
