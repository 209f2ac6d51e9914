//! Load order for a seekable input. A tar file is indexed first (headers
//! only, data skipped by seeking) and a directory listed; then the archive
//! is written out again as a tar stream in load order — metadata members,
//! then links, then each layer once, base first — reading every member in
//! place. The loader ([`super::load`]) then registers every layer straight
//! from the stream: no member is copied to disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use graphdriver::IoContext;

use super::plan::{self, Built, Lookup};
use super::{MAX_METADATA_BYTES, alias_target, bad, clean_member};
use crate::error::{ImageStoreError, Result};

enum Member {
    /// Offset of the data in the tar file (0 for a dir), size.
    File { offset: u64, size: u64 },
}

/// An archive that can be read in any order: a tar file or a directory.
pub struct Seekable {
    root: PathBuf,
    is_dir: bool,
    members: BTreeMap<String, Member>,
    aliases: HashMap<String, String>,
    /// Metadata members the plan read, in the order read.
    touched: Vec<String>,
}

impl Seekable {
    /// Index `path`: a tar file (headers only) or a directory.
    pub fn open(path: &Path) -> Result<Seekable> {
        let meta = std::fs::metadata(path).ctx("stat", path)?;
        let mut s = Seekable {
            root: path.to_path_buf(),
            is_dir: meta.is_dir(),
            members: BTreeMap::new(),
            aliases: HashMap::new(),
            touched: Vec::new(),
        };
        if s.is_dir {
            s.list_dir(path, "")?;
        } else {
            s.index_tar()?;
        }
        Ok(s)
    }

    fn index_tar(&mut self) -> Result<()> {
        let f = File::open(&self.root).ctx("open", &self.root)?;
        let mut ar = tar::Archive::new(f);
        let entries = ar.entries_with_seek().map_err(|e| bad(format!("reading the archive: {e}")))?;
        for e in entries {
            let e = e.map_err(|e| bad(format!("reading the archive: {e}")))?;
            let p = e.path().map_err(|e| bad(format!("member name: {e}")))?.into_owned();
            let name = clean_member(&p)?;
            match e.header().entry_type() {
                tar::EntryType::Directory => {}
                t @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let target = e
                        .link_name()
                        .map_err(|e| bad(format!("link {name:?}: {e}")))?
                        .ok_or_else(|| bad(format!("link {name:?} has no target")))?;
                    let to = alias_target(&name, &target, t == tar::EntryType::Link)?;
                    self.aliases.insert(name, to);
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let m = Member::File { offset: e.raw_file_position(), size: e.size() };
                    if self.members.insert(name.clone(), m).is_some() {
                        return Err(bad(format!("member {name:?} appears twice")));
                    }
                }
                other => return Err(bad(format!("member {name:?} is a {other:?}: an image archive holds files only"))),
            }
        }
        Ok(())
    }

    fn list_dir(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        for e in std::fs::read_dir(dir).ctx("read dir", dir)? {
            let e = e.ctx("read dir", dir)?;
            let fname = e.file_name();
            let fname = fname.to_str().ok_or_else(|| bad(format!("file name {fname:?} is not UTF-8")))?;
            let name = if prefix.is_empty() { fname.to_string() } else { format!("{prefix}/{fname}") };
            let path = e.path();
            let ft = e.file_type().ctx("stat", &path)?;
            if ft.is_dir() {
                self.list_dir(&path, &name)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).ctx("read link", &path)?;
                self.aliases.insert(name.clone(), alias_target(&name, &target, false)?);
            } else if ft.is_file() {
                let size = e.metadata().ctx("stat", &path)?.len();
                self.members.insert(name, Member::File { offset: 0, size });
            }
        }
        Ok(())
    }

    /// A member's bytes as a reader, read in place.
    fn open_member(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let Some(Member::File { offset, size }) = self.members.get(name) else {
            return Err(bad(format!("the archive lacks {name}")));
        };
        if self.is_dir {
            let p = self.root.join(name);
            let f = open_nofollow(&p)?;
            return Ok((Box::new(f.take(*size)), *size));
        }
        let mut f = File::open(&self.root).ctx("open", &self.root)?;
        f.seek(SeekFrom::Start(*offset)).ctx("seek", &self.root)?;
        Ok((Box::new(f.take(*size)), *size))
    }

    /// Write the archive to `out` in load order.
    pub fn write_ordered(mut self, out: impl Write) -> Result<()> {
        let plan = match plan::build(&mut self, true)? {
            Built::Ready(p) => p,
            Built::Missing(m) => return Err(bad(format!("the archive lacks {m}"))),
        };
        let mut tar = tar::Builder::new(out);
        let mut sent = HashSet::new();
        let touched = std::mem::take(&mut self.touched);
        for name in touched.iter().chain(plan.images.iter().flat_map(|i| i.layers.iter().map(|l| &l.member))) {
            if !sent.insert(name.clone()) {
                continue;
            }
            let (r, size) = self.open_member(name)?;
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, r).map_err(|e| write_err(name, e))?;
            if name == touched.last().unwrap_or(name) {
                // After the metadata: the links, so later names resolve.
                for (from, to) in &self.aliases {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Link);
                    tar.append_link(&mut h, from, to).map_err(|e| write_err(from, e))?;
                }
            }
        }
        tar.into_inner().map_err(|e| write_err("end", e))?.flush().map_err(|e| write_err("flush", e))?;
        Ok(())
    }
}

fn write_err(name: &str, e: io::Error) -> ImageStoreError {
    ImageStoreError::Archive(format!("writing {name}: {e}"))
}

fn open_nofollow(p: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(p).ctx("open", p)?)
}

impl Lookup for Seekable {
    fn metadata(&mut self, name: &str) -> Result<Option<Bytes>> {
        let name = self.resolve(name)?;
        let Some(Member::File { size, .. }) = self.members.get(&name) else { return Ok(None) };
        if *size > MAX_METADATA_BYTES {
            return Err(bad(format!("{name}: {size} bytes, more than the limit of {MAX_METADATA_BYTES}")));
        }
        let (mut r, _) = self.open_member(&name)?;
        let mut v = Vec::new();
        r.read_to_end(&mut v).map_err(|e| bad(format!("reading {name}: {e}")))?;
        if !self.touched.contains(&name) {
            self.touched.push(name);
        }
        Ok(Some(Bytes::from(v)))
    }

    fn resolve(&self, name: &str) -> Result<String> {
        super::resolve(&self.aliases, name)
    }
}
