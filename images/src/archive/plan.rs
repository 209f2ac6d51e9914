//! What an archive holds, read from its metadata members: each image's
//! config, names, manifest and layers (member names, DiffIDs, ChainIDs) in
//! chain order. Pure: members come from a lookup function.

use std::collections::HashSet;

use bytes::Bytes;
use layer::{ChainId, DiffId, Digest};
use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Deserialize;

use super::bad;
use crate::error::Result;
use crate::names::{self, Reference};
use crate::types::{ConfigFacts, ManifestBlob};

/// One layer of a planned image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLayer {
    /// The member holding the layer's bytes (aliases resolved).
    pub member: String,
    pub diff_id: DiffId,
    /// This layer's ChainID (and so, the parent's is the previous one's).
    pub chain_id: ChainId,
    /// An OCI blob's digest, checked against the member's bytes.
    pub blob_digest: Option<Digest>,
}

#[derive(Debug, Clone)]
pub struct PlannedImage {
    pub config: Bytes,
    pub names: Vec<Reference>,
    pub manifest: Option<ManifestBlob>,
    pub layers: Vec<PlannedLayer>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub images: Vec<PlannedImage>,
}

impl Plan {
    /// Every (layer, parent) position that holds `member`.
    pub fn positions(&self, member: &str) -> Vec<(Option<ChainId>, PlannedLayer)> {
        let mut out = Vec::new();
        for img in &self.images {
            let mut parent: Option<ChainId> = None;
            for l in &img.layers {
                if l.member == member {
                    out.push((parent.clone(), l.clone()));
                }
                parent = Some(l.chain_id.clone());
            }
        }
        out
    }
}

/// The outcome of reading the metadata seen so far.
#[derive(Debug)]
pub enum Built {
    Ready(Plan),
    /// Not yet: this member is needed and has not been seen.
    Missing(String),
}

/// What the plan reads members through: the bytes of a metadata member
/// (aliases resolved by the caller), `None` if not seen (yet).
pub trait Lookup {
    fn metadata(&mut self, name: &str) -> Result<Option<Bytes>>;
    fn resolve(&self, name: &str) -> Result<String>;
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Annotations naming an image in an OCI layout.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Nested indexes followed at most this deep.
const MAX_INDEX_DEPTH: usize = 4;

macro_rules! need {
    ($l:expr, $name:expr) => {
        match $l.metadata(&$name)? {
            Some(b) => b,
            None => return Ok(Built::Missing($name.to_string())),
        }
    };
}

/// Read the plan: `manifest.json` (docker-archive) if present, else
/// `index.json` (OCI layout). `final_` says the whole archive was seen, so
/// an absent `manifest.json` means "not a docker-archive".
pub fn build(l: &mut dyn Lookup, final_: bool) -> Result<Built> {
    if let Some(m) = l.metadata("manifest.json")? {
        return docker(l, &m);
    }
    if let Some(ix) = l.metadata("index.json")? {
        // (A Docker 25 archive holds both; its index names the same blobs
        // and, in annotations, the same names as its manifest.json.)
        if l.metadata("oci-layout")?.is_none() {
            if !final_ {
                return Ok(Built::Missing("oci-layout".into()));
            }
            return Err(bad("index.json without oci-layout: not an OCI image layout"));
        }
        return oci(l, &ix);
    }
    if final_ {
        return Err(bad("neither manifest.json (docker-archive) nor index.json (OCI layout) found"));
    }
    Ok(Built::Missing("manifest.json".into()))
}

fn docker(l: &mut dyn Lookup, manifest: &[u8]) -> Result<Built> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let mut plan = Plan::default();
    for e in entries {
        let cfg_name = l.resolve(&clean(&e.config)?)?;
        let config = need!(l, cfg_name);
        let facts = ConfigFacts::parse(&config)?;
        if facts.diff_ids.len() != e.layers.len() {
            return Err(bad(format!(
                "manifest.json: image {} lists {} layers, its config {} diff_ids",
                e.config,
                e.layers.len(),
                facts.diff_ids.len()
            )));
        }
        let names = e.repo_tags.unwrap_or_default().iter().map(|t| names::parse(t)).collect::<Result<Vec<_>>>()?;
        let layers = chain_layers(l, &facts.diff_ids, e.layers.iter().map(|m| (m.clone(), None)))?;
        plan.images.push(PlannedImage { config, names, manifest: None, layers });
    }
    Ok(Built::Ready(plan))
}

