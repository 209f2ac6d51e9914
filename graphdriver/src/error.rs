//! Errors of the driver contract, and the closed [`ErrorKind`] set that crosses
//! crate and wire boundaries.

use std::path::PathBuf;

/// The closed set of error kinds every subsystem maps into. This is what the
/// daemon turns into an HTTP status and what a plugin reply is parsed back into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The named layer, mount or id does not exist.
    NotFound,
    /// The name or id is taken.
    AlreadyExists,
    /// Malformed input: a bad digest, name, tar stream or option.
    InvalidArgument,
    /// The request is well-formed but conflicts with the current state
    /// (still referenced, still mounted, has children, ...).
    Conflict,
    /// The host or driver cannot do this (missing kernel feature, wrong fs).
    Unsupported,
    /// Stored data failed verification (digest or checksum mismatch).
    DataLoss,
    /// A fault of ours or of the system (I/O error, bug).
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::DataLoss => "data_loss",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An io error with the operation and path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError { op, path: path.into(), source }
    }
}

/// Attach an operation and a path to an io result.
pub trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, IoError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T, IoError> {
        self.map_err(|e| IoError::new(op, path, e))
    }
}

/// Errors of archive handling (apply, export, changes).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The tar stream is malformed or hostile; nothing outside the target was written.
    #[error("invalid tar: {0}")]
    InvalidTar(String),
    #[error(transparent)]
    Io(#[from] IoError),
}

impl ArchiveError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::InvalidTar(_) => ErrorKind::InvalidArgument,
            ArchiveError::Io(_) => ErrorKind::Internal,
        }
    }
}

/// Errors a [`crate::Driver`] returns.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("no such driver layer {0}")]
    NotFound(String),
    #[error("driver layer {0} already exists")]
    AlreadyExists(String),
    #[error("driver layer {id} is in use: {why}")]
    Busy { id: String, why: String },
    #[error("driver {driver} is not supported on this host: {why}")]
    Unsupported { driver: String, why: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{0}")]
    Other(String),
}

impl DriverError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            DriverError::NotFound(_) => ErrorKind::NotFound,
            DriverError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            DriverError::Busy { .. } => ErrorKind::Conflict,
            DriverError::Unsupported { .. } => ErrorKind::Unsupported,
            DriverError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            DriverError::Archive(e) => e.kind(),
            DriverError::Io(_) | DriverError::Other(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;
