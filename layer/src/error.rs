//! [`LayerStoreError`]: every way a store operation fails, each answering
//! [`kind()`](LayerStoreError::kind) from the closed [`ErrorKind`] set.

use graphdriver::{DriverError, ErrorKind, IoError};

use crate::tarsplit::TarSplitError;

#[derive(Debug, thiserror::Error)]
pub enum LayerStoreError {
    #[error("invalid digest {0:?}: want sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error("invalid name {0:?}: want 1-128 characters of [A-Za-z0-9_.-], starting with a letter or digit")]
    InvalidName(String),
    #[error("invalid layer id {0:?}: want a ChainID or a unique prefix of its hex digits (sha256: optional)")]
    InvalidLayerRef(String),
    #[error("layer id {prefix} is ambiguous: it could be {}", candidates.join(", "))]
    AmbiguousLayerRef { prefix: String, candidates: Vec<String> },
    #[error("no such layer {0}")]
    LayerNotFound(String),
    /// The layer was released while it was being read (an export).
    #[error("layer released: {0} was released while it was being exported")]
    Released(String),
    #[error("no such parent layer {0}")]
    ParentNotFound(String),
    #[error("no such rw layer {0}")]
    RwNotFound(String),
    #[error("rw layer name {0} is already in use")]
    NameInUse(String),
    #[error("max depth exceeded: a chain may hold at most {max} layers")]
    MaxDepthExceeded { max: usize },
    #[error("layer {chain_id} is not retained: {why}")]
    NotRetained { chain_id: String, why: String },
    #[error("rw layer {name} is not mounted")]
    NotMounted { name: String },
    #[error("layer content does not match the stated diff_id: stated {stated}, got {got}")]
    DiffIdMismatch { stated: String, got: String },
    #[error("invalid layer data: {0}")]
    InvalidInput(String),
    #[error("stored data of layer {chain_id} is damaged: {why}")]
    Corrupt { chain_id: String, why: String },
    #[error("stored data of rw layer {name} is damaged: {why}")]
    RwCorrupt { name: String, why: String },
    #[error("tar-split: {0}")]
    TarSplit(#[from] TarSplitError),
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(
        "the store root is in use: {path} is locked by another process{holder}; is another layerd running on this root?"
    )]
    Locked { path: std::path::PathBuf, holder: String },
    #[error("{0}")]
    Internal(String),
}

impl LayerStoreError {
    pub fn kind(&self) -> ErrorKind {
        use LayerStoreError::*;
        match self {
            InvalidDigest(_)
            | InvalidLayerRef(_)
            | AmbiguousLayerRef { .. }
            | InvalidName(_)
            | MaxDepthExceeded { .. }
            | DiffIdMismatch { .. }
            | InvalidInput(_) => ErrorKind::InvalidArgument,
            // A parent that does not exist is a client error about the request.
            ParentNotFound(_) => ErrorKind::InvalidArgument,
            LayerNotFound(_) | RwNotFound(_) | Released(_) => ErrorKind::NotFound,
            NameInUse(_) => ErrorKind::AlreadyExists,
            NotRetained { .. } | NotMounted { .. } | Locked { .. } => ErrorKind::Conflict,
            Corrupt { .. } | RwCorrupt { .. } => ErrorKind::DataLoss,
            TarSplit(e) => e.kind(),
            Driver(e) => e.kind(),
            Io(_) | Internal(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = LayerStoreError> = std::result::Result<T, E>;
