//! What we know about the compressed blobs of our layers, per ChainID:
//! their digest and size, and which repositories hold them. A push looks
//! here before compressing anything: a blob the target repository has is
//! skipped (HEAD), one another repository of the same registry has is
//! mounted, and only the rest are compressed and uploaded — so a re-push
//! uploads nothing. Pulled layers are remembered with the blob they came
//! from, so pushing a pulled image back to its registry moves no layer.
//!
//! Persisted as one small JSON file (`known-blobs.json` in the state dir),
//! written atomically; the map lock is held for map updates and copies
//! only, the file write happens after it is released.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use layer::ChainId;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::manifest::Descriptor;
use crate::reference::Reference;

const FILE: &str = "known-blobs.json";
const VERSION: u32 = 1;
/// Sources remembered per blob (the newest kept).
const MAX_SOURCES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownBlob {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// `host/repository` names known to hold the blob.
    #[serde(default)]
    pub sources: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    version: u32,
    chains: BTreeMap<String, Vec<KnownBlob>>,
}

pub struct Known {
    dir: Option<PathBuf>,
    map: Mutex<Record>,
    write: tokio::sync::Mutex<()>,
}

/// `host/repo`, the name a source is remembered by.
pub fn source_of(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

impl Known {
    /// Load from `dir` (created on first write); `None` keeps it in memory.
    pub fn open(dir: Option<PathBuf>) -> Known {
        let rec = dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join(FILE)).ok())
            .and_then(|b| match serde_json::from_slice::<Record>(&b) {
                Ok(r) if r.version == VERSION => Some(r),
                Ok(_) | Err(_) => {
                    // A cache: losing it costs a recompression, nothing more.
                    warn!("ignoring an unreadable {FILE}; blobs will be recompressed on push");
                    None
                }
            })
            .unwrap_or(Record { version: VERSION, chains: BTreeMap::new() });
        Known { dir, map: Mutex::new(rec), write: tokio::sync::Mutex::new(()) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Record> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn candidates(&self, chain: &ChainId) -> Vec<KnownBlob> {
        self.map().chains.get(&chain.to_string()).cloned().unwrap_or_default()
    }

    /// A pulled layer's blob (gzip ones only: the kind a Docker manifest names).
    pub async fn remember_pulled(&self, chain: &ChainId, desc: &Descriptor, from: &Reference) {
        if !desc.media_type.ends_with("gzip") {
            return;
        }
        self.remember(chain, &desc.digest, desc.size, &source_of(from)).await;
    }

    /// A blob now known to be in `source` (`host/repo`).
    pub async fn remember(&self, chain: &ChainId, digest: &str, size: u64, source: &str) {
        let changed = {
            let mut m = self.map();
            let list = m.chains.entry(chain.to_string()).or_default();
            let blob = match list.iter_mut().position(|b| b.digest == digest) {
                Some(i) => &mut list[i],
                None => {
                    list.push(KnownBlob {
                        digest: digest.to_owned(),
                        size,
                        media_type: crate::manifest::DOCKER_LAYER_GZIP.to_owned(),
                        sources: Vec::new(),
                    });
                    list.last_mut().expect("just pushed")
                }
            };
            if blob.sources.iter().any(|s| s == source) {
                false
            } else {
                blob.sources.push(source.to_owned());
                if blob.sources.len() > MAX_SOURCES {
                    blob.sources.remove(0);
                }
                true
            }
        };
        if changed {
            self.persist().await;
        }
    }

    async fn persist(&self) {
        let Some(dir) = self.dir.clone() else { return };
        let _w = self.write.lock().await;
        let bytes = match serde_json::to_vec(&*self.map()) {
            Ok(b) => b,
            Err(e) => return warn!(error = %e, "serialising {FILE} failed"),
        };
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{FILE}.tmp"));
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, dir.join(FILE))
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "writing {FILE} failed; push will recompress"),
            Err(e) => warn!(error = %e, "writing {FILE} failed"),
        }
    }
}
