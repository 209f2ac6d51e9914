//! Image archives: a docker-archive (`docker save`: `manifest.json`, configs,
//! `<dir>/layer.tar`) or an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), as a tar stream or a directory.
//!
//! - [`plan`]: what an archive holds — images, their configs, names and
//!   layers in chain order — read from its metadata members.
//! - [`load`]: a streaming loader over a tar in any member order; it
//!   registers a layer straight from the stream when its parent is ready
//!   and spools only what arrives before it can be used.
//! - [`order`]: for a seekable input (a tar file or a directory), a tar
//!   stream of the same archive in load order (metadata first, then layers
//!   in chain order), read in place — so loading it spools nothing.
//! - [`save`]: writes a docker-archive or an OCI layout of stored images.

pub mod load;
pub mod order;
pub mod plan;
pub mod save;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::error::{ImageStoreError, Result};
use crate::store::ImageStore;

pub use load::{LoadReport, LoadedImage};
pub use save::Format;

impl ImageStore {
    /// Load an archive tar (docker-archive or OCI layout) from a stream, in
    /// whatever member order it comes (see [`load`]).
    pub async fn load(&self, input: impl Read + Send + 'static) -> Result<LoadReport> {
        let (store, rt, spool) = (self.clone(), tokio::runtime::Handle::current(), self.spool_root());
        tokio::task::spawn_blocking(move || load::load(&store, input, rt, &spool))
            .await
            .map_err(|e| ImageStoreError::Internal(format!("load task: {e}")))?
    }

    /// Load a tar file or a directory in place: indexed first, then read in
    /// load order (see [`order`]), so nothing is spooled.
    pub async fn load_path(&self, path: &Path) -> Result<LoadReport> {
        let path: PathBuf = path.to_path_buf();
        let src = tokio::task::spawn_blocking(move || order::Seekable::open(&path))
            .await
            .map_err(|e| ImageStoreError::Internal(format!("index task: {e}")))??;
        let (reader, writer) = std::io::pipe().map_err(|e| ImageStoreError::Internal(format!("pipe: {e}")))?;
        let writing = tokio::task::spawn_blocking(move || src.write_ordered(writer));
        let loaded = self.load(reader).await;
        let written = writing.await.map_err(|e| ImageStoreError::Internal(format!("order task: {e}")))?;
        // The loader's error says more than the writer's broken pipe.
        let report = loaded?;
        written?;
        Ok(report)
    }

    /// The archive of the images `refs` name, as a reader: every name is
    /// resolved first (an unknown one fails here), then the archive is
    /// written on a blocking thread; a failure part-way reaches the reader
    /// as a read error, never as a clean end.
    pub async fn save_reader(&self, refs: &[String], format: Format) -> Result<Box<dyn Read + Send>> {
        let items = save::items(self, refs)?;
        let (mut writer, reader) = graphdriver::pipe::pipe(8);
        let (store, rt) = (self.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || match save::save(&store, &items, format, &mut writer, &rt) {
            Ok(()) => {
                // An error here is a reader that went away: nobody to tell.
                let _ = writer.finish();
            }
            Err(e) => {
                tracing::warn!(error = %e, "image save failed part-way");
                writer.fail(std::io::Error::other(format!("image save failed: {e}")));
            }
        });
        Ok(Box::new(reader))
    }

    /// Write the images `refs` name as an archive to `out`.
    pub async fn save(&self, refs: &[String], format: Format, out: impl Write + Send + 'static) -> Result<()> {
        let items = save::items(self, refs)?;
        let (store, rt) = (self.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || save::save(&store, &items, format, out, &rt))
            .await
            .map_err(|e| ImageStoreError::Internal(format!("save task: {e}")))?
    }
}

/// Largest metadata member (`manifest.json`, `index.json`, a manifest or a
/// config) read: Docker's registry client caps manifests at 4 MiB.
pub const MAX_METADATA_BYTES: u64 = 4 << 20;
/// Members up to this size are kept in memory while loading; larger ones
/// are registered straight from the stream or spooled to disk.
pub const INLINE_BYTES: u64 = 1 << 20;
/// At most this much of an archive is kept in memory at once.
pub const MAX_INLINE_TOTAL: u64 = 256 << 20;
/// Alias (symlink/hardlink) chains longer than this are refused as loops.
const MAX_ALIAS_HOPS: usize = 16;

pub(crate) fn bad(why: impl Into<String>) -> ImageStoreError {
    ImageStoreError::Archive(why.into())
}

/// A member's name, cleaned: relative, `/`-separated, no `.` components.
/// Absolute names and `..` are refused (an archive member never needs them).
pub fn clean_member(p: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => {
                parts.push(s.to_str().ok_or_else(|| bad(format!("member name {:?} is not UTF-8", p)))?)
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!("member name {:?} leaves the archive (absolute or `..`)", cut(p))));
            }
        }
    }
    Ok(parts.join("/"))
}

fn cut(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.len() > 256 { format!("{}…", &s[..s.floor_char_boundary(256)]) } else { s.into_owned() }
}

/// A name an archive gives another member: a symlink's target relative to
/// its own dir, or a hardlink's target relative to the root.
pub fn alias_target(member: &str, target: &Path, hard: bool) -> Result<String> {
    if target.is_absolute() {
        return Err(bad(format!("link {member:?} points outside the archive")));
    }
    let mut parts: Vec<String> = if hard {
        Vec::new()
    } else {
        let mut v: Vec<String> = member.split('/').map(String::from).collect();
        v.pop();
        v
    };
    for c in target.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(bad(format!("link {member:?} points outside the archive")));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!("link {member:?} points outside the archive")));
            }
        }
    }
    Ok(parts.join("/"))
}

/// Follow aliases from `name` to a real member name. Loops and chains over
/// [`MAX_ALIAS_HOPS`] are refused.
pub fn resolve(aliases: &HashMap<String, String>, name: &str) -> Result<String> {
    let mut cur = name.to_string();
    for _ in 0..=MAX_ALIAS_HOPS {
        match aliases.get(&cur) {
            Some(next) => cur = next.clone(),
            None => return Ok(cur),
        }
    }
    Err(bad(format!("links from {name:?} loop or chain over {MAX_ALIAS_HOPS} hops")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(clean_member(Path::new("./a/b/layer.tar")).unwrap(), "a/b/layer.tar");
        assert!(clean_member(Path::new("../x")).is_err());
        assert!(clean_member(Path::new("/etc/passwd")).is_err());
        assert!(clean_member(Path::new("a/../../x")).is_err());
        assert_eq!(alias_target("a/layer.tar", Path::new("../b/layer.tar"), false).unwrap(), "b/layer.tar");
        assert_eq!(alias_target("a/layer.tar", Path::new("b/layer.tar"), true).unwrap(), "b/layer.tar");
        assert!(alias_target("a/layer.tar", Path::new("../../x"), false).is_err());
        assert!(alias_target("a", Path::new("/x"), false).is_err());
        let mut m = HashMap::new();
        m.insert("a".to_string(), "b".to_string());
        m.insert("b".to_string(), "a".to_string());
        assert!(resolve(&m, "a").is_err(), "a loop");
        m.insert("b".to_string(), "c".to_string());
        assert_eq!(resolve(&m, "a").unwrap(), "c");
    }
}
