//! The layer store: content-addressed, reference-counted image layers on a
//! graph driver, with Docker's on-disk layerdb layout.
//!
//! Shape and why:
//! - The pure core (digests and the ChainID fold, names, the ref-count graph,
//!   persisted record types) is plain functions and types, tested without I/O.
//! - Effects go through the [`graphdriver::Driver`] trait and a few modules
//!   that touch the layerdb (`metadata`) — the store itself never mounts.
//! - Concurrency: map locks guard in-memory maps and counters only, never held
//!   across I/O or `.await`; per-key locks serialise work on one name or
//!   ChainID; creation is staged outside every lock and published by a rename
//!   plus a map insert; deletion unpublishes and defers the rm to a trash dir.

pub mod checkpoint;
pub mod compress;
pub mod digest;
mod error;
mod flight;
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod keyed;
pub mod layerref;
pub mod lockstats;
mod metadata;
pub mod name;
mod pipelined;
mod rootlock;
mod store;
pub mod tarsplit;
pub mod types;

pub use digest::{ChainId, DiffId, Digest};
pub use error::{LayerStoreError, Result};
pub use layerref::LayerRef;
pub use name::RwName;
pub use rootlock::RootLock;
pub use store::{InitFn, RwOpts, Store, StoreLockStats, StoreOptions};
pub use types::{CheckOpts, CheckReport, LayerInfo, Problem, RegisterOpts, RwInfo, StoreInfo};

/// Docker's limit on a chain's length: 127 in some drivers, minus an init and
/// an RW layer on top.
pub const MAX_DEPTH: usize = 125;
