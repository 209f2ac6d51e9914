//! [`RegistryError`]: every way a pull or push fails, each answering
//! [`kind()`](RegistryError::kind) from the closed [`ErrorKind`] set.

use graphdriver::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A malformed image reference, platform or option from the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The registry says the manifest, tag or blob does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The registry refused our credentials (or we had none).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The registry could not be reached or broke the connection.
    #[error("registry {registry} unreachable: {why}")]
    Unreachable { registry: String, why: String },
    /// The registry answered with something we can't accept: malformed
    /// JSON, an unexpected status, a manifest over the size cap, a loop.
    #[error("bad answer from registry: {0}")]
    BadResponse(String),
    /// Content did not match its digest (blob, manifest, config) or its
    /// stated size, or a layer's DiffID did not match the config.
    #[error("content verification failed: {0}")]
    Digest(String),
    /// A manifest type, media type or platform we don't pull.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The layer store refused or failed.
    #[error(transparent)]
    Store(#[from] layer::LayerStoreError),
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            RegistryError::NotFound(_) => ErrorKind::NotFound,
            // A credentials problem is the caller's to fix; the closed set has
            // no "permission" kind, and a 4xx is the honest class.
            RegistryError::Unauthorized(_) => ErrorKind::InvalidArgument,
            // Not the caller's fault, nor ours: the closed set's nearest is internal.
            RegistryError::Unreachable { .. } => ErrorKind::Internal,
            RegistryError::BadResponse(_) => ErrorKind::InvalidArgument,
            RegistryError::Digest(_) => ErrorKind::DataLoss,
            RegistryError::Unsupported(_) => ErrorKind::Unsupported,
            RegistryError::Store(e) => e.kind(),
            RegistryError::Internal(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
