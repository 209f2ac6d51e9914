//! The image store: named, content-addressed images over the layer store.
//!
//! Shape and why:
//! - An image is its config (the id is the config's sha256), optionally the
//!   manifest it came with, and names. It holds ONE client reference on its
//!   top layer's chain in the [`layer::Store`], so the layers stay while an
//!   image uses them, and `remove` of its last name frees what nothing else
//!   holds.
//! - On disk it is Docker's image store (`imagedb/content/sha256/<id>`,
//!   `repositories.json`), so images move between dockerd and layerd;
//!   manifests live in a dir of ours beside it (see [`disk`](crate::disk)).
//! - Concurrency follows the layer store's rules: one small map lock for the
//!   in-memory index, never held across I/O; per-image keyed locks
//!   ([`graphdriver::keyed::KeyedMutex`]) for work on one image.

pub mod archive;
mod disk;
mod error;
pub mod names;
mod store;
mod types;

pub use disk::MAX_MANIFEST_BYTES;
pub use error::{ImageStoreError, Result};
pub use names::Reference;
pub use store::ImageStore;
pub use types::{
    ConfigFacts, ImageId, ImageInfo, MAX_CONFIG_BYTES, ManifestBlob, ManifestInfo, NewImage, RemoveReport,
};
