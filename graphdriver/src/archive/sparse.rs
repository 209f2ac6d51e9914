//! Sparse files. The reader (`reader.rs`) hands over the data map of GNU
//! `S` entries and PAX sparse entries (GNU tar `--sparse --format=posix`,
//! formats 0.0, 0.1 and 1.0) and the concatenated chunks as the member's
//! data; they are written with holes left as holes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Copy up to `len` bytes of `data` into `file` through `buf`, filling the
/// buffer before each write: a file that fits in `buf` is one `write`
/// (`io::copy` writes every 8 KiB). Returns the bytes copied; fewer than
/// `len` means `data` ended.
pub(crate) fn copy_data(buf: &mut [u8], data: &mut dyn Read, file: &mut File, len: u64) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).map_or(buf.len(), |left| left.min(buf.len()));
        let mut filled = 0;
        while filled < want {
            match data.read(&mut buf[filled..want]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        file.write_all(&buf[..filled])?;
        done += filled as u64;
        if filled < want {
            break;
        }
    }
    Ok(done)
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
pub(crate) fn write_chunks(
    buf: &mut [u8],
    file: &mut File,
    data: &mut dyn Read,
    map: &[(u64, u64)],
    size: u64,
) -> io::Result<bool> {
    for &(off, len) in map {
        file.seek(SeekFrom::Start(off))?;
        if copy_data(buf, data, file, len)? != len {
            return Ok(false);
        }
    }
    file.set_len(size)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_checked() {
        let map = vec![(0, 5), (100, 3)];
        check_map(&map, 200, 8).unwrap();
        assert!(check_map(&map, 101, 8).is_err());
        assert!(check_map(&[(10, 5), (12, 1)], 100, 6).is_err());
        assert!(check_map(&map, 200, 9).is_err());
    }
}
