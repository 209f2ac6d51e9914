//! [`ImageStore`]: named images over the layer store.
//!
//! # Lock order (Architecture Invariant)
//! `image id key` → `repositories.json writer` → `state` map. The `state` map
//! is a leaf: held for a lookup or an update, never across I/O or `.await`.
//! The id key serialises work on one image (put, delete); the writer lock
//! serialises replacements of `repositories.json` (one file, as in Docker).
//! Reads (`get`, `list`) take only the map lock and never wait behind I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use graphdriver::keyed::KeyedMutex;
use layer::{ChainId, Digest, LayerStoreError};
use tracing::{info, warn};

use crate::disk::{Layout, MAX_MANIFEST_BYTES, Repositories};
use crate::error::{ImageStoreError, Result};
use crate::names::{self, Reference};
use crate::types::{ConfigFacts, ImageId, ImageInfo, ManifestBlob, ManifestInfo, NewImage, RemoveReport};

/// One image in memory: everything `get`/`list` show, so reads do no I/O.
#[derive(Debug)]
struct Entry {
    id: ImageId,
    facts: ConfigFacts,
    chain: Option<ChainId>,
    manifest: Option<ManifestInfo>,
    registry_digest: Option<Digest>,
}

#[derive(Debug, Default)]
struct State {
    images: HashMap<ImageId, Arc<Entry>>,
    /// Full normalized name → (reference, image).
    names: BTreeMap<String, (Reference, ImageId)>,
}

struct Inner {
    layers: layer::Store,
    disk: Layout,
    state: Mutex<State>,
    id_keys: KeyedMutex<ImageId>,
    repo_writer: tokio::sync::Mutex<()>,
}

/// A handle to an open image store. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

/// Run blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ImageStoreError::Internal(format!("blocking task: {e}")))?
}

mod open;

impl ImageStore {
    /// Where loads spool what they must (on the store's filesystem).
    pub(crate) fn spool_root(&self) -> std::path::PathBuf {
        self.inner.disk.tmp()
    }

    /// The layer store under this image store.
    pub fn layers(&self) -> &layer::Store {
        &self.inner.layers
    }

    /// Record an image — its config (the id is the sha256 of these bytes),
    /// optionally the manifest it came with and its registry digest — and
    /// tag it with `names` (a name already on another image moves).
    ///
    /// The image takes its OWN reference on its top layer (the chain of the
    /// config's `rootfs.diff_ids`, which must be registered); the caller
    /// keeps and releases its own. Recording an image that exists adds the
    /// names (and the manifest, if it had none) and takes no new reference.
    pub async fn put(&self, image: NewImage, names: &[Reference]) -> Result<ImageInfo> {
        let facts = ConfigFacts::parse(&image.config)?;
        if let Some(m) = &image.manifest
            && m.bytes.len() > MAX_MANIFEST_BYTES
        {
            return Err(ImageStoreError::Invalid(format!(
                "manifest of {} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
                m.bytes.len()
            )));
        }
        check_names(names)?;
        let id = ImageId::of_config(&image.config);
        let inner = self.inner.clone();
        let names = names.to_vec();
        // Its own task: a caller that goes away can't stop it half-way.
        tokio::spawn(async move { inner.put(id, facts, image, &names).await })
            .await
            .map_err(|e| ImageStoreError::Internal(format!("put task: {e}")))?
    }

    /// Inspect an image by name (`busybox`, `localhost:5000/a:v1`), full id
    /// (`sha256:<hex>`) or a unique id prefix (4+ hex digits).
    pub fn get(&self, name_or_id: &str) -> Result<ImageInfo> {
        let e = self.inner.resolve(name_or_id)?;
        Ok(self.inner.info(&e))
    }

