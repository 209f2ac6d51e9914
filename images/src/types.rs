//! The image store's public types and the parsed facts of an image config.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use layer::{ChainId, DiffId, Digest};
use serde::{Deserialize, Serialize};

use crate::error::{ImageStoreError, Result};

/// An image's id: the sha256 of its config bytes (`sha256:<hex>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub Digest);

impl ImageId {
    /// The id of a config.
    pub fn of_config(config: &[u8]) -> ImageId {
        ImageId(Digest::of(config))
    }
    pub fn parse(s: &str) -> Result<ImageId> {
        Digest::parse(s).map(ImageId).map_err(|_| ImageStoreError::InvalidId(s.to_string()))
    }
    pub fn hex(&self) -> String {
        self.0.hex()
    }
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for ImageId {
    type Err = ImageStoreError;
    fn from_str(s: &str) -> Result<Self> {
        ImageId::parse(s)
    }
}

impl Serialize for ImageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ImageId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A manifest as it came from a registry or an archive: media type and the
/// exact bytes (their sha256 is its digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestBlob {
    pub media_type: String,
    pub bytes: Bytes,
}

impl ManifestBlob {
    pub fn digest(&self) -> Digest {
        Digest::of(&self.bytes)
    }
}

/// What [`ImageStore::put`](crate::ImageStore::put) records.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// The config JSON, exactly as received: the image id is its sha256.
    pub config: Bytes,
    /// The manifest the image came with, if any.
    pub manifest: Option<ManifestBlob>,
    /// The digest a registry knows the image by — a manifest list's (index's)
    /// when the image was picked from one; by default the manifest's own.
    pub registry_digest: Option<Digest>,
}

impl NewImage {
    /// An image known by its config only (a docker-archive's).
    pub fn from_config(config: impl Into<Bytes>) -> NewImage {
        NewImage { config: config.into(), manifest: None, registry_digest: None }
    }
}

/// The manifest of an image, as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInfo {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// An image, as `image ls` and `image inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub id: ImageId,
    /// Full normalized names (`docker.io/library/busybox:latest`, or
    /// `…@sha256:…` for a digest reference), sorted.
    pub names: Vec<String>,
    /// The top layer's ChainID; `None` for an image without layers.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chain_id: Option<ChainId>,
    /// The config's `rootfs.diff_ids`, base first.
    pub diff_ids: Vec<DiffId>,
    /// Bytes of all the image's layers (the top layer's `chain_size`).
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub created: Option<String>,
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub manifest: Option<ManifestInfo>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub registry_digest: Option<Digest>,
}

/// What [`ImageStore::remove`](crate::ImageStore::remove) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveReport {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Images deleted (their last name went, or they were removed by id).
    pub deleted: Vec<ImageId>,
    /// Layers the deletion freed in the layer store.
    pub layers_deleted: Vec<ChainId>,
}

/// The facts of a config the store needs. Parsed leniently (unknown fields
/// ignored, as Docker does), strictly where it matters (`rootfs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFacts {
    pub diff_ids: Vec<DiffId>,
    pub created: Option<String>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// Largest config accepted (Docker's daemon caps manifests at 4 MiB; a
/// config is far smaller in practice).
pub const MAX_CONFIG_BYTES: usize = 8 << 20;

#[derive(Deserialize)]
struct RawConfig {
    rootfs: Option<RawRootfs>,
    created: Option<String>,
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ConfigFacts {
    pub fn parse(config: &[u8]) -> Result<ConfigFacts> {
        let bad = |why: String| ImageStoreError::InvalidConfig(why);
        if config.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!("{} bytes, more than the limit of {MAX_CONFIG_BYTES}", config.len())));
        }
        let raw: RawConfig = serde_json::from_slice(config).map_err(|e| bad(e.to_string()))?;
        let rootfs = raw.rootfs.ok_or_else(|| bad("no rootfs".into()))?;
        if rootfs.kind != "layers" {
            return Err(bad(format!("rootfs type {:?}, want \"layers\"", rootfs.kind)));
        }
        if rootfs.diff_ids.len() > layer::MAX_DEPTH {
            return Err(bad(format!("{} layers, more than {}", rootfs.diff_ids.len(), layer::MAX_DEPTH)));
        }
        let diff_ids = rootfs
            .diff_ids
            .iter()
            .map(|d| DiffId::parse(d).map_err(|e| bad(format!("rootfs.diff_ids: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(ConfigFacts {
            diff_ids,
            created: raw.created,
            os: raw.os,
            architecture: raw.architecture,
            variant: raw.variant,
        })
    }

    /// The top layer's ChainID.
    pub fn chain_id(&self) -> Option<ChainId> {
        ChainId::of_stack(&self.diff_ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_facts() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let cfg =
            format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{d}"]}},"x":1}}"#);
        let f = ConfigFacts::parse(cfg.as_bytes()).unwrap();
        assert_eq!(f.diff_ids.len(), 1);
        assert_eq!(f.chain_id().unwrap().to_string(), d, "a base layer's ChainID is its DiffID");
        assert_eq!(f.os, "linux");
        for bad in [
            "{}",
            "[]",
            r#"{"rootfs":{"type":"other","diff_ids":[]}}"#,
            r#"{"rootfs":{"type":"layers","diff_ids":["sha256:zz"]}}"#,
        ] {
            assert!(ConfigFacts::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn id_round_trips_through_json() {
        let id = ImageId::of_config(b"{}");
        let s = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ImageId>(&s).unwrap(), id);
    }
}
