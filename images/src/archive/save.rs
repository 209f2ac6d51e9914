//! Save: a docker-archive (what `docker load` reads) or an OCI image layout,
//! written as one tar stream in load order — `manifest.json` / `index.json`
//! and the configs first, then each layer once, in chain order — so
//! `image load` of it registers every layer straight from the stream.
//! Layer tars are the store's exact bytes (`tar_stream`), so their DiffIDs
//! (and an OCI blob's digest, the DiffID of an uncompressed layer) match.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};

use layer::ChainId;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::plan::OCI_REF_NAME;
use crate::error::{ImageStoreError, Result};
use crate::names::{self, Reference};
use crate::store::ImageStore;
use crate::types::ImageInfo;

/// The archive format of a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `docker save`'s (what `docker load` 20.10 reads).
    #[default]
    Docker,
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256`).
    Oci,
}

impl std::str::FromStr for Format {
    type Err = ImageStoreError;
    fn from_str(s: &str) -> Result<Format> {
        match s {
            "docker" => Ok(Format::Docker),
            "oci" => Ok(Format::Oci),
            _ => Err(ImageStoreError::Invalid(format!("format {s:?}: want docker or oci"))),
        }
    }
}

/// One image to save and the names to give it in the archive.
#[derive(Debug, Clone)]
pub struct SaveItem {
    pub image: ImageInfo,
    pub names: Vec<Reference>,
}

/// Resolve what a user asked to save: by name, that name; by id, all the
/// image's tag names. An image asked twice is written once.
pub fn items(store: &ImageStore, refs: &[String]) -> Result<Vec<SaveItem>> {
    let mut out: Vec<SaveItem> = Vec::new();
    for r in refs {
        let image = store.get(r)?;
        let by_name = names::parse(r).ok().filter(|n| image.names.contains(&names::full(n)));
        let names: Vec<Reference> = match by_name {
            Some(n) => vec![n],
            None => image.names.iter().filter_map(|n| names::parse(n).ok()).collect(),
        };
        match out.iter_mut().find(|i| i.image.id == image.id) {
            Some(i) => {
                for n in names {
                    if !i.names.contains(&n) {
                        i.names.push(n);
                    }
                }
            }
            None => out.push(SaveItem { image, names }),
        }
    }
    if out.is_empty() {
        return Err(ImageStoreError::Invalid("nothing to save: name at least one image".into()));
    }
    Ok(out)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Write `items` as an archive to `out`. Blocking: call it on a blocking
/// thread; it reads layers through `rt`.
pub fn save(store: &ImageStore, items: &[SaveItem], format: Format, out: impl Write, rt: &Handle) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    let configs: Vec<bytes::Bytes> =
        items.iter().map(|i| rt.block_on(store.config(&i.image.id))).collect::<Result<Vec<_>>>()?;
    match format {
        Format::Docker => {
            let entries: Vec<DockerEntry> = items
                .iter()
                .map(|i| DockerEntry {
                    config: format!("{}.json", i.image.id.hex()),
                    repo_tags: i.names.iter().filter(|n| n.tag().is_some()).map(names::familiar).collect(),
                    layers: chains(&i.image).iter().map(|c| format!("{}/layer.tar", c.hex())).collect(),
                })
                .collect();
            append(&mut tar, "manifest.json", &json(&entries)?)?;
            for (i, c) in items.iter().zip(&configs) {
                append(&mut tar, &format!("{}.json", i.image.id.hex()), c)?;
            }
            let mut done = HashSet::new();
            for i in items {
                for c in chains(&i.image) {
                    if done.insert(c.clone()) {
                        layer(&mut tar, store, rt, &c, &format!("{}/layer.tar", c.hex()))?;
                    }
                }
            }
        }
        Format::Oci => {
            append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            let mut manifests = Vec::new();
            for (i, c) in items.iter().zip(&configs) {
                manifests.push(oci_manifest(store, rt, &i.image, c)?);
            }
            let mut index = Vec::new();
            for (i, m) in items.iter().zip(&manifests) {
                let desc = |ann: Option<BTreeMap<&'static str, String>>| Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: layer::Digest::of(m).to_string(),
                    size: m.len() as u64,
                    annotations: ann,
                };
                if i.names.is_empty() {
                    index.push(desc(None));
                }
                for n in &i.names {
                    let mut ann = BTreeMap::new();
                    ann.insert("io.containerd.image.name", names::full(n));
                    if let Some(t) = n.tag() {
                        ann.insert(OCI_REF_NAME, t.to_string());
                    }
                    index.push(desc(Some(ann)));
                }
            }
            let ix = Index { schema_version: 2, media_type: OCI_INDEX.into(), manifests: index };
            append(&mut tar, "index.json", &json(&ix)?)?;
            let mut done = HashSet::new();
            for blob in manifests.iter().map(|m| &m[..]).chain(configs.iter().map(|c| &c[..])) {
                let d = layer::Digest::of(blob);
                if done.insert(d.clone()) {
                    append(&mut tar, &format!("blobs/sha256/{}", d.hex()), blob)?;
                }
            }
            let mut done_layers = HashSet::new();
            for i in items {
                for (c, d) in chains(&i.image).iter().zip(&i.image.diff_ids) {
                    if done_layers.insert(d.clone()) {
                        layer(&mut tar, store, rt, c, &format!("blobs/sha256/{}", d.hex()))?;
                    }
                }
            }
        }
    }
    tar.into_inner().map_err(|e| io_err("finish the archive", e))?.flush().map_err(|e| io_err("flush", e))?;
    Ok(())
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<&'static str, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: String,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn oci_manifest(store: &ImageStore, rt: &Handle, image: &ImageInfo, config: &[u8]) -> Result<Vec<u8>> {
    let mut layers = Vec::new();
    for (c, d) in chains(image).iter().zip(&image.diff_ids) {
        layers.push(Descriptor {
            media_type: OCI_LAYER.into(),
            digest: d.to_string(),
            size: tar_length(store, rt, c)?,
            annotations: None,
        });
    }
    let m = Manifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.into(),
        config: Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: layer::Digest::of(config).to_string(),
            size: config.len() as u64,
            annotations: None,
        },
        layers,
    };
    json(&m)
}

/// ChainIDs of an image's layers, base first.
fn chains(image: &ImageInfo) -> Vec<ChainId> {
    let mut out: Vec<ChainId> = Vec::new();
    for d in &image.diff_ids {
        out.push(ChainId::of(out.last(), d));
    }
    out
}

fn json(v: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ImageStoreError::Internal(e.to_string()))
}

fn io_err(what: &str, e: io::Error) -> ImageStoreError {
    ImageStoreError::Internal(format!("writing the archive ({what}): {e}"))
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn append(tar: &mut tar::Builder<impl Write>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = header(data.len() as u64);
    tar.append_data(&mut h, name, data).map_err(|e| io_err(name, e))
}

/// A layer tar's exact length: recorded at registration, else counted.
fn tar_length(store: &ImageStore, rt: &Handle, chain: &ChainId) -> Result<u64> {
    let layers = store.layers().clone();
    if let Some(n) = rt.block_on(layers.tar_length(chain))? {
        return Ok(n);
    }
    let mut r = rt.block_on(layers.tar_stream(chain))?;
    io::copy(&mut r, &mut io::sink()).map_err(|e| ImageStoreError::Internal(format!("reading layer {chain}: {e}")))
}

fn layer(
    tar: &mut tar::Builder<impl Write>,
    store: &ImageStore,
    rt: &Handle,
    chain: &ChainId,
    name: &str,
) -> Result<()> {
    let len = tar_length(store, rt, chain)?;
    let layers = store.layers().clone();
    let r = rt.block_on(layers.tar_stream(chain))?;
    let mut h = header(len);
    let mut exact = Exact { inner: r, left: len };
    tar.append_data(&mut h, name, &mut exact).map_err(|e| io_err(name, e))?;
    if exact.left != 0 {
        return Err(ImageStoreError::Internal(format!("layer {chain} ended {} bytes early", exact.left)));
    }
    Ok(())
}

/// A reader of exactly `left` more bytes: longer input is an error.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other("layer longer than its recorded length")),
            };
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "layer shorter than its recorded length"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