    /// Every image, sorted by id. No I/O.
    pub fn list(&self) -> Vec<ImageInfo> {
        let entries: Vec<Arc<Entry>> = self.inner.lock().images.values().cloned().collect();
        let mut out: Vec<ImageInfo> = entries.iter().map(|e| self.inner.info(e)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Give the image `src` names the name `dst` (moved if it named another image).
    pub async fn tag(&self, src: &str, dst: &Reference) -> Result<()> {
        check_names(std::slice::from_ref(dst))?;
        let e = self.inner.resolve(src)?;
        let inner = self.inner.clone();
        let dst = dst.clone();
        tokio::spawn(async move {
            let _k = inner.id_keys.lock(&e.id).await;
            if !inner.lock().images.contains_key(&e.id) {
                return Err(ImageStoreError::NotFound(src_name(&e.id)));
            }
            inner.set_names(&[dst], &e.id).await
        })
        .await
        .map_err(|e| ImageStoreError::Internal(format!("tag task: {e}")))?
    }

    /// Remove a name, or an image by id. Removing an image's last name
    /// deletes the image and releases its layer reference (freeing what
    /// nothing else holds, as `layer rm` does). Removing by id an image with
    /// several names is refused (Docker's rule): remove the names.
    pub async fn remove(&self, name_or_id: &str) -> Result<RemoveReport> {
        let inner = self.inner.clone();
        let what = name_or_id.to_string();
        tokio::spawn(async move { inner.remove(&what).await })
            .await
            .map_err(|e| ImageStoreError::Internal(format!("remove task: {e}")))?
    }

    /// An image's config bytes, exactly as recorded.
    pub async fn config(&self, id: &ImageId) -> Result<Bytes> {
        let d = self.inner.disk.clone();
        let id = id.clone();
        blocking(move || d.read_config(&id)).await
    }

    /// An image's manifest (media type and exact bytes), if it came with one.
    pub async fn manifest(&self, id: &ImageId) -> Result<Option<ManifestBlob>> {
        let Some(info) = self.inner.lock().images.get(id).and_then(|e| e.manifest.clone()) else {
            return Ok(None);
        };
        let d = self.inner.disk.clone();
        let id2 = id.clone();
        let bytes = blocking(move || d.read_manifest(&id2)).await?;
        Ok(bytes.map(|bytes| ManifestBlob { media_type: info.media_type, bytes }))
    }
}

fn src_name(id: &ImageId) -> String {
    id.to_string()
}

fn check_names(names: &[Reference]) -> Result<()> {
    for r in names {
        if r.tag().is_some() == r.digest().is_some() {
            return Err(ImageStoreError::InvalidReference {
                name: r.whole(),
                why: "a name carries a tag or a digest, not both".into(),
            });
        }
    }
    Ok(())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self, e: &Entry) -> ImageInfo {
        let names: Vec<String> =
            self.lock().names.iter().filter(|(_, (_, id))| *id == e.id).map(|(n, _)| n.clone()).collect();
        let size = e.chain.as_ref().and_then(|c| self.layers.get(c).ok()).map_or(0, |l| l.chain_size);
        ImageInfo {
            id: e.id.clone(),
            names,
            chain_id: e.chain.clone(),
            diff_ids: e.facts.diff_ids.clone(),
            size,
            created: e.facts.created.clone(),
            os: e.facts.os.clone(),
            architecture: e.facts.architecture.clone(),
            variant: e.facts.variant.clone(),
            manifest: e.manifest.clone(),
            registry_digest: e.registry_digest.clone(),
        }
    }

    /// Find an image: by name first (as Docker does), then by id or prefix.
    fn resolve(&self, name_or_id: &str) -> Result<Arc<Entry>> {
        let st = self.lock();
        if let Ok(r) = names::parse(name_or_id)
            && let Some((_, id)) = st.names.get(&names::full(&r))
            && let Some(e) = st.images.get(id)
        {
            return Ok(e.clone());
        }
        let hex = name_or_id.strip_prefix("sha256:").unwrap_or(name_or_id);
        let is_hex = hex.len() >= 4 && hex.len() <= 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !is_hex {
            return match names::parse(name_or_id) {
                Ok(_) => Err(ImageStoreError::NotFound(name_or_id.to_string())),
                Err(e) => Err(e),
            };
        }
        let found: Vec<&Arc<Entry>> = st.images.values().filter(|e| e.id.digest().has_hex_prefix(hex)).collect();
        match found.as_slice() {
            [] => Err(ImageStoreError::NotFound(name_or_id.to_string())),
            [one] => Ok((*one).clone()),
            many => Err(ImageStoreError::AmbiguousId {
                prefix: name_or_id.to_string(),
                candidates: many.iter().map(|e| e.id.to_string()).collect(),
            }),
        }
    }

    async fn put(&self, id: ImageId, facts: ConfigFacts, image: NewImage, names: &[Reference]) -> Result<ImageInfo> {
        let _k = self.id_keys.lock(&id).await;
        let existing = self.lock().images.get(&id).cloned();
        let chain = facts.chain_id();
        let entry = match existing {
            Some(e) if e.manifest.is_some() || image.manifest.is_none() => e,
            Some(e) => {
                // A known image that now comes with its manifest.
                let manifest = self.write_meta(&id, &image).await?;
                let e = Arc::new(Entry {
                    id: id.clone(),
                    facts: e.facts.clone(),
                    chain: e.chain.clone(),
                    manifest,
                    registry_digest: image.registry_digest.clone().or_else(|| e.registry_digest.clone()),
                });
                self.lock().images.insert(id.clone(), e.clone());
                e
            }
            None => {
                // The image's hold is a lease (memory only): the config
                // written below is the commit, and `open` leases again.
                if let Some(c) = &chain {
                    self.layers.lease(c).map_err(|e| match e {
                        LayerStoreError::LayerNotFound(_) => ImageStoreError::LayerMissing { chain_id: c.to_string() },
                        e => e.into(),
                    })?;
                }
                let written = self.write_image(&id, &image).await;
                let manifest = match written {
                    Ok(m) => m,
                    Err(e) => {
                        if let Some(c) = &chain
                            && let Err(re) = self.layers.unlease(c).await
                        {
                            warn!(chain_id = %c, error = %re, "dropping the lease of a failed put failed");
                        }
                        return Err(e);
                    }
                };
                let e = Arc::new(Entry {
                    id: id.clone(),
                    facts,
                    chain,
                    manifest,
                    registry_digest: image.registry_digest.clone(),
                });
                self.lock().images.insert(id.clone(), e.clone());
                info!(id = %id, "recorded image");
                e
            }
        };
        if !names.is_empty() {
            self.set_names(names, &id).await?;
        }
        Ok(self.info(&entry))
    }

    async fn write_meta(&self, id: &ImageId, image: &NewImage) -> Result<Option<ManifestInfo>> {
        let d = self.disk.clone();
        let (id2, m, r) = (id.clone(), image.manifest.clone(), image.registry_digest.clone());
        if m.is_none() && r.is_none() {
            return Ok(None);
        }
        blocking(move || d.write_meta(&id2, m.as_ref(), r.as_ref())).await?;
        Ok(image.manifest.as_ref().map(|m| ManifestInfo {
            media_type: m.media_type.clone(),
            digest: m.digest(),
            size: m.bytes.len() as u64,
        }))
    }

    /// Write the manifest/meta, then the config (the config is the commit).
    async fn write_image(&self, id: &ImageId, image: &NewImage) -> Result<Option<ManifestInfo>> {
        let manifest = self.write_meta(id, image).await?;
        let d = self.disk.clone();
        let (id2, config) = (id.clone(), image.config.clone());
        blocking(move || d.write_config(&id2, &config)).await?;
        Ok(manifest)
    }

    /// Point `names` at `id` and persist `repositories.json`. Caller holds
    /// `id`'s key.
    async fn set_names(&self, names: &[Reference], id: &ImageId) -> Result<()> {
        self.update_names(|st| {
            for r in names {
                st.insert(names::full(r), (r.clone(), id.clone()));
            }
        })
        .await
    }

    /// Apply `change` to a copy of the names, write it, then publish it in
    /// memory. Under the writer lock only, so memory follows disk.
    async fn update_names(&self, change: impl FnOnce(&mut BTreeMap<String, (Reference, ImageId)>)) -> Result<()> {
        let _w = self.repo_writer.lock().await;
        let mut next = self.lock().names.clone();
        change(&mut next);
        let mut repos = Repositories::default();
        for (r, id) in next.values() {
            repos.repositories.entry(names::familiar_repo(r)).or_default().insert(names::familiar(r), id.to_string());
        }
        let d = self.disk.clone();
        blocking(move || d.write_repositories(&repos)).await?;
        self.lock().names = next;
        Ok(())
    }

    async fn remove(&self, what: &str) -> Result<RemoveReport> {
        let e = self.resolve(what)?;
        let _k = self.id_keys.lock(&e.id).await;
        if !self.lock().images.contains_key(&e.id) {
            return Err(ImageStoreError::NotFound(what.to_string()));
        }
        let by_name = names::parse(what)
            .ok()
            .map(|r| names::full(&r))
            .filter(|n| self.lock().names.get(n).is_some_and(|(_, id)| *id == e.id));
        let current: Vec<String> =
            self.lock().names.iter().filter(|(_, (_, id))| *id == e.id).map(|(n, _)| n.clone()).collect();
        let untag: Vec<String> = match by_name {
            Some(n) => vec![n],
            None if current.len() > 1 => {
                return Err(ImageStoreError::MultipleNames { id: e.id.to_string(), names: current });
            }
            None => current.clone(),
        };
        if !untag.is_empty() {
            self.update_names(|st| {
                for n in &untag {
                    st.remove(n);
                }
            })
            .await?;
        }
        let mut report = RemoveReport { untagged: untag.clone(), ..RemoveReport::default() };
        if untag.len() < current.len() {
            return Ok(report);
        }
        // The last name went: delete the image, then drop its reference.
        let d = self.disk.clone();
        let id = e.id.clone();
        blocking(move || d.remove_image(&id)).await?;
        self.lock().images.remove(&e.id);
        report.deleted.push(e.id.clone());
        info!(id = %e.id, "deleted image");
        if let Some(c) = &e.chain {
            report.layers_deleted = self.layers.unlease(c).await?;
        }
        Ok(report)
    }
}
