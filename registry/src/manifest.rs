//! Manifests, indexes and configs: the fields a pull needs, read from
//! Docker schema 2 and OCI documents alike (the two share one JSON shape
//! and differ in media types), and the platform choice in an index.
//!
//! Documents are kept as the registry's exact bytes (their digest is over
//! those bytes); these types are views parsed from them.

use serde::{Deserialize, Serialize};

use crate::error::{RegistryError, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";

/// What a pull asks for, in order of preference.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Docker's cap on a manifest body (distribution's client reads at most 4 MiB).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Cap on a config blob: far above real ones (a few KiB to a few hundred).
pub const MAX_CONFIG: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

impl Platform {
    /// `os/arch[/variant]`, as `docker pull --platform` takes it.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(RegistryError::InvalidArgument(format!("invalid platform {s:?}: want os/arch[/variant]")));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }

    /// The host's platform, in Go's names (what Docker picks by default).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: variant.map(Into::into) }
    }

    /// Whether an index entry's platform serves `self` (a variant asked for
    /// must match; arm64's "v8" also matches an entry without variant).
    fn serves(&self, entry: &Platform) -> bool {
        if entry.os != self.os || entry.architecture != self.architecture {
            return false;
        }
        match (&self.variant, &entry.variant) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => a == b,
        }
    }
}

/// An image manifest (Docker schema 2 or OCI).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// A manifest list or OCI index.
#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config a pull checks.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub rootfs: RootFs,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// A fetched manifest document, parsed.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

/// Parse a manifest body by the media type the registry sent (or the
/// document's own `mediaType`, or its shape, when the header is vague).
pub fn parse(content_type: &str, body: &[u8]) -> Result<Document> {
    let bad = |e: serde_json::Error| RegistryError::BadResponse(format!("malformed manifest: {e}"));
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<u32>,
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(bad)?;
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let mt = match ct {
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST => ct.to_owned(),
        _ => probe.media_type.clone().unwrap_or_default(),
    };
    if probe.schema_version == Some(1) || mt.starts_with("application/vnd.docker.distribution.manifest.v1") {
        return Err(RegistryError::Unsupported("Docker schema 1 manifests are deprecated and not pulled".into()));
    }
    let is_index = match mt.as_str() {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        // An OCI document without a media type: tell by its shape.
        _ => probe.manifests.is_some(),
    };
    if probe.schema_version != Some(2) {
        return Err(RegistryError::BadResponse(format!(
            "manifest has schemaVersion {:?}, want 2",
            probe.schema_version
        )));
    }
    if is_index {
        Ok(Document::Index(serde_json::from_slice(body).map_err(bad)?))
    } else {
        Ok(Document::Manifest(serde_json::from_slice(body).map_err(bad)?))
    }
}

impl Index {
    /// The entry for `want`, as Docker picks it: the first that serves it.
    pub fn pick(&self, want: &Platform) -> Result<&Descriptor> {
        self.manifests.iter().find(|d| d.platform.as_ref().is_some_and(|p| want.serves(p))).ok_or_else(|| {
            let have: Vec<String> =
                self.manifests.iter().filter_map(|d| d.platform.as_ref().map(|p| p.to_string())).collect();
            RegistryError::NotFound(format!("no manifest for platform {want} (the index has: {})", have.join(", ")))
        })
    }
}

/// How a layer blob is compressed, from its media type; an error for media
/// types that are not layers we can unpack.
pub fn check_layer_media_type(mt: &str) -> Result<()> {
    match mt {
        DOCKER_LAYER_GZIP | DOCKER_FOREIGN_GZIP | OCI_LAYER | OCI_LAYER_GZIP | OCI_LAYER_ZSTD | OCI_NONDIST => Ok(()),
        m if m.starts_with("application/vnd.oci.image.layer.nondistributable.v1.tar") => Ok(()),
        other => {
            Err(RegistryError::Unsupported(format!("layer media type {other:?} is not a tar layer we can unpack")))
        }
    }
}

impl Manifest {
    pub fn is_docker(&self) -> bool {
        self.media_type.as_deref() == Some(DOCKER_MANIFEST) || self.config.media_type == DOCKER_CONFIG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match_as_docker_does() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert!(p.serves(&Platform::parse("linux/arm64").unwrap()));
        assert!(!p.serves(&Platform::parse("linux/arm64/v9").unwrap()));
        assert!(!Platform::parse("linux/amd64").unwrap().serves(&p));
        for bad in ["linux", "linux/", "a/b/c/d", "linux/amd 64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Platform::host().os, "linux");
    }

    #[test]
    fn documents_are_told_apart() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":1},
            "layers":[]}"#;
        assert!(matches!(parse("", m).unwrap(), Document::Manifest(_)));
        let i = br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:aa","size":1,
            "platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let Document::Index(ix) = parse("application/json", i).unwrap() else { panic!("not an index") };
        assert_eq!(ix.pick(&Platform::parse("linux/amd64").unwrap()).unwrap().digest, "sha256:aa");
        let e = ix.pick(&Platform::parse("linux/s390x").unwrap()).unwrap_err().to_string();
        assert!(e.contains("linux/amd64"), "{e}");
        assert!(matches!(parse("", br#"{"schemaVersion":1}"#), Err(RegistryError::Unsupported(_))));
        assert!(matches!(parse("", b"<html>"), Err(RegistryError::BadResponse(_))));
        assert!(check_layer_media_type("application/vnd.oci.image.layer.v1.tar+encrypted").is_err());
    }
}
