//! Opening the image store: load Docker's imagedb and `repositories.json`,
//! lease every image's top layer again (see ARCHITECTURE.md, "Images").

use std::sync::{Arc, Mutex};

use graphdriver::keyed::KeyedMutex;
use layer::{ChainId, Digest};
use tracing::{info, warn};

use super::{Entry, ImageStore, Inner, State, blocking};
use crate::disk::Layout;
use crate::error::{ImageStoreError, Result};
use crate::names;
use crate::types::{ConfigFacts, ImageId, ManifestInfo};

impl ImageStore {
    /// Open the image store beside `layers`' layerdb
    /// (`<root>/image/<driver>/`), loading Docker's `imagedb` and
    /// `repositories.json`. An image whose layers are not in the layer store
    /// is skipped with a warning, as dockerd skips it.
    pub async fn open(layers: layer::Store) -> Result<ImageStore> {
        let dir = layers
            .layerdb()
            .parent()
            .ok_or_else(|| ImageStoreError::Internal("layerdb has no parent dir".into()))?
            .to_path_buf();
        let disk = Layout { dir };
        let d = disk.clone();
        let loaded = blocking(move || {
            d.prepare()?;
            let mut images = Vec::new();
            for id in d.list_ids()? {
                let config = d.read_config(&id)?;
                if ImageId::of_config(&config) != id {
                    warn!(id = %id, "image config does not match its id; skipped");
                    continue;
                }
                let facts = match ConfigFacts::parse(&config) {
                    Ok(f) => f,
                    Err(e) => {
                        warn!(id = %id, error = %e, "image config unreadable; skipped");
                        continue;
                    }
                };
                let meta = d.read_meta(&id)?;
                let manifest_bytes = d.read_manifest(&id)?;
                images.push((id, facts, meta, manifest_bytes));
            }
            let repos = d.read_repositories()?;
            Ok((images, repos))
        })
        .await?;
        let (images, repos) = loaded;
        let mut state = State::default();
        for (id, facts, meta, manifest_bytes) in images {
            let chain = facts.chain_id();
            // Each image holds its top layer by a lease, taken again here:
            // the images on disk are the truth (see ARCHITECTURE.md).
            if let Some(c) = &chain
                && let Err(e) = layers.lease(c)
            {
                warn!(id = %id, chain_id = %c, error = %e, "image's layers are not in the layer store; skipped");
                continue;
            }
            let manifest = match (meta.as_ref().and_then(|m| m.media_type.clone()), manifest_bytes) {
                (Some(media_type), Some(b)) => {
                    Some(ManifestInfo { media_type, digest: Digest::of(&b), size: b.len() as u64 })
                }
                _ => None,
            };
            let registry_digest = meta.and_then(|m| m.registry_digest);
            let e = Entry { id: id.clone(), facts, chain, manifest, registry_digest };
            state.images.insert(id, Arc::new(e));
        }
        for refs in repos.repositories.values() {
            for (name, id) in refs {
                let (Ok(r), Ok(id)) = (names::parse(name), ImageId::parse(id)) else {
                    warn!(name, id, "unreadable entry in repositories.json; skipped");
                    continue;
                };
                if state.images.contains_key(&id) {
                    state.names.insert(names::full(&r), (r, id));
                }
            }
        }
        info!(images = state.images.len(), names = state.names.len(), "image store open");
        Ok(ImageStore {
            inner: Arc::new(Inner {
                layers,
                disk,
                state: Mutex::new(state),
                id_keys: KeyedMutex::new(),
                repo_writer: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The top layers of the images recorded under `root` for the driver
    /// named `driver`: what [`layer::StoreOptions::keep`] must name so that
    /// the layer store's start-up keeps the layers images hold (by leases,
    /// which [`Self::open`] takes again). Reads the configs; call it with
    /// the root locked, before opening the layer store.
    pub fn layers_to_keep(root: &std::path::Path, driver: &str) -> Result<Vec<ChainId>> {
        let disk = Layout { dir: root.join("image").join(driver) };
        if !disk.content_dir().is_dir() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for id in disk.list_ids()? {
            match disk.read_config(&id).and_then(|c| ConfigFacts::parse(&c)) {
                Ok(f) => out.extend(f.chain_id()),
                Err(e) => warn!(id = %id, error = %e, "image config unreadable"),
            }
        }
        Ok(out)
    }

    /// Open the layer store (keeping the images' layers) and the image store
    /// on it: the way to open both.
    pub async fn open_with_layers(
        root: &std::path::Path,
        driver: std::sync::Arc<dyn graphdriver::Driver>,
    ) -> Result<(layer::Store, ImageStore)> {
        let (r, name) = (root.to_path_buf(), driver.name().to_string());
        let keep = blocking(move || ImageStore::layers_to_keep(&r, &name)).await?;
        let layers = layer::Store::open_with(root, driver, layer::StoreOptions::keeping(keep)).await?;
        let images = ImageStore::open(layers.clone()).await?;
        Ok((layers, images))
    }
}
