//! [`ImageStoreError`]: every way an image store operation fails, each
//! answering [`kind()`](ImageStoreError::kind) from the closed [`ErrorKind`] set.

use graphdriver::{ErrorKind, IoError};
use layer::LayerStoreError;

#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("invalid image reference {name:?}: {why}")]
    InvalidReference { name: String, why: String },
    #[error("invalid image id {0:?}: want sha256:<64 hex digits> or a unique prefix of at least 4 hex digits")]
    InvalidId(String),
    #[error("image id {prefix} is ambiguous: it could be {}", candidates.join(", "))]
    AmbiguousId { prefix: String, candidates: Vec<String> },
    #[error("no such image {0}")]
    NotFound(String),
    #[error("invalid image config: {0}")]
    InvalidConfig(String),
    #[error("invalid image: {0}")]
    Invalid(String),
    #[error("invalid image archive: {0}")]
    Archive(String),
    #[error("layer {chain_id} of the image is not in the layer store")]
    LayerMissing { chain_id: String },
    #[error("image {id} is tagged {}: remove the names one by one, or remove by name", names.join(", "))]
    MultipleNames { id: String, names: Vec<String> },
    #[error("stored image {id} is damaged: {why}")]
    Corrupt { id: String, why: String },
    #[error("layer store: {0}")]
    Layer(#[from] LayerStoreError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{0}")]
    Internal(String),
}

impl ImageStoreError {
    pub fn kind(&self) -> ErrorKind {
        use ImageStoreError::*;
        match self {
            InvalidReference { .. }
            | InvalidId(_)
            | AmbiguousId { .. }
            | InvalidConfig(_)
            | Invalid(_)
            | Archive(_)
            | LayerMissing { .. } => ErrorKind::InvalidArgument,
            NotFound(_) => ErrorKind::NotFound,
            MultipleNames { .. } => ErrorKind::Conflict,
            Corrupt { .. } => ErrorKind::DataLoss,
            Layer(e) => e.kind(),
            Io(_) | Internal(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = ImageStoreError> = std::result::Result<T, E>;
