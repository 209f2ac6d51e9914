//! Every extended attribute of a path (not following a final symlink),
//! sorted by name: what the dumps and manifests compare.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `(name, value)` of every xattr of `path`, sorted; empty where the
/// filesystem has none.
pub fn list(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = fill(|buf| rustix::fs::llistxattr(path, rustix::buffer::spare_capacity(buf)))?;
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        match fill(|buf| rustix::fs::lgetxattr(path, OsStr::from_bytes(name), rustix::buffer::spare_capacity(buf))) {
            Ok(value) => out.push((name.to_vec(), value)),
            // Raced with a removal, or a name we may list but not read.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Call `f` with growing buffers until the value fits.
fn fill(mut f: impl FnMut(&mut Vec<u8>) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut cap = 256;
    loop {
        let mut buf = Vec::with_capacity(cap);
        match f(&mut buf) {
            Ok(_) => return Ok(buf),
            Err(rustix::io::Errno::RANGE) if cap < (1 << 24) => cap *= 4,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}
