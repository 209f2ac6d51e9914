//! The image store on disk — Docker's layout, so a Docker root's images show
//! up in layerd and dockerd sees images layerd recorded:
//!
//! ```text
//! <root>/image/<driver>/imagedb/content/sha256/<id-hex>   config bytes (Docker)
//! <root>/image/<driver>/repositories.json                 names → ids (Docker)
//! <root>/image/<driver>/layerd-images/<id-hex>/manifest   manifest bytes (ours)
//! <root>/image/<driver>/layerd-images/<id-hex>/meta.json  media type, registry digest (ours)
//! <root>/image/<driver>/layerd-images/tmp/                writes in flight (ours)
//! ```
//!
//! Every write goes to `tmp/`, is fsynced, renamed into place, and the
//! target's parent dir is fsynced: a file is either the old or the new one.
//! All of this runs on tokio's blocking pool, under no store-wide lock.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use graphdriver::IoContext;
use layer::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{ImageStoreError, Result};
use crate::types::{ImageId, ManifestBlob};

/// Largest manifest kept (Docker's registry client caps manifests at 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// `<root>/image/<driver>`.
    pub dir: PathBuf,
}

/// `repositories.json`, Docker's `reference.store` file: familiar repository
/// name → familiar reference → image id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Repositories {
    #[serde(rename = "Repositories", default)]
    pub repositories: BTreeMap<String, BTreeMap<String, String>>,
}

/// `meta.json` beside a manifest (versioned record).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    pub version: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub registry_digest: Option<Digest>,
}

impl Layout {
    pub fn content_dir(&self) -> PathBuf {
        self.dir.join("imagedb/content/sha256")
    }
    pub fn config_path(&self, id: &ImageId) -> PathBuf {
        self.content_dir().join(id.hex())
    }
    pub fn repositories(&self) -> PathBuf {
        self.dir.join("repositories.json")
    }
    pub fn ours(&self) -> PathBuf {
        self.dir.join("layerd-images")
    }
    pub fn meta_dir(&self, id: &ImageId) -> PathBuf {
        self.ours().join(id.hex())
    }
    pub fn tmp(&self) -> PathBuf {
        self.ours().join("tmp")
    }

    /// Create the dirs and empty what a crash left in `tmp/`.
    pub fn prepare(&self) -> Result<()> {
        for d in [self.content_dir(), self.tmp()] {
            fs::create_dir_all(&d).ctx("create dir", &d)?;
        }
        let tmp = self.tmp();
        for e in fs::read_dir(&tmp).ctx("read dir", &tmp)? {
            let p = e.ctx("read dir", &tmp)?.path();
            let r = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.ctx("remove stale tmp", &p)?;
        }
        Ok(())
    }

    /// Atomically replace `target` with `bytes`.
    pub fn write_atomic(&self, target: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp().join(format!("w-{:016x}", rand::random::<u64>()));
        let res = (|| {
            let mut f = fs::File::create(&tmp).ctx("create", &tmp)?;
            f.write_all(bytes).ctx("write", &tmp)?;
            f.sync_all().ctx("fsync", &tmp)?;
            fs::rename(&tmp, target).ctx("rename into place", target)?;
            Ok::<_, ImageStoreError>(())
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res?;
        // The rename is the commit; a failed fsync of the dir after it is
        // logged, not returned (the file is in place for this boot).
        if let Some(parent) = target.parent() {
            sync_dir(parent);
        }
        Ok(())
    }

    /// Write an image's config (idempotent: the name is its digest).
    pub fn write_config(&self, id: &ImageId, config: &[u8]) -> Result<()> {
        let p = self.config_path(id);
        if p.exists() {
            return Ok(());
        }
        self.write_atomic(&p, config)
    }

    pub fn read_config(&self, id: &ImageId) -> Result<Bytes> {
        let p = self.config_path(id);
        match fs::read(&p) {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ImageStoreError::NotFound(id.to_string())),
            Err(e) => Err(e).ctx("read", &p).map_err(Into::into),
        }
    }

    /// Remove an image's config and our metadata. The config's removal is
    /// the commit of the deletion.
    pub fn remove_image(&self, id: &ImageId) -> Result<()> {
        let p = self.config_path(id);
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.content_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove", &p).map_err(Into::into),
        }
        let m = self.meta_dir(id);
        match fs::remove_dir_all(&m) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove", &m).map_err(Into::into),
        }
    }

    pub fn write_meta(&self, id: &ImageId, manifest: Option<&ManifestBlob>, registry: Option<&Digest>) -> Result<()> {
        let dir = self.meta_dir(id);
        fs::create_dir_all(&dir).ctx("create dir", &dir)?;
        if let Some(m) = manifest {
            self.write_atomic(&dir.join("manifest"), &m.bytes)?;
        }
        let rec = MetaRecord {
            version: 1,
            media_type: manifest.map(|m| m.media_type.clone()),
            registry_digest: registry.cloned(),
        };
        let json = serde_json::to_vec(&rec).map_err(|e| ImageStoreError::Internal(e.to_string()))?;
        self.write_atomic(&dir.join("meta.json"), &json)
    }

    pub fn read_meta(&self, id: &ImageId) -> Result<Option<MetaRecord>> {
        let p = self.meta_dir(id).join("meta.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ImageStoreError::Corrupt { id: id.to_string(), why: format!("{}: {e}", p.display()) }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &p).map_err(Into::into),
        }
    }

    pub fn read_manifest(&self, id: &ImageId) -> Result<Option<Bytes>> {
        let p = self.meta_dir(id).join("manifest");
        match fs::read(&p) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &p).map_err(Into::into),
        }
    }

    /// The ids in `imagedb/content/sha256` (names that aren't 64 hex digits
    /// are skipped, as Docker skips them).
    pub fn list_ids(&self) -> Result<Vec<ImageId>> {
        let d = self.content_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&d).ctx("read dir", &d)? {
            let e = e.ctx("read dir", &d)?;
            let name = e.file_name();
            if let Some(digest) = name.to_str().and_then(Digest::parse_hex) {
                out.push(ImageId(digest));
            }
        }
        Ok(out)
    }

    pub fn read_repositories(&self) -> Result<Repositories> {
        let p = self.repositories();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageStoreError::Corrupt {
                id: "repositories.json".into(),
                why: format!("{}: {e}", p.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Repositories::default()),
            Err(e) => Err(e).ctx("read", &p).map_err(Into::into),
        }
    }

    pub fn write_repositories(&self, r: &Repositories) -> Result<()> {
        let json = serde_json::to_vec(r).map_err(|e| ImageStoreError::Internal(e.to_string()))?;
        self.write_atomic(&self.repositories(), &json)
    }
}

fn sync_dir(dir: &Path) {
    if let Err(e) = fs::File::open(dir).and_then(|f| f.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "fsync of dir after a commit failed");
    }
}
