//! Tars made with the `tar` crate, entry by entry: what a registry would
//! hand the layer store (GNU headers, PAX records for xattrs and long names,
//! AUFS whiteouts), plus raw hostile entries the crate itself refuses to
//! write.

use std::io;

use tar::{EntryType, Header};

/// A tar being built. Every entry gets a fixed mtime so bytes are stable.
pub struct TarMaker {
    b: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl Default for TarMaker {
    fn default() -> Self {
        TarMaker::new()
    }
}

impl TarMaker {
    pub fn new() -> TarMaker {
        TarMaker { b: tar::Builder::new(Vec::new()), mtime: 1_700_000_000 }
    }

    fn header(&self, ty: EntryType, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime);
        h.set_size(0);
        h
    }

    fn put(&mut self, mut h: Header, path: &str, data: &[u8]) -> io::Result<()> {
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path.trim_start_matches('/'), data)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<&mut Self> {
        let h = self.header(EntryType::Directory, mode);
        self.put(h, &format!("{}/", path.trim_end_matches('/')), &[])?;
        Ok(self)
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<&mut Self> {
        self.file_owned(path, data, mode, 0, 0)
    }

    pub fn file_owned(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> io::Result<&mut Self> {
        let mut h = self.header(EntryType::Regular, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        self.put(h, path, data)?;
        Ok(self)
    }

    /// A regular file with a ustar header (long paths go in its prefix field).
    pub fn file_ustar(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<&mut Self> {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime);
        self.put(h, path, data)?;
        Ok(self)
    }

    /// A regular file preceded by a PAX header carrying `records`
    /// (`SCHILY.xattr.user.x`, `mtime`, ...).
    pub fn pax_file(&mut self, path: &str, data: &[u8], mode: u32, records: &[(&str, &[u8])]) -> io::Result<&mut Self> {
        let body = pax_records(records);
        let x = self.header(EntryType::XHeader, 0o644);
        self.put(x, "PaxHeaders.0/entry", &body)?;
        self.file(path, data, mode)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<&mut Self> {
        let mut h = self.header(EntryType::Symlink, 0o777);
        self.b.append_link(&mut h, path.trim_start_matches('/'), target)?;
        Ok(self)
    }

    pub fn hardlink(&mut self, path: &str, existing: &str) -> io::Result<&mut Self> {
        let mut h = self.header(EntryType::Link, 0o644);
        self.b.append_link(&mut h, path.trim_start_matches('/'), existing.trim_start_matches('/'))?;
        Ok(self)
    }

    pub fn fifo(&mut self, path: &str, mode: u32) -> io::Result<&mut Self> {
        let h = self.header(EntryType::Fifo, mode);
        self.put(h, path, &[])?;
        Ok(self)
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32, mode: u32) -> io::Result<&mut Self> {
        let mut h = self.header(EntryType::Char, mode);
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.put(h, path, &[])?;
        Ok(self)
    }

    /// `.wh.<name>` next to `path`: deletes `path` from lower layers.
    pub fn whiteout(&mut self, path: &str) -> io::Result<&mut Self> {
        let path = path.trim_start_matches('/');
        let wh = match path.rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/.wh.{base}"),
            None => format!(".wh.{path}"),
        };
        self.file(&wh, &[], 0o644)
    }

    /// `.wh..wh..opq` in `dir`: hides everything lower layers have below it.
    pub fn opaque(&mut self, dir: &str) -> io::Result<&mut Self> {
        let dir = dir.trim_matches('/');
        self.file(&format!("{dir}/.wh..wh..opq"), &[], 0o644)
    }

    /// Append an entry as raw header bytes: `name` is written as is (the
    /// crate refuses `..` and absolute names), then `data`.
    pub fn raw(&mut self, name: &[u8], ty: EntryType, link: &[u8], data: &[u8]) -> io::Result<&mut Self> {
        let mut h = self.header(ty, 0o644);
        let old = h.as_old_mut();
        old.name.fill(0);
        old.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        old.linkname.fill(0);
        old.linkname[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data)?;
        Ok(self)
    }

    pub fn finish(self) -> io::Result<Vec<u8>> {
        self.b.into_inner()
    }
}

/// PAX extended-header records: `"<len> <key>=<value>\n"` each, where
/// `<len>` counts the whole record including its own digits.
pub fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// A tar of regular files `(path, content)`, mode 0644, owned by root,
/// mtime 1_700_000_000: the everyday layer of the store and daemon tests.
pub fn files_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = TarMaker::new();
    for (path, data) in files {
        t.file(path, data, 0o644).expect("append to an in-memory tar");
    }
    t.finish().expect("finish an in-memory tar")
}

/// One entry for [`tar_of`].
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    /// `.wh.<name>`, mode 0600.
    Whiteout(&'a str),
    /// `<dir>/.wh..wh..opq`, mode 0600.
    Opaque(&'a str),
    Symlink(&'a str, &'a str),
}

/// A tar of `entries`, in order, all owned by root, mtime 1_700_000_000
/// (directories 0755, files 0644, whiteout markers 0600).
pub fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let (name, data): (String, &[u8]) = match e {
            E::Dir(p) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                (format!("{p}/"), b"")
            }
            E::File(p, data) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0o644);
                (p.to_string(), data.as_bytes())
            }
            E::Whiteout(p) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0o600);
                let (dir, base) = p.rsplit_once('/').map_or(("", *p), |(d, b)| (d, b));
                (if dir.is_empty() { format!(".wh.{base}") } else { format!("{dir}/.wh.{base}") }, b"")
            }
            E::Opaque(dir) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0o600);
                (format!("{dir}/.wh..wh..opq"), b"")
            }
            E::Symlink(p, target) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                h.set_link_name(target).expect("link name");
                (p.to_string(), b"")
            }
        };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).expect("append");
    }
    b.into_inner().expect("tar")
}

/// The entry names of a tar, in order.
pub fn names(tar: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(tar);
    ar.entries().expect("entries").map(|e| e.expect("entry").path().expect("path").display().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let r = pax_records(&[("a", b"b"), ("SCHILY.xattr.user.k", &[b'v'; 95])]);
        let text = String::from_utf8(r).unwrap();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let (n, _) = rest.split_once(' ').unwrap();
            let n: usize = n.parse().unwrap();
            assert!(rest[..n].ends_with('\n'));
            rest = &rest[n..];
        }
    }

    #[test]
    fn raw_entries_keep_hostile_names() {
        let mut t = TarMaker::new();
        t.raw(b"../escape", EntryType::Regular, b"", b"x").unwrap();
        let bytes = t.finish().unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), b"../escape");
    }
}
