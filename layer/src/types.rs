//! The live, serialisable views of layers and RW layers that the store hands
//! out. JSON field names are part of the public contract (snake_case).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::{ChainId, DiffId, Digest};
use crate::name::RwName;

macro_rules! serde_via_string {
    ($t:ty, $parse:expr) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_string!(Digest, Digest::parse);
serde_via_string!(DiffId, DiffId::parse);
serde_via_string!(ChainId, ChainId::parse);
serde_via_string!(RwName, RwName::parse);

/// A read-only layer, as `inspect` and `ls` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub chain_id: ChainId,
    pub diff_id: DiffId,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent: Option<ChainId>,
    /// Bytes of content this layer applied (Docker's DiffSize).
    pub size: u64,
    /// Sum of `size` over the whole chain (Docker's Size).
    pub chain_size: u64,
    /// Layers in the chain, this one included (1 for a base layer).
    pub depth: usize,
    /// The driver's id for this layer (`cache-id`).
    pub cache_id: String,
    /// References held by clients (each `register` or `retain` adds one).
    pub references: u64,
    /// Leases: references held in memory only, by clients that re-derive
    /// them at start-up (the image store: one per image on this top layer)
    /// or by work in flight (a load). A crash drops them.
    #[serde(default)]
    pub leases: u64,
    /// Layers that have this one as parent.
    pub children: u64,
    /// RW layers created on top of this one.
    pub rw_layers: u64,
}

/// A container's writable layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwInfo {
    pub name: RwName,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent: Option<ChainId>,
    pub mount_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub init_id: Option<String>,
    /// How many `mount` calls are not yet matched by `unmount`.
    pub mount_count: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mount_path: Option<PathBuf>,
}

/// What a caller of `register` may state up front.
#[derive(Debug, Clone, Default)]
pub struct RegisterOpts {
    pub parent: Option<ChainId>,
    /// The DiffID the caller expects. With it the ChainID is known before the
    /// unpack, so concurrent registrations of the same layer unpack once; if
    /// the content turns out different, the registration fails.
    pub diff_id: Option<DiffId>,
    /// Digest of the (possibly compressed) blob as the caller received it,
    /// used only to merge concurrent identical registrations.
    pub blob_digest: Option<Digest>,
    /// Give the caller a lease ([`Store::lease`](crate::Store::lease)) instead
    /// of a persisted reference: a crash drops it, and start-up collects the
    /// layer if nothing else holds it.
    pub lease: bool,
}

/// Counts and facts for `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    pub root: PathBuf,
    pub driver: String,
    pub driver_status: Vec<(String, String)>,
    pub layers: u64,
    pub rw_layers: u64,
    /// Sum of every layer's `size`.
    pub layers_size: u64,
}

/// What `check` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOpts {
    /// Fix what can be fixed safely: remove orphaned driver dirs and stray
    /// layerdb entries. Damaged layers are reported, never deleted.
    #[serde(default)]
    pub repair: bool,
    /// Also rebuild every layer's tar stream and verify it against its DiffID
    /// (reads every byte of every layer).
    #[serde(default)]
    pub verify_content: bool,
}

/// One finding of `check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `orphaned_driver_dir`, `missing_driver_dir`, `missing_tar_split`,
    /// `content_mismatch`, `stray_layerdb_entry`, `metadata_mismatch`.
    pub kind: String,
    /// The layer's ChainID, the RW layer's name, the driver id or the path.
    pub subject: String,
    pub detail: String,
    pub repaired: bool,
}

/// The result of `check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub layers_checked: u64,
    pub rw_layers_checked: u64,
    pub problems: Vec<Problem>,
}