fn clean(name: &str) -> Result<String> {
    super::clean_member(std::path::Path::new(name))
}

fn chain_layers(
    l: &dyn Lookup,
    diffs: &[DiffId],
    members: impl Iterator<Item = (String, Option<Digest>)>,
) -> Result<Vec<PlannedLayer>> {
    let mut out: Vec<PlannedLayer> = Vec::new();
    for ((member, blob_digest), diff_id) in members.zip(diffs) {
        let chain_id = ChainId::of(out.last().map(|p| &p.chain_id), diff_id);
        out.push(PlannedLayer {
            member: l.resolve(&clean(&member)?)?,
            diff_id: diff_id.clone(),
            chain_id,
            blob_digest,
        });
    }
    Ok(out)
}

fn blob_name(d: &oci_spec::image::Digest) -> Result<(String, Digest)> {
    let digest = Digest::parse(d.as_ref()).map_err(|_| bad(format!("unsupported digest {d}: want sha256")))?;
    Ok((format!("blobs/sha256/{}", digest.hex()), digest))
}

/// A blob's bytes, checked against its digest.
fn blob(l: &mut dyn Lookup, d: &oci_spec::image::Digest) -> Result<std::result::Result<Bytes, String>> {
    let (name, digest) = blob_name(d)?;
    let name = l.resolve(&name)?;
    match l.metadata(&name)? {
        None => Ok(Err(name)),
        Some(b) if Digest::of(&b) == digest => Ok(Ok(b)),
        Some(_) => Err(bad(format!("blob {name} does not match its digest"))),
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn is_index(media: &str) -> bool {
    media == "application/vnd.oci.image.index.v1+json"
        || media == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn oci(l: &mut dyn Lookup, index: &[u8]) -> Result<Built> {
    let ix = ImageIndex::from_reader(index).map_err(|e| bad(format!("index.json: {e}")))?;
    let mut plan = Plan::default();
    for desc in ix.manifests() {
        let ann = desc.annotations().clone().unwrap_or_default();
        let name = ann.get(CONTAINERD_NAME).or_else(|| ann.get(OCI_REF_NAME).filter(|n| n.contains(['/', ':'])));
        let names = name.map(|n| names::parse(n)).transpose()?.into_iter().collect::<Vec<_>>();
        let mut seen = HashSet::new();
        let mut desc = desc.clone();
        let mut depth = 0;
        // Follow nested indexes down to this platform's manifest.
        while is_index(desc.media_type().as_ref()) {
            depth += 1;
            if depth > MAX_INDEX_DEPTH || !seen.insert(desc.digest().to_string()) {
                return Err(bad(format!("index {} nests too deep or loops", desc.digest())));
            }
            let b = match blob(l, desc.digest())? {
                Ok(b) => b,
                Err(missing) => return Ok(Built::Missing(missing)),
            };
            let inner = ImageIndex::from_reader(&b[..]).map_err(|e| bad(format!("index {}: {e}", desc.digest())))?;
            let pick = inner.manifests().iter().find(|m| {
                m.platform()
                    .as_ref()
                    .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == host_arch())
            });
            desc = match pick {
                Some(m) => m.clone(),
                None => return Err(bad(format!("index {} has no linux/{} image", desc.digest(), host_arch()))),
            };
        }
        let mb = match blob(l, desc.digest())? {
            Ok(b) => b,
            Err(missing) => return Ok(Built::Missing(missing)),
        };
        let m = ImageManifest::from_reader(&mb[..]).map_err(|e| bad(format!("manifest {}: {e}", desc.digest())))?;
        let config = match blob(l, m.config().digest())? {
            Ok(b) => b,
            Err(missing) => return Ok(Built::Missing(missing)),
        };
        let facts = ConfigFacts::parse(&config)?;
        if facts.diff_ids.len() != m.layers().len() {
            return Err(bad(format!(
                "manifest {} lists {} layers, its config {} diff_ids",
                desc.digest(),
                m.layers().len(),
                facts.diff_ids.len()
            )));
        }
        let members = m
            .layers()
            .iter()
            .map(|d| blob_name(d.digest()).map(|(n, dg)| (n, Some(dg))))
            .collect::<Result<Vec<_>>>()?;
        let layers = chain_layers(l, &facts.diff_ids, members.into_iter())?;
        let manifest = ManifestBlob { media_type: desc.media_type().to_string(), bytes: mb };
        plan.images.push(PlannedImage { config, names, manifest: Some(manifest), layers });
    }
    Ok(Built::Ready(plan))
}
